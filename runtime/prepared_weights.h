// Prepared (packed) forms of constant weights shared by the kernels of one executor that read the
// same constant in the same form: an unrolled recurrent layer reads its recurrent weights at every
// step, and they are packed once, not once per step.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

namespace qforge::runtime {

using PreparedWeights = std::shared_ptr<const std::vector<float>>;

// While one lives on a thread (an executor creating its kernels), prepared_weights() on that
// thread shares what it makes by source and form. The constants it is keyed by are alive during
// that time (an executor releases a constant only after its last reader's kernel exists, and
// allocates none), so a source address names one constant.
class PreparedWeightSharing {
 public:
  PreparedWeightSharing();
  ~PreparedWeightSharing();
  PreparedWeightSharing(const PreparedWeightSharing&) = delete;
  PreparedWeightSharing& operator=(const PreparedWeightSharing&) = delete;

 private:
  using Key = std::pair<const float*, std::array<int64_t, 4>>;
  friend PreparedWeights prepared_weights(const float*, size_t, std::array<int64_t, 3>,
                                          const std::function<void(float*)>&);
  PreparedWeightSharing* previous_;
  std::map<Key, PreparedWeights> made_;
};

// `floats` values that `prepare` writes from the constant at `source`, in the form `form` (what
// the preparation reads besides the values: dims, transposition): the ones made earlier for the
// same source and form under the thread's PreparedWeightSharing, else made now.
PreparedWeights prepared_weights(const float* source, size_t floats, std::array<int64_t, 3> form,
                                 const std::function<void(float*)>& prepare);

}  // namespace qforge::runtime

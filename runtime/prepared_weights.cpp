// Prepared weights shared within one executor's kernel creation.
#include "runtime/prepared_weights.h"

namespace qforge::runtime {
namespace {

thread_local PreparedWeightSharing* current_sharing = nullptr;

}  // namespace

PreparedWeightSharing::PreparedWeightSharing() : previous_(current_sharing) {
  current_sharing = this;
}

PreparedWeightSharing::~PreparedWeightSharing() {
  current_sharing = previous_;
}

PreparedWeights prepared_weights(const float* source, size_t floats, std::array<int64_t, 3> form,
                                 const std::function<void(float*)>& prepare) {
  auto make = [&] {
    auto made = std::make_shared<std::vector<float>>(floats);
    prepare(made->data());
    return PreparedWeights(std::move(made));
  };
  if (!current_sharing) return make();
  const PreparedWeightSharing::Key key{source,
                                       {form[0], form[1], form[2], static_cast<int64_t>(floats)}};
  auto [it, fresh] = current_sharing->made_.try_emplace(key);
  if (fresh) it->second = make();
  return it->second;
}

}  // namespace qforge::runtime

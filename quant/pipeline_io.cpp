#include "quant/pipeline_io.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "graph/onnx_import.h"
#include "kernels/error.h"

namespace qforge::quant {
namespace {

class SilentBar : public ProgressBar {
 public:
  void advance(size_t) override {}
  void finish() override {}
};

}  // namespace

ModelLoader model_file(std::string path, graph::ImportOptions options) {
  return [path = std::move(path), options = std::move(options)] {
    return graph::load_onnx(path, options);
  };
}

void MemoryFloatStore::append(std::span<const float> values) {
  values_.insert(values_.end(), values.begin(), values.end());
}

void MemoryFloatStore::read(std::span<float> values) {
  if (read_ + values.size() > values_.size()) {
    throw_internal("float store: reading " + std::to_string(values.size()) + " values at " +
                   std::to_string(read_) + " of " + std::to_string(values_.size()));
  }
  std::copy_n(values_.begin() + static_cast<std::ptrdiff_t>(read_), values.size(), values.begin());
  read_ += values.size();
}

std::vector<size_t> spread_indices(size_t size, int64_t limit) {
  const size_t n = limit > 0 ? std::min(size, static_cast<size_t>(limit)) : size;
  std::vector<size_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = i * size / n;
  return out;
}

std::unique_ptr<ProgressBar> make_progress(const ProgressFactory& factory, std::string_view label,
                                           size_t total) {
  if (factory) return factory(label, total);
  return std::make_unique<SilentBar>();
}

void for_each_batch(const SampleSource& data, std::span<const size_t> indices, int64_t batch,
                    bool pad, ProgressBar& progress, const BatchFn& fn) {
  const auto b = static_cast<size_t>(batch);
  const size_t row = static_cast<size_t>(kernels::shape_numel(data.sample_shape()));
  graph::Shape shape = data.sample_shape();
  shape.insert(shape.begin(), batch);
  kernels::Tensor buffer(kernels::DType::kFloat32, shape);  // reused by every batch
  float* p = buffer.data<float>();
  std::vector<int64_t> labels;
  for (size_t begin = 0; begin < indices.size(); begin += b) {
    const size_t count = std::min(b, indices.size() - begin);
    kernels::Tensor rows = count == b ? buffer : buffer.slice_rows(0, static_cast<int64_t>(count));
    data.load(indices.subspan(begin, count), rows, labels);
    if (!data.labelled()) labels.clear();
    for (size_t i = count; pad && i < b; ++i) {
      std::memcpy(p + i * row, p + (count - 1) * row, row * sizeof(float));
    }
    fn(pad ? buffer : rows, labels, count);
    progress.advance(count);
  }
}

}  // namespace qforge::quant

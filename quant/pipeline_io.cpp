#include "quant/pipeline_io.h"

#include <algorithm>
#include <cstring>
#include <string>
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

KeptSamples::KeptSamples(const SampleSource& data, std::vector<size_t> indices)
    : data_(data),
      indices_(std::move(indices)),
      row_(static_cast<size_t>(kernels::shape_numel(data.sample_shape()))),
      rows_(indices_.size() * row_),
      labels_(data.labelled() ? indices_.size() : 0),
      kept_(indices_.size(), false) {
  if (!std::is_sorted(indices_.begin(), indices_.end())) {
    throw_internal("kept samples: the indices are not ascending");
  }
}

size_t KeptSamples::bytes(const SampleSource& data, size_t count) {
  return count * static_cast<size_t>(kernels::shape_numel(data.sample_shape())) * sizeof(float);
}

void KeptSamples::load(std::span<const size_t> indices, kernels::Tensor& rows,
                       std::vector<int64_t>& labels) const {
  std::vector<size_t> slots(indices.size());
  std::vector<size_t> missing;  // indices of `data` read now, in the order asked
  std::vector<size_t> missing_slots;
  for (size_t i = 0; i < indices.size(); ++i) {
    const auto at = std::lower_bound(indices_.begin(), indices_.end(), indices[i]);
    if (at == indices_.end() || *at != indices[i]) {
      throw_internal("kept samples: sample " + std::to_string(indices[i]) + " is not kept");
    }
    slots[i] = static_cast<size_t>(at - indices_.begin());
    if (!kept_[slots[i]]) {
      missing.push_back(indices[i]);
      missing_slots.push_back(slots[i]);
    }
  }
  // Keeps the rows just read (row j for slot slots_read[j]) and their labels.
  auto keep = [&](const std::vector<size_t>& slots_read, const kernels::Tensor& read,
                  const std::vector<int64_t>& read_labels) {
    for (size_t j = 0; j < slots_read.size(); ++j) {
      std::memcpy(rows_.data() + slots_read[j] * row_, read.data<float>() + j * row_,
                  row_ * sizeof(float));
      if (!labels_.empty()) labels_[slots_read[j]] = read_labels.at(j);
      kept_[slots_read[j]] = true;
    }
  };
  if (missing.size() == indices.size() && rows.dim(0) == static_cast<int64_t>(indices.size())) {
    // None kept yet (a first pass): read straight into `rows` and keep a copy.
    data_.load(indices, rows, labels);
    keep(slots, rows, labels);
    return;
  }
  if (!missing.empty()) {
    graph::Shape shape = data_.sample_shape();
    shape.insert(shape.begin(), static_cast<int64_t>(missing.size()));
    kernels::Tensor read(kernels::DType::kFloat32, shape);
    std::vector<int64_t> read_labels;
    data_.load(missing, read, read_labels);
    keep(missing_slots, read, read_labels);
  }
  labels.clear();
  float* out = rows.data<float>();
  for (size_t i = 0; i < indices.size(); ++i) {
    std::memcpy(out + i * row_, rows_.data() + slots[i] * row_, row_ * sizeof(float));
    if (!labels_.empty()) labels.push_back(labels_[slots[i]]);
  }
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

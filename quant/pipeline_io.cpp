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

std::vector<kernels::Tensor> sample_batch(const SampleSource& data, int64_t rows) {
  std::vector<kernels::Tensor> batch;
  for (const SampleInput& input : data.inputs()) {
    graph::Shape shape = input.shape;
    shape.insert(shape.begin(), rows);
    batch.emplace_back(input.dtype, shape);
  }
  return batch;
}

size_t sample_bytes(const SampleSource& data) {
  size_t bytes = 0;
  for (const SampleInput& input : data.inputs()) {
    bytes +=
        static_cast<size_t>(kernels::shape_numel(input.shape)) * kernels::dtype_size(input.dtype);
  }
  return bytes;
}

namespace {

// Bytes of one sample of `t`, a batch.
size_t row_bytes(const kernels::Tensor& t) {
  return t.dim(0) == 0 ? 0 : t.nbytes() / static_cast<size_t>(t.dim(0));
}

std::byte* row_at(kernels::Tensor& t, size_t i) {
  return static_cast<std::byte*>(t.raw()) + i * row_bytes(t);
}

const std::byte* row_at(const kernels::Tensor& t, size_t i) {
  return static_cast<const std::byte*>(t.raw()) + i * row_bytes(t);
}

}  // namespace

KeptSamples::KeptSamples(const SampleSource& data, std::vector<size_t> indices)
    : data_(data),
      indices_(std::move(indices)),
      row_(sample_bytes(data)),
      rows_(indices_.size() * row_),
      labels_(data.labelled() ? indices_.size() : 0),
      kept_(indices_.size(), false) {
  if (!std::is_sorted(indices_.begin(), indices_.end())) {
    throw_internal("kept samples: the indices are not ascending");
  }
}

size_t KeptSamples::bytes(const SampleSource& data, size_t count) {
  return count * sample_bytes(data);
}

void KeptSamples::load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
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
  auto keep = [&](const std::vector<size_t>& slots_read, std::span<const kernels::Tensor> read,
                  const std::vector<int64_t>& read_labels) {
    for (size_t j = 0; j < slots_read.size(); ++j) {
      std::byte* kept = rows_.data() + slots_read[j] * row_;
      for (const kernels::Tensor& input : read) {
        std::memcpy(kept, row_at(input, j), row_bytes(input));
        kept += row_bytes(input);
      }
      if (!labels_.empty()) labels_[slots_read[j]] = read_labels.at(j);
      kept_[slots_read[j]] = true;
    }
  };
  if (missing.size() == indices.size() &&
      rows.front().dim(0) == static_cast<int64_t>(indices.size())) {
    // None kept yet (a first pass): read straight into `rows` and keep a copy.
    data_.load(indices, rows, labels);
    keep(slots, rows, labels);
    return;
  }
  if (!missing.empty()) {
    std::vector<kernels::Tensor> read = sample_batch(data_, static_cast<int64_t>(missing.size()));
    std::vector<int64_t> read_labels;
    data_.load(missing, read, read_labels);
    keep(missing_slots, read, read_labels);
  }
  labels.clear();
  for (size_t i = 0; i < indices.size(); ++i) {
    const std::byte* kept = rows_.data() + slots[i] * row_;
    for (kernels::Tensor& input : rows) {
      std::memcpy(row_at(input, i), kept, row_bytes(input));
      kept += row_bytes(input);
    }
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
  std::vector<kernels::Tensor> buffers = sample_batch(data, batch);  // reused by every batch
  std::vector<kernels::Tensor> rows(buffers.size());
  std::vector<int64_t> labels;
  for (size_t begin = 0; begin < indices.size(); begin += b) {
    const size_t count = std::min(b, indices.size() - begin);
    for (size_t k = 0; k < buffers.size(); ++k) {
      rows[k] = count == b ? buffers[k] : buffers[k].slice_rows(0, static_cast<int64_t>(count));
    }
    data.load(indices.subspan(begin, count), rows, labels);
    if (!data.labelled()) labels.clear();
    for (kernels::Tensor& input : buffers) {
      for (size_t i = count; pad && i < b; ++i) {
        std::memcpy(row_at(input, i), row_at(input, count - 1), row_bytes(input));
      }
    }
    fn(pad ? buffers : rows, labels, count);
    progress.advance(count);
  }
}

}  // namespace qforge::quant

#include "tools/qforge/pipeline_adapters.h"

#include <exception>
#include <string>
#include <vector>

#include "kernels/parallel.h"
#include "tools/io/progress.h"
#include "tools/io/spill_file.h"

namespace qforge::cli {
namespace {

// What a bar counts: models for calibrate's passes over Q/DQ models (--sensitivity's, a
// --target-* search's), samples for the others.
std::string unit_of(std::string_view label) {
  return label == "sensitivity" || label == "target" ? "models" : "img";
}

class ProgressBar : public quant::ProgressBar {
 public:
  ProgressBar(std::string_view label, size_t total)
      : progress_(std::string(label), total, unit_of(label)) {}
  void advance(size_t samples) override { progress_.advance(samples); }
  void finish() override { progress_.finish(); }

 private:
  io::Progress progress_;
};

class SpillStore : public quant::FloatStore {
 public:
  void append(std::span<const float> values) override { spill_.append(values); }
  void read(std::span<float> values) override { spill_.read(values); }

 private:
  io::FloatSpill spill_;
};

}  // namespace

// Each sample into its row of `rows` (the indices need not be consecutive), the samples in
// parallel: decoding an image folder's files is most of a pass's time on large photos. A
// failure reports the first failing sample, as a serial loop would.
DataSamples::DataSamples(const DataSource& data) : data_(data) {
  for (size_t k = 0; k < data.input_count(); ++k) {
    inputs_.push_back({.dtype = data.input_dtype(k), .shape = data.input_sample_shape(k)});
  }
}

void DataSamples::load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
                       std::vector<int64_t>& labels) const {
  labels.clear();
  std::vector<std::exception_ptr> errors(indices.size());
  kernels::parallel_for(static_cast<int64_t>(indices.size()), 1, [&](int64_t first, int64_t last) {
    for (auto i = static_cast<size_t>(first); i < static_cast<size_t>(last); ++i) {
      try {
        data_.load_sample(indices[i], rows, i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  });
  for (const std::exception_ptr& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  if (!data_.labelled()) return;
  for (const size_t index : indices) labels.push_back(data_.labels(index, 1).at(0));
}

quant::ProgressFactory progress_bars() {
  return [](std::string_view label, size_t total) -> std::unique_ptr<quant::ProgressBar> {
    return std::make_unique<ProgressBar>(label, total);
  };
}

quant::FloatStoreFactory spill_files() {
  return []() -> std::unique_ptr<quant::FloatStore> { return std::make_unique<SpillStore>(); };
}

}  // namespace qforge::cli

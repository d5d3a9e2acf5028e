#include "tools/qforge/pipeline_adapters.h"

#include <string>

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

// One sample at a time, each into its row of `rows`: the indices need not be consecutive.
void DataSamples::load(std::span<const size_t> indices, kernels::Tensor& rows,
                       std::vector<int64_t>& labels) const {
  labels.clear();
  graph::Shape one = data_.sample_shape();
  one.insert(one.begin(), 1);
  const size_t row = static_cast<size_t>(kernels::shape_numel(data_.sample_shape()));
  float* p = rows.data<float>();
  for (size_t i = 0; i < indices.size(); ++i) {
    kernels::Tensor sample = kernels::Tensor::wrap(kernels::DType::kFloat32, one, p + i * row);
    data_.load(indices[i], 1, sample);
    if (data_.labelled()) labels.push_back(data_.labels(indices[i], 1).at(0));
  }
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

// The command line's data, progress bars and spill file behind the interfaces the quantization
// pipeline receives (quant/pipeline_io.h), for `qforge calibrate` and `qforge qat`.
#pragma once

#include <memory>

#include "quant/pipeline_io.h"
#include "tools/qforge/data_source.h"

namespace qforge::cli {

// A DataSource as the pipeline's SampleSource; `data` must outlive it.
class DataSamples : public quant::SampleSource {
 public:
  explicit DataSamples(const DataSource& data);
  size_t size() const override { return data_.size(); }
  const std::vector<quant::SampleInput>& inputs() const override { return inputs_; }
  bool labelled() const override { return data_.labelled(); }
  void load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
            std::vector<int64_t>& labels) const override;

 private:
  const DataSource& data_;
  std::vector<quant::SampleInput> inputs_;
};

// io::Progress bars counting images.
quant::ProgressFactory progress_bars();

// Float outputs kept in an unnamed temporary file (io::FloatSpill), not in memory.
quant::FloatStoreFactory spill_files();

}  // namespace qforge::cli

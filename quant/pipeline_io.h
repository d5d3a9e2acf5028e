// What the calibration pipeline (quant/calibrate_pipeline.h) and the evaluation
// (quant/evaluation.h) receive from their caller instead of files: the samples, a way to read
// the model again, progress bars and a store for float outputs. The command line adapts its data
// sources, progress bars and spill file to these; quant/ knows no file format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/ir.h"
#include "graph/onnx_import.h"
#include "kernels/tensor.h"

namespace qforge::quant {

// One model input as samples hold it: its element type and its shape without the batch dim.
struct SampleInput {
  kernels::DType dtype = kernels::DType::kFloat32;
  graph::Shape shape;
};

// A model's inputs, addressed by sample index: one float32 input for images and .npy rows, one
// array per input, of the input's own type (token ids, masks), for multi-input data.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual size_t size() const = 0;
  // In the model's input order.
  virtual const std::vector<SampleInput>& inputs() const = 0;
  // The first input's shape, without the batch dim.
  const graph::Shape& sample_shape() const { return inputs().front().shape; }
  virtual bool labelled() const = 0;
  // Fills `rows` (one tensor per input, [indices.size(), shape...] of its dtype) with the
  // samples `indices`, and `labels` (cleared first) with their class labels when the source is
  // labelled.
  virtual void load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
                    std::vector<int64_t>& labels) const = 0;
};

// One tensor per input of `data`, each of `rows` samples.
std::vector<kernels::Tensor> sample_batch(const SampleSource& data, int64_t rows);

// Bytes one sample of `data` takes, all its inputs together.
size_t sample_bytes(const SampleSource& data);

// The most memory a pass over the data keeps samples in for the passes after it
// (evaluate_each: --sensitivity's 64 samples of 3×224×224 take 37 MiB; train_qat's epochs).
inline constexpr size_t kKeptSampleBytes = size_t{256} << 20;

// The samples `indices` (ascending) of `data`, each read from it once, the first time a pass
// asks for it, and kept in memory for the passes after: every model of a sensitivity analysis
// reads the same samples, which for a folder of large photos take longer to decode than the
// model takes to run. load() takes only indices among `indices`. `data` must outlive it.
class KeptSamples : public SampleSource {
 public:
  KeptSamples(const SampleSource& data, std::vector<size_t> indices);
  size_t size() const override { return data_.size(); }
  const std::vector<SampleInput>& inputs() const override { return data_.inputs(); }
  bool labelled() const override { return data_.labelled(); }
  void load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
            std::vector<int64_t>& labels) const override;
  // Bytes the samples of `count` indices of `data` take in memory.
  static size_t bytes(const SampleSource& data, size_t count);

 private:
  const SampleSource& data_;
  std::vector<size_t> indices_;
  size_t row_ = 0;  // bytes per sample, all inputs together
  // Filled as the samples are first read (sample by sample, each input's row in turn); a const
  // load fills them, as a cache.
  mutable std::vector<std::byte> rows_;
  mutable std::vector<int64_t> labels_;
  mutable std::vector<bool> kept_;
};

// A fresh copy of the model each call: the pipeline lets the model go while it runs on the data
// (so that its weights are not in memory twice) and reads it again for the export.
using ModelLoader = std::function<std::unique_ptr<graph::Graph>()>;

// graph::load_onnx(path, options) on each call.
ModelLoader model_file(std::string path, graph::ImportOptions options = {});

// One progress bar over one pass of `total` samples.
class ProgressBar {
 public:
  virtual ~ProgressBar() = default;
  virtual void advance(size_t samples) = 0;
  // The pass ended; a bar destroyed without finish() belongs to a pass cut short by an error.
  virtual void finish() = 0;
};

// Makes the bar of one pass ("calibrate", "smoothquant", "float model", "Q/DQ model"); an empty
// factory shows nothing.
using ProgressFactory =
    std::function<std::unique_ptr<ProgressBar>(std::string_view label, size_t total)>;

// Floats written in order and read back in the same order: the reference model's outputs wait
// here for the quantized model's, so that one model is in memory at a time.
class FloatStore {
 public:
  virtual ~FloatStore() = default;
  virtual void append(std::span<const float> values) = 0;
  // The next values.size() values, in the order appended.
  virtual void read(std::span<float> values) = 0;
};

// A FloatStore in memory.
class MemoryFloatStore : public FloatStore {
 public:
  void append(std::span<const float> values) override;
  void read(std::span<float> values) override;

 private:
  std::vector<float> values_;
  size_t read_ = 0;
};

// Makes the store of one evaluation; empty: a MemoryFloatStore.
using FloatStoreFactory = std::function<std::unique_ptr<FloatStore>()>;

// `limit` sample indices spread evenly over `size` (all of them when limit is 0 or larger): an
// image folder is sorted by class, so a prefix would miss whole classes.
std::vector<size_t> spread_indices(size_t size, int64_t limit);

// Calls fn(inputs, labels, count) for the samples `indices` of `data` in batches of `batch`,
// advancing `progress`. With `pad` the inputs always have `batch` rows (rows past `count` repeat
// the last sample, for a model whose batch is fixed); without, the last batch has only `count`
// rows. labels is empty for unlabelled data. The caller finishes `progress`.
using BatchFn = std::function<void(std::span<const kernels::Tensor> inputs,
                                   const std::vector<int64_t>& labels, size_t count)>;
void for_each_batch(const SampleSource& data, std::span<const size_t> indices, int64_t batch,
                    bool pad, ProgressBar& progress, const BatchFn& fn);

// factory(label, total), or a bar that shows nothing when the factory is empty.
std::unique_ptr<ProgressBar> make_progress(const ProgressFactory& factory, std::string_view label,
                                           size_t total);

}  // namespace qforge::quant

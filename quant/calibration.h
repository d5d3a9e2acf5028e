// Calibration statistics: forward passes of the fused graph over the caller's batches, with a
// HistogramObserver (which also keeps the exact max) tapped at every activation point
// (streaming: no activation is kept), then amax per point by the chosen calibrator. Weight ranges
// come from the constants (per channel, after batch norm folding).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"
#include "quant/calibrators.h"
#include "quant/observed_pass.h"
#include "quant/observers.h"
#include "quant/placement.h"

namespace qforge::quant {

struct CalibrationOptions {
  int64_t histogram_bins = 2048;
  // The forward pass runs at one batch size only and its weights are released as its kernels
  // prepare them (runtime::ExecutorOptions::release_prepared_constants): with the caller
  // holding no other copy of the model, the float weights leave memory. Weight ranges are
  // taken before.
  bool release_weights = false;
};

// What the guarded entropy calibrator chose for a point: entropy's threshold, or max where
// that threshold would clip too much (CalibrationStats::entropy_choice).
struct EntropyChoice {
  double amax = 0;
  bool fell_back_to_max = false;
};

class CalibrationStats {
 public:
  // `fused`: a transformed graph, modules not lowered, copied (its constants shared) or taken;
  // `plan` from place_qdq on it.
  CalibrationStats(const graph::Graph& fused, QuantPlan plan, CalibrationOptions options = {});
  CalibrationStats(std::unique_ptr<graph::Graph> fused, QuantPlan plan,
                   CalibrationOptions options = {});
  ~CalibrationStats();
  CalibrationStats(const CalibrationStats&) = delete;
  CalibrationStats& operator=(const CalibrationStats&) = delete;

  // Runs one batch (a tensor per model input, any batch size) and feeds every point's
  // observers. Invalid error naming the point when an activation holds NaN or Inf.
  void observe_batch(std::span<const kernels::Tensor> inputs);
  void observe_batch(const kernels::Tensor& input) { observe_batch({&input, 1}); }
  // Folds in statistics of the same plan gathered elsewhere; exact (histograms merge exactly).
  void merge(const CalibrationStats& other);
  // Every point's statistics and the batch count as bytes, and another process's written ones
  // of the same plan merged in: exactly what merge gives.
  void write(runtime::ByteWriter& out) const;
  void merge_written(runtime::ByteReader& in);

  const QuantPlan& plan() const { return plan_; }
  int64_t batches() const { return batches_; }
  const HistogramObserver& histogram_observer(const ActivationPoint& point) const;

  // Invalid error naming the point when no data reached it (its histogram is empty).
  // kEntropy is guarded: see entropy_choice.
  double amax_for(const ActivationPoint& point, Calibrator method, double percentile = 99.99) const;
  // Entropy's KL search can set the threshold below a whole far mode of the data: a normalised
  // image's strokes are 24% of the digits models' input values, and entropy clipped all of them
  // (amax 0.95 against a max of 2.15), costing ViT 27 points of accuracy. On the bundled models
  // one more point each in MobileNetV3 and EfficientNet clips over 1%; every other point loses
  // at most 0.1% of its values to entropy's threshold. So a threshold that clips more than
  // kEntropyMaxClipped of the observed values is not used; the point takes max instead, and
  // this says so.
  static constexpr double kEntropyMaxClipped = 0.01;
  EntropyChoice entropy_choice(const ActivationPoint& point) const;
  // amax_for every activation point, by tensor name.
  std::map<std::string, float> activation_amax(Calibrator method, double percentile = 99.99) const;
  // Max |w| per output channel of each weight point's (folded) weight, by module node name.
  const std::map<std::string, std::vector<float>>& weight_amax() const { return weight_amax_; }

 private:
  size_t index_of(const ActivationPoint& point) const;
  // The point's observer; Invalid error naming the point when no data reached it.
  const HistogramObserver& observed(const ActivationPoint& point) const;

  QuantPlan plan_;
  CalibrationOptions options_;
  std::vector<HistogramObserver> observers_;  // one per activation point, in plan order
  std::unique_ptr<ObservedPass> pass_;
  std::map<std::string, std::vector<float>> weight_amax_;
  int64_t batches_ = 0;
};

}  // namespace qforge::quant

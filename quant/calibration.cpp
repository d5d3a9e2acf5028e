#include "quant/calibration.h"

#include <cmath>

#include "kernels/error.h"

namespace qforge::quant {

CalibrationStats::CalibrationStats(const graph::Graph& fused, QuantPlan plan,
                                   CalibrationOptions options)
    : CalibrationStats(fused.clone(), std::move(plan), options) {}

CalibrationStats::CalibrationStats(std::unique_ptr<graph::Graph> fused, QuantPlan plan,
                                   CalibrationOptions options)
    : plan_(std::move(plan)), options_(options) {
  for (const ActivationPoint& p : plan_.activations) {
    if (!fused->find_value(p.tensor)) {
      throw_invalid("calibration: point '" + p.tensor + "' names no tensor of the graph");
    }
    observers_.emplace_back(HistogramObserverOptions{.bins = options_.histogram_bins});
  }
  for (const WeightPoint& w : plan_.weights) weight_amax_[w.node] = weight_channel_amax(*fused, w);
  std::vector<std::string> tensors;
  for (const ActivationPoint& p : plan_.activations) tensors.push_back(p.tensor);
  pass_ = std::make_unique<ObservedPass>(
      std::move(fused), std::move(tensors), "calibration: point", options_.release_weights,
      [this](size_t i, const kernels::Tensor& value) { observers_[i].observe(value); });
}

CalibrationStats::~CalibrationStats() = default;

void CalibrationStats::observe_batch(std::span<const kernels::Tensor> inputs) {
  pass_->run(inputs);
  ++batches_;
}

void CalibrationStats::merge(const CalibrationStats& other) {
  if (other.plan_.activations.size() != plan_.activations.size()) {
    throw_invalid("calibration: merging statistics of a different placement");
  }
  for (size_t i = 0; i < observers_.size(); ++i) {
    if (other.plan_.activations[i].tensor != plan_.activations[i].tensor) {
      throw_invalid("calibration: merging statistics of a different placement (point '" +
                    plan_.activations[i].tensor + "')");
    }
    observers_[i].merge(other.observers_[i]);
  }
  batches_ += other.batches_;
}

void CalibrationStats::write(runtime::ByteWriter& out) const {
  out.put<uint64_t>(observers_.size());
  for (const HistogramObserver& o : observers_) o.write(out);
  out.put(batches_);
}

void CalibrationStats::merge_written(runtime::ByteReader& in) {
  if (in.get<uint64_t>() != observers_.size()) {
    throw_internal("calibration: merging written statistics of a different placement");
  }
  for (HistogramObserver& o : observers_) o.merge_written(in);
  batches_ += in.get<int64_t>();
}

size_t CalibrationStats::index_of(const ActivationPoint& point) const {
  for (size_t i = 0; i < plan_.activations.size(); ++i) {
    if (plan_.activations[i].tensor == point.tensor) return i;
  }
  throw_invalid("calibration: point '" + point.tensor + "' is not in the placement");
}

const HistogramObserver& CalibrationStats::histogram_observer(const ActivationPoint& point) const {
  return observers_[index_of(point)];
}

double CalibrationStats::amax_for(const ActivationPoint& point, Calibrator method,
                                  double percentile) const {
  const HistogramObserver& obs = observed(point);
  // The running max is exact; the histogram's max edge only bounds it.
  if (method == Calibrator::kMax) return obs.max();
  if (method == Calibrator::kEntropy) return entropy_choice(point).amax;
  CalibratorOptions options;
  options.method = method;
  options.percentile = percentile;
  return calibrate_amax(obs.histogram(), options).amax;
}

EntropyChoice CalibrationStats::entropy_choice(const ActivationPoint& point) const {
  const HistogramObserver& obs = observed(point);
  const Histogram h = obs.histogram();
  const double amax = entropy_amax(h).amax;
  // Bins wholly above the threshold: the clipped values (entropy's thresholds are bin edges).
  double above = 0;
  for (int64_t j = h.bins() - 1; j >= 0 && h.edge(j) >= amax; --j) {
    above += h.counts[static_cast<size_t>(j)];
  }
  if (above > kEntropyMaxClipped * h.total()) return {static_cast<double>(obs.max()), true};
  return {amax, false};
}

const HistogramObserver& CalibrationStats::observed(const ActivationPoint& point) const {
  const HistogramObserver& obs = observers_[index_of(point)];
  if (obs.total() == 0) {
    throw_invalid("calibration: point '" + point.tensor + "': no calibration data reached it");
  }
  return obs;
}

std::map<std::string, float> CalibrationStats::activation_amax(Calibrator method,
                                                               double percentile) const {
  std::map<std::string, float> out;
  for (const ActivationPoint& p : plan_.activations) {
    out[p.tensor] = static_cast<float>(amax_for(p, method, percentile));
  }
  return out;
}

}  // namespace qforge::quant

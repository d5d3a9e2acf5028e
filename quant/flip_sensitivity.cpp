// Flip injection (quant/flip_sensitivity.h) through executor taps: a tap on the chosen point's
// pre-quant value reads the element, a tap on its integer output moves it before the readers run.
#include "quant/flip_sensitivity.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "quant/verify.h"
#include "runtime/executor.h"
#include "runtime/fuse_epilogues.h"
#include "runtime/resolve.h"

namespace qforge::quant {
namespace {

using kernels::DType;
using kernels::Tensor;

// The largest relative L2 change of one sample's output row. A point's tensor need not be laid
// out batch first (attention heads, windows), so the changed sample is found in the output.
double max_row_relative_l2(const Tensor& got, const Tensor& ref) {
  const int64_t rows = ref.dim(0);
  const int64_t per_row = ref.numel() / rows;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = got.data<float>() + r * per_row;
    const float* b = ref.data<float>() + r * per_row;
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < per_row; ++i) {
      const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
      diff += d * d;
      norm += static_cast<double>(b[i]) * static_cast<double>(b[i]);
    }
    worst = std::max(worst, norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff));
  }
  return worst;
}

// The value at fraction `q` of sorted `v` (linear interpolation between ranks).
double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

FlipSensitivity flip_sensitivity(const graph::Graph& model, const Tensor& input,
                                 const FlipSensitivityOptions& options) {
  // The clone shares the caller's weights: releasing them from it leaves the caller's intact.
  return flip_sensitivity(model.clone(), input, options);
}

FlipSensitivity flip_sensitivity(std::unique_ptr<graph::Graph> model, const Tensor& input,
                                 const FlipSensitivityOptions& options) {
  graph::Graph& g = *model;
  runtime::resolve(g, {.input_shapes = {{g.inputs().at(0)->name(), input.shape()}}});
  runtime::fuse_conv_epilogues(g);
  const std::vector<const graph::Node*> points = activation_quantizers(g);
  if (points.empty()) throw_invalid("flip sensitivity: the model has no activation Q/DQ point");
  if (g.outputs().empty() || g.outputs()[0]->dtype() != DType::kFloat32) {
    throw_invalid("flip sensitivity: expected a float32 first output");
  }
  // Each point's scales and zero points, read before the executor may release constants.
  std::vector<std::vector<float>> point_scales;
  std::vector<std::vector<int64_t>> point_zero_points;
  for (const graph::Node* q : points) {
    point_scales.push_back(q->input(1)->constant().to_float_vector());
    point_zero_points.push_back(q->input(2) ? q->input(2)->constant().to_int64_vector()
                                            : std::vector<int64_t>{});
  }
  runtime::Executor executor(g, {.release_prepared_constants = true});
  const std::span<const Tensor> in(&input, 1);
  const Tensor baseline = executor.run(in)[0].clone();

  FlipSensitivity result;
  result.points = static_cast<int64_t>(points.size());
  std::mt19937_64 rng(options.seed);
  for (int64_t k = 0; k < options.injections; ++k) {
    const size_t point = rng() % points.size();
    const graph::Node& q = *points[point];
    const graph::Value& out = *q.output(0);
    const int64_t numel = kernels::shape_numel(out.known_shape());
    const auto element = static_cast<int64_t>(rng() % static_cast<uint64_t>(numel));
    const std::vector<float>& scales = point_scales[point];
    int64_t channel = 0;
    if (scales.size() > 1) {
      const graph::Shape& s = out.known_shape();
      int64_t axis = q.attr_int("axis", 1);
      if (axis < 0) axis += static_cast<int64_t>(s.size());
      int64_t inner = 1;
      for (size_t d = static_cast<size_t>(axis) + 1; d < s.size(); ++d) inner *= s[d];
      channel = (element / inner) % s[static_cast<size_t>(axis)];
    }
    const std::vector<int64_t>& zero_points = point_zero_points[point];
    const int32_t zp =
        zero_points.empty() ? 0 : static_cast<int32_t>(zero_points[static_cast<size_t>(channel)]);
    const bool is_int8 = out.dtype() == DType::kInt8;
    const int32_t lo = is_int8 ? -128 : 0;
    const int32_t hi = is_int8 ? 127 : 255;
    double steps = 0;
    executor.clear_taps();
    executor.add_tap(q.input(0)->name(), [&](const Tensor& x) {
      steps = static_cast<double>(x.data<float>()[element]) /
              static_cast<double>(scales[static_cast<size_t>(channel)]);
    });
    executor.add_tap(out.name(), [&](const Tensor& value) {
      // The tap's view aliases the buffer the readers of the point read: the flip is written
      // there before they run.
      Tensor y = value;
      const int32_t v =
          is_int8 ? int32_t{y.data<int8_t>()[element]} : int32_t{y.data<uint8_t>()[element]};
      int32_t flipped = steps + zp >= v ? v + 1 : v - 1;
      if (flipped < lo || flipped > hi) flipped = v + (v + 1 > hi ? -1 : 1);
      if (is_int8) {
        y.data<int8_t>()[element] = static_cast<int8_t>(flipped);
      } else {
        y.data<uint8_t>()[element] = static_cast<uint8_t>(flipped);
      }
    });
    const Tensor& got = executor.run(in)[0];
    result.changes.push_back(max_row_relative_l2(got, baseline));
  }
  executor.clear_taps();
  result.injections = options.injections;
  if (!result.changes.empty()) {
    result.median = quantile(result.changes, 0.5);
    result.p90 = quantile(result.changes, 0.9);
  }
  return result;
}

}  // namespace qforge::quant

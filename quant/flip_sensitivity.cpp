// Flip injection (quant/flip_sensitivity.h) through executor taps: a tap on the chosen point's
// pre-quant value reads the element, a tap on its integer output moves it before the readers run.
#include "quant/flip_sensitivity.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <random>

#include "quant/verify.h"
#include "runtime/batch_dimension.h"
#include "runtime/executor.h"
#include "runtime/fuse_epilogues.h"
#include "runtime/resolve.h"

namespace qforge::quant {
namespace {

using kernels::DType;
using kernels::Tensor;
using qforge::ErrorKind;

// Where the samples lie in a value: its elements as [before, outer, batch, inner, after], the
// middle three being the batch axis as runtime::BatchAxis describes it (Swin's windows: batch ×
// windows; attention's tokens × batch). Rows of a batch-first value: before = outer = inner = 1.
struct SampleLayout {
  int64_t before = 1, outer = 1, batch = 1, inner = 1, after = 1;

  int64_t per_sample() const { return before * outer * inner * after; }

  // The flat index of element u (0 <= u < per_sample()) of sample b.
  int64_t element(int64_t b, int64_t u) const {
    const int64_t q = u % after;
    u /= after;
    const int64_t i = u % inner;
    u /= inner;
    const int64_t o = u % outer;
    const int64_t p = u / outer;
    return ((((p * outer + o) * batch + b) * inner + i) * after) + q;
  }
};

std::optional<SampleLayout> layout_of(const graph::Shape& shape, const runtime::BatchAxis& a,
                                      int64_t batch) {
  const auto axis = static_cast<size_t>(a.axis);
  if (axis >= shape.size() || shape[axis] != a.outer * batch * a.inner) return std::nullopt;
  SampleLayout l;
  for (size_t d = 0; d < axis; ++d) l.before *= shape[d];
  for (size_t d = axis + 1; d < shape.size(); ++d) l.after *= shape[d];
  l.outer = a.outer;
  l.batch = batch;
  l.inner = a.inner;
  return l;
}

// The rows of dim 0 as the samples: where the batch cannot be followed.
SampleLayout rows_of(const Tensor& t) {
  SampleLayout l;
  l.batch = t.dim(0);
  l.after = t.numel() / l.batch;
  return l;
}

// The relative L2 change of each sample's part of `got` against `ref`.
std::vector<double> sample_changes(const Tensor& got, const Tensor& ref, const SampleLayout& l) {
  std::vector<double> diff(static_cast<size_t>(l.batch)), norm(diff.size());
  const float* a = got.data<float>();
  const float* b = ref.data<float>();
  int64_t at = 0;
  for (int64_t p = 0; p < l.before * l.outer; ++p) {
    for (int64_t s = 0; s < l.batch; ++s) {
      double& d2 = diff[static_cast<size_t>(s)];
      double& n2 = norm[static_cast<size_t>(s)];
      for (int64_t i = 0; i < l.inner * l.after; ++i, ++at) {
        const double d = static_cast<double>(a[at]) - static_cast<double>(b[at]);
        d2 += d * d;
        n2 += static_cast<double>(b[at]) * static_cast<double>(b[at]);
      }
    }
  }
  std::vector<double> change(diff.size());
  for (size_t s = 0; s < change.size(); ++s) {
    change[s] = norm[s] > 0 ? std::sqrt(diff[s] / norm[s]) : std::sqrt(diff[s]);
  }
  return change;
}

// The value at fraction `q` of sorted `v` (linear interpolation between ranks).
double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

// The batch axis of every value of `g` (resolved at its input's batch), or nothing where
// free_batch cannot follow the batch (a model that mixes samples, or one it does not handle).
std::map<std::string, runtime::BatchAxis> batch_axes(const graph::Graph& g, int64_t batch) {
  if (batch < 2) return {};
  try {
    const std::unique_ptr<graph::Graph> probe = g.clone();
    return runtime::free_batch(*probe, batch);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kUnsupported && e.kind() != ErrorKind::kInvalid) throw;
    return {};
  }
}

// One activation point: its nodes, its quantization parameters (read before the executor may
// release constants) and, where the batch can be followed, where its samples lie.
struct Point {
  const graph::Node* q = nullptr;
  std::vector<float> scales;
  std::vector<int64_t> zero_points;
  int64_t numel = 0;
  int64_t axis = 1;  // of per-channel scales
  std::optional<SampleLayout> samples;
};

struct Injection {
  size_t point = 0;
  int64_t element = 0;
  int64_t sample = -1;  // -1 where the batch cannot be followed
};

}  // namespace

FlipSensitivity flip_sensitivity(const graph::Graph& model, std::span<const Tensor> inputs,
                                 const FlipSensitivityOptions& options) {
  // The clone shares the caller's weights: releasing them from it leaves the caller's intact.
  return flip_sensitivity(model.clone(), inputs, options);
}

FlipSensitivity flip_sensitivity(std::unique_ptr<graph::Graph> model,
                                 std::span<const Tensor> inputs,
                                 const FlipSensitivityOptions& options) {
  graph::Graph& g = *model;
  if (inputs.size() != g.inputs().size() || inputs.empty()) {
    throw_invalid("flip sensitivity: the model takes " + std::to_string(g.inputs().size()) +
                  " inputs, got " + std::to_string(inputs.size()));
  }
  runtime::ResolveOptions resolve_options;
  for (size_t i = 0; i < inputs.size(); ++i) {
    resolve_options.input_shapes[g.inputs()[i]->name()] = inputs[i].shape();
  }
  runtime::resolve(g, resolve_options);
  const int64_t batch = inputs.front().dim(0);
  const std::map<std::string, runtime::BatchAxis> axes = batch_axes(g, batch);
  runtime::fuse_conv_epilogues(g);
  const std::vector<const graph::Node*> quantizers = activation_quantizers(g);
  if (quantizers.empty()) throw_invalid("flip sensitivity: the model has no activation Q/DQ point");
  if (g.outputs().empty() || g.outputs()[0]->dtype() != DType::kFloat32) {
    throw_invalid("flip sensitivity: expected a float32 first output");
  }
  const auto layout_in = [&](const graph::Value& v) -> std::optional<SampleLayout> {
    auto it = axes.find(v.name());
    if (it == axes.end() || !v.has_shape()) return std::nullopt;
    return layout_of(v.known_shape(), it->second, batch);
  };
  std::vector<Point> points;
  bool followed = !axes.empty();  // every point's samples and the output's are known
  for (const graph::Node* q : quantizers) {
    Point p;
    p.q = q;
    p.scales = q->input(1)->constant().to_float_vector();
    if (q->input(2)) p.zero_points = q->input(2)->constant().to_int64_vector();
    p.numel = kernels::shape_numel(q->output(0)->known_shape());
    p.axis = q->attr_int("axis", 1);
    p.samples = layout_in(*q->output(0));
    followed = followed && p.samples;
    points.push_back(std::move(p));
  }
  // The outputs measured, as the evaluation compares them.
  std::vector<size_t> measured_outputs;
  std::vector<SampleLayout> output_samples;
  for (size_t k = 0; k < g.outputs().size(); ++k) {
    const graph::Value& v = *g.outputs()[k];
    if (!compared_output(k, v.dtype(), v.has_shape() ? v.known_shape() : graph::Shape{}, batch)) {
      continue;
    }
    measured_outputs.push_back(k);
    const std::optional<SampleLayout> l = layout_in(v);
    followed = followed && l;
    if (l) output_samples.push_back(*l);
  }
  const int64_t samples = options.samples > 0 ? std::min(options.samples, batch) : batch;

  // The draws, the same however the injections are then grouped into passes.
  std::mt19937_64 rng(options.seed);
  std::vector<Injection> injections;
  for (int64_t k = 0; k < options.injections; ++k) {
    Injection in;
    in.point = rng() % points.size();
    const Point& p = points[in.point];
    if (followed) {
      in.sample = k % samples;
      const auto u = static_cast<int64_t>(rng() % static_cast<uint64_t>(p.samples->per_sample()));
      in.element = p.samples->element(in.sample, u);
    } else {
      in.element = static_cast<int64_t>(rng() % static_cast<uint64_t>(p.numel));
    }
    injections.push_back(in);
  }

  runtime::Executor executor(g, {.release_prepared_constants = true});
  const std::span<const Tensor> in = inputs;
  std::vector<Tensor> baseline;
  {
    const std::span<const Tensor> run = executor.run(in);
    for (size_t k : measured_outputs) baseline.push_back(run[k].clone());
  }
  if (!followed) {
    output_samples.clear();
    for (const Tensor& t : baseline) output_samples.push_back(rows_of(t));
  }

  FlipSensitivity result;
  result.points = static_cast<int64_t>(points.size());
  result.changes.resize(injections.size());
  // Consecutive injections lie in distinct samples (k mod samples): a pass takes `samples` of
  // them where the samples are independent, one otherwise.
  const size_t per_pass = followed && !options.one_per_pass ? static_cast<size_t>(samples) : 1;
  std::vector<double> steps(per_pass);
  for (size_t first = 0; first < injections.size(); first += per_pass) {
    const size_t count = std::min(per_pass, injections.size() - first);
    executor.clear_taps();
    for (size_t j = 0; j < count; ++j) {
      const Injection& inj = injections[first + j];
      const Point& p = points[inj.point];
      const graph::Value& out = *p.q->output(0);
      int64_t channel = 0;
      if (p.scales.size() > 1) {
        const graph::Shape& s = out.known_shape();
        int64_t axis = p.axis;
        if (axis < 0) axis += static_cast<int64_t>(s.size());
        int64_t inner = 1;
        for (size_t d = static_cast<size_t>(axis) + 1; d < s.size(); ++d) inner *= s[d];
        channel = (inj.element / inner) % s[static_cast<size_t>(axis)];
      }
      const float scale = p.scales[static_cast<size_t>(channel)];
      const auto zp = p.zero_points.empty()
                          ? int32_t{0}
                          : static_cast<int32_t>(p.zero_points[static_cast<size_t>(channel)]);
      const bool is_int8 = out.dtype() == DType::kInt8;
      const int64_t element = inj.element;
      executor.add_tap(p.q->input(0)->name(), [&steps, j, element, scale](const Tensor& x) {
        steps[j] = static_cast<double>(x.data<float>()[element]) / static_cast<double>(scale);
      });
      executor.add_tap(out.name(), [&steps, j, element, zp, is_int8](const Tensor& value) {
        // The tap's view aliases the buffer the readers of the point read: the flip is written
        // there before they run.
        const int32_t lo = is_int8 ? -128 : 0;
        const int32_t hi = is_int8 ? 127 : 255;
        Tensor y = value;
        const int32_t v =
            is_int8 ? int32_t{y.data<int8_t>()[element]} : int32_t{y.data<uint8_t>()[element]};
        int32_t flipped = steps[j] + zp >= v ? v + 1 : v - 1;
        if (flipped < lo || flipped > hi) flipped = v + (v + 1 > hi ? -1 : 1);
        if (is_int8) {
          y.data<int8_t>()[element] = static_cast<int8_t>(flipped);
        } else {
          y.data<uint8_t>()[element] = static_cast<uint8_t>(flipped);
        }
      });
    }
    // Each sample's change: the largest over the measured outputs.
    const std::span<const Tensor> run = executor.run(in);
    std::vector<double> change;
    for (size_t m = 0; m < measured_outputs.size(); ++m) {
      const std::vector<double> c =
          sample_changes(run[measured_outputs[m]], baseline[m], output_samples[m]);
      if (change.empty()) {
        change = c;
      } else {
        for (size_t r = 0; r < std::min(c.size(), change.size()); ++r) {
          change[r] = std::max(change[r], c[r]);
        }
        // Rows of outputs where the batch is not followed need not be as many as output 0's.
        for (size_t r = change.size(); r < c.size(); ++r) change.push_back(c[r]);
      }
    }
    ++result.passes;
    for (size_t j = 0; j < count; ++j) {
      result.changes[first + j] = per_pass > 1
                                      ? change[static_cast<size_t>(injections[first + j].sample)]
                                      : *std::max_element(change.begin(), change.end());
    }
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

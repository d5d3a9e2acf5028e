// SmoothQuant (see smoothquant.h). Which modules can absorb the factors is read from the Q/DQ
// placement (their per-channel weight point and its axis); the consumer kinds are listed once
// below because absorbing needs a weight that contracts the activation's last axis.
#include "quant/smoothquant.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "kernels/error.h"
#include "quant/placement.h"

namespace qforge::quant {
namespace {

using graph::Node;
using graph::Value;
using kernels::DType;
using kernels::Tensor;

// Modules computing x · W over the last axis of input 0 with a constant 2-D weight.
constexpr std::array<std::string_view, 3> kAbsorbingModules = {"Linear", "LinearAct",
                                                               "MHAInProjection"};

bool is_float_constant(const Value* v) {
  return v && v->is_constant() && v->dtype() == DType::kFloat32;
}

// A constant holding one value per channel: [C] or [1, …, 1, C].
bool is_channel_vector(const Value* v, int64_t channels) {
  if (!is_float_constant(v)) return false;
  const Tensor& t = v->constant();
  return t.rank() >= 1 && t.numel() == channels && t.dim(-1) == channels;
}

// A maximum that can enter a power: positive, normal and finite.
bool usable_max(float m) {
  return m >= std::numeric_limits<float>::min() && m <= std::numeric_limits<float>::max();
}

// The LayerNorm `n` as a site, or the reason it cannot be one.
std::variant<SmoothQuantSite, std::string> site_of(
    const Node& n, const std::map<std::string, const WeightPoint*>& wp) {
  const Value* out = n.output(0);
  if (out->is_graph_output()) return "its output '" + out->name() + "' is a graph output";
  if (!out->has_shape() || out->shape()->empty()) {
    return "its output '" + out->name() + "' has no known shape";
  }
  const auto rank = static_cast<int64_t>(out->shape()->size());
  int64_t axis = n.attr_int("axis", -1);
  if (axis < 0) axis += rank;
  if (axis != rank - 1) {
    return "it normalizes from axis " + std::to_string(n.attr_int("axis", -1)) +
           ", not the last axis alone";
  }
  const int64_t channels = out->shape()->back();
  if (!is_channel_vector(n.input(1), channels) ||
      (n.input(2) && !is_channel_vector(n.input(2), channels))) {
    return "its scale and bias are not constant vectors of " + std::to_string(channels) +
           " channels";
  }
  if (out->consumers().empty()) return "its output '" + out->name() + "' has no reader";

  SmoothQuantSite site{.layer_norm = n.name(), .tensor = out->name(), .channels = channels};
  // The modules reading `v`, through Reshapes that keep the last axis (GPT-2's Conv1D flattens
  // [B, T, C] to [B·T, C] for its Gemm): element i is channel i mod C on both sides.
  std::vector<std::pair<const Value*, const Node*>> reads;
  for (const Node* reader : out->consumers()) reads.emplace_back(out, reader);
  for (size_t r = 0; r < reads.size(); ++r) {
    const Value* v = reads[r].first;
    const Node* reader = reads[r].second;
    const bool seen =
        std::any_of(site.consumers.begin(), site.consumers.end(),
                    [&](const SmoothQuantConsumer& c) { return c.node == reader->name(); });
    if (seen) continue;
    const std::string prefix =
        "its output '" + out->name() + "' is read by " + reader->label() + ", which ";
    if (reader->op_type() == "Reshape" && reader->input(0) == v) {
      const Value* reshaped = reader->output(0);
      if (reshaped->is_graph_output() || !reshaped->has_shape() || reshaped->shape()->empty() ||
          reshaped->shape()->back() != channels) {
        return prefix + "does not keep its last axis of " + std::to_string(channels) + " channels";
      }
      for (const Node* next : reshaped->consumers()) reads.emplace_back(reshaped, next);
      continue;
    }
    if (std::find(kAbsorbingModules.begin(), kAbsorbingModules.end(), reader->op_type()) ==
        kAbsorbingModules.end()) {
      return prefix + "cannot absorb the factors (only Linear, LinearAct and MHAInProjection can)";
    }
    for (size_t i = 1; i < reader->num_inputs(); ++i) {
      if (reader->input(i) == v) return prefix + "reads it at input " + std::to_string(i);
    }
    auto it = wp.find(reader->name());
    if (it == wp.end()) return prefix + "has no quantized constant weight";
    const WeightPoint& point = *it->second;
    const Value* w = reader->input(static_cast<size_t>(point.input));
    if (!is_float_constant(w) || w->constant().rank() != 2 || point.axis < 0 || point.axis > 1) {
      return prefix + "has no 2-D constant weight";
    }
    const int input_axis = 1 - point.axis;
    if (w->constant().dim(input_axis) != channels) {
      return prefix + "has a weight " + w->constant().describe() + " whose input axis is not " +
             std::to_string(channels) + " channels";
    }
    site.consumers.push_back(
        {.node = reader->name(), .weight_input = point.input, .input_axis = input_axis});
  }
  return site;
}

// One constant input slot that folding rewrites.
struct ConstantUse {
  Node* node;
  size_t input;
};

// Replaces the constant read at `uses` (all of one value) by `scaled`: in place when nothing
// else reads the value, else through a copy that only `uses` read.
void replace_constant(graph::Graph& g, Value* v, const std::vector<ConstantUse>& uses,
                      Tensor scaled) {
  size_t reads = 0;
  for (const Node* reader : v->consumers()) {
    for (const Value* in : reader->inputs()) reads += in == v;
  }
  if (reads == uses.size() && !v->is_graph_output() && !v->is_graph_input()) {
    v->set_constant(std::move(scaled));
    return;
  }
  Value* copy = g.add_constant(g.unique_value_name(v->name() + "_smoothed"), std::move(scaled));
  for (const ConstantUse& u : uses) g.set_input(u.node, u.input, copy);
}

// t / factors (divide) or t · factors (multiply) along `axis` of a contiguous float tensor.
Tensor scaled_along(const Tensor& t, int axis, std::span<const float> factors, bool divide) {
  Tensor out(DType::kFloat32, t.shape());
  const int64_t channels = t.dim(axis);
  int64_t inner = 1;
  for (int d = axis + 1; d < t.rank(); ++d) inner *= t.dim(d);
  const int64_t outer = t.numel() / (channels * inner);
  const float* src = t.data<float>();
  float* dst = out.data<float>();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t c = 0; c < channels; ++c) {
      const double s = factors[static_cast<size_t>(c)];
      const int64_t base = (o * channels + c) * inner;
      for (int64_t k = 0; k < inner; ++k) {
        const double x = src[base + k];
        dst[base + k] = static_cast<float>(divide ? x / s : x * s);
      }
    }
  }
  return out;
}

Node& site_node(const graph::Graph& g, const std::string& name) {
  Node* n = g.find_node(name);
  if (!n) throw_invalid("smoothquant: node '" + name + "' is not in the graph");
  return *n;
}

}  // namespace

SmoothQuantSites find_smoothquant_sites(const graph::Graph& fused) {
  const QuantPlan plan = place_qdq(fused);
  std::map<std::string, const WeightPoint*> weight_points;
  for (const WeightPoint& w : plan.weights) weight_points[w.node] = &w;
  SmoothQuantSites out;
  for (const Node* n : fused.nodes()) {
    if (n->op_type() != "LayerNorm" && n->op_type() != "RMSNorm") continue;
    auto site = site_of(*n, weight_points);
    if (auto* reason = std::get_if<std::string>(&site)) {
      out.refused.push_back({n->name(), std::move(*reason)});
    } else {
      out.sites.push_back(std::move(std::get<SmoothQuantSite>(site)));
    }
  }
  return out;
}

// SmoothQuantStats -------------------------------------------------------------------------------

SmoothQuantStats::SmoothQuantStats(const graph::Graph& fused, std::vector<SmoothQuantSite> sites)
    : SmoothQuantStats(fused.clone(), std::move(sites), false) {}

SmoothQuantStats::SmoothQuantStats(std::unique_ptr<graph::Graph> fused,
                                   std::vector<SmoothQuantSite> sites, bool release_weights)
    : sites_(std::move(sites)), observers_(sites_.size()) {
  for (const SmoothQuantSite& s : sites_) {
    if (!fused->find_value(s.tensor)) {
      throw_invalid("smoothquant: tensor '" + s.tensor + "' of LayerNorm '" + s.layer_norm +
                    "' is not in the graph");
    }
  }
  std::vector<std::string> tensors;
  for (const SmoothQuantSite& s : sites_) tensors.push_back(s.tensor);
  pass_ = std::make_unique<ObservedPass>(
      std::move(fused), std::move(tensors), "smoothquant: tensor", release_weights,
      [this](size_t i, const kernels::Tensor& value) { observers_[i].observe(value); });
}

SmoothQuantStats::~SmoothQuantStats() = default;

void SmoothQuantStats::release_forward() {
  pass_.reset();
}

void SmoothQuantStats::observe_batch(std::span<const kernels::Tensor> inputs) {
  if (!pass_) throw_internal("smoothquant: observe_batch after release_forward");
  if (sites_.empty()) return;  // nothing to tap: no forward pass needed
  pass_->run(inputs);
}

void SmoothQuantStats::merge(const SmoothQuantStats& other) {
  for (size_t i = 0; i < sites_.size(); ++i) {
    const std::string& name = sites_[i].layer_norm;
    auto it = std::find_if(other.sites_.begin(), other.sites_.end(),
                           [&](const SmoothQuantSite& s) { return s.layer_norm == name; });
    if (it == other.sites_.end()) {
      throw_invalid("smoothquant: merged statistics lack LayerNorm '" + name + "'");
    }
    observers_[i].merge(other.observers_[static_cast<size_t>(it - other.sites_.begin())]);
  }
}

void SmoothQuantStats::write(runtime::ByteWriter& out) const {
  out.put<uint64_t>(sites_.size());
  for (size_t i = 0; i < sites_.size(); ++i) {
    out.put_string(sites_[i].layer_norm);
    observers_[i].write(out);
  }
}

void SmoothQuantStats::merge_written(runtime::ByteReader& in) {
  if (in.get<uint64_t>() != sites_.size()) {
    throw_internal("smoothquant: merging written statistics of other sites");
  }
  for (size_t i = 0; i < sites_.size(); ++i) {
    if (in.get_string() != sites_[i].layer_norm) {
      throw_internal("smoothquant: merging written statistics of other sites (LayerNorm '" +
                     sites_[i].layer_norm + "')");
    }
    observers_[i].merge_written(in);
  }
}

std::span<const float> SmoothQuantStats::activation_amax(size_t index) const {
  return observers_.at(index).channel_amax();
}

// Factors and folding ----------------------------------------------------------------------------

std::vector<float> smoothing_factors(std::span<const float> x_amax, std::span<const float> w_amax,
                                     const SmoothQuantOptions& options) {
  if (!(options.alpha >= 0.0 && options.alpha <= 1.0)) {
    throw_invalid("smoothquant: expected alpha in [0, 1], got " + std::to_string(options.alpha));
  }
  if (!(options.min_factor > 0.0 && options.min_factor <= 1.0 && options.max_factor >= 1.0 &&
        std::isfinite(options.max_factor))) {
    throw_invalid("smoothquant: expected 0 < min_factor <= 1 <= max_factor < inf");
  }
  if (x_amax.size() != w_amax.size()) {
    throw_invalid("smoothquant: expected as many weight channels as activation channels (" +
                  std::to_string(x_amax.size()) + "), got " + std::to_string(w_amax.size()));
  }
  std::vector<float> s(x_amax.size(), 1.0f);
  for (size_t j = 0; j < s.size(); ++j) {
    if (!usable_max(x_amax[j]) || !usable_max(w_amax[j])) continue;
    const double f = std::pow(static_cast<double>(x_amax[j]), options.alpha) /
                     std::pow(static_cast<double>(w_amax[j]), 1.0 - options.alpha);
    s[j] = static_cast<float>(std::clamp(f, options.min_factor, options.max_factor));
  }
  return s;
}

std::vector<float> weight_input_amax(const graph::Graph& fused, const SmoothQuantSite& site) {
  std::vector<float> amax(static_cast<size_t>(site.channels), 0.0f);
  for (const SmoothQuantConsumer& c : site.consumers) {
    const Node& n = site_node(fused, c.node);
    const Value* w = n.input(static_cast<size_t>(c.weight_input));
    if (!is_float_constant(w) || w->constant().rank() != 2 ||
        w->constant().dim(c.input_axis) != site.channels) {
      throw_invalid("smoothquant: " + n.label() + ": expected a 2-D float weight with " +
                    std::to_string(site.channels) + " input channels on axis " +
                    std::to_string(c.input_axis));
    }
    const Tensor& t = w->constant();
    const float* p = t.data<float>();
    const int64_t rows = t.dim(0), cols = t.dim(1);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < cols; ++k) {
        float& m = amax[static_cast<size_t>(c.input_axis == 0 ? r : k)];
        m = std::max(m, std::fabs(p[r * cols + k]));
      }
    }
  }
  return amax;
}

void fold_smoothing(graph::Graph& fused, const SmoothQuantSite& site,
                    std::span<const float> factors) {
  if (static_cast<int64_t>(factors.size()) != site.channels) {
    throw_invalid("smoothquant: LayerNorm '" + site.layer_norm + "': expected " +
                  std::to_string(site.channels) + " factors, got " +
                  std::to_string(factors.size()));
  }
  // Group the rewritten slots by constant (and axis), so that a constant read twice is scaled
  // once.
  struct Edit {
    int axis;
    bool divide;
    std::vector<ConstantUse> uses;
  };
  std::map<std::pair<Value*, int>, Edit> edits;
  Node& norm = site_node(fused, site.layer_norm);
  for (size_t i : {size_t{1}, size_t{2}}) {
    Value* v = norm.input(i);
    if (!v) continue;
    const int axis = v->constant().rank() - 1;
    edits[{v, -1}].axis = axis;
    edits[{v, -1}].divide = true;
    edits[{v, -1}].uses.push_back({&norm, i});
  }
  for (const SmoothQuantConsumer& c : site.consumers) {
    Node& n = site_node(fused, c.node);
    Value* v = n.input(static_cast<size_t>(c.weight_input));
    Edit& e = edits[{v, c.input_axis}];
    e.axis = c.input_axis;
    e.divide = false;
    e.uses.push_back({&n, static_cast<size_t>(c.weight_input)});
  }
  for (auto& [key, e] : edits) {
    Value* v = key.first;
    replace_constant(fused, v, e.uses, scaled_along(v->constant(), e.axis, factors, e.divide));
  }
}

float SmoothQuantResult::min_factor() const {
  float m = 1.0f;
  bool any = false;
  for (const SmoothedLayerNorm& s : smoothed) {
    m = any ? std::min(m, s.min_factor) : s.min_factor;
    any = true;
  }
  return m;
}

float SmoothQuantResult::max_factor() const {
  float m = 1.0f;
  bool any = false;
  for (const SmoothedLayerNorm& s : smoothed) {
    m = any ? std::max(m, s.max_factor) : s.max_factor;
    any = true;
  }
  return m;
}

SmoothQuantResult apply_smoothquant(graph::Graph& fused, const SmoothQuantStats& stats,
                                    const SmoothQuantOptions& options,
                                    std::vector<SmoothQuantRefusal> refused) {
  SmoothQuantResult result;
  result.alpha = options.alpha;
  result.refused = std::move(refused);
  for (size_t i = 0; i < stats.sites().size(); ++i) {
    const SmoothQuantSite& site = stats.sites()[i];
    const std::span<const float> x = stats.activation_amax(i);
    if (x.empty()) {
      throw_invalid("smoothquant: LayerNorm '" + site.layer_norm +
                    "': no calibration data reached it");
    }
    const std::vector<float> w = weight_input_amax(fused, site);
    SmoothedLayerNorm s{.layer_norm = site.layer_norm, .factors = smoothing_factors(x, w, options)};
    for (const SmoothQuantConsumer& c : site.consumers) s.consumers.push_back(c.node);
    const auto [lo, hi] = std::minmax_element(s.factors.begin(), s.factors.end());
    s.min_factor = *lo;
    s.max_factor = *hi;
    for (size_t j = 0; j < x.size(); ++j) {
      s.unit_channels += !usable_max(x[j]) || !usable_max(w[j]);
    }
    fold_smoothing(fused, site, s.factors);
    result.smoothed.push_back(std::move(s));
  }
  return result;
}

void fold_smoothing(graph::Graph& fused, const SmoothQuantResult& result) {
  const SmoothQuantSites found = find_smoothquant_sites(fused);
  for (const SmoothedLayerNorm& s : result.smoothed) {
    auto it =
        std::find_if(found.sites.begin(), found.sites.end(),
                     [&](const SmoothQuantSite& site) { return site.layer_norm == s.layer_norm; });
    bool same = it != found.sites.end() && it->consumers.size() == s.consumers.size();
    for (size_t k = 0; same && k < s.consumers.size(); ++k) {
      same = it->consumers[k].node == s.consumers[k];
    }
    if (!same) {
      throw_invalid("smoothquant: LayerNorm '" + s.layer_norm +
                    "' is not a smoothable LayerNorm with the same consumers in this graph");
    }
    fold_smoothing(fused, *it, s.factors);
  }
}

}  // namespace qforge::quant

// SmoothQuant on a fused graph: every LayerNorm or RMSNorm module whose output feeds only linear
// modules with a constant weight (Linear, LinearAct, MHAInProjection; directly, or through
// Reshapes that keep the last axis) gets per-channel factors s_j = max|X_j|^α / max|W_j|^(1−α),
// folded as γ_j / s_j, β_j / s_j into the norm (an RMSNorm has no β) and W[j, :] · s_j into every
// consumer's input column j. The float model stays equivalent; the
// activation range moves into the weights, which are quantized per output channel.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"
#include "quant/observed_pass.h"
#include "quant/observers.h"

namespace qforge::quant {

// A module reading a LayerNorm output, and where its weight's input channels lie.
struct SmoothQuantConsumer {
  std::string node;
  int weight_input = 1;
  int input_axis = 0;  // axis of the 2-D weight indexed by input channel ([K, N]: 0; [N, K]: 1)
};

// One LayerNorm that can be smoothed, with the modules reading its output.
struct SmoothQuantSite {
  std::string layer_norm;                      // LayerNorm node name
  std::string tensor;                          // its output, where the statistics are tapped
  std::vector<SmoothQuantConsumer> consumers;  // in graph order
  int64_t channels = 0;                        // size of the normalized (last) axis
};

// A LayerNorm that stays as it is, and why.
struct SmoothQuantRefusal {
  std::string layer_norm;
  std::string reason;
};

struct SmoothQuantSites {
  std::vector<SmoothQuantSite> sites;  // in graph order
  std::vector<SmoothQuantRefusal> refused;
};

// Finds the LayerNorms of `fused` (a transformed graph, modules not lowered) that can be
// smoothed. A LayerNorm is refused when its output is a graph output or has a reader other than
// input 0 of a Linear, LinearAct or MHAInProjection with a constant 2-D weight, when it does not
// normalize the last axis alone, or when its γ/β are not constant vectors of that axis.
SmoothQuantSites find_smoothquant_sites(const graph::Graph& fused);

// Streaming statistics of the SmoothQuant pass: max |x| per channel of every site's LayerNorm
// output over the calibration batches. Max is exact in any order, so the result depends only
// on the set of samples, never on batch size, thread count or how statistics were merged.
class SmoothQuantStats {
 public:
  // `fused` is copied (its constants shared) or taken; `sites` from find_smoothquant_sites on
  // it. With release_weights the forward pass runs at one batch size only and releases the
  // weights as its kernels prepare them (runtime::ExecutorOptions::release_prepared_constants).
  SmoothQuantStats(const graph::Graph& fused, std::vector<SmoothQuantSite> sites);
  SmoothQuantStats(std::unique_ptr<graph::Graph> fused, std::vector<SmoothQuantSite> sites,
                   bool release_weights);
  ~SmoothQuantStats();
  SmoothQuantStats(const SmoothQuantStats&) = delete;
  SmoothQuantStats& operator=(const SmoothQuantStats&) = delete;

  // Runs one batch (a tensor per model input); Invalid error naming the tensor on NaN or Inf.
  void observe_batch(std::span<const kernels::Tensor> inputs);
  void observe_batch(const kernels::Tensor& input) { observe_batch({&input, 1}); }
  // Frees the forward pass (its weights and buffers) and keeps the statistics; observe_batch
  // is an error afterwards.
  void release_forward();
  // Folds in statistics of the same sites (by LayerNorm name) gathered elsewhere; exact.
  void merge(const SmoothQuantStats& other);
  // The statistics as bytes, and another process's written ones of the same sites merged in.
  void write(runtime::ByteWriter& out) const;
  void merge_written(runtime::ByteReader& in);

  const std::vector<SmoothQuantSite>& sites() const { return sites_; }
  // max |x| per channel of site `index` (empty before any data).
  std::span<const float> activation_amax(size_t index) const;

 private:
  std::vector<SmoothQuantSite> sites_;
  std::vector<SmoothQuantObserver> observers_;
  std::unique_ptr<ObservedPass> pass_;
};

struct SmoothQuantOptions {
  double alpha = 0.5;  // migration strength in [0, 1]
  // Factors are clamped to [min_factor, max_factor].
  double min_factor = 1e-5;
  double max_factor = 1e5;
};

// s_j = x_amax_j^α / w_amax_j^(1−α), computed in double and clamped to the options' range.
// A channel whose x or w maximum is zero, denormal or not finite keeps s_j = 1 (nothing to
// balance). Invalid error when the spans differ in length or alpha is outside [0, 1].
std::vector<float> smoothing_factors(std::span<const float> x_amax, std::span<const float> w_amax,
                                     const SmoothQuantOptions& options);

// max |W[j, :]| per input channel j over the weights of every consumer of `site`.
std::vector<float> weight_input_amax(const graph::Graph& fused, const SmoothQuantSite& site);

// Divides the site's LayerNorm γ and β by `factors` and multiplies input row/column j of every
// consumer weight by factors[j]. A constant read by nodes outside the site is not changed: the
// site gets scaled copies. Invalid error when factors.size() != site.channels.
void fold_smoothing(graph::Graph& fused, const SmoothQuantSite& site,
                    std::span<const float> factors);

struct SmoothedLayerNorm {
  std::string layer_norm;
  std::vector<std::string> consumers;
  std::vector<float> factors;
  float min_factor = 1.0f;
  float max_factor = 1.0f;
  int64_t unit_channels = 0;  // channels kept at 1 by the zero guard
};

struct SmoothQuantResult {
  double alpha = 0.5;
  std::vector<SmoothedLayerNorm> smoothed;  // in graph order
  std::vector<SmoothQuantRefusal> refused;
  // The range of every factor over every smoothed LayerNorm (1, 1 when none).
  float min_factor() const;
  float max_factor() const;
};

// Computes factors for every site of `stats` from its statistics and the weights of `fused`
// (the graph the statistics were taken on, or a copy), and folds them into `fused`.
SmoothQuantResult apply_smoothquant(graph::Graph& fused, const SmoothQuantStats& stats,
                                    const SmoothQuantOptions& options,
                                    std::vector<SmoothQuantRefusal> refused = {});

// Folds the factors of an earlier apply_smoothquant into another transform of the same model
// (e.g. one resolved at another batch size): sites are matched by LayerNorm name. Invalid error
// when a smoothed LayerNorm is not a smoothable site with the same consumers in `fused`.
void fold_smoothing(graph::Graph& fused, const SmoothQuantResult& result);

}  // namespace qforge::quant

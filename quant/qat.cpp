#include "quant/qat.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/error.h"
#include "kernels/fake_quant.h"
#include "quant/fake_quant_training.h"
#include "quant/optimizer.h"
#include "runtime/batch_dimension.h"
#include "runtime/session.h"

namespace qforge::quant {
namespace {

// FNV-1a, 64 bits: a fingerprint of what a checkpoint must match.
class Fingerprint {
 public:
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      hash_ ^= b[i];
      hash_ *= 1099511628211ull;
    }
  }
  void text(const std::string& s) {
    bytes(s.data(), s.size());
    bytes("\0", 1);
  }
  template <class T>
  void value(T v) {
    bytes(&v, sizeof v);
  }
  int64_t get() const { return static_cast<int64_t>(hash_); }

 private:
  uint64_t hash_ = 14695981039346656037ull;
};

int64_t model_fingerprint(const graph::Graph& fused, const QuantPlan& plan,
                          const ActivationAmax& amax) {
  Fingerprint f;
  for (const graph::Value* v : fused.values()) {
    if (!v->is_constant() || v->dtype() != kernels::DType::kFloat32) continue;
    f.text(v->name());
    for (int64_t d : v->known_shape()) f.value(d);
  }
  for (const ActivationPoint& p : plan.activations) {
    f.text(p.tensor);
    auto it = amax.find(p.tensor);
    f.value(it == amax.end() ? -1.0f : it->second);
  }
  for (const WeightPoint& w : plan.weights) {
    f.text(w.node);
    f.value(w.per_channel);
  }
  return f.get();
}

int64_t setup_fingerprint(const QatSetup& s, size_t samples) {
  Fingerprint f;
  f.value(s.batch);
  if (s.shards != 1) f.value(s.shards);  // runs from before shards existed keep their print
  f.value(s.epochs);
  f.value(s.steps);
  f.value(static_cast<int>(s.optimizer));
  for (double d : {s.lr, s.momentum, s.weight_decay, s.beta1, s.beta2, s.eps, s.gamma}) f.value(d);
  f.value(s.nesterov);
  f.value(static_cast<int>(s.decay));
  f.value(s.warmup_steps);
  f.value(s.step_size);
  // The default hashes as "never" did before it depended on the model (-1 is not a user's).
  f.value(s.freeze_bn_after == kFreezeBnByModel ? int64_t{-1} : s.freeze_bn_after);
  f.value(s.distill_temperature.value_or(0.0f));
  f.value(s.distill_weight);
  f.value(s.use_labels);
  if (s.label_smoothing != 0.0f) f.value(s.label_smoothing);  // earlier runs keep their print
  f.value(s.seed);
  f.value(s.learn_scales);
  f.value(s.augment_flip);
  f.value(s.augment_crop);
  f.value(s.learn_scales ? s.scale_lr : 0.0);
  f.value(samples);
  return f.get();
}

kernels::Tensor int64_scalar(int64_t v) {
  kernels::Tensor t(kernels::DType::kInt64, {});
  t.data<int64_t>()[0] = v;
  return t;
}

int64_t read_int64(const Checkpoint& c, const std::string& key) {
  auto it = c.find(key);
  if (it == c.end() || it->second.dtype() != kernels::DType::kInt64 || it->second.numel() != 1) {
    throw_invalid("qat: the checkpoint has no '" + key + "' (not a qforge qat checkpoint?)");
  }
  return it->second.data<int64_t>()[0];
}

// The sample order of one epoch: a Fisher-Yates shuffle driven by a generator seeded from the
// run's seed and the epoch, so that any epoch's order can be rebuilt on resume.
std::vector<size_t> epoch_order(size_t samples, uint64_t seed, int64_t epoch) {
  std::vector<size_t> order(samples);
  for (size_t i = 0; i < samples; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
  for (size_t i = samples; i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

std::unique_ptr<Optimizer> make_optimizer(const QatSetup& s, bool scales = false) {
  if (s.optimizer == OptimizerKind::kAdamW) {
    AdamWOptions o;
    o.lr = scales ? s.scale_lr : s.lr;
    o.beta1 = s.beta1;
    o.beta2 = s.beta2;
    o.eps = s.eps;
    o.weight_decay = scales ? 0.0 : s.weight_decay;
    o.no_weight_decay = is_vector_parameter;
    return std::make_unique<AdamW>(o);
  }
  SgdOptions o;
  o.lr = scales ? s.scale_lr : s.lr;
  o.momentum = s.momentum;
  o.nesterov = s.nesterov;
  o.weight_decay = scales ? 0.0 : s.weight_decay;
  o.no_weight_decay = is_vector_parameter;
  return std::make_unique<Sgd>(o);
}

// The first tensor that is not finite: a parameter's value or gradient, else the logits.
// The first value of `t` that is NaN or infinite; null when every one is finite.
const float* first_nonfinite(const kernels::Tensor& t) {
  for (const float& x : t.span<float>()) {
    if (!std::isfinite(x)) return &x;
  }
  return nullptr;
}

// Names the first parameter value or gradient that is not finite; else the logits.
std::string nonfinite_tensor(const runtime::TrainingExecutor& executor) {
  for (const runtime::Parameter& p : executor.parameters()) {
    if (first_nonfinite(p.value)) return "parameter '" + p.name + "'";
    if (p.grad.defined() && first_nonfinite(p.grad)) return "the gradient of '" + p.name + "'";
  }
  return "the logits";
}

// Flips and shifts each sample of `rows` [N, C, H, W] in place, as QatSetup describes;
// `scratch` holds one sample.
// `rows` are the step's samples from `first` on (a process's shards): the draws of the samples
// before them are made and dropped, so that each sample gets its draw wherever it is computed.
void augment(kernels::Tensor& rows, const QatSetup& s, int64_t step, int64_t first,
             std::vector<float>& scratch) {
  const int64_t n = rows.dim(0), c = rows.dim(1), h = rows.dim(2), w = rows.dim(3);
  const int64_t plane = h * w;
  scratch.resize(static_cast<size_t>(c * plane));
  std::mt19937_64 rng(s.seed * 0xD1B54A32D192ED03ull + static_cast<uint64_t>(step) * 2 + 1);
  const int64_t max_dy = s.augment_crop ? h / 8 : 0;
  const int64_t max_dx = s.augment_crop ? w / 8 : 0;
  struct Draw {
    bool flip;
    int64_t dy, dx;
  };
  auto draw = [&] {
    Draw d{};
    d.flip = s.augment_flip && (rng() & 1) != 0;
    if (max_dy > 0) {
      d.dy = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * max_dy + 1)) - max_dy;
    }
    if (max_dx > 0) {
      d.dx = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * max_dx + 1)) - max_dx;
    }
    return d;
  };
  for (int64_t i = 0; i < first; ++i) draw();
  for (int64_t i = 0; i < n; ++i) {
    const auto [flip, dy, dx] = draw();
    if (!flip && dy == 0 && dx == 0) continue;
    float* sample = rows.data<float>() + i * c * plane;
    std::copy(sample, sample + c * plane, scratch.begin());
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* src = scratch.data() + ch * plane;
      float* dst = sample + ch * plane;
      for (int64_t y = 0; y < h; ++y) {
        const int64_t sy = std::clamp<int64_t>(y + dy, 0, h - 1);
        for (int64_t x = 0; x < w; ++x) {
          const int64_t fx = flip ? w - 1 - x : x;
          const int64_t sx = std::clamp<int64_t>(fx + dx, 0, w - 1);
          dst[y * w + x] = src[sy * w + sx];
        }
      }
    }
  }
}

// The float model's output rows of each sample, kept the first time it runs on the sample so
// that later epochs read them instead (a sample's outputs do not depend on its batch). Sized
// by the first output kept: float32 rows of `samples` samples within kKeptSampleBytes, else
// nothing is kept.
class KeptOutputs {
 public:
  explicit KeptOutputs(size_t samples) : samples_(samples) {}

  size_t bytes() const { return rows_.size() * sizeof(float); }

  // Rows `indices` into `out` when every one is kept.
  bool read(std::span<const size_t> indices, kernels::Tensor& out) const {
    if (has_.empty() ||
        !std::all_of(indices.begin(), indices.end(), [&](size_t i) { return has_[i]; })) {
      return false;
    }
    for (size_t r = 0; r < indices.size(); ++r) {
      std::memcpy(out.data<float>() + r * row_, rows_.data() + indices[r] * row_,
                  row_ * sizeof(float));
    }
    return true;
  }

  // Keeps the rows of `out`, the outputs for `indices`.
  void keep(std::span<const size_t> indices, const kernels::Tensor& out) {
    if (refused_) return;
    if (has_.empty()) {
      row_ = static_cast<size_t>(out.numel() / out.dim(0));
      if (out.dtype() != kernels::DType::kFloat32 ||
          samples_ * row_ * sizeof(float) > kKeptSampleBytes) {
        refused_ = true;
        return;
      }
      rows_.resize(samples_ * row_);
      has_.assign(samples_, false);
    }
    for (size_t r = 0; r < indices.size(); ++r) {
      std::memcpy(rows_.data() + indices[r] * row_, out.data<float>() + r * row_,
                  row_ * sizeof(float));
      has_[indices[r]] = true;
    }
  }

 private:
  size_t samples_;
  size_t row_ = 0;
  std::vector<float> rows_;
  std::vector<bool> has_;
  bool refused_ = false;
};

}  // namespace

void check_qat_setup(const QatSetup& s) {
  auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  if (!positive(s.lr))
    throw_invalid("qat: --lr must be finite and > 0, got " + std::to_string(s.lr));
  if ((s.epochs > 0) == (s.steps > 0)) {
    throw_invalid("qat: give one of --epochs N or --steps N, each at least 1");
  }
  if (s.batch < 1) throw_invalid("qat: --batch must be at least 1");
  if (!(s.momentum >= 0 && s.momentum < 1)) throw_invalid("qat: --momentum must be in [0, 1)");
  if (!(s.weight_decay >= 0 && std::isfinite(s.weight_decay))) {
    throw_invalid("qat: --weight-decay must be finite and >= 0");
  }
  if (s.distill_temperature && !positive(*s.distill_temperature)) {
    throw_invalid("qat: --distill temperature must be finite and > 0");
  }
  if (!(s.distill_weight >= 0 && s.distill_weight <= 1)) {
    throw_invalid("qat: --distill-weight must be in [0, 1]");
  }
  if (!(s.label_smoothing >= 0 && s.label_smoothing < 1)) {
    throw_invalid("qat: --label-smoothing must be in [0, 1), got " +
                  std::to_string(s.label_smoothing));
  }
  if (s.label_smoothing != 0 && !s.use_labels) {
    throw_invalid(
        "qat: --label-smoothing smooths the labels' cross-entropy, and this run has no "
        "labels (an image folder with class subfolders and --distill-weight below 1)");
  }
  if (!s.use_labels && !s.distill_temperature) {
    throw_invalid(
        "qat: no loss: give labelled data (an image folder with class subfolders) or "
        "--distill");
  }
  if (s.shards < 1 || s.batch % s.shards != 0) {
    throw_invalid("qat: --shards must divide --batch " + std::to_string(s.batch) + " into equal " +
                  "shards, got " + std::to_string(s.shards));
  }
  if (s.checkpoint_every < 0) throw_invalid("qat: --checkpoint-every must be >= 0");
  if (s.stop_after < -1) throw_invalid("qat: --stop-after must be >= 0");
  if (s.learn_scales && !positive(s.scale_lr)) {
    throw_invalid("qat: --scale-lr must be finite and > 0, got " + std::to_string(s.scale_lr));
  }
}

int64_t checkpoint_shards(const Checkpoint& checkpoint) {
  return checkpoint.count("meta/shards") ? read_int64(checkpoint, "meta/shards") : 1;
}

void check_augmentation(const QatSetup& setup, const SampleSource& data) {
  if ((setup.augment_flip || setup.augment_crop) &&
      (data.inputs().size() != 1 || data.inputs()[0].dtype != kernels::DType::kFloat32 ||
       data.sample_shape().size() != 3)) {
    throw_invalid("qat: --augment needs one image input [N, C, H, W], the model takes " +
                  (data.inputs().size() == 1
                       ? kernels::shape_str(data.sample_shape()) + " per sample"
                       : std::to_string(data.inputs().size()) + " inputs"));
  }
}

void check_loss_for_outputs(const QatSetup& setup, const graph::Graph& model) {
  const std::vector<graph::Value*>& outputs = model.outputs();
  std::string floats;
  size_t float_count = 0;
  for (const graph::Value* out : outputs) {
    if (out->dtype() != kernels::DType::kFloat32) continue;
    floats += (floats.empty() ? "'" : ", '") + out->name() + "'";
    ++float_count;
  }
  const graph::Value* first = outputs.empty() ? nullptr : outputs.front();
  const bool logits = float_count == 1 && first->dtype() == kernels::DType::kFloat32 &&
                      first->has_shape() && first->shape()->size() == 2;
  if (logits) return;
  if (!setup.use_labels && setup.distill_temperature) {
    if (*setup.distill_temperature != 1.0f) {
      char temperature[32];
      std::snprintf(temperature, sizeof temperature, "%g", *setup.distill_temperature);
      throw_invalid(std::string("qat: --distill ") + temperature +
                    ": the model has no logits, and its outputs are distilled by their relative "
                    "squared error, which has no temperature; give --distill alone");
    }
    return;
  }
  const std::string remedy =
      ", which labels need: train it with --distill alone (--distill-weight 1), which distills "
      "each of its outputs";
  if (float_count > 1) {
    throw_invalid("qat: the model has " + std::to_string(float_count) + " float outputs (" +
                  floats + "), no logits [batch, classes] alone" + remedy);
  }
  throw_invalid("qat: the model's output '" + (first ? first->name() : std::string()) + "' " +
                (first && first->has_shape()
                     ? "of " + std::to_string(first->shape()->size()) + " dims"
                     : std::string("of unknown shape")) +
                " is no logits [batch, classes]" + remedy);
}

QatResult train_qat(graph::Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
                    const graph::Graph* teacher, const SampleSource& data, const QatSetup& setup,
                    const QatHooks& hooks, const Checkpoint* resume,
                    runtime::Communicator* processes) {
  check_qat_setup(setup);
  const int ranks = processes ? processes->size() : 1;
  if (ranks > setup.shards) {
    throw_invalid("qat: " + std::to_string(setup.shards) + " shards cannot be spread over " +
                  std::to_string(ranks) + " ranks: give --shards at least " +
                  std::to_string(ranks) + " (a divisor of --batch)");
  }
  const int64_t shard_batch = setup.batch / setup.shards;
  if (fused.inputs().empty() || fused.inputs()[0]->known_shape().empty() ||
      fused.inputs()[0]->known_shape()[0] != shard_batch) {
    throw_internal("qat: the fused graph is not at the shard's batch " +
                   std::to_string(shard_batch));
  }
  const runtime::Share share = runtime::share_of(static_cast<size_t>(setup.shards),
                                                 processes ? processes->rank() : 0, ranks);
  const runtime::ShardLayout layout{.total = setup.shards,
                                    .first = static_cast<int64_t>(share.begin),
                                    .count = static_cast<int64_t>(share.end - share.begin),
                                    .processes = ranks > 1 ? processes : nullptr};
  const int64_t local_first = layout.first * shard_batch;  // in the step's batch
  const int64_t local_rows = layout.count * shard_batch;
  if (setup.use_labels && !data.labelled()) {
    throw_invalid(
        "qat: the training data has no labels for the cross-entropy: give an image "
        "folder with one subfolder per class, or --distill without labels");
  }
  if (setup.distill_temperature && !teacher) {
    throw_internal("qat: distillation without the float model");
  }
  const auto samples = static_cast<int64_t>(data.size());
  if (samples < setup.batch) {
    throw_invalid("qat: the training data holds " + std::to_string(samples) +
                  " samples, fewer than one batch of " + std::to_string(setup.batch));
  }
  QatResult result;
  result.steps_per_epoch = samples / setup.batch;
  result.steps = setup.steps > 0 ? setup.steps : setup.epochs * result.steps_per_epoch;
  LrScheduleOptions schedule_options;
  schedule_options.base_lr = setup.lr;
  schedule_options.decay = setup.decay;
  schedule_options.warmup_steps = setup.warmup_steps;
  schedule_options.total_steps = result.steps;
  schedule_options.step_size = setup.step_size;
  schedule_options.gamma = setup.gamma;
  const LrSchedule schedule(schedule_options);

  const int64_t model_id = model_fingerprint(fused, plan, amax);
  const int64_t setup_id = setup_fingerprint(setup, data.size());
  TrainingGraphOptions graph_options;
  graph_options.learn_scales = setup.learn_scales;
  // One class token for every sample, as PyTorch trains it (runtime/batch_dimension.h).
  runtime::share_batch_rows(fused);
  FakeQuantTraining made = fake_quant_training(fused, plan, amax, graph_options);
  std::unique_ptr<runtime::ClassifierTraining> training = std::move(made.training);
  if (training->dense()) check_loss_for_outputs(setup, training->graph());
  const int64_t freeze_bn_after = setup.freeze_bn_after != kFreezeBnByModel ? setup.freeze_bn_after
                                  : training->dense()                       ? 0
                                                                            : -1;
  result.freeze_bn_after = freeze_bn_after;
  if (setup.shards > 1) training->set_shards(layout);
  const std::map<std::string, std::string>& scale_parameters = made.scale_parameters;
  std::set<std::string> scale_names;
  for (const auto& [tensor, name] : scale_parameters) scale_names.insert(name);
  std::unique_ptr<Optimizer> optimizer = make_optimizer(setup);
  std::unique_ptr<Optimizer> scale_optimizer;
  if (setup.learn_scales) scale_optimizer = make_optimizer(setup, true);
  // The executor's parameters split into weights and scales (views of the same tensors),
  // rebuilt when freezing BN or cutting the batch into shards makes new executors (whose
  // parameters may sit where the old ones did, so the split is marked stale, not compared).
  std::vector<runtime::Parameter> weights;
  std::vector<runtime::Parameter> scales;
  bool split_stale = true;
  auto split = [&] {
    if (!split_stale) return;
    split_stale = false;
    std::span<runtime::Parameter> all = training->executor().parameters();
    weights.clear();
    scales.clear();
    for (const runtime::Parameter& p : all)
      (scale_names.count(p.name) ? scales : weights).push_back(p);
  };
  for (const runtime::Parameter& p : std::as_const(training->executor()).parameters()) {
    ++result.parameters;
    result.parameter_elements += static_cast<size_t>(p.value.numel());
  }

  int64_t start = 0;
  if (resume) {
    if (checkpoint_shards(*resume) != setup.shards) {
      throw_invalid("qat: the checkpoint was written with --shards " +
                    std::to_string(checkpoint_shards(*resume)) + ", the run has " +
                    std::to_string(setup.shards));
    }
    if (read_int64(*resume, "meta/model") != model_id) {
      throw_invalid("qat: the checkpoint was written for another model or calibration");
    }
    if (read_int64(*resume, "meta/setup") != setup_id) {
      throw_invalid(
          "qat: the checkpoint was written with other training options or data "
          "(batch, steps, optimizer, learning rate, schedule, BN freeze, loss, seed "
          "and sample count must match)");
    }
    start = read_int64(*resume, "meta/step");
    if (start < 0 || start > result.steps) {
      throw_invalid("qat: the checkpoint's step " + std::to_string(start) + " is outside the run");
    }
    if (freeze_bn_after >= 0 && start >= freeze_bn_after) {
      training->freeze_batch_norm();
      split_stale = true;
    }
    for (runtime::Parameter& p : training->executor().parameters()) {
      auto it = resume->find("param/" + p.name);
      if (it == resume->end() || it->second.dtype() != p.value.dtype() ||
          it->second.shape() != p.value.shape()) {
        throw_invalid("qat: the checkpoint lacks parameter '" + p.name + "' as " +
                      p.value.describe());
      }
      p.value.copy_from(it->second);
    }
    OptimizerState state;
    OptimizerState scale_state;
    for (const auto& [key, value] : *resume) {
      if (key.rfind("optim/", 0) == 0) state.emplace(key.substr(6), value);
      if (key.rfind("scale_optim/", 0) == 0) scale_state.emplace(key.substr(12), value);
    }
    optimizer->load_state(state);
    if (scale_optimizer) scale_optimizer->load_state(scale_state);
    result.resumed_at = start;
  }

  int64_t last_checkpoint = -1;
  auto kept_checkpoint = [&]() -> std::string {
    if (last_checkpoint < 0) return "";
    return "; the checkpoint of step " + std::to_string(last_checkpoint) + " is kept";
  };
  auto checkpoint = [&](int64_t steps_done) {
    Checkpoint c;
    for (const runtime::Parameter& p : std::as_const(training->executor()).parameters()) {
      c.emplace("param/" + p.name, p.value.clone());
    }
    for (auto& [key, value] : optimizer->state()) c.emplace("optim/" + key, value);
    if (scale_optimizer) {
      for (auto& [key, value] : scale_optimizer->state()) c.emplace("scale_optim/" + key, value);
    }
    c.emplace("meta/step", int64_scalar(steps_done));
    if (setup.shards != 1) c.emplace("meta/shards", int64_scalar(setup.shards));
    c.emplace("meta/model", int64_scalar(model_id));
    c.emplace("meta/setup", int64_scalar(setup_id));
    hooks.save_checkpoint(c, steps_done);
    last_checkpoint = steps_done;
  };

  std::unique_ptr<runtime::Session> teacher_session;
  if (setup.distill_temperature) {
    teacher_session = std::make_unique<runtime::Session>(teacher->clone());
  }
  // The float model's outputs for a process's rows. A model whose file takes one sample runs at
  // batch 1 (graph/sample_axis.h), so it runs them one at a time into outputs of all the rows;
  // a sample's outputs do not depend on the batch it runs in.
  const bool teacher_per_sample = teacher && teacher->added_batch_axis.any();
  std::vector<kernels::Tensor> teacher_sample;  // one row of each input
  std::vector<kernels::Tensor> teacher_rows;    // the outputs of every row
  const auto run_teacher =
      [&](std::span<const kernels::Tensor> in) -> std::span<const kernels::Tensor> {
    if (!teacher_per_sample) return teacher_session->run(in);
    const int64_t n = in.front().dim(0);
    for (int64_t r = 0; r < n; ++r) {
      teacher_sample.clear();
      for (const kernels::Tensor& t : in) teacher_sample.push_back(t.slice_rows(r, r + 1));
      const std::span<const kernels::Tensor> outs = teacher_session->run(teacher_sample);
      teacher_rows.resize(outs.size());
      for (size_t k = 0; k < outs.size(); ++k) {
        kernels::Shape shape = outs[k].shape();
        shape[0] = n;  // every output carries the added axis
        if (!teacher_rows[k].defined() || teacher_rows[k].shape() != shape) {
          teacher_rows[k] = kernels::Tensor(outs[k].dtype(), shape);
        }
        teacher_rows[k].slice_rows(r, r + 1).copy_from(outs[k]);
      }
    }
    return teacher_rows;
  };
  check_augmentation(setup, data);
  std::vector<float> augment_scratch;
  // Epochs after the first read their samples, and the float model's outputs for them, from
  // memory (QatResult::kept_sample_bytes). A sample's outputs do not depend on the batch it runs
  // in, so a run that keeps them computes what one that does not would (a run resumed with
  // nothing kept writes the uninterrupted run's bytes).
  const bool several_epochs = result.steps - start > result.steps_per_epoch;  // left to run
  std::optional<KeptSamples> kept_samples;
  if (several_epochs && KeptSamples::bytes(data, data.size()) <= kKeptSampleBytes) {
    std::vector<size_t> all(data.size());
    std::iota(all.begin(), all.end(), size_t{0});
    kept_samples.emplace(data, std::move(all));
    result.kept_sample_bytes = KeptSamples::bytes(data, data.size());
  }
  const SampleSource& source = kept_samples ? *kept_samples : data;
  std::optional<KeptOutputs> teacher_kept;
  const bool keep_teacher =
      several_epochs && teacher_session && !setup.augment_flip && !setup.augment_crop;
  if (keep_teacher && !training->dense()) teacher_kept.emplace(data.size());
  // Of a dense model, every float output is kept, or none: together within kKeptSampleBytes.
  bool keep_dense = keep_teacher && training->dense();
  std::vector<KeptOutputs> dense_kept;
  std::vector<kernels::Tensor> rows = sample_batch(data, local_rows);
  kernels::Tensor labels(kernels::DType::kInt64, {local_rows});
  kernels::Tensor teacher_logits;
  std::vector<kernels::Tensor> teacher_outputs;  // of a dense model
  std::vector<int64_t> label_list;
  std::vector<size_t> order;
  int64_t order_epoch = -1;
  const auto run_start = std::chrono::steady_clock::now();
  for (int64_t step = start; step < result.steps; ++step) {
    if (setup.stop_after >= 0 && step >= setup.stop_after) {
      if (hooks.save_checkpoint) checkpoint(step);
      result.stopped = true;
      result.last_step = step;
      return result;
    }
    const auto step_start = std::chrono::steady_clock::now();
    if (freeze_bn_after >= 0 && step == freeze_bn_after) {
      training->freeze_batch_norm();
      split_stale = true;
    }
    const int64_t epoch = step / result.steps_per_epoch;
    if (epoch != order_epoch) {
      order = epoch_order(data.size(), setup.seed, epoch);
      order_epoch = epoch;
    }
    // This process's shards of the step's batch.
    const auto first =
        static_cast<size_t>((step % result.steps_per_epoch) * setup.batch + local_first);
    const std::span<const size_t> indices(order.data() + first, static_cast<size_t>(local_rows));
    runtime::ClassifierLoss loss;
    auto load = [&] {
      source.load(indices, rows, label_list);
      if (setup.augment_flip || setup.augment_crop) {
        augment(rows.front(), setup, step, local_first, augment_scratch);
      }
      if (setup.use_labels) {
        std::memcpy(labels.data<int64_t>(), label_list.data(), label_list.size() * sizeof(int64_t));
        loss.labels = &labels;
        loss.label_smoothing = setup.label_smoothing;
      }
      if (teacher_session && training->dense()) {
        bool kept = !dense_kept.empty();
        for (size_t k = 0; kept && k < dense_kept.size(); ++k) {
          kept = !teacher_outputs[k].defined() || dense_kept[k].read(indices, teacher_outputs[k]);
        }
        if (!kept) {
          const std::span<const kernels::Tensor> outs = run_teacher(rows);
          teacher_outputs.resize(outs.size());
          size_t row_bytes = 0;
          for (size_t k = 0; k < outs.size(); ++k) {
            if (outs[k].dtype() != kernels::DType::kFloat32) continue;
            if (!teacher_outputs[k].defined()) {
              teacher_outputs[k] = kernels::Tensor(outs[k].dtype(), outs[k].shape());
            }
            teacher_outputs[k].copy_from(outs[k]);
            row_bytes += static_cast<size_t>(outs[k].numel() / outs[k].dim(0)) * sizeof(float);
          }
          if (keep_dense && dense_kept.empty()) {
            keep_dense = data.size() * row_bytes <= kKeptSampleBytes;
            if (keep_dense) dense_kept.assign(outs.size(), KeptOutputs(data.size()));
          }
          if (keep_dense) {
            result.kept_teacher_bytes = 0;
            for (size_t k = 0; k < outs.size(); ++k) {
              if (!teacher_outputs[k].defined()) continue;
              dense_kept[k].keep(indices, outs[k]);
              result.kept_teacher_bytes += dense_kept[k].bytes();
            }
          }
        }
        loss.teacher_outputs = teacher_outputs;
      } else if (teacher_session) {
        if (!teacher_kept || !teacher_kept->read(indices, teacher_logits)) {
          const kernels::Tensor out = run_teacher(rows)[0];
          if (!teacher_logits.defined()) {
            teacher_logits = kernels::Tensor(out.dtype(), out.shape());
          }
          teacher_logits.copy_from(out);
          if (teacher_kept) {
            teacher_kept->keep(indices, out);
            result.kept_teacher_bytes = teacher_kept->bytes();
          }
        }
        loss.teacher_logits = &teacher_logits;
        loss.temperature = *setup.distill_temperature;
        loss.distill_weight = setup.distill_weight;
      }
    };
    // A sample that fails to load on one rank stops every rank before the step's collectives.
    if (layout.processes) {
      runtime::collectively(*layout.processes, load);
    } else {
      load();
    }
    float value = 0;
    const double exchange_before = training->shard_group().exchange_seconds();
    const double fold_before = training->shard_group().fold_seconds();
    try {
      value = training->forward_backward(rows, loss);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kInvalid) throw;
      throw_invalid("qat: step " + std::to_string(step) + ": " + e.what() + "; lower --lr" +
                    kept_checkpoint());
    }
    if (!std::isfinite(value)) {
      throw_invalid("qat: step " + std::to_string(step) + ": the loss became " +
                    (std::isnan(value) ? "NaN" : "infinite") + " (first non-finite: " +
                    nonfinite_tensor(training->executor()) + "); lower --lr" + kept_checkpoint());
    }
    const double lr = schedule.lr(step);
    split();
    optimizer->set_lr(lr);
    optimizer->step(weights);
    if (scale_optimizer) {
      scale_optimizer->set_lr(lr / setup.lr * setup.scale_lr);
      scale_optimizer->step(scales);
      for (runtime::Parameter& p : scales) {
        float& v = p.value.data<float>()[0];
        v = std::max(v, kernels::symmetric_scale(0.0f));
      }
    }
    // A diverging update shows in the parameters before the next forward runs on them.
    for (const runtime::Parameter& p : std::as_const(training->executor()).parameters()) {
      const float* bad = p.trainable() ? first_nonfinite(p.value) : nullptr;
      if (bad) {
        throw_invalid("qat: step " + std::to_string(step) + ": parameter '" + p.name + "' became " +
                      (std::isnan(*bad) ? "NaN" : "infinite") + " in the update; lower --lr" +
                      kept_checkpoint());
      }
    }
    result.last_loss = value;
    const double exchange = training->shard_group().exchange_seconds() - exchange_before;
    const double fold = training->shard_group().fold_seconds() - fold_before;
    result.exchange_seconds += exchange;
    result.fold_seconds += fold;
    if (hooks.on_step) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
      hooks.on_step({step, epoch, result.steps_per_epoch, result.steps, value, lr, seconds,
                     training->batch_norm_frozen(), exchange, fold});
    }
    if (hooks.save_checkpoint && setup.checkpoint_every > 0 &&
        (step + 1) % setup.checkpoint_every == 0) {
      checkpoint(step + 1);
    }
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  store_trained_values(training->executor(), fused, scale_parameters);
  result.scales = learned_scales(training->executor(), scale_parameters);
  return result;
}

}  // namespace qforge::quant

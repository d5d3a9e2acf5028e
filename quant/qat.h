// Quantization-aware fine-tuning: a calibrated fused graph trained through fake quant
// (quant/fake_quant_training.h) for a number of steps over a sample source, with a seeded data
// order, an optimizer and a learning-rate schedule, BN frozen after a step, cross-entropy
// and/or distillation from the float model, checkpoints and resume. The trained values are
// written back into the fused graph, which the Q/DQ export then writes
// (quant/calibrate_pipeline.h): what is trained is what is exported. Runs are deterministic: the
// same setup gives the same bits for any thread count, and a run resumed from a checkpoint gives
// what the uninterrupted run gives.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "graph/ir.h"
#include "quant/lr_schedule.h"
#include "quant/pipeline_io.h"
#include "quant/placement.h"
#include "quant/qdq_export.h"
#include "runtime/communicator.h"

namespace qforge::quant {

enum class OptimizerKind { kSgd, kAdamW };

// QatSetup::freeze_bn_after's default: BN frozen by the kind of model (see there).
inline constexpr int64_t kFreezeBnByModel = -2;

struct QatSetup {
  int64_t batch = 32;  // samples per step; a last partial batch of an epoch is dropped
  // The batch cut into this many shards of batch / shards samples, each computed apart (by the
  // processes of a data-parallel run, or in turn by one), their sums added in shard order
  // (runtime/training.h, ShardLayout): the bits of a run depend on the shards, not on the
  // processes. The fused graph is at the shard's batch.
  int64_t shards = 1;
  int64_t epochs = 0;  // exactly one of epochs and steps is > 0
  int64_t steps = 0;
  OptimizerKind optimizer = OptimizerKind::kSgd;
  double lr = 1e-4;
  double momentum = 0.9;      // SGD
  bool nesterov = false;      // SGD
  double weight_decay = 0.0;  // never on rank-0/1 tensors (biases, BN and LayerNorm γ/β)
  double beta1 = 0.9;         // AdamW
  double beta2 = 0.999;       // AdamW
  double eps = 1e-8;          // AdamW
  LrDecay decay = LrDecay::kCosine;
  int64_t warmup_steps = 0;
  int64_t step_size = 0;  // LrDecay::kStep
  double gamma = 0.1;     // LrDecay::kStep
  // BN switches to its running statistics after this many steps (-1: never). By default
  // (kFreezeBnByModel) never for a classifier, and from the first step for a model trained by
  // distillation of outputs that are no logits (a detector's boxes and scores), which are
  // matched to a teacher running BN on its running statistics value by value.
  int64_t freeze_bn_after = kFreezeBnByModel;
  // Distillation from the float model's logits at this temperature; with labels as well the
  // loss is (1 − distill_weight)·CE + distill_weight·KL.
  std::optional<float> distill_temperature;
  float distill_weight = 0.5f;
  bool use_labels = true;  // cross-entropy against the source's labels
  // Of that cross-entropy's target, as F.cross_entropy's label_smoothing: 1 − ε on the label
  // and ε spread over all classes; in [0, 1).
  float label_smoothing = 0.0f;
  uint64_t seed = 0;             // the data order
  int64_t checkpoint_every = 0;  // steps between checkpoints (0: none)
  // LSQ: activation scales trained with the weights, by the same optimizer kind at their own
  // rate (scale_lr, following the schedule), without weight decay, kept >= the smallest
  // positive normal float. Otherwise the calibrated scales stay fixed.
  bool learn_scales = false;
  double scale_lr = 1e-4;
  // Stop once this many steps are done, writing a checkpoint (a time-boxed share of a run on a
  // preemptible machine); -1: run to the end. Not part of what a resume must match.
  int64_t stop_after = -1;
  // Light augmentation of image batches [N, C, H, W], drawn per sample from the seed and the
  // step (so a resumed run draws the same): a horizontal flip with probability 1/2, and a shift
  // of up to H/8 and W/8 pixels in each direction with the edge pixels repeated (a crop of the
  // edge-padded image back to its size).
  bool augment_flip = false;
  bool augment_crop = false;
};

// Invalid error, naming the flag, for a setup out of range (lr <= 0, no epochs or steps, …).
void check_qat_setup(const QatSetup& setup);
// Invalid error when the setup augments (flip, crop) data that is not one image input
// [N, C, H, W]; train_qat checks it, and a caller may before any work.
void check_augmentation(const QatSetup& setup, const SampleSource& data);

// Invalid error when the setup needs logits (labels, or no distillation) and `model` has none:
// its first output is not [batch, classes] float32 (its rank tells, resolved or not), or it has
// several float outputs (a detector's). Such a model trains by distillation of its outputs
// alone, by their relative squared error, which has no temperature: a temperature other than 1
// is an Invalid error too. train_qat checks it, and a caller may before any work.
void check_loss_for_outputs(const QatSetup& setup, const graph::Graph& model);

// What a checkpoint holds, by name: "param/<tensor>" (every trained parameter and BN
// statistic), "optim/<key>" (the optimizer's state), "meta/step" (steps done), "meta/shards"
// (QatSetup::shards), "meta/model" and "meta/setup" (fingerprints of the calibrated model and
// of the options that must match).
using Checkpoint = std::map<std::string, kernels::Tensor>;

struct QatStep {
  int64_t step = 0;  // counted from 0
  int64_t epoch = 0;
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  float loss = 0;
  double lr = 0;
  double seconds = 0;  // this step's wall time
  bool batch_norm_frozen = false;
  // Of the step's time, the exchanges with the other ranks (their waiting included) and the sum of
  // the shards' gradients; 0 on one shard.
  double exchange_seconds = 0;
  double fold_seconds = 0;
};

struct QatHooks {
  std::function<void(const QatStep&)> on_step;
  // Writes a checkpoint (atomically: the previous one stays until the new one is complete).
  std::function<void(const Checkpoint&, int64_t step)> save_checkpoint;
};

struct QatResult {
  int64_t steps = 0;             // total steps of the run
  int64_t freeze_bn_after = -1;  // as applied (QatSetup::freeze_bn_after's default resolved)
  int64_t resumed_at = 0;        // the step a resumed run started from (0: from the start)
  int64_t steps_per_epoch = 0;
  float last_loss = 0;
  double seconds = 0;
  double exchange_seconds = 0;  // over the run's steps, as QatStep's
  double fold_seconds = 0;
  size_t parameters = 0;  // trained tensors
  size_t parameter_elements = 0;
  // With setup.learn_scales: each activation point's learned scale, for the export
  // (QdqExportOptions::activation_scales).
  ActivationScales scales;
  bool stopped = false;   // setup.stop_after ended the run early; `fused` is unchanged
  int64_t last_step = 0;  // steps done when it stopped
  // A run with more than one epoch left keeps what it reads of each sample for the epochs after
  // its first, where it fits kKeptSampleBytes: the samples as loaded (image folders are not decoded
  // again) and, for distillation without augmentation, the float model's outputs (it does not
  // run again on a sample it has seen). Bytes kept of each; 0 where nothing is kept.
  size_t kept_sample_bytes = 0;
  size_t kept_teacher_bytes = 0;
};

// Trains `fused` (a calibrated fused graph at setup.batch, from fused_graph_for_export) in place:
// on return its constants hold the trained weights and BN statistics. `teacher` is the float
// model, needed with setup.distill_temperature. `resume` continues a run from its checkpoint
// (Invalid error when it belongs to another model or other options, naming what differs).
// A loss that becomes NaN or infinite stops the run with an Invalid error naming the step and
// the tensor; the last checkpoint written stays.
// With `processes` of several ranks the run is data-parallel: each rank loads and computes the
// shards runtime::share_of gives it (ranks <= setup.shards), every rank holds the same weights
// after each step, and the result is the one process's with the same setup. Every rank calls
// it; only the hooks of one rank should write.
QatResult train_qat(graph::Graph& fused, const QuantPlan& plan, const ActivationAmax& amax,
                    const graph::Graph* teacher, const SampleSource& data, const QatSetup& setup,
                    const QatHooks& hooks = {}, const Checkpoint* resume = nullptr,
                    runtime::Communicator* processes = nullptr);

// The shard count a checkpoint was written with (1 for one written before shards existed).
int64_t checkpoint_shards(const Checkpoint& checkpoint);

}  // namespace qforge::quant

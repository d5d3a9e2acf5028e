// `qforge qat`: calibrate as `qforge calibrate` does (the same library pipeline), fine-tune the
// fused graph through fake quant, export the Q/DQ model from the trained weights, and compare
// the float, PTQ and QAT models on --val.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "quant/calibrate_pipeline.h"
#include "quant/evaluation.h"
#include "quant/int8.h"
#include "quant/qat.h"
#include "runtime/batch_dimension.h"
#include "runtime/threads.h"
#include "tools/io/atomic_file.h"
#include "tools/io/npz.h"
#include "tools/io/progress.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/input_shape.h"
#include "tools/qforge/model_output.h"
#include "tools/qforge/pipeline_adapters.h"
#include "tools/qforge/report_output.h"

namespace qforge::cli {
namespace {

struct QatOptions {
  std::string model;
  std::string data;
  std::string output;
  std::string val;
  // calibration
  std::string method = "mse";
  double percentile = 99.99;
  std::vector<std::string> skip;
  int64_t calib_limit = 0;
  bool per_tensor_weights = false;
  bool int8_weights = false;
  bool external_data = false;
  bool dynamic_batch = false;
  // training
  quant::QatSetup setup;
  std::string optimizer = "sgd";
  std::string schedule = "cosine";
  std::optional<float> distill;
  std::optional<double> smoothquant;
  std::vector<std::string> augment;
  std::string log;
  std::string report;
  std::string checkpoint;
  std::string resume;
  int threads = 0;
  bool freeze_scales = false;      // the default; the flag says it explicitly
  PreprocessOverrides preprocess;  // for --data and --val
  InputShapeFlag input_shape;
};

const char* kOptimizers = "sgd or adamw";

// JSON has no infinity or NaN: such a figure (SQNR +inf on an exact match) is written as null.
nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

nlohmann::json optional_json(const std::optional<double>& v) {
  return v ? finite_or_null(*v) : nlohmann::json(nullptr);
}

// What the training minimised, as the report and the printout name it.
const char* loss_name(const quant::QatSetup& s) {
  if (!s.distill_temperature) return "cross-entropy";
  return s.use_labels ? "cross-entropy and distillation" : "distillation";
}

// One quantized model's figures against the float model, for the report.
nlohmann::json quantized_json(const quant::Evaluation& e) {
  nlohmann::json j{{"sqnr_db", finite_or_null(e.figures.sqnr_db)},
                   {"cosine", e.figures.cosine},
                   {"kl_to_float", optional_json(e.kl_divergence)},
                   {"cross_entropy", optional_json(e.quantized_cross_entropy)}};
  j["top1"] = e.labelled ? nlohmann::json(percent(e.quantized_correct, e.samples) / 100.0)
                         : nlohmann::json(nullptr);
  j["top1_agreement"] = e.figures.top1_agreement ? nlohmann::json(*e.figures.top1_agreement)
                                                 : nlohmann::json(nullptr);
  if (!e.outputs.empty()) {
    nlohmann::json outputs = nlohmann::json::array();
    for (const quant::OutputFigures& out : e.outputs) {
      outputs.push_back({{"name", out.name},
                         {"sqnr_db", finite_or_null(out.figures.sqnr_db)},
                         {"cosine", out.figures.cosine}});
    }
    j["outputs"] = std::move(outputs);
  }
  return j;
}

void print_figure(const std::optional<double>& v, const char* format, int width) {
  if (v) {
    std::printf(format, *v);
  } else {
    std::printf("%*s", width, "-");
  }
}

// " in 2 shards of 4 on 2 ranks"; nothing for one shard.
std::string shards_text(int64_t shards, int64_t batch, int ranks) {
  if (shards == 1) return "";
  std::string text = " in " + std::to_string(shards) + " shards of ";
  text.append(std::to_string(batch / shards));
  if (ranks > 1) text.append(" on ").append(std::to_string(ranks)).append(" ranks");
  return text;
}

int run_qat(QatOptions o) {
  // On several ranks every rank calibrates and trains its share of each batch (the shards
  // runtime::share_of gives it); rank 0 alone writes, evaluates and prints.
  runtime::Communicator& comm = processes();
  set_threads_from_flag(o.threads);
  quant::QatSetup& s = o.setup;
  if (o.optimizer == "sgd") {
    s.optimizer = quant::OptimizerKind::kSgd;
  } else if (o.optimizer == "adamw") {
    s.optimizer = quant::OptimizerKind::kAdamW;
  } else {
    throw_invalid("qat: unknown --optimizer '" + o.optimizer + "' (expected " + kOptimizers + ")");
  }
  s.decay = quant::parse_lr_decay(o.schedule);
  for (const std::string& a : o.augment) {
    if (a == "flip") {
      s.augment_flip = true;
    } else if (a == "crop") {
      s.augment_crop = true;
    } else {
      throw_invalid("qat: unknown --augment '" + a + "' (expected flip, crop or both)");
    }
  }
  if (o.smoothquant && !(*o.smoothquant >= 0 && *o.smoothquant <= 1)) {
    throw_invalid("qat: --smoothquant alpha must be in [0, 1], got " +
                  std::to_string(*o.smoothquant));
  }
  s.distill_temperature = o.distill;
  const auto method = quant::calibrator_from_name(o.method);
  if (!method) {
    throw_invalid("qat: unknown --method '" + o.method +
                  "' (expected max, percentile, entropy or mse)");
  }
  std::unique_ptr<graph::Graph> model;
  // The batch the model runs at in calibration and evaluation: --batch, or 1 for a model whose
  // file takes one sample (a training step of --batch samples is then that many shards of one).
  int64_t run_batch = s.batch;
  std::string written_batch;
  std::optional<DataSource> data_source;
  std::optional<DataSource> val;
  std::optional<quant::Checkpoint> resume;
  std::unique_ptr<ModelOutput> out_file;
  std::unique_ptr<io::AtomicFile> log_file;
  std::unique_ptr<io::AtomicFile> report_file;
  // The setup is checked on every rank and agreed: a failure on one stops all.
  runtime::collectively(comm, [&] {
    std::vector<io::NamedPath> outputs = ModelOutput::paths(o.output, o.external_data);
    if (!o.log.empty()) outputs.push_back({"--log", o.log});
    if (!o.report.empty()) outputs.push_back({"--report", o.report});
    // The checkpoint is replaced as the run goes; it may be the file --resume reads.
    if (!o.checkpoint.empty()) outputs.push_back({"--checkpoint", o.checkpoint});
    const io::NamedPath inputs[] = {{"model", o.model}, {"--data", o.data}, {"--val", o.val}};
    io::check_output_paths("qat", outputs, inputs);
    if (!o.resume.empty() && o.resume != o.checkpoint) {
      const io::NamedPath resume_input[] = {{"--resume", o.resume}};
      io::check_output_paths("qat", outputs, resume_input);
    }

    model = load_model_to_run(o.model, o.input_shape, o.data);
    run_batch = batch_for(*model, s.batch);
    runtime::check_batch_export(*model, {.dynamic_batch = o.dynamic_batch});  // before any work
    written_batch = runtime::written_batch_text(*model, {.dynamic_batch = o.dynamic_batch});
    data_source.emplace(DataSource::open(o.data, *model, o.preprocess));
    const DataSource& data = *data_source;
    if (data.size() == 0) throw_invalid("qat: data '" + o.data + "' holds no samples");
    quant::check_augmentation(s, DataSamples(data));  // before calibration's work
    s.use_labels = data.labelled() && (!s.distill_temperature || s.distill_weight < 1.0f);
    quant::check_loss_for_outputs(s, *model);  // before calibration's work
    if (!data.labelled() && !s.distill_temperature) {
      throw_invalid("qat: '" + o.data +
                    "' has no labels (an image folder with one subfolder per "
                    "class, or an .npz with a 'labels' array, gives them): give --distill to "
                    "train against the float model instead");
    }
    if (!o.resume.empty()) {
      try {
        resume = io::read_npz(o.resume);
      } catch (const Error& e) {
        throw_invalid("qat: --resume '" + o.resume + "' is not a readable checkpoint: " + e.what());
      }
    }
    // The shards: as given, else the checkpoint's (a run resumes on any number of ranks), else
    // one per sample of a step for a model of one sample, else one per rank.
    if (s.shards == 0) {
      s.shards = resume                ? quant::checkpoint_shards(*resume)
                 : run_batch < s.batch ? s.batch
                                       : static_cast<int64_t>(comm.size());
    }
    if (run_batch < s.batch && s.shards != s.batch) {
      throw_invalid("qat: the model takes one sample at a time: a step of --batch " +
                    std::to_string(s.batch) + " is " + std::to_string(s.batch) +
                    " shards of one, got --shards " + std::to_string(s.shards));
    }
    quant::check_qat_setup(s);
    if (comm.size() > s.shards) {
      throw_invalid("qat: " + std::to_string(s.shards) + " shards cannot be spread over " +
                    std::to_string(comm.size()) + " ranks: give --shards at least " +
                    std::to_string(comm.size()) + " (a divisor of --batch)");
    }
    if (s.stop_after >= 0 && o.checkpoint.empty()) {
      throw_invalid("qat: --stop-after needs --checkpoint FILE to continue from");
    }
    if (s.checkpoint_every > 0 && o.checkpoint.empty()) {
      throw_invalid("qat: --checkpoint-every needs --checkpoint FILE");
    }
    if (!o.val.empty() && comm.is_root()) {
      val.emplace(DataSource::open(o.val, *model, o.preprocess));
      if (val->size() == 0) throw_invalid("qat: --val data '" + o.val + "' holds no samples");
    }
    if (comm.is_root()) {
      out_file = std::make_unique<ModelOutput>(o.output, o.external_data);
      if (!o.log.empty()) log_file = std::make_unique<io::AtomicFile>(o.log);
      if (!o.report.empty()) report_file = std::make_unique<io::AtomicFile>(o.report);
    }
  });
  const DataSource& data = *data_source;

  // 1. Calibrate exactly as `qforge calibrate` does.
  quant::CalibrationSetup calibration;
  calibration.model_name = o.model;
  calibration.batch = run_batch;
  calibration.limit = o.calib_limit;
  calibration.method = *method;
  calibration.percentile = o.percentile;
  calibration.skip = o.skip;
  calibration.per_tensor_weights = o.per_tensor_weights;
  calibration.smoothquant_alpha = o.smoothquant;
  calibration.stage = "qat";
  const quant::ModelLoader reload =
      quant::model_file(o.model, import_options_for(o.input_shape, o.data));
  quant::PipelineHooks calibration_hooks;
  if (comm.is_root()) calibration_hooks.progress = progress_bars();
  calibration_hooks.communicator = &comm;
  const quant::CalibrationResult calibrated =
      quant::calibrate(std::move(model), reload, DataSamples(data), calibration, calibration_hooks);
  // Training runs the fused graph at one shard's batch.
  quant::CalibrationSetup at_shard = calibration;
  at_shard.batch = s.batch / s.shards;
  std::unique_ptr<graph::Graph> fused =
      quant::fused_graph_for_export(reload(), at_shard, calibrated);
  quant::QdqExportOptions export_options;
  export_options.int8_weights = o.int8_weights;
  export_options.batch.dynamic_batch = o.dynamic_batch;
  // The PTQ model, kept in memory for the comparison on --val (its weights apart, as external
  // data held in memory, when the output's are: the message then stays small).
  std::string ptq_bytes;
  std::string ptq_data;
  graph::ImportOptions ptq_import = import_options_for(o.input_shape, o.data);
  if (comm.is_root()) export_options.onnx.external_data = out_file->data_name();
  if (val && comm.is_root()) {
    graph::write_onnx(
        *quant::build_qdq_graph(*fused, calibrated.plan, calibrated.amax, export_options),
        graph::append_to(ptq_bytes), export_options.onnx, graph::append_to(ptq_data));
    const std::string& name = export_options.onnx.external_data;
    if (!name.empty()) ptq_import.external_data_bytes[name] = ptq_data;
  }

  // 2. Fine-tune.
  std::unique_ptr<graph::Graph> teacher;
  if (s.distill_temperature) teacher = reload();
  std::unique_ptr<io::Progress> bar;
  double epoch_loss = 0;
  int64_t epoch_steps = 0;
  std::string log_text;
  quant::QatHooks hooks;
  if (comm.is_root())
    hooks.on_step = [&](const quant::QatStep& st) {
      const int64_t epochs = (st.total_steps + st.steps_per_epoch - 1) / st.steps_per_epoch;
      char label[160];
      if (!bar) {
        epoch_loss = 0;
        epoch_steps = 0;
        const int64_t left_in_epoch =
            std::min(st.steps_per_epoch - st.step % st.steps_per_epoch, st.total_steps - st.step);
        bar = std::make_unique<io::Progress>("epoch", static_cast<size_t>(left_in_epoch * s.batch),
                                             "img");
      }
      epoch_loss += st.loss;
      ++epoch_steps;
      std::snprintf(label, sizeof label, "epoch %lld/%lld loss %.4f lr %.3g",
                    static_cast<long long>(st.epoch + 1), static_cast<long long>(epochs),
                    epoch_loss / static_cast<double>(epoch_steps), st.lr);
      bar->set_label(label);
      bar->advance(static_cast<size_t>(s.batch));
      if (log_file) {
        nlohmann::json line{{"step", st.step},       {"epoch", st.epoch},
                            {"loss", st.loss},       {"lr", st.lr},
                            {"seconds", st.seconds}, {"bn_frozen", st.batch_norm_frozen}};
        if (s.shards > 1) {
          line["exchange_seconds"] = st.exchange_seconds;
          line["fold_seconds"] = st.fold_seconds;
        }
        log_text.append(line.dump()).append("\n");
      }
      const bool epoch_end =
          (st.step + 1) % st.steps_per_epoch == 0 || st.step + 1 == st.total_steps;
      if (epoch_end) {
        const bool drawn = bar->enabled();
        bar->finish();
        bar.reset();
        if (!drawn) {
          std::printf("epoch %lld/%lld: mean loss %.6g over %lld steps, lr %.3g\n",
                      static_cast<long long>(st.epoch + 1), static_cast<long long>(epochs),
                      epoch_loss / static_cast<double>(epoch_steps),
                      static_cast<long long>(epoch_steps), st.lr);
          std::fflush(stdout);
        }
      }
    };
  if (!o.checkpoint.empty()) {
    // Every rank holds the same state; rank 0 writes it.
    hooks.save_checkpoint = [&](const quant::Checkpoint& c, int64_t) {
      if (comm.is_root()) io::write_npz(o.checkpoint, c);
    };
  }
  const quant::QatResult trained =
      quant::train_qat(*fused, calibrated.plan, calibrated.amax, teacher.get(), DataSamples(data),
                       s, hooks, resume ? &*resume : nullptr, &comm);
  teacher.reset();
  if (!comm.is_root()) return 0;
  if (trained.stopped) {
    std::printf(
        "stopped      after step %lld of %lld (--stop-after); checkpoint %s; continue "
        "with --resume %s. No model written.\n",
        static_cast<long long>(trained.last_step), static_cast<long long>(trained.steps),
        o.checkpoint.c_str(), o.checkpoint.c_str());
    return 0;
  }

  // 3. Export from the trained weights (and learned scales), then compare on --val.
  export_options.activation_scales = trained.scales;
  const quant::ExportedModel exported =
      quant::export_qdq_model(std::move(fused), calibrated.plan, calibrated.amax, export_options,
                              out_file->model_sink(), out_file->data_sink());

  std::printf("model        %s (transformed at batch %lld: %zu conversions, %zu fusions)\n",
              o.model.c_str(), static_cast<long long>(run_batch), calibrated.conversions,
              calibrated.fusions);
  std::printf("calibration  %s, %zu samples, %s\n", o.data.c_str(), calibrated.samples,
              quant::calibrator_name(*method));
  if (calibrated.smoothing) print_smoothquant(*calibrated.smoothing);
  std::printf(
      "training     %lld steps of %lld%s (%lld per epoch%s), %s, lr %.3g %s, %zu tensors "
      "(%zu values), %.1f s, %.1f img/s\n",
      static_cast<long long>(trained.steps - trained.resumed_at), static_cast<long long>(s.batch),
      shards_text(s.shards, s.batch, comm.size()).c_str(),
      static_cast<long long>(trained.steps_per_epoch),
      trained.resumed_at > 0 ? (", resumed at step " + std::to_string(trained.resumed_at)).c_str()
                             : "",
      o.optimizer.c_str(), s.lr, o.schedule.c_str(), trained.parameters, trained.parameter_elements,
      trained.seconds,
      trained.seconds > 0
          ? static_cast<double>((trained.steps - trained.resumed_at) * s.batch) / trained.seconds
          : 0.0);
  if (trained.freeze_bn_after >= 0) {
    std::printf("batch norm   on its running statistics from step %lld%s\n",
                static_cast<long long>(trained.freeze_bn_after),
                s.freeze_bn_after == quant::kFreezeBnByModel
                    ? " (the outputs are distilled value by value; --freeze-bn-after sets it)"
                    : "");
  }
  if (trained.kept_sample_bytes > 0 || trained.kept_teacher_bytes > 0) {
    constexpr double kMiB = 1024.0 * 1024.0;
    std::printf("memory       epochs after the first read %s%s%s from memory (%.1f MiB)\n",
                trained.kept_sample_bytes > 0 ? "the samples" : "",
                trained.kept_sample_bytes > 0 && trained.kept_teacher_bytes > 0 ? " and " : "",
                trained.kept_teacher_bytes > 0 ? "the float model's outputs" : "",
                static_cast<double>(trained.kept_sample_bytes + trained.kept_teacher_bytes) / kMiB);
  }
  if (comm.size() > 1 && trained.steps > trained.resumed_at) {
    const double steps = static_cast<double>(trained.steps - trained.resumed_at);
    std::printf(
        "ranks        %d; per step %.1f ms exchanging with the other ranks (waiting included), "
        "%.1f ms adding the shards' gradients\n",
        comm.size(), 1e3 * trained.exchange_seconds / steps, 1e3 * trained.fold_seconds / steps);
  }
  std::printf("final loss   %.6g (%s", static_cast<double>(trained.last_loss), loss_name(s));
  // A smoothed cross-entropy's floor is above 0: say so.
  if (s.use_labels && s.label_smoothing > 0) {
    std::printf(", labels smoothed by %g", static_cast<double>(s.label_smoothing));
  }
  std::printf(")\n");
  if (s.learn_scales) {
    double moved = 0;
    for (const auto& [tensor, scale] : trained.scales) {
      const double calibrated_scale = quant::scale_from_amax(calibrated.amax.at(tensor));
      moved = std::max(moved, std::fabs(scale / calibrated_scale - 1.0));
    }
    std::printf("scales       %zu learned; the largest moved %.2f%% from its calibrated value\n",
                trained.scales.size(), 100.0 * moved);
  }
  nlohmann::json evaluation;  // null without --val
  if (val) {
    quant::EvaluationSetup e;
    e.batch = run_batch;
    e.flip_injections = 0;
    e.stage = "qat";
    const quant::ModelLoader ptq = [&] {
      return graph::parse_onnx(ptq_bytes, "the PTQ model", ptq_import);
    };
    e.quantized_label = "PTQ model";
    const quant::Evaluation before =
        quant::evaluate(reload, ptq, DataSamples(*val), e, progress_bars(), spill_files());
    e.quantized_label = "QAT model";
    const quant::Evaluation after = quant::evaluate(
        reload,
        quant::model_file(out_file->read_path(),
                          out_file->read_back_options(import_options_for(o.input_shape, o.data))),
        DataSamples(*val), e, progress_bars(), spill_files());
    // Cross-entropy against the labels and KL(float ‖ model) of the softmax outputs, in nats.
    std::printf("\nevaluation   %s (%zu samples)\n", o.val.c_str(), after.samples);
    std::printf("  %-6s %8s %10s %12s %10s %10s %12s\n", "model", "top-1", "CE", "KL to float",
                "SQNR (dB)", "cosine", "top-1 agree");
    auto top1 = [](const quant::Evaluation& ev, size_t correct) {
      return ev.labelled ? std::optional<double>(percent(correct, ev.samples)) : std::nullopt;
    };
    std::printf("  %-6s ", "float");
    print_figure(top1(after, after.reference_correct), "%7.2f%%", 8);
    std::printf(" ");
    print_figure(after.reference_cross_entropy, "%10.4f", 10);
    std::printf(" %12s %10s %10s %12s\n", "-", "-", "-", "-");
    for (const auto& [name, ev] : {std::pair{"PTQ", &before}, std::pair{"QAT", &after}}) {
      std::printf("  %-6s ", name);
      print_figure(top1(*ev, ev->quantized_correct), "%7.2f%%", 8);
      std::printf(" ");
      print_figure(ev->quantized_cross_entropy, "%10.4f", 10);
      std::printf(" ");
      print_figure(ev->kl_divergence, "%12.5f", 12);
      std::printf(" %10.2f %10.6f ", ev->figures.sqnr_db, ev->figures.cosine);
      print_figure(ev->figures.top1_agreement
                       ? std::optional<double>(100.0 * *ev->figures.top1_agreement)
                       : std::nullopt,
                   "%11.2f%%", 12);
      std::printf("\n");
    }
    if (!after.outputs.empty()) {
      // The SQNR above is the lowest of the model's outputs; each one's:
      int width = static_cast<int>(std::strlen("output SQNR (dB)"));
      for (const quant::OutputFigures& out : after.outputs) {
        width = std::max(width, static_cast<int>(out.name.size()));
      }
      std::printf("  %-*s %10s %10s\n", width, "output SQNR (dB)", "PTQ", "QAT");
      for (size_t k = 0; k < after.outputs.size(); ++k) {
        std::printf("  %-*s %10.2f %10.2f\n", width, after.outputs[k].name.c_str(),
                    before.outputs.at(k).figures.sqnr_db, after.outputs[k].figures.sqnr_db);
      }
    }
    if (after.labelled) {
      std::printf("accuracy     float %.2f%%, PTQ %.2f%%, QAT %.2f%% (%zu samples)\n",
                  percent(after.reference_correct, after.samples),
                  percent(before.quantized_correct, before.samples),
                  percent(after.quantized_correct, after.samples), after.samples);
    }
    evaluation = {
        {"data", o.val},
        {"samples", after.samples},
        {"labelled", after.labelled},
        {"float",
         {{"top1", after.labelled
                       ? nlohmann::json(percent(after.reference_correct, after.samples) / 100.0)
                       : nlohmann::json(nullptr)},
          {"cross_entropy", optional_json(after.reference_cross_entropy)}}},
        {"ptq", quantized_json(before)},
        {"qat", quantized_json(after)}};
  }
  // Every output is complete before any is put in place, and they are committed back to back:
  // a failure or a signal while one is prepared leaves none of them.
  if (log_file) log_file->write(log_text.data(), log_text.size());
  if (report_file) {
    nlohmann::json skip = o.skip;
    nlohmann::json report{
        {"model", o.model},
        {"output", o.output},
        {"batch", s.batch},
        {"shards", s.shards},
        {"ranks", comm.size()},
        {"calibration",
         {{"data", o.data},
          {"method", quant::calibrator_name(*method)},
          {"percentile", o.percentile},
          {"skip", skip},
          {"per_tensor_weights", o.per_tensor_weights},
          {"int8_weights", o.int8_weights},
          {"samples", calibrated.samples},
          {"batches", calibrated.batches},
          {"conversions", calibrated.conversions},
          {"fusions", calibrated.fusions},
          {"activation_points", calibrated.plan.activations.size()},
          {"weight_points", calibrated.plan.weights.size()}}},
        {"training",
         {{"data", o.data},
          {"steps", trained.steps - trained.resumed_at},
          {"total_steps", trained.steps},
          {"resumed_at", trained.resumed_at},
          {"steps_per_epoch", trained.steps_per_epoch},
          {"kept_sample_bytes", trained.kept_sample_bytes},
          {"kept_teacher_bytes", trained.kept_teacher_bytes},
          {"optimizer", o.optimizer},
          {"lr", s.lr},
          {"schedule", o.schedule},
          {"weight_decay", s.weight_decay},
          {"freeze_bn_after", trained.freeze_bn_after},
          {"loss", loss_name(s)},
          {"labels", s.use_labels},
          {"distill_temperature", s.distill_temperature ? nlohmann::json(*s.distill_temperature)
                                                        : nlohmann::json(nullptr)},
          {"distill_weight", s.distill_temperature && s.use_labels
                                 ? nlohmann::json(s.distill_weight)
                                 : nlohmann::json(nullptr)},
          {"label_smoothing",
           s.use_labels ? nlohmann::json(s.label_smoothing) : nlohmann::json(nullptr)},
          {"seed", s.seed},
          {"final_loss", finite_or_null(trained.last_loss)},
          {"seconds", trained.seconds},
          {"exchange_seconds", trained.exchange_seconds},
          {"fold_seconds", trained.fold_seconds},
          {"parameters", trained.parameters},
          {"parameter_elements", trained.parameter_elements}}},
        {"evaluation", evaluation},
        {"counts",
         {{"activation_pairs", exported.counts.activation_pairs},
          {"weight_quantizers", exported.counts.weight_quantizers},
          {"softmax_pairs", exported.counts.softmax_pairs}}}};
    report_file->write(report.dump(2));
    report_file->write("\n");
  }
  out_file->commit_with({log_file.get(), report_file.get()});
  std::printf(
      "written      %s (%zu activation Q/DQ pairs, %zu weight quantizers, %zu softmax "
      "pairs; %s, %s)\n",
      o.output.c_str(), exported.counts.activation_pairs, exported.counts.weight_quantizers,
      exported.counts.softmax_pairs, written_batch.c_str(),
      out_file->size_text(exported.bytes).c_str());
  if (report_file) std::printf("%-12s %s\n", "report", o.report.c_str());
  return 0;
}

}  // namespace

CommandRunner add_qat_command(CLI::App& app) {
  auto o = std::make_shared<QatOptions>();
  o->setup.shards = 0;  // chosen in run_qat: --resume's checkpoint's, else one per rank
  CLI::App* cmd = app.add_subcommand(
      "qat",
      "Quantization-aware fine-tuning: calibrate as `calibrate` does, fine-tune the weights "
      "through fake quant (BN folding simulated, weights quantized per channel from their "
      "current values), then write the Q/DQ ONNX model from the trained weights and compare "
      "float, PTQ and QAT on --val");
  cmd->add_option("model", o->model, "float ONNX classifier (logits [batch, classes])")
      ->required()
      ->check(file_path());
  cmd->add_option("--data", o->data,
                  std::string("training data: ") + kDataFormats +
                      " (class folders and an .npz's 'labels' give the cross-entropy's labels; "
                      ".npy with --distill)")
      ->required();
  add_preprocess_flags(*cmd, o->preprocess);
  add_input_shape_option(*cmd, o->input_shape, &o->preprocess);
  cmd->add_option("-o,--output", o->output, "Q/DQ ONNX model to write")
      ->required()
      ->check(file_path());
  cmd->add_option("--val", o->val, "compare float, PTQ and QAT on this image folder or .npy");
  auto* calib = "Calibration";
  cmd->add_option("--method", o->method,
                  "activation calibrator: mse (default), max, "
                  "percentile or entropy")
      ->group(calib);
  cmd->add_option("--percentile", o->percentile, "for --method percentile (default 99.99)")
      ->group(calib);
  cmd->add_option("--skip", o->skip, "comma list of module names, kinds or globs to keep float")
      ->delimiter(',')
      ->group(calib);
  cmd->add_option("--calib-limit", o->calib_limit,
                  "calibrate on at most this many samples, spread evenly (default: all)")
      ->check(integer_at_least(1))
      ->group(calib);
  cmd->add_option_function<double>(
         "--smoothquant", [o](const double& alpha) { o->smoothquant = alpha; },
         "SmoothQuant before calibration with migration strength ALPHA in [0, 1] (0.5 when "
         "given without a value), as calibrate does; training starts from the smoothed model")
      ->expected(0, 1)
      ->default_str("0.5")
      ->type_name("ALPHA")
      ->group(calib);
  cmd->add_flag("--per-tensor-weights", o->per_tensor_weights,
                "one scale per weight tensor instead of one per output channel")
      ->group(calib);
  cmd->add_flag("--int8-weights", o->int8_weights,
                "store weights as int8 initializers behind DequantizeLinear")
      ->group(calib);
  add_external_data_flag(*cmd, o->external_data);
  cmd->get_option("--external-data")->group(calib);
  cmd->add_flag("--dynamic-batch", o->dynamic_batch,
                "write a batch the model fixes as a symbolic one ('batch'), for TensorRT "
                "optimisation profiles")
      ->group(calib);
  auto* train = "Training";
  cmd->add_option("--epochs", o->setup.epochs, "passes over the training data")
      ->check(integer_at_least(0))
      ->group(train);
  cmd->add_option("--steps", o->setup.steps, "optimizer steps (instead of --epochs)")
      ->check(integer_at_least(0))
      ->group(train);
  cmd->add_option("--batch", o->setup.batch,
                  "batch for calibration and training (default 32), whatever batch the model "
                  "fixes; the written model keeps the model's own; an epoch's last partial "
                  "batch is dropped. A model of one sample without a batch axis runs one "
                  "sample at a time: a step's samples are as many shards of one")
      ->check(integer_at_least(1))
      ->group(train);
  cmd->add_option("--shards", o->setup.shards,
                  "cut each batch into N equal shards whose sums (BN statistics, gradients) are "
                  "added in shard order: the run's bits depend on N, not on how many ranks "
                  "compute the shards (default: the --resume checkpoint's, else one per rank; "
                  "a divisor of --batch, at least the ranks)")
      ->check(integer_at_least(1))
      ->group(train);
  cmd->add_option("--lr", o->setup.lr, "learning rate (default 1e-4)")->group(train);
  cmd->add_option("--optimizer", o->optimizer, "sgd (default; momentum 0.9) or adamw")
      ->group(train);
  cmd->add_option("--momentum", o->setup.momentum, "SGD momentum (default 0.9)")->group(train);
  cmd->add_flag("--nesterov", o->setup.nesterov, "Nesterov momentum (SGD)")->group(train);
  cmd->add_option("--weight-decay", o->setup.weight_decay,
                  "weight decay (default 0), never applied to biases and BN/LayerNorm γ, β")
      ->group(train);
  cmd->add_option("--schedule", o->schedule,
                  "learning-rate schedule: cosine (default, to 0 at the last step), step or "
                  "constant")
      ->group(train);
  cmd->add_option("--warmup-steps", o->setup.warmup_steps, "linear warmup steps (default 0)")
      ->check(integer_at_least(0))
      ->group(train);
  cmd->add_option("--step-size", o->setup.step_size, "steps between decays for --schedule step")
      ->group(train);
  cmd->add_option("--gamma", o->setup.gamma, "decay factor for --schedule step (default 0.1)")
      ->group(train);
  cmd->add_option("--freeze-bn-after", o->setup.freeze_bn_after,
                  "steps after which BN uses its running statistics (default: never for a "
                  "classifier, 0 for a model distilled from outputs that are no logits)")
      ->check(integer_at_least(0))
      ->group(train);
  cmd->add_option_function<float>(
         "--distill", [o](const float& t) { o->distill = t; },
         "distill from the float model's outputs at temperature T (KL divergence; 1 when given "
         "without a value); needs no labels")
      ->expected(0, 1)
      ->default_str("1")
      ->type_name("T")
      ->group(train);
  cmd->add_option("--distill-weight", o->setup.distill_weight,
                  "with labels and --distill: loss = (1 − w)·CE + w·KL (default 0.5); 1 trains "
                  "on the KL alone and ignores the labels; near 1 (0.9) keeps a converged model "
                  "close to its float outputs while the labels still count")
      ->group(train);
  cmd->add_option("--label-smoothing", o->setup.label_smoothing,
                  "ε of the labels' cross-entropy, as PyTorch's label_smoothing: the target is "
                  "1 − ε on the label and ε spread over all classes (default 0); match the float "
                  "model's own training")
      ->type_name("EPS")
      ->group(train);
  cmd->add_flag("--freeze-scales", o->freeze_scales,
                "keep the calibrated activation scales fixed (the default)")
      ->group(train);
  cmd->add_flag("--learn-scales", o->setup.learn_scales,
                "learn the activation scales with the weights (LSQ gradient, no weight decay) "
                "at --scale-lr; weights keep following their own max")
      ->excludes("--freeze-scales")
      ->group(train);
  cmd->add_option("--scale-lr", o->setup.scale_lr,
                  "learning rate of the scales with --learn-scales (default 1e-4), following "
                  "the schedule")
      ->group(train);
  cmd->add_option("--augment", o->augment,
                  "light augmentation of image batches: flip (horizontal, p = 1/2), crop (a "
                  "shift of up to 1/8 of the size, edges repeated); comma list")
      ->delimiter(',')
      ->group(train);
  cmd->add_option("--seed", o->setup.seed,
                  "seed of the data order and the augmentation (default 0)")
      ->group(train);
  auto* runs = "Run";
  cmd->add_option("--checkpoint", o->checkpoint,
                  "checkpoint file (.npz: weights, optimizer state, BN statistics, step), "
                  "replaced atomically")
      ->check(file_path())
      ->group(runs);
  cmd->add_option("--checkpoint-every", o->setup.checkpoint_every,
                  "write the checkpoint every N steps")
      ->check(integer_at_least(1))
      ->group(runs);
  cmd->add_option("--resume", o->resume,
                  "continue a run from its checkpoint (same model, data and options); the "
                  "result is the uninterrupted run's")
      ->check(file_path())
      ->group(runs);
  cmd->add_option("--stop-after", o->setup.stop_after,
                  "stop once N steps are done, write the checkpoint and exit without a model "
                  "(a time-boxed share of a run); --resume continues it")
      ->check(integer_at_least(0))
      ->group(runs);
  cmd->add_option("--log", o->log, "write every step's loss, lr and time as JSON lines")
      ->check(file_path())
      ->group(runs);
  cmd->add_option("--report", o->report,
                  "write the calibration and training summaries and, with --val, the float, PTQ "
                  "and QAT figures (top-1, cross-entropy, KL to float, SQNR) as JSON")
      ->check(file_path())
      ->group(runs);
  cmd->add_option("--threads", o->threads,
                  "worker threads of each rank (default: the cores, divided among the ranks an MPI "
                  "launcher started on this machine)")
      ->check(integer_at_least(0, INT_MAX))
      ->group(runs);
  return [o] { return run_qat(*o); };
}

}  // namespace qforge::cli

// `qforge compare`: runs two models on the same inputs and prints, per output, how far the
// candidate (b) is from the reference (a): max |Δ|, max relative error, cosine, SQNR, top-1
// agreement, and a verdict.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <memory>

#include "graph/onnx_import.h"
#include "runtime/compare.h"
#include "runtime/session.h"
#include "runtime/threads.h"
#include "runtime/transform_pipeline.h"
#include "tools/io/progress.h"
#include "tools/qforge/cli_checks.h"
#include "tools/qforge/commands.h"
#include "tools/qforge/data_source.h"
#include "tools/qforge/input_shape.h"

namespace qforge::cli {
namespace {

struct CompareOptions {
  std::string model_a;
  std::string model_b;
  std::string data;
  int64_t batch = 0;  // 0: 32, or the models' fixed batch
  int threads = 0;
  int64_t limit = 0;
  PreprocessOverrides preprocess;
  InputShapeFlag input_shape;
};

// Without --data both models see this many seeded standard-normal samples.
constexpr int64_t kRandomSamples = 8;
constexpr uint64_t kRandomSeed = 0;
// The verdict calls outputs close when each has at least this cosine and, for [N, C] outputs,
// the same top-1 class on every row.
constexpr double kCloseCosine = 0.9999;

std::string shape_text(const std::optional<graph::Shape>& shape) {
  if (!shape) return "[?]";
  std::string s = "[";
  for (size_t i = 0; i < shape->size(); ++i) {
    if (i) s.append(", ");
    int64_t d = (*shape)[i];
    s.append(d < 0 ? std::string("N") : std::to_string(d));
  }
  s.append("]");
  return s;
}

std::string value_text(const graph::Value& v) {
  std::string s = "'";
  s.append(v.name()).append("' ").append(kernels::dtype_name(v.dtype()));
  s.append(shape_text(v.shape()));
  return s;
}

[[noreturn]] void interface_mismatch(const CompareOptions& o, const std::string& what) {
  std::string message = "compare: models '";
  message.append(o.model_a).append("' and '").append(o.model_b).append("': ").append(what);
  throw_invalid(message);
}

// Inputs are matched by position; names may differ. Output shapes are checked where both files
// state them, and again on the tensors each batch produces.
void check_same_interface(const graph::Graph& a, const graph::Graph& b, const CompareOptions& o) {
  if (a.inputs().size() != b.inputs().size() || a.outputs().size() != b.outputs().size()) {
    interface_mismatch(o, "expected the same number of inputs and outputs, got " +
                              std::to_string(a.inputs().size()) + " and " +
                              std::to_string(a.outputs().size()) + " vs " +
                              std::to_string(b.inputs().size()) + " and " +
                              std::to_string(b.outputs().size()));
  }
  for (size_t i = 0; i < a.inputs().size(); ++i) {
    const graph::Value& x = *a.inputs()[i];
    const graph::Value& y = *b.inputs()[i];
    if (x.dtype() != y.dtype() || x.shape() != y.shape()) {
      interface_mismatch(o, "expected the same input " + std::to_string(i) + ", got " +
                                value_text(x) + " vs " + value_text(y));
    }
  }
  for (size_t i = 0; i < a.outputs().size(); ++i) {
    const graph::Value& x = *a.outputs()[i];
    const graph::Value& y = *b.outputs()[i];
    bool shapes_differ = x.has_shape() && y.has_shape() && x.shape() != y.shape();
    if (x.dtype() != y.dtype() || shapes_differ) {
      interface_mismatch(o, "expected the same output " + std::to_string(i) + ", got " +
                                value_text(x) + " vs " + value_text(y));
    }
  }
}

std::string format_sqnr(double db) {
  if (std::isinf(db)) return db > 0 ? "inf dB" : "-inf dB";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f dB", db);
  return buf;
}

void print_figures(const graph::Value& output, const runtime::ComparisonFigures& f) {
  std::printf("output     %s (%zu elements compared)\n", value_text(output).c_str(), f.elements);
  std::printf("  max |Δ|            %.6g (output units)\n", f.max_abs_diff);
  std::printf("  max rel. error     %.6g (|Δ| / max(|a|, %g))\n", f.max_rel_error,
              runtime::kRelativeErrorFloor);
  std::printf("  cosine             %.9f\n", f.cosine);
  std::printf("  SQNR               %s\n", format_sqnr(f.sqnr_db).c_str());
  if (f.top1_agreement) {
    std::printf("  top-1 agreement    %.2f%% (%zu/%zu rows)\n", 100.0 * *f.top1_agreement,
                f.agreeing_rows, f.rows);
  }
  if (f.nonfinite > 0) {
    std::printf("  non-finite         %zu elements (NaN or inf in a or b; left out above)\n",
                f.nonfinite);
  }
}

int run_compare(const CompareOptions& o) {
  set_threads_from_flag(o.threads);
  std::unique_ptr<graph::Graph> loaded_a = load_model_to_run(o.model_a, o.input_shape, o.data);
  std::unique_ptr<graph::Graph> loaded_b = load_model_to_run(o.model_b, o.input_shape, o.data);
  const graph::Graph& model_a = *loaded_a;
  const graph::Graph& model_b = *loaded_b;
  check_same_interface(model_a, model_b, o);

  const std::optional<int64_t> fixed = runtime::fixed_batch(model_a);
  std::optional<DataSource> data;
  std::vector<kernels::Tensor> random;  // whole random batch, without --data
  size_t total = 0;
  if (!o.data.empty()) {
    data = DataSource::open(o.data, model_a, o.preprocess);
    total = data->size();
  } else {
    random = runtime::random_normal_inputs(model_a, fixed.value_or(kRandomSamples), kRandomSeed);
    total = static_cast<size_t>(random.front().dim(0));
  }
  if (o.limit > 0) total = std::min(total, static_cast<size_t>(o.limit));
  if (total == 0) throw_invalid("compare: data '" + o.data + "' holds no samples");
  // A fixed batch is only the default: resolve frees it for any other.
  const int64_t batch = o.batch > 0 ? o.batch : fixed.value_or(32);
  // Each session frees its weights as its kernels bring them into their own forms, unless a
  // smaller last batch needs a second plan made from them.
  runtime::SessionOptions options;
  options.executor.release_prepared_constants = runtime::one_batch_shape(total, batch);
  runtime::Session session_a(std::move(loaded_a), options);
  runtime::Session session_b(std::move(loaded_b), options);

  std::vector<runtime::OutputComparison> comparisons(model_a.outputs().size());
  io::Progress progress("compare", total, "img");
  for (size_t begin = 0; begin < total; begin += static_cast<size_t>(batch)) {
    size_t count = std::min(static_cast<size_t>(batch), total - begin);
    std::vector<kernels::Tensor> inputs;
    if (data) {
      inputs = data->load_inputs(begin, count);
    } else {
      for (const auto& t : random) {
        inputs.push_back(
            t.slice_rows(static_cast<int64_t>(begin), static_cast<int64_t>(begin + count)));
      }
    }
    // Each session's output views stay valid until that session runs again.
    auto outputs_a = session_a.run(std::span<const kernels::Tensor>(inputs));
    auto outputs_b = session_b.run(std::span<const kernels::Tensor>(inputs));
    for (size_t k = 0; k < comparisons.size(); ++k) {
      if (outputs_a[k].shape() != outputs_b[k].shape()) {
        interface_mismatch(o, "expected output " + std::to_string(k) + " of the same shape, got " +
                                  outputs_a[k].describe() + " vs " + outputs_b[k].describe());
      }
      comparisons[k].add(outputs_a[k], outputs_b[k]);
    }
    progress.advance(count);
  }
  progress.finish();

  const auto shown_batch = static_cast<long long>(std::min(static_cast<size_t>(batch), total));
  std::printf("reference  %s (a)\n", o.model_a.c_str());
  std::printf("candidate  %s (b)\n", o.model_b.c_str());
  if (data) {
    std::printf("data       %s (%zu samples, batch %lld, %d threads)\n", o.data.c_str(), total,
                shown_batch, runtime::num_threads());
  } else {
    std::printf(
        "data       random normal inputs, seed %llu, %zu samples (no --data given; "
        "batch %lld, %d threads)\n",
        static_cast<unsigned long long>(kRandomSeed), total, shown_batch, runtime::num_threads());
  }
  bool identical = true;
  std::string first_far;
  for (size_t k = 0; k < comparisons.size(); ++k) {
    runtime::ComparisonFigures f = comparisons[k].figures();
    print_figures(*model_a.outputs()[k], f);
    identical = identical && f.nonfinite == 0 && f.max_abs_diff == 0;
    bool close = f.nonfinite == 0 && f.cosine >= kCloseCosine &&
                 (!f.top1_agreement || f.agreeing_rows == f.rows);
    if (!close && first_far.empty()) first_far = model_a.outputs()[k]->name();
  }
  if (identical) {
    std::printf("verdict    identical (every output equal bit for bit)\n");
  } else if (first_far.empty()) {
    std::printf("verdict    close (every output has cosine >= %g and full top-1 agreement)\n",
                kCloseCosine);
  } else {
    std::printf(
        "verdict    different (output '%s' has cosine < %g, a top-1 disagreement or "
        "non-finite values)\n",
        first_far.c_str(), kCloseCosine);
  }
  return 0;
}

}  // namespace

CommandRunner add_compare_command(CLI::App& app) {
  auto opts = std::make_shared<CompareOptions>();
  auto* cmd = app.add_subcommand(
      "compare", "Run two models on the same inputs and measure how far their outputs differ");
  cmd->add_option("a", opts->model_a, "reference ONNX model")->required();
  cmd->add_option("b", opts->model_b, "candidate ONNX model")->required();
  cmd->add_option("--data", opts->data,
                  std::string(kDataFormats) +
                      "; images preprocessed as model a's metadata and the flags below say "
                      "(default: 8 seeded random normal samples)");
  add_preprocess_flags(*cmd, opts->preprocess);
  add_input_shape_option(*cmd, opts->input_shape, &opts->preprocess);
  cmd->add_option("--batch", opts->batch,
                  "samples per forward pass (default 32, or the models' fixed batch)")
      ->check(integer_at_least(1));
  cmd->add_option("--threads", opts->threads, "worker threads (default: all cores)")
      ->check(integer_at_least(0, INT_MAX));
  cmd->add_option("--limit", opts->limit, "use at most this many samples")
      ->check(integer_at_least(1));
  return [opts] { return run_compare(*opts); };
}

}  // namespace qforge::cli

// Fuzz target: plan JSON (as `qforge plan -o` writes it and `transform --plan` reads it) through
// the reader, then applied to a small model as `qforge transform --plan` does. Whatever the
// reader accepts must survive a write and read back unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "fuzz/seed_models.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "kernels/error.h"
#include "runtime/threads.h"
#include "runtime/transform_pipeline.h"

namespace {

std::unique_ptr<qforge::graph::Graph> model;

bool same_plan(const qforge::graph::Plan& a, const qforge::graph::Plan& b) {
  if (a.entries.size() != b.entries.size()) return false;
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const auto& x = a.entries[i];
    const auto& y = b.entries[i];
    if (x.apply != y.apply || x.reason != y.reason || x.match.pattern != y.match.pattern ||
        x.match.anchor != y.match.anchor || x.match.id != y.match.id ||
        x.match.nodes.size() != y.match.nodes.size()) {
      return false;
    }
    for (size_t j = 0; j < x.match.nodes.size(); ++j) {
      if (x.match.nodes[j].role != y.match.nodes[j].role ||
          x.match.nodes[j].name != y.match.nodes[j].name) {
        return false;
      }
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qforge::runtime::set_num_threads(1);
  model = qforge::graph::parse_onnx(qforge::fuzz::conv_net_model(), "conv_net.onnx");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qforge;
  graph::Plan plan;
  try {
    plan = graph::Plan::from_json(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const Error&) {
    return 0;
  }
  if (!same_plan(plan, graph::Plan::from_json(plan.to_json()))) std::abort();
  try {
    runtime::transform_model(*model, &plan, {});
  } catch (const Error&) {
  }
  return 0;
}

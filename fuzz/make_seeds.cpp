// Writes the seeds that are not files in the repository: the small models of
// fuzz/seed_models.h, and the fusion plans `qforge plan -o` writes for the small CNN (the model
// the plan target applies plans to) and for a bundled model.
//   make_seeds <model dir> <plan dir> <bundled model.onnx>
#include <cstdio>
#include <fstream>
#include <string>

#include "fuzz/seed_models.h"
#include "graph/onnx_import.h"
#include "kernels/error.h"
#include "runtime/transform_pipeline.h"

namespace {

void write(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  if (!out.flush()) qforge::throw_io("make_seeds: cannot write '" + path + "'");
}

std::string plan_json(const qforge::graph::Graph& model) {
  return qforge::runtime::plan_model(model, {}).plan.to_json();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: make_seeds <model dir> <plan dir> <bundled model.onnx>\n");
    return 2;
  }
  const std::string models = argv[1], plans = argv[2], bundled = argv[3];
  try {
    const std::string conv_net = qforge::fuzz::conv_net_model();
    write(models + "/conv_net.onnx", conv_net);
    write(models + "/token_net.onnx", qforge::fuzz::token_net_model());
    write(plans + "/conv_net.plan.json",
          plan_json(*qforge::graph::parse_onnx(conv_net, "conv_net.onnx")));
    write(plans + "/bundled.plan.json", plan_json(*qforge::graph::load_onnx(bundled)));
  } catch (const qforge::Error& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}

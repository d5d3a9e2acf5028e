// Runs an ONNX model in ONNX Runtime for Node (tests/support/ort_run.js), the reference runtime
// of the equivalence tests. The package comes from QFORGE_ORT_DIR (scripts/install-deps puts it
// there), node from PATH. A missing package or a failed run throws, which fails the calling
// test with the reason: CI always has the package, so a silent skip would hide lost coverage.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/tensor.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge::testing {

inline std::string ort_package_dir() {
  return std::string(QFORGE_ORT_DIR).append("/node_modules/onnxruntime-node");
}

inline std::string ort_run_script() {
  return (std::filesystem::path(QFORGE_DATA_DIR).parent_path() / "tests/support/ort_run.js")
      .string();
}

// The outputs of `model_path` run in ORT on `inputs` (in the model's input order).
inline std::vector<kernels::Tensor> run_ort(const std::string& model_path,
                                            const std::vector<kernels::Tensor>& inputs) {
  if (!std::filesystem::exists(ort_package_dir() + "/package.json")) {
    throw std::runtime_error(std::string("ONNX Runtime for Node is missing: expected it in ")
                                 .append(ort_package_dir())
                                 .append("; run scripts/install-deps"));
  }
  TempDir dir;
  std::string cmd = "QFORGE_ORT_DIR='";
  cmd.append(QFORGE_ORT_DIR).append("' node '").append(ort_run_script()).append("' '");
  cmd.append(model_path).append("'");
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string file = dir.file("in" + std::to_string(i) + ".npy");
    io::write_npy(file, inputs[i]);
    cmd.append(" '").append(file).append("'");
  }
  cmd.append(" --out '").append(dir.file("out")).append("' >'").append(dir.file("log"));
  cmd.append("' 2>&1 </dev/null");
  const int status = std::system(cmd.c_str());
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string message = "ONNX Runtime run failed (is node on PATH?): ";
    message.append(cmd).append("\n").append(read_text(dir.file("log")));
    throw std::runtime_error(message);
  }
  std::vector<kernels::Tensor> outputs;
  for (size_t i = 0;; ++i) {
    const std::string file = dir.file("out/out" + std::to_string(i) + ".npy");
    if (!std::filesystem::exists(file)) break;
    outputs.push_back(io::read_npy(file));
  }
  return outputs;
}

inline std::string ort_dump_script() {
  return (std::filesystem::path(QFORGE_DATA_DIR).parent_path() / "tools/ort_dump.js").string();
}

// Runs tools/ort_dump.js: `model`'s Q/DQ points dumped from ORT on `input_npy` into `out` (.npz
// or Polygraphy .json), with graph optimisations `optimization` ("all" or "disabled").
inline void ort_dump(const std::string& model, const std::string& input_npy, const std::string& out,
                     const std::string& optimization) {
  if (!std::filesystem::exists(ort_package_dir() + "/package.json")) {
    throw std::runtime_error(std::string("ONNX Runtime for Node is missing: expected it in ")
                                 .append(ort_package_dir())
                                 .append("; run scripts/install-deps"));
  }
  TempDir dir;
  std::string cmd = "QFORGE_ORT_DIR='";
  cmd.append(QFORGE_ORT_DIR).append("' node '").append(ort_dump_script()).append("' '");
  cmd.append(model).append("' --data '").append(input_npy).append("' -o '").append(out);
  cmd.append("' --optimization ").append(optimization).append(" --qforge '").append(QFORGE_CLI);
  cmd.append("' >'").append(dir.file("log")).append("' 2>&1 </dev/null");
  const int status = std::system(cmd.c_str());
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error("ort_dump failed: " + cmd + "\n" + read_text(dir.file("log")));
  }
}

// `qdq` computes in ONNX Runtime (graph optimisations `optimization`) what qforge's fake quant
// computes at every Q/DQ point on `data`: ORT's values dumped into `dump`, then `qforge verify`
// at tolerance 1e-4 passes with no mismatch.
inline void expect_verified_by_ort(const std::string& qdq, const std::string& data,
                                   const std::string& dump,
                                   const std::string& optimization = "disabled") {
  ort_dump(qdq, data, dump, optimization);
  const CliResult verified =
      run_cli("verify " + qdq + " --reference " + dump + " --data " + data + " --tolerance 1e-4");
  EXPECT_EQ(verified.exit_code, 0) << verified.out << verified.err;
  EXPECT_NE(verified.out.find("verdict      pass: no mismatch"), std::string::npos) << verified.out;
}

}  // namespace qforge::testing

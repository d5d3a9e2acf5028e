// The forward pass that statistics are gathered on (calibration, SmoothQuant): a fused graph run
// with taps on chosen tensors. Conv epilogue fusion is off, so that every tapped value stays
// observable; the batch axis is left free, so that any batch size runs (the transformed graph
// was resolved at one); optionally the weights are released as the kernels prepare them
// (runtime::ExecutorOptions::release_prepared_constants), and then only one batch size runs.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"
#include "runtime/session.h"

namespace qforge::quant {

class ObservedPass {
 public:
  // Called with i and the value of tensors[i] each time its producer has run. An Error it
  // throws becomes an Invalid error "<label> '<tensor>': <message>".
  using ObserveFn = std::function<void(size_t index, const kernels::Tensor& value)>;

  ObservedPass(std::unique_ptr<graph::Graph> fused, std::vector<std::string> tensors,
               std::string label, bool release_weights, ObserveFn observe);
  ~ObservedPass();
  ObservedPass(const ObservedPass&) = delete;
  ObservedPass& operator=(const ObservedPass&) = delete;

  // Runs one batch (a tensor per model input), compiling (and tapping) its shapes the first
  // time.
  void run(std::span<const kernels::Tensor> inputs);

 private:
  std::vector<std::string> tensors_;
  std::string label_;
  ObserveFn observe_;
  std::unique_ptr<runtime::Session> session_;
  std::set<const runtime::Executor*> tapped_;
};

}  // namespace qforge::quant

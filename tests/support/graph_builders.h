// Shared builders of small test graphs: seeded random constants, one-line node adders, the
// conversion pattern list, and the lowering check every fusion/conversion test runs.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "graph/attention.h"
#include "graph/catalog.h"
#include "graph/conversions.h"
#include "graph/ir.h"
#include "graph/onnx_export.h"
#include "graph/onnx_import.h"
#include "graph/plan.h"
#include "graph/transform.h"
#include "runtime/executor.h"
#include "runtime/resolve.h"
#include "tests/support/pass_tester.h"
#include "tests/support/random.h"

namespace qforge::testing {

// A 1-D int64 constant.
inline graph::Value* int_const(graph::Graph& g, const std::string& name, std::vector<int64_t> v) {
  return g.add_constant(name,
                        kernels::Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v));
}

// Adds node `name` (output `name`_out) and returns its first output.
inline graph::Value* add(graph::Graph& g, const std::string& name, const std::string& op,
                         std::vector<graph::Value*> inputs,
                         std::map<std::string, graph::AttributeValue, std::less<>> attrs = {}) {
  return g
      .add_node({.name = name,
                 .op_type = op,
                 .inputs = std::move(inputs),
                 .output_names = {name + "_out"},
                 .attributes = std::move(attrs)})
      ->output(0);
}

// The conversion patterns followed by the attention conversions.
inline std::vector<graph::Pattern> conversion_and_attention_patterns() {
  std::vector<graph::Pattern> out = graph::conversion_patterns();
  for (auto& p : graph::attention_conversion_patterns()) out.push_back(std::move(p));
  return out;
}

inline graph::PlanReport convert_with_attention(graph::Graph& g) {
  const auto list = conversion_and_attention_patterns();
  return graph::run_conversions(g, list);
}

// Builds small graphs with constants from a seeded generator and auto-numbered names.
struct GraphBuilder {
  explicit GraphBuilder(uint32_t seed) : rng(seed) {}

  std::unique_ptr<graph::Graph> g = std::make_unique<graph::Graph>();
  std::mt19937 rng;
  int counter = 0;

  std::string name(const char* stem) {
    std::string out(stem);
    out.append(std::to_string(counter++));
    return out;
  }
  graph::Value* constant(graph::Shape shape, float lo = -1, float hi = 1) {
    return g->add_constant(name("c"), random_tensor(std::move(shape), rng, lo, hi));
  }
  graph::Value* scalar(float v) {
    return g->add_constant(name("s"), kernels::Tensor::scalar_f32(v));
  }
  graph::Value* node(const char* op, std::vector<graph::Value*> inputs,
                     graph::NodeSpec extra = {}) {
    extra.name = name(op);
    extra.op_type = op;
    extra.inputs = std::move(inputs);
    extra.output_names = {name("v")};
    return g->add_node(std::move(extra))->output(0);
  }
};

// How many nodes run a fusion/conversion module.
inline size_t modules_in(const graph::Graph& g) {
  size_t n = 0;
  for (const graph::Node* node : g.nodes()) {
    const graph::OpSchema* s = graph::find_schema(node->op_type());
    n += s && s->kind == graph::SchemaKind::kModule;
  }
  return n;
}

// Lowers every module of `fused` (expecting `modules` of them), checks that only ONNX ops remain,
// and that the lowered graph and its ONNX round trip compute what `fused` computes on inputs
// drawn with `seed`.
inline void expect_lowering_equivalent(const graph::Graph& fused, size_t modules, uint32_t seed) {
  auto run = [seed](graph::Graph& g) {
    std::mt19937 rng(seed);
    std::vector<kernels::Tensor> inputs;
    for (const graph::Value* in : g.inputs()) {
      inputs.push_back(random_input(in->dtype(), in->known_shape(), rng));
    }
    runtime::Executor exec(g);
    std::vector<kernels::Tensor> copies;
    for (const kernels::Tensor& t : exec.run(inputs)) copies.push_back(t.clone());
    return copies;
  };
  auto reference = fused.clone();
  const auto ref = run(*reference);
  auto lowered = fused.clone();
  EXPECT_EQ(graph::lower_modules(*lowered), modules);
  EXPECT_EQ(modules_in(*lowered), 0u);
  for (const graph::Node* n : lowered->nodes()) {
    const graph::OpSchema* s = graph::find_schema(n->op_type());
    ASSERT_NE(s, nullptr) << n->op_type();
    EXPECT_EQ(s->kind, graph::SchemaKind::kOnnx) << n->name();
  }
  runtime::resolve(*lowered, {});
  const auto got = run(*lowered);
  auto reimported = graph::parse_onnx(graph::serialize_onnx(*lowered), "lowered");
  runtime::resolve(*reimported, {});
  const auto again = run(*reimported);
  ASSERT_EQ(ref.size(), got.size());
  ASSERT_EQ(ref.size(), again.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(ref[i].shape(), got[i].shape());
    EXPECT_LE(relative_max_diff(got[i], ref[i]), 1e-5);
    EXPECT_LE(relative_max_diff(again[i], ref[i]), 1e-5);
  }
}

}  // namespace qforge::testing

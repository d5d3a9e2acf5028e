// The executor's plan: buffer reuse by liveness, views without copies, taps, and no heap
// allocation once compiled.
#include "runtime/executor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <new>

#include "graph/onnx_import.h"
#include "kernels/packed_gemm.h"
#include "runtime/resolve.h"
#include "runtime/session.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

// Counts C++ heap allocations while `g_counting` is set (this test binary only). The
// replacement pair is malloc/free underneath, which GCC cannot see across the replacement.
// Every form that the replaced delete may free is replaced too (nothrow, array): a sanitizer
// runtime supplies its own for the others instead of routing them here, and memory from its
// allocator must not reach std::free.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return ::operator new(n);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  ::operator delete(p);
}
void* operator new[](std::size_t n) {
  return ::operator new(n);
}
void* operator new[](std::size_t n, const std::nothrow_t& tag) noexcept {
  return ::operator new(n, tag);
}
void operator delete[](void* p) noexcept {
  ::operator delete(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  ::operator delete(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  ::operator delete(p);
}

namespace qforge {
namespace {

using graph::DType;
using graph::Shape;

// x -> Relu -> Neg -> Relu -> ... (n nodes) -> y, each value 1000 floats.
std::unique_ptr<graph::Graph> chain(int n) {
  auto g = std::make_unique<graph::Graph>();
  graph::Value* v = g->add_input("x", DType::kFloat32, Shape{1, 1000});
  for (int i = 0; i < n; ++i) {
    std::string name = "v";
    name += std::to_string(i);
    auto* node =
        g->add_node({.op_type = i % 2 ? "Neg" : "Relu", .inputs = {v}, .output_names = {name}});
    v = node->output(0);
  }
  g->mark_output(v);
  return g;
}

TEST(Executor, ReusesBuffersAlongAChain) {
  auto g = chain(12);
  runtime::resolve(*g, {});
  runtime::Executor exec(*g);
  // Input, output and two ping-pong buffers would do; twelve separate buffers would be 52 KB.
  EXPECT_LE(exec.arena_bytes(), 4 * 4096u);
  kernels::Tensor x(DType::kFloat32, {1, 1000});
  for (int i = 0; i < 1000; ++i) x.data<float>()[i] = static_cast<float>(i % 7) - 3.f;
  auto out = exec.run(std::span(&x, 1));
  // Relu, Neg alternate 6 times: relu(-relu(..)) = 0 for every element after the 2nd pair.
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(out[0].data<float>()[i], 0.f);
}

TEST(Executor, TapsSeeIntermediateValues) {
  auto g = chain(2);  // v0 = relu(x), v1 = -v0
  runtime::resolve(*g, {});
  runtime::Executor exec(*g);
  float tapped_sum = 0;
  exec.add_tap("v0", [&](const kernels::Tensor& t) {
    for (float f : t.span<float>()) tapped_sum += f;
  });
  kernels::Tensor x(DType::kFloat32, {1, 1000});
  for (int i = 0; i < 1000; ++i) x.data<float>()[i] = i % 2 ? 1.f : -1.f;
  exec.run(std::span(&x, 1));
  EXPECT_EQ(tapped_sum, 500.f);
}

TEST(Executor, ReshapeIsAViewOfItsInput) {
  auto g = std::make_unique<graph::Graph>();
  auto* x = g->add_input("x", DType::kFloat32, Shape{2, 6});
  auto* relu = g->add_node({.op_type = "Relu", .inputs = {x}, .output_names = {"r"}});
  auto* shape = g->add_constant("shape", kernels::Tensor::from_vector<int64_t>({2}, {3, 4}));
  auto* reshape = g->add_node(
      {.op_type = "Reshape", .inputs = {relu->output(0), shape}, .output_names = {"rs"}});
  auto* neg =
      g->add_node({.op_type = "Neg", .inputs = {reshape->output(0)}, .output_names = {"y"}});
  g->mark_output(neg->output(0));
  runtime::resolve(*g, {});
  runtime::Executor exec(*g);
  const float* relu_data = nullptr;
  const float* reshape_data = nullptr;
  exec.add_tap("r", [&](const kernels::Tensor& t) { relu_data = t.data<float>(); });
  exec.add_tap("rs", [&](const kernels::Tensor& t) { reshape_data = t.data<float>(); });
  kernels::Tensor in(DType::kFloat32, {2, 6});
  for (int i = 0; i < 12; ++i) in.data<float>()[i] = static_cast<float>(i - 6);
  auto out = exec.run(std::span(&in, 1));
  EXPECT_EQ(relu_data, reshape_data);
  ASSERT_EQ(out[0].shape(), (Shape{3, 4}));
  for (int i = 0; i < 12; ++i) EXPECT_EQ(out[0].data<float>()[i], -std::max(0.f, float(i - 6)));
}

// A Gather of one index along a leading axis, a Slice of step 1 that keeps a contiguous run, a
// Pad of zeros and an Expand to the input's shape are views of their input at an offset; the
// slices and gathers that are not contiguous, a Pad that pads and an Expand that broadcasts are
// still copies. Each reads r = relu(x), x of shape [3, 2, 4]
// holding 0 .. 23 (relu leaves them), through a Neg, so the outputs are -(the expected values).
TEST(Executor, ContiguousSlicesGathersZeroPadsAndSameShapeExpandsAreViews) {
  graph::Graph g;
  g.opset = 17;
  graph::Value* x = g.add_input("x", DType::kFloat32, Shape{3, 2, 4});
  auto ints = [&](const std::string& name, std::vector<int64_t> v, Shape shape) {
    return g.add_constant(name, kernels::Tensor::from_vector<int64_t>(std::move(shape), v));
  };
  auto add = [&](const std::string& op, std::vector<graph::Value*> inputs, const std::string& out,
                 std::map<std::string, graph::AttributeValue, std::less<>> attrs = {}) {
    return g
        .add_node({.op_type = op,
                   .inputs = std::move(inputs),
                   .output_names = {out},
                   .attributes = std::move(attrs)})
        ->output(0);
  };
  graph::Value* r = add("Relu", {x}, "r");
  struct Case {
    std::string name;
    graph::Value* value;
    int64_t view_offset;  // -1: a copy
    std::vector<float> expected;
  };
  auto iota = [](int begin, int end) {
    std::vector<float> v;
    for (int i = begin; i < end; ++i) v.push_back(static_cast<float>(i));
    return v;
  };
  const int64_t kEnd = std::numeric_limits<int64_t>::max();
  std::vector<Case> cases = {
      {"gather 1", add("Gather", {r, g.add_constant("i1", kernels::Tensor::scalar_i64(1))}, "g1"),
       8, iota(8, 16)},
      {"gather -1", add("Gather", {r, g.add_constant("im1", kernels::Tensor::scalar_i64(-1))}, "g2"),
       16, iota(16, 24)},
      {"slice rows 1..3", add("Slice", {r, ints("s1", {1}, {1}), ints("e1", {3}, {1}),
                                        ints("a1", {0}, {1})}, "s1o"),
       8, iota(8, 24)},
      {"slice everything", add("Slice", {r, ints("s2", {0}, {1}), ints("e2", {kEnd}, {1}),
                                         ints("a2", {-1}, {1})}, "s2o"),
       0, iota(0, 24)},
      {"pad of zeros", add("Pad", {r, ints("p0", {0, 0, 0, 0, 0, 0}, {6})}, "p0o"), 0,
       iota(0, 24)},
      {"slice after a leading axis of one",
       add("Slice",
           {add("Reshape", {r, ints("shape", {1, 6, 4}, {3})}, "r1"), ints("s5", {2}, {1}),
            ints("e5", {5}, {1}), ints("a5", {1}, {1})},
           "s5o"),
       8, iota(8, 20)},
      {"gather along axis 1", add("Gather", {r, g.add_constant("i0", kernels::Tensor::scalar_i64(1))},
                                  "g3", {{"axis", int64_t{1}}}),
       -1, {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23}},
      {"slice along axis 1", add("Slice", {r, ints("s3", {1}, {1}), ints("e3", {2}, {1}),
                                           ints("a3", {1}, {1})}, "s3o"),
       -1, {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23}},
      {"slice of step 2", add("Slice", {r, ints("s4", {0}, {1}), ints("e4", {3}, {1}),
                                        ints("a4", {0}, {1}), ints("t4", {2}, {1})}, "s4o"),
       -1, {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}},
      {"expand to its own shape", add("Expand", {r, ints("x0", {3, 2, 4}, {3})}, "x0o"), 0,
       iota(0, 24)},
      {"expand that broadcasts", add("Expand", {r, ints("x1", {2, 1, 1, 1}, {4})}, "x1o"), -1,
       [&] {
         std::vector<float> v = iota(0, 24);
         for (float f : iota(0, 24)) v.push_back(f);
         return v;
       }()},
      {"pad that pads", add("Pad", {r, ints("p1", {1, 0, 0, -1, 0, 0}, {6})}, "p1o"), -1,
       [&] {
         std::vector<float> v(8, 0.0f);
         for (float f : iota(0, 16)) v.push_back(f);
         return v;
       }()},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string name = "y";  // appended, not `"y" + ...`: GCC 12 warns falsely on that (-Wrestrict)
    name += std::to_string(i);
    g.mark_output(add("Neg", {cases[i].value}, name));
  }
  runtime::resolve(g, {});
  runtime::Executor exec(g);
  const float* r_data = nullptr;
  exec.add_tap("r", [&](const kernels::Tensor& t) { r_data = t.data<float>(); });
  std::vector<const float*> data(cases.size(), nullptr);
  for (size_t i = 0; i < cases.size(); ++i) {
    exec.add_tap(cases[i].value->name(),
                 [&data, i](const kernels::Tensor& t) { data[i] = t.data<float>(); });
  }
  kernels::Tensor in(DType::kFloat32, {3, 2, 4});
  for (int i = 0; i < 24; ++i) in.data<float>()[i] = static_cast<float>(i);
  auto out = exec.run(std::span(&in, 1));
  ASSERT_NE(r_data, nullptr);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].name);
    if (cases[i].view_offset >= 0) {
      EXPECT_EQ(data[i], r_data + cases[i].view_offset);
    } else {
      EXPECT_TRUE(data[i] < r_data || data[i] >= r_data + 24);
    }
    ASSERT_EQ(out[i].numel(), static_cast<int64_t>(cases[i].expected.size()));
    for (size_t j = 0; j < cases[i].expected.size(); ++j) {
      EXPECT_EQ(out[i].data<float>()[j], -cases[i].expected[j]) << j;
    }
  }
}

// An element-wise op writes over its input where nothing reads the input after it, through any
// value sharing its buffer: Relu over Exp's output; not the Sigmoid whose input the Add reads
// after it, nor the Relu of x, which the second Exp reads after it (x's rows 2 and 3 are
// negative, so a Relu over them would show in y2); a Neg over a view at an offset writes at that
// offset.
TEST(Executor, ElementwiseOpsWriteOverAnInputNothingReadsAfter) {
  graph::Graph g;
  g.opset = 17;
  graph::Value* x = g.add_input("x", DType::kFloat32, Shape{4, 5});
  auto add = [&](const std::string& op, std::vector<graph::Value*> inputs, const std::string& out) {
    return g.add_node({.op_type = op, .inputs = std::move(inputs), .output_names = {out}})
        ->output(0);
  };
  auto ints = [&](const std::string& name, std::vector<int64_t> v) {
    return g.add_constant(name, kernels::Tensor::from_vector<int64_t>({1}, std::move(v)));
  };
  graph::Value* on_input = add("Relu", {x}, "on_input");
  graph::Value* e = add("Exp", {on_input}, "e");
  graph::Value* r = add("Relu", {e}, "r");
  graph::Value* s = add("Sigmoid", {r}, "s");
  g.mark_output(add("Add", {r, s}, "y"));
  graph::Value* e2 = add("Exp", {x}, "e2");
  graph::Value* rows = add("Slice", {e2, ints("b", {2}), ints("f", {4}), ints("a", {0})}, "rows");
  g.mark_output(add("Neg", {rows}, "y2"));
  runtime::resolve(g, {});
  runtime::Executor exec(g);
  std::map<std::string, const float*> at;
  for (const char* name : {"e", "r", "s", "e2", "rows", "y2"}) {
    exec.add_tap(name, [&at, name](const kernels::Tensor& t) { at[name] = t.data<float>(); });
  }
  kernels::Tensor in(DType::kFloat32, {4, 5});
  for (int i = 0; i < 20; ++i) in.data<float>()[i] = (9.5f - static_cast<float>(i)) / 4;
  auto out = exec.run(std::span(&in, 1));
  EXPECT_EQ(at["r"], at["e"]);
  EXPECT_NE(at["s"], at["r"]);
  EXPECT_EQ(at["rows"], at["e2"] + 10);
  EXPECT_EQ(at["y2"], at["rows"]);
  for (int i = 0; i < 20; ++i) {
    const float v = in.data<float>()[i];
    const float ri = std::exp(std::max(v, 0.0f));
    EXPECT_NEAR(out[0].data<float>()[i], ri + 1.0f / (1.0f + std::exp(-ri)), 1e-5f * ri) << i;
    if (i >= 10) {
      EXPECT_NEAR(out[1].data<float>()[i - 10], -std::exp(v), 1e-6f * std::exp(v)) << i;
    }
  }
}

// A FusedConv writes its output over its residual where nothing reads the residual after it and
// its convolution allows it (a 1×1 convolution of 32 channels: the shallow path, or the packed
// GEMM without AVX-512): the same bits as when the residual is kept (here, by making it a graph
// output too), and the output at the residual's address.
TEST(Executor, ConvolutionWritesOverAResidualNothingReadsAfter) {
  auto build = [](bool keep_residual) {
    auto g = std::make_unique<graph::Graph>();
    g->opset = 17;
    graph::Value* x = g->add_input("x", DType::kFloat32, Shape{2, 32, 9, 11});
    auto weight = [&](const std::string& name, uint32_t seed) {
      kernels::Tensor w(DType::kFloat32, {32, 32, 1, 1});
      uint32_t state = seed;
      for (float& v : w.span<float>()) {
        state = state * 1664525u + 1013904223u;
        v = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
      }
      return g->add_constant(name, w);
    };
    graph::Value* a =
        g->add_node({.op_type = "Relu", .inputs = {x}, .output_names = {"a"}})->output(0);
    graph::Value* c =
        g->add_node({.op_type = "Conv", .inputs = {a, weight("w1", 1)}, .output_names = {"c"}})
            ->output(0);
    graph::Node* fused = g->add_node({.op_type = "FusedConv",
                                      .inputs = {c, weight("w2", 2), nullptr, nullptr, nullptr, a},
                                      .output_names = {"y"}});
    fused->set_attr("clamp_min", 0.0f);
    g->mark_output(fused->output(0));
    if (keep_residual) g->mark_output(a);
    runtime::resolve(*g, {});
    return g;
  };
  kernels::Tensor in(DType::kFloat32, {2, 32, 9, 11});
  for (int64_t i = 0; i < in.numel(); ++i) {
    in.data<float>()[i] = std::sin(0.37f * static_cast<float>(i));
  }
  const auto over = build(false);
  const auto kept = build(true);
  runtime::Executor over_exec(*over);
  runtime::Executor kept_exec(*kept);
  std::map<std::string, const float*> at;
  for (const char* name : {"a", "y"}) {
    over_exec.add_tap(name, [&at, name](const kernels::Tensor& t) { at[name] = t.data<float>(); });
  }
  const kernels::Tensor y_over = over_exec.run(std::span(&in, 1))[0].clone();
  const kernels::Tensor y_kept = kept_exec.run(std::span(&in, 1))[0].clone();
  ASSERT_EQ(y_over.numel(), y_kept.numel());
  EXPECT_EQ(std::memcmp(y_over.data<float>(), y_kept.data<float>(), y_over.nbytes()), 0);
  if (kernels::packed_gemm_available()) {
    EXPECT_EQ(at["y"], at["a"]);
    EXPECT_LT(over_exec.arena_bytes(), kept_exec.arena_bytes());
  }
}

// A SliceUpdate writes its box over its data where nothing reads the data after it (the Exp's
// output, then only the box is written), not where something does (the second SliceUpdate's data,
// which the Add reads after it): both give the data with the box replaced.
TEST(Executor, SliceUpdateWritesOverDataNothingReadsAfter) {
  graph::Graph g;
  g.opset = 17;
  graph::Value* x = g.add_input("x", DType::kFloat32, Shape{2, 3, 4});
  graph::Value* u = g.add_input("u", DType::kFloat32, Shape{2, 2, 4});
  auto add = [&](const std::string& op, std::vector<graph::Value*> inputs, const std::string& out) {
    return g.add_node({.op_type = op, .inputs = std::move(inputs), .output_names = {out}});
  };
  auto slice_update = [&](graph::Value* data, const std::string& out) {
    graph::Node* n = add("SliceUpdate", {data, u}, out);
    n->set_attr("starts", std::vector<int64_t>{0, 1});
    n->set_attr("steps", std::vector<int64_t>{1, 1});
    return n->output(0);
  };
  graph::Value* e = add("Exp", {x}, "e")->output(0);
  g.mark_output(slice_update(e, "y"));
  graph::Value* e2 = add("Neg", {x}, "e2")->output(0);
  graph::Value* y2 = slice_update(e2, "y2");
  g.mark_output(add("Add", {y2, e2}, "z")->output(0));
  runtime::resolve(g, {});
  runtime::Executor exec(g);
  std::map<std::string, const float*> at;
  for (const char* name : {"e", "y", "e2", "y2"}) {
    exec.add_tap(name, [&at, name](const kernels::Tensor& t) { at[name] = t.data<float>(); });
  }
  std::vector<kernels::Tensor> in = {kernels::Tensor(DType::kFloat32, {2, 3, 4}),
                                     kernels::Tensor(DType::kFloat32, {2, 2, 4})};
  for (int i = 0; i < 24; ++i) in[0].data<float>()[i] = static_cast<float>(i) / 8;
  for (int i = 0; i < 16; ++i) in[1].data<float>()[i] = 100.0f + static_cast<float>(i);
  auto out = exec.run(in);
  EXPECT_EQ(at["y"], at["e"]);
  EXPECT_NE(at["y2"], at["e2"]);
  for (int i = 0; i < 24; ++i) {
    const int n = i / 12, row = i / 4 % 3, col = i % 4;
    const float v = in[0].data<float>()[i];
    const bool boxed = row >= 1;
    const float update = 100.0f + static_cast<float>((n * 2 + row - 1) * 4 + col);
    if (boxed) {
      EXPECT_EQ(out[0].data<float>()[i], update) << i;
    } else {
      EXPECT_NEAR(out[0].data<float>()[i], std::exp(v), 1e-6f * std::exp(v)) << i;
    }
    EXPECT_EQ(out[1].data<float>()[i], (boxed ? update : -v) - v) << i;
  }
}

TEST(Executor, ForwardAllocatesNothingAfterCompilation) {
  for (std::string family : {"resnet", "vit", "swin"}) {
    std::string model_path = testing::data_path("models/");
    model_path.append(family).append("_bn.onnx");
    std::string input_path = testing::data_path("golden/");
    input_path.append(family).append("_input.npy");
    runtime::Session session(graph::load_onnx(model_path));
    auto input = io::read_npy(input_path);
    auto& exec = session.executor_for({input.shape()});
    exec.run(std::span(&input, 1));
    g_allocations = 0;
    g_counting = true;
    exec.run(std::span(&input, 1));
    g_counting = false;
    EXPECT_EQ(g_allocations.load(), 0) << family;
  }
}

// With release_prepared_constants the weights its kernels keep in a prepared form leave the
// graph as the plan is compiled; the results stay bit-identical, the other constants stay.
TEST(Session, ReleasesTheWeightsItsKernelsPrepared) {
  for (std::string family : {"resnet", "vit"}) {
    std::string model_path = testing::data_path("models/");
    model_path.append(family).append("_bn.onnx");
    std::string input_path = testing::data_path("golden/");
    input_path.append(family).append("_input.npy");
    const auto input = io::read_npy(input_path);
    runtime::Session keeping(graph::load_onnx(model_path));
    const kernels::Tensor expected = keeping.run(input)[0].clone();

    runtime::SessionOptions options;
    options.executor.release_prepared_constants = true;
    runtime::Session releasing(graph::load_onnx(model_path), options);
    const kernels::Tensor got = releasing.run(input)[0].clone();
    ASSERT_EQ(got.shape(), expected.shape()) << family;
    for (int64_t i = 0; i < got.numel(); ++i) {
      ASSERT_EQ(got.data<float>()[i], expected.data<float>()[i]) << family << " element " << i;
    }
    // The session's own copy of the model keeps no values at all; its compiled graph keeps
    // every constant a kernel still reads, and releases only Conv/Gemm/MatMul(Add) weights.
    size_t constants = 0;
    for (const graph::Value* v : releasing.graph().values()) {
      if (!v->is_constant()) continue;
      ++constants;
      EXPECT_TRUE(v->is_released()) << family << " " << v->name();
    }
    EXPECT_GT(constants, 0u) << family;
    const graph::Graph& compiled = releasing.resolved_graph_for({input.shape()});
    size_t released = 0;
    for (const graph::Value* v : compiled.values()) {
      if (!v->is_released()) continue;
      ++released;
      for (const graph::Node* n : v->consumers()) {
        EXPECT_TRUE(n->op_type() == "Conv" || n->op_type() == "FusedConv" ||
                    n->op_type() == "Gemm" || n->op_type() == "MatMul" ||
                    n->op_type() == "MatMulAdd")
            << family << " " << v->name() << " read by " << n->op_type();
      }
      try {
        (void)v->constant();
        ADD_FAILURE() << v->name() << ": a released constant's values were readable";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kInternal);
        EXPECT_NE(std::string(e.what()).find(v->name()), std::string::npos) << e.what();
      }
    }
    // Without the packed micro-kernel no kernel prepares its weights, so none is released.
    if (kernels::packed_gemm_available()) {
      EXPECT_GT(released, 0u) << family;
    } else {
      EXPECT_EQ(released, 0u) << family;
    }
    // Running the same shape again reuses the plan; another shape cannot be compiled.
    EXPECT_EQ(releasing.run(input)[0].data<float>()[0], expected.data<float>()[0]);
    graph::Shape other = input.shape();
    other[0] += 1;
    kernels::Tensor bigger(DType::kFloat32, other);
    try {
      releasing.run(bigger);
      ADD_FAILURE() << family << ": a released session compiled a second shape";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
      EXPECT_NE(std::string(e.what()).find("released its weights"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace qforge

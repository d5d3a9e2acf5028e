// Attention backward: the float64 reference against central finite differences of the float64
// forward (Q, K, V and a broadcast additive mask, with and without the causal flag), the kernel
// against the reference on odd shapes including a Swin-style bias broadcast over windows,
// accumulation, and bit-identical results for 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/reference/attention_reference.h"
#include "tests/support/float_checks.h"
#include "tests/support/gradient_checks.h"
#include "tests/support/random.h"
#include "tests/support/thread_count.h"

namespace qforge::kernels {
namespace {

using testing::expect_close;
using testing::expect_near_all;
using testing::random_values;
using testing::ThreadCount;
using testing::to_double;
using testing::to_float;

// Central differences with a step of 1e-6, the step these checks' tolerances were set for.
std::vector<double> finite_differences_1e6(std::vector<double>& v,
                                           const std::function<double()>& loss) {
  return testing::central_differences(v, loss, 1e-6);
}

struct Case {
  Shape lead;  // leading score dims (batch, heads)
  int64_t q_len, kv_len, head_dim, value_dim;
  bool causal;
  Shape mask_shape;  // empty: no mask
};

AttentionDims dims_of(const Case& c) {
  AttentionDims d;
  d.batch = shape_numel(c.lead);
  d.q_len = c.q_len;
  d.kv_len = c.kv_len;
  d.head_dim = c.head_dim;
  d.value_dim = c.value_dim;
  d.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  d.causal = c.causal;
  return d;
}

Shape score_shape(const Case& c) {
  Shape s = c.lead;
  s.push_back(c.q_len);
  s.push_back(c.kv_len);
  return s;
}

struct Inputs {
  std::vector<float> q, k, v, mask, dout;
};

Inputs make_inputs(const Case& c, uint32_t seed) {
  const AttentionDims d = dims_of(c);
  Inputs in;
  in.q = random_values(static_cast<size_t>(d.batch * d.q_len * d.head_dim), seed, -2.f, 2.f);
  in.k = random_values(static_cast<size_t>(d.batch * d.kv_len * d.head_dim), seed + 1, -2.f, 2.f);
  in.v = random_values(static_cast<size_t>(d.batch * d.kv_len * d.value_dim), seed + 2, -2.f, 2.f);
  in.mask = random_values(static_cast<size_t>(shape_numel(c.mask_shape)), seed + 3, -2.f, 2.f);
  in.dout =
      random_values(static_cast<size_t>(d.batch * d.q_len * d.value_dim), seed + 4, -1.f, 1.f);
  return in;
}

TEST(AttentionBackward, ReferenceMatchesFiniteDifferences) {
  const std::vector<Case> cases = {{{2}, 3, 4, 2, 3, false, {3, 4}},
                                   {{2, 2}, 4, 4, 3, 2, true, {2, 1, 4, 4}},
                                   {{1}, 2, 5, 3, 3, false, {}}};
  for (const Case& c : cases) {
    const AttentionDims d = dims_of(c);
    const Inputs in = make_inputs(c, 3);
    std::vector<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
    std::vector<double> m = to_double(in.mask);
    const std::vector<double> dout = to_double(in.dout);
    const AttentionMask layout = attention_mask_layout(nullptr, c.mask_shape, score_shape(c));
    const AttentionMask* lp = c.mask_shape.empty() ? nullptr : &layout;
    std::vector<double> out(dout.size());
    auto loss = [&] {
      reference::attention(d, q.data(), k.data(), v.data(), lp, m.data(), out.data());
      double s = 0;
      for (size_t i = 0; i < out.size(); ++i) s += out[i] * dout[i];
      return s;
    };
    const std::string what = "case q " + std::to_string(c.q_len) + " kv " +
                             std::to_string(c.kv_len) + (c.causal ? " causal" : "");
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size()), dm(m.size());
    reference::attention_backward(d, q.data(), k.data(), v.data(), lp, m.data(), dout.data(),
                                  dq.data(), dk.data(), dv.data(), dm.data(),
                                  static_cast<int64_t>(m.size()));
    expect_near_all(dq, finite_differences_1e6(q, loss), 1e-6, what + " dq");
    expect_near_all(dk, finite_differences_1e6(k, loss), 1e-6, what + " dk");
    expect_near_all(dv, finite_differences_1e6(v, loss), 1e-6, what + " dv");
    if (lp) expect_near_all(dm, finite_differences_1e6(m, loss), 1e-6, what + " dmask");
  }
}

struct Grads {
  std::vector<float> dq, dk, dv, dscores, dmask;
};

Grads run_kernel(const Case& c, const Inputs& in) {
  const AttentionDims d = dims_of(c);
  const AttentionMask mask = attention_mask_layout(in.mask.data(), c.mask_shape, score_shape(c));
  const AttentionMask* mp = c.mask_shape.empty() ? nullptr : &mask;
  Grads g{std::vector<float>(in.q.size()), std::vector<float>(in.k.size()),
          std::vector<float>(in.v.size()),
          std::vector<float>(static_cast<size_t>(d.batch * d.q_len * d.kv_len)),
          std::vector<float>(in.mask.size())};
  const int slots = 3;
  std::vector<std::byte> ws(attention_backward_workspace_bytes(d, slots) + 64);
  auto* aligned =
      reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(ws.data()) + 63) / 64 * 64);
  attention_backward(d, in.q.data(), in.k.data(), in.v.data(), mp, in.dout.data(),
                     {g.dq.data(), g.dk.data(), g.dv.data(), g.dscores.data()}, aligned, slots);
  if (mp) {
    attention_mask_backward(d, mask, g.dscores.data(), g.dmask.data(),
                            static_cast<int64_t>(g.dmask.size()));
  }
  return g;
}

TEST(AttentionBackward, KernelMatchesReferenceOnOddShapes) {
  const std::vector<Case> cases = {
      {{2, 3}, 13, 13, 7, 7, false, {}},
      {{1, 5}, 17, 31, 9, 5, false, {}},
      {{3}, 1, 127, 16, 3, false, {}},
      {{2, 2}, 13, 13, 8, 8, true, {}},
      {{2, 3}, 11, 19, 4, 6, false, {2, 1, 11, 19}},
      {{2, 3}, 11, 19, 4, 6, false, {19}},
      {{2, 3}, 11, 19, 4, 6, true, {3, 1, 19}},
      {{6, 3}, 13, 13, 8, 8, false, {3, 13, 13}},  // Swin: bias per head, over 6 windows
  };
  uint32_t seed = 50;
  for (const Case& c : cases) {
    const AttentionDims d = dims_of(c);
    const Inputs in = make_inputs(c, seed);
    seed += 5;
    const Grads got = run_kernel(c, in);
    const AttentionMask layout = attention_mask_layout(nullptr, c.mask_shape, score_shape(c));
    const AttentionMask* lp = c.mask_shape.empty() ? nullptr : &layout;
    const std::vector<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
    const std::vector<double> m = to_double(in.mask), dout = to_double(in.dout);
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size()), dm(m.size());
    reference::attention_backward(d, q.data(), k.data(), v.data(), lp, m.data(), dout.data(),
                                  dq.data(), dk.data(), dv.data(), dm.data(),
                                  static_cast<int64_t>(m.size()));
    const std::string what = "q " + std::to_string(c.q_len) + " kv " + std::to_string(c.kv_len) +
                             " mask " + shape_str(c.mask_shape);
    expect_close(got.dq, to_float(dq), 2e-5, 1e-4, what + " dq");
    expect_close(got.dk, to_float(dk), 2e-5, 1e-4, what + " dk");
    expect_close(got.dv, to_float(dv), 2e-5, 1e-4, what + " dv");
    if (lp) expect_close(got.dmask, to_float(dm), 2e-5, 1e-4, what + " dmask");
  }
}

TEST(AttentionBackward, AccumulateAddsToTheGradients) {
  const Case c{{2, 3}, 11, 19, 4, 6, false, {3, 1, 19}};
  const AttentionDims d = dims_of(c);
  const Inputs in = make_inputs(c, 9);
  const Grads fresh = run_kernel(c, in);
  const AttentionMask mask = attention_mask_layout(in.mask.data(), c.mask_shape, score_shape(c));
  std::vector<float> dq = random_values(in.q.size(), 1), dv = random_values(in.v.size(), 2);
  const std::vector<float> dq0 = dq, dv0 = dv;
  std::vector<std::byte> ws(attention_backward_workspace_bytes(d, 1) + 64);
  auto* aligned =
      reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(ws.data()) + 63) / 64 * 64);
  AttentionGrads grads;
  grads.dq = dq.data();
  grads.dv = dv.data();
  grads.mode = GradMode::kAccumulate;
  attention_backward(d, in.q.data(), in.k.data(), in.v.data(), &mask, in.dout.data(), grads,
                     aligned, 1);
  // BLAS adds the product to beta·C, so compare within rounding of that addition.
  std::vector<float> want_q(dq.size()), want_v(dv.size());
  for (size_t i = 0; i < dq.size(); ++i) want_q[i] = dq0[i] + fresh.dq[i];
  for (size_t i = 0; i < dv.size(); ++i) want_v[i] = dv0[i] + fresh.dv[i];
  expect_close(dq, want_q, 1e-6, 1e-6, "dq");
  expect_close(dv, want_v, 1e-6, 1e-6, "dv");
}

TEST(AttentionBackward, SameBitsForAnyThreadCount) {
  const Case c{{8, 3}, 49, 49, 32, 32, false, {3, 49, 49}};
  const Inputs in = make_inputs(c, 70);
  Grads one, two;
  {
    ThreadCount threads(1);
    one = run_kernel(c, in);
  }
  {
    ThreadCount threads(2);
    two = run_kernel(c, in);
  }
  testing::expect_same_bits(one.dq.data(), two.dq.data(), one.dq.size(), "dq");
  testing::expect_same_bits(one.dk.data(), two.dk.data(), one.dk.size(), "dk");
  testing::expect_same_bits(one.dv.data(), two.dv.data(), one.dv.size(), "dv");
  testing::expect_same_bits(one.dmask.data(), two.dmask.data(), one.dmask.size(), "dmask");
}

}  // namespace
}  // namespace qforge::kernels

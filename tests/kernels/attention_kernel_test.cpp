// The attention kernel against its naive reference on odd shapes, with broadcast masks, the
// causal flag, and across thread counts.
#include "kernels/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <tbb/global_control.h>

namespace qforge {
namespace {

using kernels::AttentionDims;

std::vector<float> random_values(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

struct Case {
  kernels::Shape lead;  // leading score dims (batch, heads)
  int64_t q_len, kv_len, head_dim, value_dim;
  bool causal;
  kernels::Shape mask_shape;  // empty: no mask
};

std::vector<float> run_case(const Case& c, bool reference) {
  std::mt19937 rng(7);
  AttentionDims d;
  d.batch = kernels::shape_numel(c.lead);
  d.q_len = c.q_len;
  d.kv_len = c.kv_len;
  d.head_dim = c.head_dim;
  d.value_dim = c.value_dim;
  d.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  d.causal = c.causal;
  auto q = random_values(static_cast<size_t>(d.batch * d.q_len * d.head_dim), rng);
  auto k = random_values(static_cast<size_t>(d.batch * d.kv_len * d.head_dim), rng);
  auto v = random_values(static_cast<size_t>(d.batch * d.kv_len * d.value_dim), rng);
  auto m = random_values(static_cast<size_t>(kernels::shape_numel(c.mask_shape)), rng);
  kernels::Shape scores = c.lead;
  scores.push_back(c.q_len);
  scores.push_back(c.kv_len);
  kernels::AttentionMask mask = kernels::attention_mask_layout(m.data(), c.mask_shape, scores);
  const kernels::AttentionMask* mp = c.mask_shape.empty() ? nullptr : &mask;
  std::vector<float> out(static_cast<size_t>(d.batch * d.q_len * d.value_dim));
  if (reference) {
    kernels::attention_reference(d, q.data(), k.data(), v.data(), mp, out.data());
  } else {
    const int slots = 3;
    std::vector<std::byte> ws(kernels::attention_workspace_bytes(d, slots) + 64);
    auto* aligned =
        reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(ws.data()) + 63) / 64 * 64);
    kernels::attention(d, q.data(), k.data(), v.data(), mp, out.data(), aligned, slots);
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
  return diff;
}

TEST(AttentionKernel, MatchesReferenceOnOddShapes) {
  const std::vector<Case> cases = {
      {{2, 3}, 13, 13, 7, 7, false, {}},
      {{1, 5}, 17, 31, 9, 5, false, {}},
      {{3}, 1, 127, 16, 3, false, {}},
      {{2, 2}, 13, 13, 8, 8, true, {}},
      {{2, 3}, 11, 19, 4, 6, false, {2, 1, 11, 19}},
      {{2, 3}, 11, 19, 4, 6, false, {19}},
      {{2, 3}, 11, 19, 4, 6, true, {3, 1, 19}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    auto ref = run_case(cases[i], true);
    auto got = run_case(cases[i], false);
    EXPECT_LE(max_abs_diff(got, ref), 2e-5) << "case " << i;
  }
}

TEST(AttentionKernel, SameBitsForAnyThreadCount) {
  const Case c{{4, 3}, 21, 21, 8, 8, false, {1, 1, 21, 21}};
  std::vector<float> one, many;
  {
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism, 1);
    one = run_case(c, false);
  }
  many = run_case(c, false);
  ASSERT_EQ(one.size(), many.size());
  EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace qforge

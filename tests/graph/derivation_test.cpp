// The pull-back of derived constants' gradients (graph/derivation.h) on hand-computed cases:
// a transposed, scaled weight; biases summed with one broadcast; a constant derived from a
// derived one, whose gradient passes through both and adds to the source's own.
#include "graph/derivation.h"

#include <gtest/gtest.h>

#include <vector>

namespace qforge {
namespace {

using graph::Derivation;
using graph::DerivedTerm;
using kernels::Tensor;

std::vector<float> values(const Tensor& t) {
  return {t.span<float>().begin(), t.span<float>().end()};
}

TEST(PullBackGradients, TransposedScaledWeightAndSummedBiases) {
  // conv[o, c] = 2·w[c, o] for w [3, 2]; bias[o] = 0.5·b[o] + one[0].
  const std::vector<Derivation> derivations = {{.derived = "conv",
                                                .shape = {2, 3},
                                                .terms = {{.source = "w",
                                                           .source_shape = {3, 2},
                                                           .factor = 2.0f,
                                                           .extent = {2, 3},
                                                           .derived_strides = {3, 1},
                                                           .source_strides = {1, 2}}}},
                                               {.derived = "bias",
                                                .shape = {2},
                                                .terms = {{.source = "b",
                                                           .source_shape = {2},
                                                           .factor = 0.5f,
                                                           .extent = {2},
                                                           .derived_strides = {1},
                                                           .source_strides = {1}},
                                                          {.source = "one",
                                                           .source_shape = {1},
                                                           .extent = {2},
                                                           .derived_strides = {1},
                                                           .source_strides = {0}}}}};
  auto result = graph::pull_back_gradients(
      derivations, {{"bias", Tensor::from_vector<float>({2}, {4, 6})},
                    {"conv", Tensor::from_vector<float>({2, 3}, {1, 2, 3, 4, 5, 6})},
                    {"other", Tensor::from_vector<float>({1}, {7})}});
  EXPECT_EQ(result.derived, (std::vector<std::string>{"bias", "conv"}));
  ASSERT_EQ(result.gradients.size(), 4u);
  EXPECT_EQ(result.gradients[0].first, "b");
  EXPECT_EQ(values(result.gradients[0].second), (std::vector<float>{2, 3}));
  EXPECT_EQ(result.gradients[1].first, "one");
  EXPECT_EQ(values(result.gradients[1].second), (std::vector<float>{10}));
  EXPECT_EQ(result.gradients[2].first, "other");
  EXPECT_EQ(values(result.gradients[2].second), (std::vector<float>{7}));
  EXPECT_EQ(result.gradients[3].first, "w");
  EXPECT_EQ(result.gradients[3].second.shape(), (kernels::Shape{3, 2}));
  EXPECT_EQ(values(result.gradients[3].second), (std::vector<float>{2, 8, 4, 10, 6, 12}));
}

TEST(PullBackGradients, ChainsThroughDerivedConstantsAndAddsToOwnGradients) {
  // mid [4] = t [2] repeated (a folded Expand, as pairs); top [2, 2] = mid reshaped (offsets and
  // strides); t also has a gradient of its own.
  const std::vector<Derivation> derivations = {
      {.derived = "mid",
       .shape = {4},
       .terms = {{.source = "t", .source_shape = {2}, .pairs = {{0, 0}, {1, 1}, {2, 0}, {3, 1}}}}},
      {.derived = "top",
       .shape = {2, 2},
       .terms = {{.source = "mid",
                  .source_shape = {4},
                  .factor = -1.0f,
                  .extent = {2, 2},
                  .derived_strides = {2, 1},
                  .source_strides = {2, 1}}}}};
  auto result = graph::pull_back_gradients(
      derivations, {{"t", Tensor::from_vector<float>({2}, {100, 200})},
                    {"top", Tensor::from_vector<float>({2, 2}, {1, 2, 3, 4})}});
  EXPECT_EQ(result.derived, (std::vector<std::string>{"mid", "top"}));
  ASSERT_EQ(result.gradients.size(), 1u);
  EXPECT_EQ(result.gradients[0].first, "t");
  // t += −(1 + 3), −(2 + 4).
  EXPECT_EQ(values(result.gradients[0].second), (std::vector<float>{96, 194}));
}

}  // namespace
}  // namespace qforge

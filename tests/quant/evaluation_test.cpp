// The divergence figures of quant::evaluate: mean cross-entropy of each model against the labels
// and mean KL(softmax(reference) ‖ softmax(quantized)), checked against values worked out by
// hand on three rows of logits (a partial, padded last batch included).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "graph/ir.h"
#include "quant/evaluation.h"

namespace qforge {
namespace {

using kernels::DType;
using kernels::Tensor;

// A model whose logits are its input ([2, 3]) passed through one op: Identity is the
// reference, Relu the "quantized" model, so each row's two softmaxes are known in closed form.
quant::ModelLoader unary_model(const char* op) {
  return [op] {
    auto g = std::make_unique<graph::Graph>();
    graph::Value* x = g->add_input("x", DType::kFloat32, graph::Shape{2, 3});
    graph::Node* n = g->add_node({.op_type = op, .inputs = {x}, .output_names = {"logits"}});
    g->mark_output(n->output(0));
    return g;
  };
}

class LabelledRows : public quant::SampleSource {
 public:
  LabelledRows(std::vector<std::vector<float>> rows, std::vector<int64_t> labels)
      : rows_(std::move(rows)), labels_(std::move(labels)) {}
  size_t size() const override { return rows_.size(); }
  const std::vector<quant::SampleInput>& inputs() const override { return inputs_; }
  bool labelled() const override { return true; }
  void load(std::span<const size_t> indices, std::span<Tensor> rows,
            std::vector<int64_t>& labels) const override {
    labels.clear();
    for (size_t i = 0; i < indices.size(); ++i) {
      std::memcpy(rows[0].data<float>() + i * 3, rows_[indices[i]].data(), 3 * sizeof(float));
      labels.push_back(labels_[indices[i]]);
    }
  }

 private:
  std::vector<std::vector<float>> rows_;
  std::vector<int64_t> labels_;
  std::vector<quant::SampleInput> inputs_{{.shape = {3}}};
};

// LabelledRows counting how often each sample is read.
class CountedRows : public quant::SampleSource {
 public:
  explicit CountedRows(const LabelledRows& rows) : rows_(rows), reads_(rows.size(), 0) {}
  size_t size() const override { return rows_.size(); }
  const std::vector<quant::SampleInput>& inputs() const override { return rows_.inputs(); }
  bool labelled() const override { return true; }
  void load(std::span<const size_t> indices, std::span<Tensor> rows,
            std::vector<int64_t>& labels) const override {
    for (const size_t i : indices) ++reads_[i];
    rows_.load(indices, rows, labels);
  }
  const std::vector<int>& reads() const { return reads_; }

 private:
  const LabelledRows& rows_;
  mutable std::vector<int> reads_;
};

// Row by row, with L = log(Σ exp):
//   [1, 2, 3], label 2: CE = L(1, 2, 3) − 3 = 0.40760596444438; Relu leaves it, KL = 0.
//   [0, −1, 2], label 0: CE = log(1 + e⁻¹ + e²) = 2.16984601955629; Relu gives [0, 0, 2]:
//     CE = log(2 + e²) = 2.23954476622188, KL = Σ p·(log p − log q) = 0.02768868053153.
//   [−2, 0.5, 0], label 1: CE = L(−2, 0.5, 0) − 0.5 = 0.52390905617991; Relu gives
//     [0, 0.5, 0]: CE = log(2 + e^0.5) − 0.5 = 0.79437676941764, KL = 0.17324606517513.
TEST(Evaluation, CrossEntropyAndKlAreTheMeansOfTheRowsWorkedOutByHand) {
  const LabelledRows data({{1, 2, 3}, {0, -1, 2}, {-2, 0.5f, 0}}, {2, 0, 1});
  quant::EvaluationSetup setup;
  setup.batch = 2;  // the second batch holds one sample and one padded row
  setup.flip_injections = 0;
  const quant::Evaluation e =
      quant::evaluate(unary_model("Identity"), unary_model("Relu"), data, setup);
  EXPECT_EQ(e.samples, 3u);
  ASSERT_TRUE(e.reference_cross_entropy && e.quantized_cross_entropy && e.kl_divergence);
  EXPECT_NEAR(*e.reference_cross_entropy,
              (0.4076059644443804 + 2.1698460195562856 + 0.5239090561799076) / 3, 1e-12);
  EXPECT_NEAR(*e.quantized_cross_entropy,
              (0.4076059644443804 + 2.2395447662218846 + 0.7943767694176432) / 3, 1e-12);
  EXPECT_NEAR(*e.kl_divergence, (0.0 + 0.02768868053153282 + 0.1732460651751311) / 3, 1e-12);
  // The row functions give the same terms.
  const std::vector<float> p{-2, 0.5f, 0}, q{0, 0.5f, 0};
  EXPECT_NEAR(quant::row_cross_entropy(p, 1), 0.5239090561799076, 1e-12);
  EXPECT_NEAR(quant::row_kl_divergence(p, q), 0.1732460651751311, 1e-12);
  EXPECT_EQ(quant::row_kl_divergence(p, p), 0.0);
  // Large logits do not overflow: the row maximum is subtracted first.
  const std::vector<float> big{1000, 0, 0};
  EXPECT_NEAR(quant::row_cross_entropy(big, 1), 1000 + std::log1p(2 * std::exp(-1000.0)), 1e-9);
}

}  // namespace
// evaluate_each reads each sample once for the reference and all the models, and measures each
// model as evaluate does.
TEST(Evaluation, EachModelOfASeriesReadsTheSamplesKeptFromTheFirstPass) {
  const LabelledRows rows({{1, 2, 3}, {0, -1, 2}, {-2, 0.5f, 0}, {4, -3, 1}, {0, 0, 1}},
                          {2, 0, 1, 0, 2});
  const CountedRows data(rows);
  quant::EvaluationSetup setup;
  setup.batch = 2;
  setup.limit = 4;  // samples 0, 1, 2 and 3 of the five
  setup.flip_injections = 0;
  const std::vector<quant::ModelLoader> models = {unary_model("Relu"), unary_model("Identity"),
                                                  unary_model("Relu")};
  const std::vector<quant::Evaluation> each =
      quant::evaluate_each(unary_model("Identity"), models, data, setup);
  EXPECT_EQ(data.reads(), (std::vector<int>{1, 1, 1, 1, 0}));
  ASSERT_EQ(each.size(), 3u);
  for (size_t m = 0; m < models.size(); ++m) {
    const quant::Evaluation one = quant::evaluate(unary_model("Identity"), models[m], rows, setup);
    EXPECT_EQ(each[m].samples, one.samples);
    EXPECT_EQ(each[m].reference_correct, one.reference_correct);
    EXPECT_EQ(each[m].quantized_correct, one.quantized_correct);
    EXPECT_EQ(each[m].kl_divergence, one.kl_divergence);
    EXPECT_EQ(each[m].quantized_cross_entropy, one.quantized_cross_entropy);
    EXPECT_EQ(each[m].figures.sqnr_db, one.figures.sqnr_db);
  }
}

}  // namespace qforge

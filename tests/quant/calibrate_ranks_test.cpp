// quant::calibrate on several ranks (threads standing in for processes, tests/support/
// thread_ranks.h): every rank returns what one process computes, the amax of every point by
// every method, the weight ranges and the exported bytes, whatever the number of ranks and
// wherever the partial last batch falls; SmoothQuant's factors too; each rank runs only its
// share; a failure on one rank's share is the same error, naming that rank, on every rank.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "graph/onnx_import.h"
#include "quant/calibrate_pipeline.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_ranks.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using testing::data_path;

// `count` rows cycled from a golden input, recording which rows each loading thread read.
class CycledRows : public quant::SampleSource {
 public:
  CycledRows(const std::string& npy, size_t count) : golden_(io::read_npy(npy)), count_(count) {
    inputs_ = {{.shape = graph::Shape(golden_.shape().begin() + 1, golden_.shape().end())}};
  }
  size_t size() const override { return count_; }
  const std::vector<quant::SampleInput>& inputs() const override { return inputs_; }
  bool labelled() const override { return false; }
  void load(std::span<const size_t> indices, std::span<kernels::Tensor> rows,
            std::vector<int64_t>& labels) const override {
    labels.clear();
    const size_t row = static_cast<size_t>(kernels::shape_numel(sample_shape()));
    const auto golden_rows = static_cast<size_t>(golden_.dim(0));
    for (size_t i = 0; i < indices.size(); ++i) {
      if (indices[i] == poisoned_)
        throw_invalid("data: sample " + std::to_string(poisoned_) + " is bad");
      // Row k of the cycle, scaled by a factor of its index so that every sample differs.
      const float* from = golden_.data<float>() + (indices[i] % golden_rows) * row;
      const float factor = 1.0f + 0.03125f * static_cast<float>(indices[i] % 7);
      for (size_t j = 0; j < row; ++j) rows[0].data<float>()[i * row + j] = from[j] * factor;
    }
    const std::lock_guard<std::mutex> lock(mutex_);
    read_.insert(indices.begin(), indices.end());
  }
  void poison(size_t index) { poisoned_ = index; }
  size_t rows_read() const { return read_.size(); }

 private:
  kernels::Tensor golden_;
  size_t count_;
  std::vector<quant::SampleInput> inputs_;
  size_t poisoned_ = SIZE_MAX;
  mutable std::mutex mutex_;
  mutable std::set<size_t> read_;
};

std::string exported(const std::string& model, const quant::CalibrationSetup& setup,
                     const quant::CalibrationResult& r) {
  std::string out;
  quant::export_qdq_model(
      quant::fused_graph_for_export(graph::load_onnx(model), setup, r), r.plan, r.amax, {},
      [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); });
  return out;
}

void expect_same(const quant::CalibrationResult& a, const quant::CalibrationResult& b, int ranks) {
  ASSERT_EQ(a.points.size(), b.points.size());
  for (size_t i = 0; i < a.points.size(); ++i) {
    EXPECT_EQ(a.points[i].amax, b.points[i].amax) << ranks << " ranks, point " << i;
    EXPECT_EQ(a.points[i].entropy_fell_back, b.points[i].entropy_fell_back);
  }
  EXPECT_EQ(a.amax, b.amax);
  EXPECT_EQ(a.weight_amax, b.weight_amax);
  EXPECT_EQ(a.samples, b.samples);
  EXPECT_EQ(a.batches, b.batches);
}

// Calibrates `model` on `ranks` ranks; returns every rank's result and checks that each read
// only its share.
std::vector<quant::CalibrationResult> calibrate_on(int ranks, const std::string& model,
                                                   const quant::CalibrationSetup& setup,
                                                   size_t samples) {
  std::vector<quant::CalibrationResult> results(static_cast<size_t>(ranks));
  testing::run_on_ranks(ranks, [&](runtime::Communicator& comm) {
    const CycledRows data(data_path("golden/resnet_input.npy"), samples);
    quant::PipelineHooks hooks;
    hooks.communicator = &comm;
    results[static_cast<size_t>(comm.rank())] =
        quant::calibrate(graph::load_onnx(model), quant::model_file(model), data, setup, hooks);
    // The whole batches shared out, the partial batch on the last rank.
    const size_t batches = samples / static_cast<size_t>(setup.batch);
    const runtime::Share share = runtime::share_of(batches, comm.rank(), ranks);
    size_t expected = (share.end - share.begin) * static_cast<size_t>(setup.batch);
    if (comm.rank() == ranks - 1) expected += samples % static_cast<size_t>(setup.batch);
    EXPECT_EQ(data.rows_read(), expected) << "rank " << comm.rank() << " of " << ranks;
  });
  return results;
}

// 40 samples at batch 16: two whole batches and a partial batch of 8, which on 3 ranks is all
// the last rank has.
TEST(CalibrateRanks, EveryRankGetsTheOneProcessResult) {
  const std::string model = data_path("models/resnet_bn.onnx");
  quant::CalibrationSetup setup;
  setup.batch = 16;
  setup.method = quant::Calibrator::kEntropy;
  const quant::CalibrationResult one = calibrate_on(1, model, setup, 40)[0];
  const std::string one_bytes = exported(model, setup, one);
  for (int ranks : {2, 3}) {
    const auto results = calibrate_on(ranks, model, setup, 40);
    for (const quant::CalibrationResult& r : results) expect_same(one, r, ranks);
    EXPECT_TRUE(exported(model, setup, results[0]) == one_bytes) << ranks << " ranks";
    EXPECT_GT(results[0].timing.communicated_bytes, 0u);
  }
}

TEST(CalibrateRanks, SmoothQuantFactorsAreTheOneProcessFactors) {
  const std::string model = data_path("models/vit_bn.onnx");
  quant::CalibrationSetup setup;
  setup.batch = 8;
  setup.smoothquant_alpha = 0.5;
  const quant::CalibrationResult one = calibrate_on(1, model, setup, 20)[0];
  ASSERT_TRUE(one.smoothing);
  ASSERT_FALSE(one.smoothing->smoothed.empty());
  const auto two = calibrate_on(2, model, setup, 20);
  for (const quant::CalibrationResult& r : two) {
    expect_same(one, r, 2);
    ASSERT_TRUE(r.smoothing);
    ASSERT_EQ(r.smoothing->smoothed.size(), one.smoothing->smoothed.size());
    for (size_t i = 0; i < one.smoothing->smoothed.size(); ++i) {
      EXPECT_EQ(r.smoothing->smoothed[i].factors, one.smoothing->smoothed[i].factors);
    }
  }
  EXPECT_TRUE(exported(model, setup, two[0]) == exported(model, setup, one));
}

// Sample 30 lies in rank 1's share of 40 samples at batch 8 on 2 ranks (batches 3 and 4 of 5).
TEST(CalibrateRanks, OneRanksBadSampleIsEveryRanksError) {
  const std::string model = data_path("models/resnet_bn.onnx");
  quant::CalibrationSetup setup;
  setup.batch = 8;
  std::vector<std::string> messages(2);
  testing::run_on_ranks(2, [&](runtime::Communicator& comm) {
    CycledRows data(data_path("golden/resnet_input.npy"), 40);
    data.poison(30);
    quant::PipelineHooks hooks;
    hooks.communicator = &comm;
    try {
      quant::calibrate(graph::load_onnx(model), quant::model_file(model), data, setup, hooks);
      ADD_FAILURE() << "rank " << comm.rank() << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
      messages[static_cast<size_t>(comm.rank())] = e.what();
    }
    EXPECT_TRUE(comm.failed_collectively());
  });
  EXPECT_EQ(messages[0], "rank 1: data: sample 30 is bad");
  EXPECT_EQ(messages[1], messages[0]);
}

}  // namespace
}  // namespace qforge

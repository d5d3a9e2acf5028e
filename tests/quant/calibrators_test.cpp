// Calibrators against the independent numpy goldens (data/generate/calibrator_goldens.py), a
// naive in-test KL search on a small histogram, and hand-made histograms with known answers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "quant/calibrators.h"
#include "quant/observers.h"

namespace qforge::quant {
namespace {

std::string golden_path(const std::string& name) {
  return std::string(QFORGE_DATA_DIR).append("/golden/calibration/").append(name);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot read ").append(path));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// A 1-d little-endian float64 .npy (the reader in tools/io takes float32 and integers only).
std::vector<double> read_npy_f64(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0 || bytes[6] != 1) {
    throw std::runtime_error(std::string("not a version 1 .npy: ").append(path));
  }
  const size_t header_len = static_cast<unsigned char>(bytes[8]) |
                            (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
  const std::string header = bytes.substr(10, header_len);
  if (header.find("'<f8'") == std::string::npos ||
      header.find("'fortran_order': False") == std::string::npos) {
    throw std::runtime_error(std::string("expected C-order <f8 in ").append(path));
  }
  const size_t data = 10 + header_len;
  std::vector<double> values((bytes.size() - data) / sizeof(double));
  std::memcpy(values.data(), bytes.data() + data, values.size() * sizeof(double));
  return values;
}

Histogram load_golden_histogram(const std::string& name) {
  Histogram h;
  h.counts = read_npy_f64(golden_path(std::string("hist_").append(name).append(".npy")));
  const auto meta = nlohmann::json::parse(
      read_file(golden_path(std::string("hist_").append(name).append(".json"))));
  h.range = meta.at("range").get<double>();
  if (meta.at("bins").get<int64_t>() != h.bins()) throw std::runtime_error("bin count mismatch");
  return h;
}

TEST(CalibratorGolden, MatchesIndependentNumpyDefinitions) {
  const auto expected = nlohmann::json::parse(read_file(golden_path("expected.json")));
  const double percentile = expected.at("percentile").get<double>();
  ASSERT_EQ(expected.at("start_bin").get<int64_t>(), EntropyOptions{}.start_bin);
  ASSERT_EQ(expected.at("levels").get<int64_t>(), EntropyOptions{}.levels);
  int checked = 0;
  for (const auto& [name, methods] : expected.at("histograms").items()) {
    const Histogram h = load_golden_histogram(name);
    ASSERT_EQ(h.bins(), 2048) << name;
    for (const auto& [method_name, want] : methods.items()) {
      const std::optional<Calibrator> method = calibrator_from_name(method_name);
      ASSERT_TRUE(method.has_value()) << method_name;
      CalibratorOptions options;
      options.method = *method;
      options.percentile = percentile;
      const AmaxChoice got = calibrate_amax(h, options);
      const double want_amax = want.at("amax").get<double>();
      EXPECT_EQ(got.edge, want.at("edge").get<int64_t>()) << name << " " << method_name;
      if (*method == Calibrator::kMax) {
        EXPECT_EQ(got.amax, want_amax) << name << " " << method_name;
      } else {
        EXPECT_NEAR(got.amax, want_amax, 1e-6 * want_amax) << name << " " << method_name;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 7 * 4);
}

// KL search spelled out per candidate from the header's definition, for a cross-check that does
// not share the C++ implementation's prefix sums, lane sums or log splitting.
int64_t naive_entropy_edge(const Histogram& h, int64_t start, int64_t levels) {
  const int64_t n = h.bins();
  std::vector<double> b(h.counts);
  b[0] = b[1];
  double total = 0.0;
  for (double v : b) total += v;
  double best = std::numeric_limits<double>::infinity();
  int64_t best_i = -1;
  for (int64_t i = start; i <= n; ++i) {
    double outliers = 0.0;
    for (int64_t j = i; j < n; ++j) outliers += b[static_cast<size_t>(j)];
    std::vector<double> mass(static_cast<size_t>(levels), 0.0),
        filled(static_cast<size_t>(levels), 0.0);
    double kept = 0.0;
    for (int64_t j = 0; j < i; ++j) {
      const size_t l = static_cast<size_t>(levels * j / i);
      mass[l] += b[static_cast<size_t>(j)];
      filled[l] += b[static_cast<size_t>(j)] > 0 ? 1.0 : 0.0;
      kept += b[static_cast<size_t>(j)];
    }
    double kl = 0.0;
    for (int64_t j = 0; j < i; ++j) {
      const double bj = b[static_cast<size_t>(j)];
      const double p = (bj + (j == i - 1 ? outliers : 0.0)) / total;
      if (p == 0.0) continue;
      const size_t l = static_cast<size_t>(levels * j / i);
      const double q = bj > 0 ? mass[l] / filled[l] / kept : 0.0;
      kl = q == 0.0 ? std::numeric_limits<double>::infinity() : kl + p * std::log(p / q);
    }
    if (kl <= best) {
      best = kl;
      best_i = i;
    }
  }
  return best_i;
}

Histogram random_histogram(int64_t bins, uint32_t seed) {
  HistogramObserver obs(HistogramObserverOptions{.bins = bins});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(20000);
  for (float& x : v) x = normal(rng) * (rng() % 50 == 0 ? 4.0f : 1.0f);
  obs.observe(kernels::Tensor::wrap(kernels::DType::kFloat32, {20000}, v.data()));
  return obs.histogram();
}

TEST(CalibratorEntropy, MatchesNaiveKlSearch) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    const Histogram h = random_histogram(512, seed);
    for (int64_t levels : {int64_t{128}, int64_t{37}}) {
      const AmaxChoice got = entropy_amax(h, EntropyOptions{.start_bin = 128, .levels = levels});
      EXPECT_EQ(got.edge, naive_entropy_edge(h, 128, levels))
          << "seed " << seed << " levels " << levels;
      EXPECT_EQ(got.amax, h.edge(got.edge));
    }
  }
}

TEST(CalibratorEntropy, FallsBackToMaxWithoutCandidatesOrMass) {
  Histogram few{std::vector<double>(64, 0.0), 1.0};
  few.counts[10] = 3;
  EXPECT_EQ(entropy_amax(few).edge, 11);  // fewer bins than start_bin
  Histogram zeros{std::vector<double>(2048, 0.0), 1.0};
  zeros.counts[0] = 100;  // only bin 0, which the search replaces by bin 1 (empty)
  EXPECT_EQ(entropy_amax(zeros).edge, 1);
}

TEST(CalibratorBasics, MaxAndPercentileOnHandMadeCounts) {
  Histogram h{std::vector<double>(10, 0.0), 5.0};
  h.counts[0] = 50;
  h.counts[3] = 30;
  h.counts[6] = 19;
  h.counts[8] = 1;
  EXPECT_EQ(max_amax(h).edge, 9);
  EXPECT_EQ(max_amax(h).amax, 4.5);
  EXPECT_EQ(percentile_amax(h, 50.0).edge, 1);  // 50 of 100 reached in bin 0
  EXPECT_EQ(percentile_amax(h, 50.5).edge, 4);
  EXPECT_EQ(percentile_amax(h, 99.0).edge, 7);
  EXPECT_EQ(percentile_amax(h, 99.5).edge, 9);
  EXPECT_EQ(percentile_amax(h, 100.0).edge, 9);
  EXPECT_THROW(percentile_amax(h, 0.0), Error);
  EXPECT_THROW(percentile_amax(h, 100.5), Error);
}

TEST(CalibratorBasics, EmptyHistogramGivesZero) {
  const Histogram none{std::vector<double>(2048, 0.0), 0.0};
  for (Calibrator m :
       {Calibrator::kMax, Calibrator::kPercentile, Calibrator::kEntropy, Calibrator::kMse}) {
    const AmaxChoice c = calibrate_amax(none, CalibratorOptions{.method = m});
    EXPECT_EQ(c.amax, 0.0) << calibrator_name(m);
  }
  EXPECT_FALSE(calibrator_from_name("minmax").has_value());
}

TEST(CalibratorMse, MatchesBruteForceFakeQuantError) {
  // The error written directly as counts · (fake_quant(centre) − centre)², every candidate edge.
  Histogram h{std::vector<double>(256, 0.0), 1.0};
  h.counts[40] = 10;
  h.counts[100] = 3;
  double best = std::numeric_limits<double>::infinity();
  int64_t best_k = -1;
  for (int64_t k = 128; k <= 256; ++k) {
    const double s = h.edge(k) / 127.0;
    double e = 0.0;
    for (int64_t j : {int64_t{40}, int64_t{100}}) {
      const double c = (static_cast<double>(j) + 0.5) / 256.0;
      const double y = std::fmin(std::nearbyint(c / s), 127.0) * s;
      e += h.counts[static_cast<size_t>(j)] * (y - c) * (y - c);
    }
    if (e < best * (1 - 1e-12)) {
      best = e;
      best_k = k;
    }
  }
  EXPECT_EQ(mse_amax(h).edge, best_k);
}

}  // namespace
}  // namespace qforge::quant

// The Swin window partition/reverse kernels against a plain reference that pads, rolls and cuts
// windows step by step, on sizes that are and are not multiples of the window, shifted and not,
// square and oblong windows, and across thread counts.
#include "kernels/swin_window.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include <tbb/global_control.h>

#include "kernels/error.h"
#include "tests/support/random.h"

namespace qforge {
namespace {

using kernels::SwinWindowGeometry;

// `n` floats in [-2, 2) from a generator seeded by `seed`.
std::vector<float> random_values(int64_t n, uint32_t seed) {
  return testing::random_values(static_cast<size_t>(n), seed, -2.f, 2.f);
}

// Reference: zero-pad to [B, Hp, Wp, C], torch.roll by -shift (row y takes row (y + shift) mod
// Hp), then windows [B, nWh, nWw, wh, ww, C].
std::vector<float> reference_partition(const SwinWindowGeometry& g,
                                       const std::vector<float>& image) {
  const int64_t hp = g.padded_h(), wp = g.padded_w(), c = g.channels;
  std::vector<float> padded(static_cast<size_t>(g.batch * hp * wp * c), 0.f);
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t y = 0; y < g.height; ++y) {
      for (int64_t x = 0; x < g.width; ++x) {
        for (int64_t k = 0; k < c; ++k) {
          padded[static_cast<size_t>(((b * hp + y) * wp + x) * c + k)] =
              image[static_cast<size_t>(((b * g.height + y) * g.width + x) * c + k)];
        }
      }
    }
  }
  std::vector<float> rolled(padded.size());
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t y = 0; y < hp; ++y) {
      for (int64_t x = 0; x < wp; ++x) {
        const int64_t sy = (y + g.shift_h) % hp, sx = (x + g.shift_w) % wp;
        for (int64_t k = 0; k < c; ++k) {
          rolled[static_cast<size_t>(((b * hp + y) * wp + x) * c + k)] =
              padded[static_cast<size_t>(((b * hp + sy) * wp + sx) * c + k)];
        }
      }
    }
  }
  const int64_t nwh = hp / g.window_h, nww = wp / g.window_w;
  std::vector<float> out(rolled.size());
  size_t o = 0;
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t wi = 0; wi < nwh; ++wi) {
      for (int64_t wj = 0; wj < nww; ++wj) {
        for (int64_t r = 0; r < g.window_h; ++r) {
          for (int64_t q = 0; q < g.window_w; ++q) {
            const int64_t y = wi * g.window_h + r, x = wj * g.window_w + q;
            for (int64_t k = 0; k < c; ++k) {
              out[o++] = rolled[static_cast<size_t>(((b * hp + y) * wp + x) * c + k)];
            }
          }
        }
      }
    }
  }
  return out;
}

// Reference: windows back to [B, Hp, Wp, C], torch.roll by +shift (row y takes row
// (y - shift) mod Hp), crop to [B, H, W, C].
std::vector<float> reference_reverse(const SwinWindowGeometry& g,
                                     const std::vector<float>& windows) {
  const int64_t hp = g.padded_h(), wp = g.padded_w(), c = g.channels;
  const int64_t nwh = hp / g.window_h, nww = wp / g.window_w;
  std::vector<float> unrolled(windows.size());
  size_t i = 0;
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t wi = 0; wi < nwh; ++wi) {
      for (int64_t wj = 0; wj < nww; ++wj) {
        for (int64_t r = 0; r < g.window_h; ++r) {
          for (int64_t q = 0; q < g.window_w; ++q) {
            const int64_t y = wi * g.window_h + r, x = wj * g.window_w + q;
            for (int64_t k = 0; k < c; ++k) {
              unrolled[static_cast<size_t>(((b * hp + y) * wp + x) * c + k)] = windows[i++];
            }
          }
        }
      }
    }
  }
  std::vector<float> out(static_cast<size_t>(g.batch * g.height * g.width * c));
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t y = 0; y < g.height; ++y) {
      for (int64_t x = 0; x < g.width; ++x) {
        const int64_t sy = (y - g.shift_h + hp) % hp, sx = (x - g.shift_w + wp) % wp;
        for (int64_t k = 0; k < c; ++k) {
          out[static_cast<size_t>(((b * g.height + y) * g.width + x) * c + k)] =
              unrolled[static_cast<size_t>(((b * hp + sy) * wp + sx) * c + k)];
        }
      }
    }
  }
  return out;
}

SwinWindowGeometry geometry(int64_t batch, int64_t h, int64_t w, int64_t c, int64_t wh, int64_t ww,
                            int64_t sh, int64_t sw) {
  SwinWindowGeometry g;
  g.batch = batch;
  g.height = h;
  g.width = w;
  g.channels = c;
  g.window_h = wh;
  g.window_w = ww;
  g.pad_h = (wh - h % wh) % wh;
  g.pad_w = (ww - w % ww) % ww;
  g.shift_h = sh;
  g.shift_w = sw;
  return g;
}

std::vector<SwinWindowGeometry> cases() {
  return {
      geometry(2, 8, 8, 5, 3, 3, 1, 1),      // the bundled model's stage 1: 8x8 padded to 9x9
      geometry(3, 4, 4, 13, 3, 3, 1, 1),     // stage 2: 4x4 padded to 6x6
      geometry(2, 2, 2, 7, 3, 3, 0, 0),      // stage 3: one window, no shift
      geometry(1, 14, 14, 3, 7, 7, 3, 3),    // no padding, shifted
      geometry(2, 7, 5, 4, 3, 2, 2, 1),      // oblong windows, padding on both axes
      geometry(1, 13, 11, 127, 4, 4, 0, 2),  // shift along W only, odd channels
      geometry(2, 6, 9, 1, 3, 3, 0, 0),      // no padding, no shift, one channel
  };
}

std::string label(const SwinWindowGeometry& g) {
  std::string s = "B";
  s.append(std::to_string(g.batch));
  s.append(" H").append(std::to_string(g.height)).append(" W").append(std::to_string(g.width));
  s.append(" C").append(std::to_string(g.channels)).append(" window ");
  s.append(std::to_string(g.window_h)).append("x").append(std::to_string(g.window_w));
  s.append(" shift ").append(std::to_string(g.shift_h)).append(",");
  s.append(std::to_string(g.shift_w));
  return s;
}

TEST(SwinWindowKernel, PartitionMatchesPadRollPartitionReference) {
  for (int threads : {1, 3}) {
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism,
                              static_cast<size_t>(threads));
    for (const SwinWindowGeometry& g : cases()) {
      kernels::check_swin_window_geometry(g);
      const auto image = random_values(g.image_rows() * g.channels, 5);
      std::vector<float> got(static_cast<size_t>(g.window_rows() * g.channels), 42.f);
      kernels::swin_window_partition(g, image.data(), got.data());
      EXPECT_EQ(got, reference_partition(g, image)) << label(g) << ", threads " << threads;
    }
  }
}

TEST(SwinWindowKernel, ReverseMatchesReverseRollCropReference) {
  for (int threads : {1, 3}) {
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism,
                              static_cast<size_t>(threads));
    for (const SwinWindowGeometry& g : cases()) {
      const auto windows = random_values(g.window_rows() * g.channels, 9);
      std::vector<float> got(static_cast<size_t>(g.image_rows() * g.channels), 42.f);
      kernels::swin_window_reverse(g, windows.data(), got.data());
      EXPECT_EQ(got, reference_reverse(g, windows)) << label(g) << ", threads " << threads;
    }
  }
}

TEST(SwinWindowKernel, ReverseUndoesPartition) {
  for (const SwinWindowGeometry& g : cases()) {
    const auto image = random_values(g.image_rows() * g.channels, 3);
    std::vector<float> windows(static_cast<size_t>(g.window_rows() * g.channels));
    std::vector<float> back(image.size());
    kernels::swin_window_partition(g, image.data(), windows.data());
    kernels::swin_window_reverse(g, windows.data(), back.data());
    EXPECT_EQ(back, image) << label(g);
  }
}

TEST(SwinWindowKernel, PaddingRowsAreZeroAndEveryPixelAppearsOnce) {
  const SwinWindowGeometry g = geometry(2, 7, 5, 1, 3, 2, 2, 1);
  std::vector<int> seen(static_cast<size_t>(g.image_rows()), 0);
  int64_t padding = 0;
  for (int64_t r = 0; r < g.window_rows(); ++r) {
    const int64_t src = kernels::swin_partition_source_row(g, r);
    if (src < 0) {
      ++padding;
      continue;
    }
    ASSERT_LT(src, g.image_rows());
    ++seen[static_cast<size_t>(src)];
    EXPECT_EQ(kernels::swin_reverse_source_row(g, src), r);
  }
  EXPECT_EQ(padding, g.window_rows() - g.image_rows());
  for (int n : seen) EXPECT_EQ(n, 1);
}

TEST(SwinWindowKernel, InconsistentGeometryIsInvalid) {
  SwinWindowGeometry g = geometry(1, 8, 8, 4, 3, 3, 1, 1);
  g.pad_h = 0;  // 8 is not a multiple of 3
  try {
    kernels::check_swin_window_geometry(g);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalid);
    EXPECT_NE(std::string(e.what()).find("padded height a multiple of window height 3"),
              std::string::npos)
        << e.what();
  }
  g = geometry(1, 8, 8, 4, 3, 3, 9, 1);  // shift beyond the padded 9 rows
  EXPECT_THROW(kernels::check_swin_window_geometry(g), Error);
}

}  // namespace
}  // namespace qforge

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "kernels/conv_internal.h"
#include "kernels/gemm.h"
#include "kernels/packed_gemm.h"
#include "kernels/parallel.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace qforge::kernels::conv_detail {
namespace {

// Packed GEMM path (ConvPlan::packed): C[out_channels × batch·pixels] = W · X. Tap (c, kh, kw) of
// output (n, oh, ow) reads a "source plane" at a fixed offset from (oh, ow): the input itself for
// 1×1 stride-1 unpadded kernels; otherwise a zero-padded copy of each input plane split into
// stride phases (phase (a, b) holds padded rows a, a + s, ... and columns b, b + s, ...), made
// once per call, so that every tap reads a contiguous run along ow. Dilated kernels (and unequal
// strides) gather from the input directly. Each task gathers its columns straight into
// kPackedCols-wide panels, except for 1×1 kernels: their source planes are B's rows as they are,
// so the micro-kernel reads every panel that lies in one image in place (rows a plane apart)
// and only a panel that crosses images is packed.

// Rows of k per pass over a packed B block: a row panel of A (kc × 14 floats) stays in L1 while
// the B block (kc × tile_pixels) and the running sums stay in L2.
constexpr int64_t kPackedDepthBlock = 256;
// Output columns (pixels of the batch) per task: kPackedTileColumns, fewer where that would
// leave too few tasks, but not below kPackedMinTileColumns.
constexpr int64_t kPackedTileColumns = 256;
constexpr int64_t kPackedMinTileColumns = 64;
// Row panels per task at most (252 output channels): the running sums stay in L2.
constexpr int64_t kPackedMaxPanels = 18;
// Tasks per thread the planner aims for (fewer leave threads idle at the end of a layer; 4 and
// 8 ran alike on ResNet-50).
constexpr int64_t kPackedTasksPerThread = 8;
// Channels are not split into blocks of fewer row panels than this (84 channels): each block
// packs its own B, which narrow blocks do not repay (EfficientNet-B0's 80-channel projection
// ran 20-40% slower in blocks of 28 channels than OpenBLAS).
constexpr int64_t kPackedMinPanels = 6;
// Smaller convolutions stay on OpenBLAS: with 16 output channels the packed GEMM ran 25% slower
// (EfficientNet-B0's 32→16 projection), with 24 about 15% faster. So do narrow kernels larger
// than 1×1 on small planes and very shallow ones: when every B panel was packed, EfficientNet-B0's
// 1×1 projections on 14×14 and 7×7 planes and its 16- and 24-deep expansions each ran as fast
// or faster on their own, yet the network as a whole ran about 3.5% slower with them packed.
constexpr int64_t kPackedMinChannels = 24;
constexpr int64_t kPackedMinDepth = 32;
constexpr int64_t kPackedNarrowChannels = 256;
constexpr int64_t kPackedSmallPlanePixels = 28 * 28;
// 1×1 kernels read B in place and pack only the panels that cross images, which changes that
// sum: they take the packed GEMM from this depth on, on planes of any size (BM_Conv with the
// operands from memory: EfficientNet-B0's 80-192-channel projections on 14×14 and 7×7 1.6-1.9
// times faster than on OpenBLAS, its 24-deep expansion on 56×56 1.3 times; 16 deep as fast;
// the network 9% faster).
constexpr int64_t kPackedMinPointwiseDepth = 24;

int64_t packed_depth(const ConvGeometry& g) {
  return g.in_channels * g.kernel_h * g.kernel_w;
}

// The layout of the phase planes of a kPhases source (SourcePlanes, conv_internal.h).
SourcePlanes phase_planes_of(const ConvGeometry& g) {
  SourcePlanes sp;
  const int64_t s = g.stride_w;
  sp.stride = s;
  sp.phases_w = std::min(s, g.kernel_w);
  const int64_t phases_h = std::min(s, g.kernel_h);
  sp.rows = g.out_h + (g.kernel_h - 1) / s;
  sp.pitch = g.out_w + (g.kernel_w - 1) / s;
  sp.phase = sp.rows * sp.pitch;
  sp.channel = phases_h * sp.phases_w * sp.phase;
  sp.image = g.in_channels * sp.channel;
  return sp;
}

// Runs of every panel of a task: at most one per column plus one per panel.
constexpr int64_t kMaxTaskRuns = kPackedTileColumns + kPackedTileColumns / kPackedCols;

// dst[i] = src[stride·i] for i < n <= kPackedCols, reading no further than src[stride·(n-1)].
inline void strided_run(const float* src, int64_t stride, int64_t n, float* dst) {
#ifdef __AVX512F__
  if (stride == 1) {
    copy_floats(src, n, dst);
    return;
  }
  if (stride == 2) {
    const __m512i even =
        _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int64_t h = 0; h < n; h += 16) {
      const int64_t count = std::min<int64_t>(16, n - h);
      const int64_t inputs = 2 * count - 1;
      const __m512 a = _mm512_maskz_loadu_ps(lane_mask(inputs), src + 2 * h);
      const __m512 b = _mm512_maskz_loadu_ps(lane_mask(inputs - 16), src + 2 * h + 16);
      _mm512_mask_storeu_ps(dst + h, lane_mask(count), _mm512_permutex2var_ps(a, even, b));
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * stride];
}

// Stride 2 with both column phases: input rows in order, each read once into both column
// phases of its row phase (padded row p = ih + pad_top is row p / 2 of row phase p % 2); the
// rows no input reaches are zeros. Kept out of line: inlined into build_phase_planes, the
// other phase builds (1×1 stride-2 downsamples) measured 9-16% slower in BM_Conv.
[[gnu::noinline]] void build_stride2_phases(const ConvGeometry& g, const SourcePlanes& sp,
                                            int64_t phases_h, const float* x, float* out) {
  for (int64_t a = 0; a < phases_h; ++a) {
    for (int64_t r = 0; r < sp.rows; ++r) {
      const int64_t ih = 2 * r + a - g.pad_top;
      if (ih >= 0 && ih < g.in_h) continue;
      float* even = out + 2 * a * sp.phase + r * sp.pitch;
      std::fill_n(even, sp.pitch, 0.0f);
      std::fill_n(even + sp.phase, sp.pitch, 0.0f);
    }
  }
  for (int64_t ih = 0; ih < g.in_h; ++ih) {
    const int64_t p = ih + g.pad_top;
    if (p < 0 || p % 2 >= phases_h || p / 2 >= sp.rows) continue;
    float* even = out + 2 * (p % 2) * sp.phase + (p / 2) * sp.pitch;
    prefetch_row(x, ih + kPrefetchInputRows, g);
    deinterleave_row(x + ih * g.in_w, g.in_w, g.pad_left, sp.pitch, even, even + sp.phase);
  }
}

// The phase planes of input channel c of image n (x at that plane) into out.
void build_phase_planes(const ConvGeometry& g, const SourcePlanes& sp, const float* x, float* out) {
  const int64_t s = sp.stride;
  const int64_t phases_h = sp.channel / (sp.phases_w * sp.phase);
  if (s == 2 && sp.phases_w == 2) {
    build_stride2_phases(g, sp, phases_h, x, out);
    return;
  }
  for (int64_t a = 0; a < phases_h; ++a) {
    for (int64_t b = 0; b < sp.phases_w; ++b) {
      float* phase = out + (a * sp.phases_w + b) * sp.phase;
      // Phase column j is input column s·j + b - pad_left: [lo, hi) of them lie in the input.
      const int64_t offset = b - g.pad_left;
      int64_t lo, hi;
      valid_range(0, sp.pitch, s, offset, g.in_w, lo, hi);
      for (int64_t r = 0; r < sp.rows; ++r) {
        float* dst = phase + r * sp.pitch;
        const int64_t ih = s * r + a - g.pad_top;
        if (ih < 0 || ih >= g.in_h) {
          std::fill_n(dst, sp.pitch, 0.0f);
          continue;
        }
        const float* src = x + ih * g.in_w + offset;  // src[s·j]
        std::fill(dst, dst + lo, 0.0f);
        if (s == 1) {
          std::copy(src + lo, src + hi, dst + lo);
        } else {
          for (int64_t j = lo; j < hi; j += kPackedCols) {
            strided_run(src + s * j, s, std::min(kPackedCols, hi - j), dst + j);
          }
        }
        std::fill(dst + hi, dst + sp.pitch, 0.0f);
      }
    }
  }
}

// A run of one packed panel's columns that reads consecutive source columns: columns
// dst .. dst+len of the panel are image n's output pixels from (oh, ow0) on (a run crosses
// output rows only where the source pitch equals the output width).
struct PanelRun {
  int64_t dst, len, n, oh, ow0;
};

int64_t panel_runs(const ConvGeometry& g, bool flat, int64_t j0, int64_t count, PanelRun* runs) {
  const int64_t pixels = g.out_h * g.out_w;
  int64_t used = 0;
  int64_t j = j0;
  const int64_t end = j0 + count;
  while (j < end) {
    const int64_t n = j / pixels;
    const int64_t p = j % pixels;
    PanelRun run;
    run.dst = j - j0;
    run.n = n;
    run.oh = p / g.out_w;
    run.ow0 = p % g.out_w;
    run.len = flat ? std::min(end - j, pixels - p) : std::min(end - j, g.out_w - run.ow0);
    runs[used++] = run;
    j += run.len;
  }
  return used;
}

// Packs rows k0 .. k0+kc of the unrolled input for flat output columns [j0, j0+nt) into
// ceil(nt / kPackedCols) panels of kc × kPackedCols at b (columns past nt zero), reading the
// source planes one row of k at a time, so that the reads stream along the source rows.
void pack_from_planes(const ConvGeometry& g, const SourcePlanes& sp, int64_t k0, int64_t kc,
                      int64_t j0, int64_t nt, float* b) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t s = sp.stride;
  const bool flat = sp.pitch == g.out_w && sp.rows == g.out_h;
  const int64_t panels = ceil_div(nt, kPackedCols);
  PanelRun runs[kMaxTaskRuns];
  int64_t offset[kMaxTaskRuns];  // of each run's first source element for tap (0, 0, 0)
  int64_t used = 0;
  for (int64_t pnl = 0; pnl < panels; ++pnl) {
    const int64_t count = std::min(kPackedCols, nt - pnl * kPackedCols);
    const int64_t added = panel_runs(g, flat, j0 + pnl * kPackedCols, count, runs + used);
    for (int64_t i = used; i < used + added; ++i) {
      runs[i].dst += pnl * kc * kPackedCols;  // into the packed block
      offset[i] = runs[i].n * sp.image + runs[i].oh * sp.pitch + runs[i].ow0;
    }
    used += added;
  }
  const int64_t tail = nt - (panels - 1) * kPackedCols;  // columns of the last panel
  int64_t c = k0 / taps;
  int64_t kh = k0 % taps / g.kernel_w;
  int64_t kw = k0 % g.kernel_w;
  for (int64_t kk = 0; kk < kc; ++kk) {
    float* row = b + kk * kPackedCols;
    const float* src = sp.base + c * sp.channel + ((kh % s) * sp.phases_w + kw % s) * sp.phase +
                       (kh / s) * sp.pitch + kw / s;
    for (int64_t i = 0; i < used; ++i) copy_floats(src + offset[i], runs[i].len, row + runs[i].dst);
    if (tail < kPackedCols) {
      float* last = row + (panels - 1) * kc * kPackedCols;
      std::fill(last + tail, last + kPackedCols, 0.0f);
    }
    if (++kw == g.kernel_w) {
      kw = 0;
      if (++kh == g.kernel_h) {
        kh = 0;
        ++c;
      }
    }
  }
}

// The same panels gathered from the input per tap, zeros where a tap falls in the padding (any
// stride and dilation), one row of k at a time.
void pack_gathered(const ConvGeometry& g, const float* x, int64_t k0, int64_t kc, int64_t j0,
                   int64_t nt, float* b) {
  const int64_t in_plane = g.in_h * g.in_w;
  const int64_t in_image = g.in_channels * in_plane;
  const int64_t taps = g.kernel_h * g.kernel_w;
  const int64_t panels = ceil_div(nt, kPackedCols);
  PanelRun runs[kMaxTaskRuns];
  int64_t used = 0;
  for (int64_t pnl = 0; pnl < panels; ++pnl) {
    const int64_t count = std::min(kPackedCols, nt - pnl * kPackedCols);
    const int64_t added = panel_runs(g, false, j0 + pnl * kPackedCols, count, runs + used);
    for (int64_t i = used; i < used + added; ++i) runs[i].dst += pnl * kc * kPackedCols;
    used += added;
  }
  const int64_t tail = nt - (panels - 1) * kPackedCols;  // columns of the last panel
  int64_t c = k0 / taps;
  int64_t kh = k0 % taps / g.kernel_w;
  int64_t kw = k0 % g.kernel_w;
  for (int64_t kk = 0; kk < kc; ++kk) {
    float* row = b + kk * kPackedCols;
    const int64_t offset = kw * g.dilation_w - g.pad_left;
    int64_t lo_all, hi_all;
    valid_range(0, g.out_w, g.stride_w, offset, g.in_w, lo_all, hi_all);
    const float* xc = x + c * in_plane;
    const int64_t row_offset = kh * g.dilation_h - g.pad_top;
    for (int64_t i = 0; i < used; ++i) {
      const PanelRun& r = runs[i];
      float* out = row + r.dst - r.ow0;  // out[ow]
      const int64_t ow1 = r.ow0 + r.len;
      const int64_t ih = r.oh * g.stride_h + row_offset;
      const bool inside = ih >= 0 && ih < g.in_h;
      const int64_t lo = inside ? std::clamp(lo_all, r.ow0, ow1) : ow1;
      const int64_t hi = inside ? std::clamp(hi_all, lo, ow1) : ow1;
      if (lo > r.ow0 || hi < ow1) std::fill(out + r.ow0, out + ow1, 0.0f);
      if (lo < hi) {
        const float* src = xc + r.n * in_image + ih * g.in_w + offset;  // src[ow·stride]
        strided_run(src + lo * g.stride_w, g.stride_w, hi - lo, out + lo);
      }
    }
    if (tail < kPackedCols) {
      float* last = row + (panels - 1) * kc * kPackedCols;
      std::fill(last + tail, last + kPackedCols, 0.0f);
    }
    if (++kw == g.kernel_w) {
      kw = 0;
      if (++kh == g.kernel_h) {
        kh = 0;
        ++c;
      }
    }
  }
}

// Scratch of one task: the packed B block and, when k takes several passes, the running sums.
size_t packed_slot_bytes(const ConvPlan& plan) {
  const int64_t k = packed_depth(plan.geometry);
  const int64_t cols = round_up(plan.tile_pixels, kPackedCols);
  size_t bytes = aligned_bytes(static_cast<size_t>(plan.depth_block * cols) * sizeof(float));
  if (k > plan.depth_block) {
    bytes += aligned_bytes(static_cast<size_t>(plan.channel_block * cols) * sizeof(float));
  }
  return bytes;
}

}  // namespace

PlaneSource plane_source(const ConvGeometry& g) {
  if (g.dilation_h != 1 || g.dilation_w != 1 || g.stride_h != g.stride_w) {
    return PlaneSource::kGather;
  }
  const bool pointwise = g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.pad_top == 0 &&
                         g.pad_left == 0 && g.out_h == g.in_h && g.out_w == g.in_w;
  return pointwise ? PlaneSource::kInput : PlaneSource::kPhases;
}

size_t phase_plane_bytes(const ConvGeometry& g) {
  if (plane_source(g) != PlaneSource::kPhases) return 0;
  return aligned_bytes(static_cast<size_t>(g.batch * phase_planes_of(g).image) * sizeof(float));
}

SourcePlanes source_planes(const ConvGeometry& g, const float* x, float* phases) {
  SourcePlanes sp;
  if (plane_source(g) == PlaneSource::kInput) {
    sp.base = x;
    sp.channel = g.in_h * g.in_w;
    sp.image = g.in_channels * sp.channel;
    sp.rows = g.in_h;
    sp.pitch = g.in_w;
    return sp;
  }
  sp = phase_planes_of(g);
  sp.base = phases;
  const int64_t in_plane = g.in_h * g.in_w;
  parallel_for(g.batch * g.in_channels, 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      build_phase_planes(g, sp, x + i * in_plane, phases + i * sp.channel);
    }
  });
  return sp;
}

bool plan_packed(ConvPlan& plan, const ConvPlanOptions& options) {
  const ConvGeometry& g = plan.geometry;
  const int64_t k = g.in_channels / g.group * g.kernel_h * g.kernel_w;
  const int64_t pixels = g.out_h * g.out_w;
  const bool pointwise = g.kernel_h == 1 && g.kernel_w == 1 && g.dilation_h == 1 &&
                         g.dilation_w == 1 && g.stride_h == g.stride_w;
  const bool pays = g.out_channels >= kPackedMinChannels &&
                    (pointwise ? k >= kPackedMinPointwiseDepth
                               : k >= kPackedMinDepth && !(g.out_channels < kPackedNarrowChannels &&
                                                           pixels < kPackedSmallPlanePixels));
  const bool packed =
      options.gemm == ConvGemm::kPacked || (options.gemm == ConvGemm::kAuto && pays);
  if (!packed || !packed_gemm_available() || g.group != 1) return false;
  plan.packed = true;
  plan.depth_block = split_evenly(k, kPackedDepthBlock, 1).first;
  // Narrower tiles (down to kPackedMinTileColumns) before channel blocks: every channel block
  // packs its own copy of the input columns, so channels are split only as far as it takes
  // to give each thread several tasks.
  const int64_t total = g.batch * pixels;
  const int64_t tasks_wanted = kPackedTasksPerThread * plan.slots;
  const int64_t tile_limit = std::clamp(round_up(ceil_div(total, tasks_wanted), kPackedCols),
                                        kPackedMinTileColumns, kPackedTileColumns);
  std::tie(plan.tile_pixels, plan.pixel_tiles) = split_evenly(total, tile_limit, kPackedCols);
  const int64_t panels = ceil_div(g.out_channels, kPackedRows);
  const int64_t wanted = ceil_div(tasks_wanted, plan.pixel_tiles);
  const int64_t blocks = std::clamp<int64_t>(std::max(wanted, ceil_div(panels, kPackedMaxPanels)),
                                             1, std::max<int64_t>(1, panels / kPackedMinPanels));
  int64_t per_block;
  std::tie(per_block, plan.channel_blocks) = split_evenly(panels, ceil_div(panels, blocks), 1);
  plan.channel_block = per_block * kPackedRows;
  return true;
}

size_t packed_prepared_floats(const ConvPlan& plan) {
  return packed_rows_floats(plan.geometry.out_channels, packed_depth(plan.geometry));
}

void prepare_packed_weights(const ConvPlan& plan, const float* w, float* prepared) {
  const int64_t k = packed_depth(plan.geometry);
  pack_rows_parallel(w, k, plan.geometry.out_channels, k, prepared);
}

size_t packed_workspace_bytes(const ConvPlan& plan, ConvWeightForm form) {
  const size_t packed = form == ConvWeightForm::kRaw
                            ? aligned_bytes(packed_prepared_floats(plan) * sizeof(float))
                            : 0;
  return packed + phase_plane_bytes(plan.geometry) +
         static_cast<size_t>(plan.slots) * packed_slot_bytes(plan);
}

void conv_packed(const ConvPlan& plan, const float* x, const float* w, const float* prepared,
                 const float* bias, float* y, std::byte* workspace, const ConvEpilogue& e) {
  const ConvGeometry& g = plan.geometry;
  const int64_t k = packed_depth(g);
  const int64_t m = g.out_channels;
  const int64_t pixels = g.out_h * g.out_w;
  const int64_t out_image = m * pixels;
  const int64_t total = g.batch * pixels;
  const float* a = prepared;
  if (!a) {
    float* packed = reinterpret_cast<float*>(workspace);
    pack_rows_parallel(w, k, m, k, packed);
    a = packed;
    workspace += aligned_bytes(packed_rows_floats(m, k) * sizeof(float));
  }
  const PlaneSource source = plane_source(g);
  SourcePlanes sp;
  if (source != PlaneSource::kGather) {
    sp = source_planes(g, x, reinterpret_cast<float*>(workspace));
    workspace += phase_plane_bytes(g);
  }
  // A 1×1 kernel's source planes hold its B rows as they are: channel c's plane is row c.
  const bool in_place = source != PlaneSource::kGather && g.kernel_h == 1 && g.kernel_w == 1 &&
                        sp.pitch == g.out_w && sp.rows == g.out_h;
  const bool finish = !is_identity(e);
  const int64_t ldp = round_up(plan.tile_pixels, kPackedCols);  // running sums' row pitch
  const int64_t tasks = plan.pixel_tiles * plan.channel_blocks;
  parallel_tasks_with_scratch(
      tasks, plan.slots, packed_slot_bytes(plan), workspace, [&](int64_t t, std::byte* scratch) {
        const int64_t tile = t / plan.channel_blocks;
        const int64_t block = t % plan.channel_blocks;
        const int64_t j0 = tile * plan.tile_pixels;
        const int64_t nt = std::min(plan.tile_pixels, total - j0);
        const int64_t m0 = block * plan.channel_block;
        const int64_t mrows = std::min(plan.channel_block, m - m0);
        const int64_t col_panels = ceil_div(nt, kPackedCols);
        const int64_t row_panels = ceil_div(mrows, kPackedRows);
        float* b = reinterpret_cast<float*>(scratch);
        float* sums = reinterpret_cast<float*>(
            scratch + aligned_bytes(static_cast<size_t>(plan.depth_block * ldp) * sizeof(float)));
        for (int64_t k0 = 0; k0 < k; k0 += plan.depth_block) {
          const int64_t kc = std::min(plan.depth_block, k - k0);
          const bool first = k0 == 0;
          const bool last = k0 + kc == k;
          // Where each column panel's k rows are read, ldb[cp] floats apart: the packed block,
          // or, for a 1×1 kernel, the source planes themselves wherever the panel lies in one
          // image (only a panel that crosses images is packed).
          const float* b_rows[kPackedTileColumns / kPackedCols];
          int64_t ldb[kPackedTileColumns / kPackedCols];
          for (int64_t cp = 0; cp < col_panels; ++cp) {
            b_rows[cp] = b + cp * kc * kPackedCols;
            ldb[cp] = kPackedCols;
          }
          if (source == PlaneSource::kGather) {
            pack_gathered(g, x, k0, kc, j0, nt, b);
          } else if (!in_place) {
            pack_from_planes(g, sp, k0, kc, j0, nt, b);
          } else {
            for (int64_t cp = 0; cp < col_panels; ++cp) {
              const int64_t jj = j0 + cp * kPackedCols;
              const int64_t cols = std::min(kPackedCols, nt - cp * kPackedCols);
              const int64_t n = jj / pixels;
              const int64_t p = jj % pixels;
              if (p + cols <= pixels) {
                b_rows[cp] = sp.base + n * sp.image + k0 * sp.channel + p;
                ldb[cp] = sp.channel;
              } else {
                pack_from_planes(g, sp, k0, kc, jj, cols, b + cp * kc * kPackedCols);
              }
            }
          }
          for (int64_t rp = 0; rp < row_panels; ++rp) {
            const int64_t r0 = m0 + rp * kPackedRows;  // first output channel of the panel
            const int64_t rows = std::min(kPackedRows, m0 + mrows - r0);
            const float* ap = a + (r0 / kPackedRows) * k * kPackedRows + k0 * kPackedRows;
            for (int64_t cp = 0; cp < col_panels; ++cp) {
              const int64_t cols = std::min(kPackedCols, nt - cp * kPackedCols);
              const float* bp = b_rows[cp];
              float* sp_tile = sums + (rp * kPackedRows) * ldp + cp * kPackedCols;
              const float* c_in = first ? nullptr : sp_tile;
              if (!last) {
                packed_gemm_tile(kc, ap, bp, ldb[cp], rows, cols, c_in, ldp, sp_tile, ldp, nullptr);
                continue;
              }
              const int64_t jj = j0 + cp * kPackedCols;
              const int64_t n = jj / pixels;
              const int64_t p = jj % pixels;
              TileEpilogue te;
              te.bias = bias ? bias + r0 : nullptr;
              te.finish = finish;
              te.scale = e.scale ? e.scale + r0 : nullptr;
              te.shift = e.shift ? e.shift + r0 : nullptr;
              te.ld_residual = pixels;
              te.lo = e.clamp_min;
              te.hi = e.clamp_max;
              if (p + cols <= pixels) {
                const int64_t at = n * out_image + r0 * pixels + p;
                te.residual = e.residual ? e.residual + at : nullptr;
                packed_gemm_tile(kc, ap, bp, ldb[cp], rows, cols, c_in, ldp, y + at, pixels, &te);
                activate_runs(e, y + at, rows, cols, pixels);
                continue;
              }
              // The tile spans images: sums to a local tile, then scattered per image.
              alignas(64) float tile_out[kPackedRows * kPackedCols];
              packed_gemm_tile(kc, ap, bp, ldb[cp], rows, cols, c_in, ldp, tile_out, kPackedCols,
                               nullptr);
              for (int64_t j = 0; j < cols;) {
                const int64_t nj = (jj + j) / pixels;
                const int64_t pj = (jj + j) % pixels;
                const int64_t len = std::min(cols - j, pixels - pj);
                const int64_t at = nj * out_image + r0 * pixels + pj;
                te.residual = e.residual ? e.residual + at : nullptr;
                store_tile_with_epilogue(tile_out + j, kPackedCols, rows, len, y + at, pixels, te);
                activate_runs(e, y + at, rows, len, pixels);
                j += len;
              }
            }
          }
        }
      });
}

}  // namespace qforge::kernels::conv_detail

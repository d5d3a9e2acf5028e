// 3-D convolutions as 2-D convolutions of depth-tap stacks (kernels/conv_depth.h).
#include "kernels/conv_depth.h"

#include <algorithm>
#include <cstring>

#include "kernels/parallel.h"

namespace qforge::kernels {
namespace {

// Grain of the copy loops: about 64 KiB of floats per chunk.
int64_t grain_for(int64_t plane) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane));
}

}  // namespace

ConvGeometry depth_stacked_geometry(const ConvGeometry& plane, const ConvDepth& depth) {
  ConvGeometry g = plane;
  g.batch = plane.batch * depth.out;
  g.in_channels = plane.in_channels * depth.kernel;
  return g;
}

void stack_depth_taps(const float* x, float* stacks, int64_t batch, int64_t channels, int64_t plane,
                      const ConvDepth& depth) {
  const auto bytes = static_cast<size_t>(plane) * sizeof(float);
  // One item per (n, d, c): its kernel taps' planes.
  parallel_for(batch * depth.out * channels, grain_for(plane * depth.kernel),
               [&](int64_t begin, int64_t end) {
                 for (int64_t i = begin; i < end; ++i) {
                   const int64_t c = i % channels;
                   const int64_t d = (i / channels) % depth.out;
                   const int64_t n = i / (channels * depth.out);
                   float* out = stacks + i * depth.kernel * plane;
                   for (int64_t t = 0; t < depth.kernel; ++t, out += plane) {
                     const int64_t s = depth_source_slice(depth, d, t);
                     if (s < 0) {
                       std::memset(out, 0, bytes);
                     } else {
                       std::memcpy(out, x + ((n * channels + c) * depth.in + s) * plane, bytes);
                     }
                   }
                 }
               });
}

void unstack_depth_taps(const float* stacks, float* dx, int64_t batch, int64_t channels,
                        int64_t plane, const ConvDepth& depth) {
  // One item per input slice (n, c, s): the taps that read it, output slices in order, summed
  // into it in that fixed order.
  parallel_for(batch * channels * depth.in, grain_for(plane * depth.kernel),
               [&](int64_t begin, int64_t end) {
                 for (int64_t i = begin; i < end; ++i) {
                   const int64_t s = i % depth.in;
                   const int64_t c = (i / depth.in) % channels;
                   const int64_t n = i / (depth.in * channels);
                   float* out = dx + i * plane;
                   bool written = false;
                   for (int64_t d = 0; d < depth.out; ++d) {
                     for (int64_t t = 0; t < depth.kernel; ++t) {
                       if (depth_source_slice(depth, d, t) != s) continue;
                       const float* g =
                           stacks +
                           (((n * depth.out + d) * channels + c) * depth.kernel + t) * plane;
                       if (!written) {
                         std::memcpy(out, g, static_cast<size_t>(plane) * sizeof(float));
                         written = true;
                       } else {
                         for (int64_t p = 0; p < plane; ++p) out[p] += g[p];
                       }
                     }
                   }
                   if (!written) std::memset(out, 0, static_cast<size_t>(plane) * sizeof(float));
                 }
               });
}

namespace {

// [N, C, D, P] -> [N·D, C, P], or back with `to_batch` false: item i is (n, c, d) of the
// [N, C, D, P] side, one plane copied.
void move_depth(const float* x, float* y, int64_t batch, int64_t channels, int64_t depth,
                int64_t plane, bool to_batch) {
  const auto bytes = static_cast<size_t>(plane) * sizeof(float);
  parallel_for(batch * channels * depth, grain_for(plane), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t d = i % depth;
      const int64_t c = (i / depth) % channels;
      const int64_t n = i / (depth * channels);
      const int64_t batched = ((n * depth + d) * channels + c) * plane;
      if (to_batch) {
        std::memcpy(y + batched, x + i * plane, bytes);
      } else {
        std::memcpy(y + i * plane, x + batched, bytes);
      }
    }
  });
}

}  // namespace

void depth_to_batch(const float* x, float* y, int64_t batch, int64_t channels, int64_t depth,
                    int64_t plane) {
  move_depth(x, y, batch, channels, depth, plane, true);
}

void batch_to_depth(const float* x, float* y, int64_t batch, int64_t channels, int64_t depth,
                    int64_t plane) {
  move_depth(x, y, batch, channels, depth, plane, false);
}

}  // namespace qforge::kernels

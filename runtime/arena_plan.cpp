#include "runtime/arena_plan.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/tensor.h"

namespace qforge::runtime {

size_t arena_aligned(size_t bytes) {
  return (bytes + kernels::kTensorAlignment - 1) / kernels::kTensorAlignment *
         kernels::kTensorAlignment;
}

size_t place_in_arena(std::span<ArenaBuffer> buffers) {
  std::vector<size_t> by_size(buffers.size());
  for (size_t i = 0; i < by_size.size(); ++i) by_size[i] = i;
  std::stable_sort(by_size.begin(), by_size.end(),
                   [&](size_t a, size_t b) { return buffers[a].bytes > buffers[b].bytes; });
  size_t arena_bytes = 0;
  std::vector<size_t> placed;
  std::vector<std::pair<size_t, size_t>> busy;
  for (size_t idx : by_size) {
    ArenaBuffer& b = buffers[idx];
    busy.clear();
    for (size_t p : placed) {
      const ArenaBuffer& o = buffers[p];
      if (o.first <= b.last && b.first <= o.last) busy.emplace_back(o.offset, o.offset + o.bytes);
    }
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (auto [lo, hi] : busy) {
      if (offset + b.bytes <= lo) break;
      offset = std::max(offset, hi);
    }
    b.offset = offset;
    arena_bytes = std::max(arena_bytes, offset + b.bytes);
    placed.push_back(idx);
  }
  return arena_bytes;
}

}  // namespace qforge::runtime

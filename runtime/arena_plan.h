// Placing buffers of known lifetimes in one arena, so that buffers never alive at the same time
// share memory: the inference executor's plan (runtime/executor.h) and the training executor's
// (runtime/training.h), over forward and backward together, both place theirs here.
#pragma once

#include <cstddef>
#include <span>

namespace qforge::runtime {

struct ArenaBuffer {
  size_t bytes = 0;   // a multiple of kernels::kTensorAlignment (arena_aligned)
  int first = 0;      // the first time the buffer is written
  int last = 0;       // the last time it is read, inclusive
  size_t offset = 0;  // set by place_in_arena
};

// `bytes` rounded up to kernels::kTensorAlignment, so that every placed buffer stays aligned.
size_t arena_aligned(size_t bytes);

// Places the buffers, largest first, each at the lowest offset that no buffer already placed
// occupies at any time of its lifetime: two buffers whose lifetimes share a time never overlap.
// Returns the arena's size in bytes.
size_t place_in_arena(std::span<ArenaBuffer> buffers);

}  // namespace qforge::runtime

// A row-major walk over an index space that keeps the element offsets of a few strided operands,
// shared by the broadcasting and data-movement kernels. Lives on the stack: no allocation.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "kernels/error.h"

namespace qforge::kernels {

// The walk stores its index per axis in a fixed array; planners merge axes first, so this only
// bounds what they cannot merge.
inline constexpr int kMaxStridedRank = 16;

template <int kOperands>
class StridedIndex {
 public:
  // Positions the walk at flat element `position` of `dims`; strides[k][d] is operand k's
  // element stride along axis d.
  StridedIndex(std::span<const int64_t> dims, const std::array<const int64_t*, kOperands>& strides,
               int64_t position)
      : dims_(dims), strides_(strides) {
    if (dims.size() > static_cast<size_t>(kMaxStridedRank)) {
      throw_internal("StridedIndex: rank above kMaxStridedRank");
    }
    for (int d = static_cast<int>(dims.size()) - 1; d >= 0; --d) {
      index_[d] = position % dims[d];
      position /= dims[d];
      for (int k = 0; k < kOperands; ++k) offset_[k] += index_[d] * strides_[k][d];
    }
  }

  int64_t offset(int k) const { return offset_[k]; }
  // Index along the last axis.
  int64_t inner_index() const { return index_[dims_.size() - 1]; }

  // Moves to the first element of the next row (the next index of every axis but the last).
  void next_row() {
    const int inner = static_cast<int>(dims_.size()) - 1;
    for (int k = 0; k < kOperands; ++k) offset_[k] -= index_[inner] * strides_[k][inner];
    index_[inner] = 0;
    for (int d = inner - 1; d >= 0; --d) {
      ++index_[d];
      for (int k = 0; k < kOperands; ++k) offset_[k] += strides_[k][d];
      if (index_[d] < dims_[d]) return;
      for (int k = 0; k < kOperands; ++k) offset_[k] -= index_[d] * strides_[k][d];
      index_[d] = 0;
    }
  }

 private:
  std::span<const int64_t> dims_;
  std::array<const int64_t*, kOperands> strides_;
  std::array<int64_t, kMaxStridedRank> index_{};
  std::array<int64_t, kOperands> offset_{};
};

}  // namespace qforge::kernels

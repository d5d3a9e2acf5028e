// Coordinate and element helpers shared by the reference kernels (inline; tests only).
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/tensor.h"

namespace qforge::kernels::reference {

inline Shape unravel(int64_t flat, const Shape& shape) {
  Shape index(shape.size(), 0);
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return index;
}

inline int64_t ravel(const Shape& index, const Shape& shape) {
  int64_t flat = 0;
  for (size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + index[d];
  return flat;
}

// Flat index into `in` of the element that broadcasts to output coordinates `out_index`.
inline int64_t broadcast_source(const Shape& out_index, const Shape& in_shape) {
  const size_t lead = out_index.size() - in_shape.size();
  Shape index(in_shape.size());
  for (size_t d = 0; d < in_shape.size(); ++d) {
    index[d] = in_shape[d] == 1 ? 0 : out_index[lead + d];
  }
  return ravel(index, in_shape);
}

inline Shape numpy_broadcast(std::vector<Shape> shapes) {
  size_t rank = 0;
  for (const Shape& s : shapes) rank = std::max(rank, s.size());
  Shape out(rank, 1);
  for (Shape& s : shapes) {
    s.insert(s.begin(), rank - s.size(), 1);
    for (size_t d = 0; d < rank; ++d) {
      if (s[d] != 1) {
        if (out[d] != 1 && out[d] != s[d]) throw_internal("reference: shapes do not broadcast");
        out[d] = s[d];
      }
    }
  }
  return out;
}

inline double get_double(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kFloat32:
      return t.data<float>()[i];
    case DType::kInt64:
      return static_cast<double>(t.data<int64_t>()[i]);
    case DType::kInt32:
      return t.data<int32_t>()[i];
    case DType::kInt8:
      return t.data<int8_t>()[i];
    case DType::kUInt8:
    case DType::kBool:
      return static_cast<const uint8_t*>(t.raw())[i];
  }
  return 0;
}

inline int64_t get_int(const Tensor& t, int64_t i) {
  if (t.dtype() == DType::kFloat32) throw_internal("reference: float read as integer");
  if (t.dtype() == DType::kInt64) return t.data<int64_t>()[i];
  return static_cast<int64_t>(get_double(t, i));
}

inline void set_double(Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::kFloat32:
      t.data<float>()[i] = static_cast<float>(v);
      return;
    case DType::kInt64:
      t.data<int64_t>()[i] = static_cast<int64_t>(v);
      return;
    case DType::kInt32:
      t.data<int32_t>()[i] = static_cast<int32_t>(v);
      return;
    case DType::kInt8:
      t.data<int8_t>()[i] = static_cast<int8_t>(v);
      return;
    case DType::kUInt8:
      static_cast<uint8_t*>(t.raw())[i] = static_cast<uint8_t>(v);
      return;
    case DType::kBool:
      static_cast<uint8_t*>(t.raw())[i] = v != 0 ? 1 : 0;
      return;
  }
}

// Integer results wrap to the tensor's width, as two's complement arithmetic does.
inline void set_int(Tensor& t, int64_t i, int64_t v) {
  switch (t.dtype()) {
    case DType::kInt64:
      t.data<int64_t>()[i] = v;
      return;
    case DType::kInt32:
      t.data<int32_t>()[i] = static_cast<int32_t>(v);
      return;
    case DType::kInt8:
      t.data<int8_t>()[i] = static_cast<int8_t>(v);
      return;
    case DType::kUInt8:
      static_cast<uint8_t*>(t.raw())[i] = static_cast<uint8_t>(v);
      return;
    case DType::kBool:
      static_cast<uint8_t*>(t.raw())[i] = v != 0 ? 1 : 0;
      return;
    case DType::kFloat32:
      t.data<float>()[i] = static_cast<float>(v);
      return;
  }
}

inline void copy_element(const Tensor& src, int64_t si, Tensor& dst, int64_t di) {
  const size_t esz = dtype_size(src.dtype());
  std::memcpy(static_cast<std::byte*>(dst.raw()) + di * static_cast<int64_t>(esz),
              static_cast<const std::byte*>(src.raw()) + si * static_cast<int64_t>(esz), esz);
}

}  // namespace qforge::kernels::reference

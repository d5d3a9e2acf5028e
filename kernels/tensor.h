// Tensor: a dtype, a static shape and contiguous, 64-byte aligned storage shared between views.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/error.h"

namespace qforge::kernels {

enum class DType : uint8_t { kFloat32, kInt64, kInt32, kInt8, kUInt8, kBool };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::kFloat32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::kInt64;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::kInt32;
}
template <>
constexpr DType dtype_of<int8_t>() {
  return DType::kInt8;
}
template <>
constexpr DType dtype_of<uint8_t>() {
  return DType::kUInt8;
}
// kBool is stored one byte per element (0 or 1) and accessed as uint8_t or bool.

using Shape = std::vector<int64_t>;

// The element count; an Invalid error when it overflows 64 bits (a shape from a malformed file).
int64_t shape_numel(std::span<const int64_t> shape);
std::string shape_str(std::span<const int64_t> shape);  // "[1, 3, 32, 32]"
// Row-major strides in elements.
Shape contiguous_strides(std::span<const int64_t> shape);

inline constexpr size_t kTensorAlignment = 64;

// Owns aligned bytes, or points at bytes owned elsewhere (an arena, an mmap).
class Storage {
 public:
  explicit Storage(size_t nbytes);         // aligned (64 bytes; pages when large), zero-filled
  Storage(void* external, size_t nbytes);  // not owned
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  std::byte* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }

 private:
  std::byte* data_ = nullptr;
  size_t nbytes_ = 0;
  bool owned_ = false;
  size_t mapped_bytes_ = 0;  // > 0: an anonymous mapping of this size (large blocks)
};

// Always contiguous and row-major; views share storage and differ by offset and shape.
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape);  // allocates, zero-filled
  // A tensor over memory the caller keeps alive (no copy).
  static Tensor wrap(DType dtype, Shape shape, void* data);

  template <class T>
  static Tensor from_vector(Shape shape, const std::vector<T>& values);
  static Tensor scalar_f32(float value);
  static Tensor scalar_i64(int64_t value);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int axis) const;  // negative axes count from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* raw() { return storage_ ? storage_->data() + offset_ : nullptr; }
  const void* raw() const { return storage_ ? storage_->data() + offset_ : nullptr; }
  template <class T>
  T* data() {
    check_dtype<T>();
    return static_cast<T*>(raw());
  }
  template <class T>
  const T* data() const {
    check_dtype<T>();
    return static_cast<const T*>(raw());
  }
  template <class T>
  std::span<T> span() {
    return {data<T>(), static_cast<size_t>(numel())};
  }
  template <class T>
  std::span<const T> span() const {
    return {data<T>(), static_cast<size_t>(numel())};
  }

  // A view with another shape of the same element count.
  Tensor reshaped(Shape shape) const;
  // A view of rows [begin, end) along axis 0.
  Tensor slice_rows(int64_t begin, int64_t end) const;
  // A deep copy with its own storage.
  Tensor clone() const;
  // Copies the elements of src (same dtype and element count) into this tensor.
  void copy_from(const Tensor& src);
  // Reads any integer or bool tensor as int64 values (shape tensors, axes, indices).
  std::vector<int64_t> to_int64_vector() const;
  std::vector<float> to_float_vector() const;  // float32 only

  std::string describe() const;  // "float32[1, 3, 32, 32]"

 private:
  template <class T>
  void check_dtype() const {
    if constexpr (std::is_same_v<T, bool>) {
      if (dtype_ != DType::kBool) dtype_mismatch("bool");
    } else if constexpr (std::is_same_v<T, uint8_t>) {
      if (dtype_ != DType::kUInt8 && dtype_ != DType::kBool) dtype_mismatch("uint8");
    } else {
      if (dtype_ != dtype_of<T>()) dtype_mismatch(dtype_name(dtype_of<T>()));
    }
  }
  [[noreturn]] void dtype_mismatch(const char* wanted) const;

  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  DType dtype_ = DType::kFloat32;
  Shape shape_;
};

template <class T>
Tensor Tensor::from_vector(Shape shape, const std::vector<T>& values) {
  Tensor t(dtype_of<T>(), std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.numel()) {
    throw_internal("Tensor::from_vector: " + std::to_string(values.size()) + " values for shape " +
                   shape_str(t.shape()));
  }
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

}  // namespace qforge::kernels

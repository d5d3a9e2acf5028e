// Tensor storage, views and conversions.
#include "kernels/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>

#include <sys/mman.h>
#include <unistd.h>

namespace qforge::kernels {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kInt64:
      return 8;
    case DType::kInt32:
      return 4;
    case DType::kInt8:
      return 1;
    case DType::kUInt8:
      return 1;
    case DType::kBool:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kInt64:
      return "int64";
    case DType::kInt32:
      return "int32";
    case DType::kInt8:
      return "int8";
    case DType::kUInt8:
      return "uint8";
    case DType::kBool:
      return "bool";
  }
  return "?";
}

int64_t shape_numel(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      throw_invalid("shape " + shape_str(shape) + " holds more elements than a 64-bit count");
    }
  }
  return n;
}

std::string shape_str(std::span<const int64_t> shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

Shape contiguous_strides(std::span<const int64_t> shape) {
  Shape strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) {
    strides[i] = strides[i + 1] * shape[i + 1];
  }
  return strides;
}

namespace {

// Blocks from this size on (weights, prepared weights, the executor's arena) are mapped from the
// kernel directly: its pages arrive zero-filled, so there is no memset pass over fresh memory,
// they may be 2 MiB pages (fewer faults on first touch), and they go back to the system when
// freed instead of staying in the heap.
constexpr size_t kMappedBytes = size_t{4} << 20;

size_t page_size() {
  static const size_t size = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

}  // namespace

Storage::Storage(size_t nbytes) : nbytes_(nbytes), owned_(true) {
  size_t padded =
      (std::max<size_t>(nbytes, 1) + kTensorAlignment - 1) / kTensorAlignment * kTensorAlignment;
  if (padded >= kMappedBytes) {
    mapped_bytes_ = (padded + page_size() - 1) / page_size() * page_size();
    void* p =
        ::mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    ::madvise(p, mapped_bytes_, MADV_HUGEPAGE);  // a hint; refused where THP is off
    data_ = static_cast<std::byte*>(p);
    return;
  }
  data_ = static_cast<std::byte*>(std::aligned_alloc(kTensorAlignment, padded));
  if (!data_) throw std::bad_alloc();
  std::memset(data_, 0, padded);
}

Storage::Storage(void* external, size_t nbytes)
    : data_(static_cast<std::byte*>(external)), nbytes_(nbytes), owned_(false) {}

Storage::~Storage() {
  if (!owned_) return;
  if (mapped_bytes_ > 0) {
    ::munmap(data_, mapped_bytes_);
  } else {
    std::free(data_);
  }
}

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) {
    if (d < 0) throw_internal("Tensor: negative dimension in " + shape_str(shape_));
  }
  storage_ = std::make_shared<Storage>(nbytes());
}

Tensor Tensor::wrap(DType dtype, Shape shape, void* data) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.storage_ = std::make_shared<Storage>(data, t.nbytes());
  return t;
}

Tensor Tensor::scalar_f32(float value) {
  return from_vector<float>({}, {value});
}
Tensor Tensor::scalar_i64(int64_t value) {
  return from_vector<int64_t>({}, {value});
}

int64_t Tensor::dim(int axis) const {
  int r = rank();
  int a = axis < 0 ? axis + r : axis;
  if (a < 0 || a >= r) {
    throw_internal("Tensor::dim: axis " + std::to_string(axis) + " out of range for " + describe());
  }
  return shape_[a];
}

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel()) {
    throw_internal("Tensor::reshaped: " + describe() + " to " + shape_str(shape));
  }
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  if (rank() == 0 || begin < 0 || end > shape_[0] || begin > end) {
    throw_internal("Tensor::slice_rows: [" + std::to_string(begin) + ", " + std::to_string(end) +
                   ") of " + describe());
  }
  Tensor t = *this;
  int64_t row = rank() > 0 ? shape_numel(std::span(shape_).subspan(1)) : 1;
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::clone() const {
  Tensor t(dtype_, shape_);
  if (nbytes()) std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.dtype_ != dtype_ || src.numel() != numel()) {
    throw_internal("Tensor::copy_from: " + src.describe() + " into " + describe());
  }
  if (nbytes()) std::memmove(raw(), src.raw(), nbytes());
}

std::vector<int64_t> Tensor::to_int64_vector() const {
  std::vector<int64_t> out(static_cast<size_t>(numel()));
  switch (dtype_) {
    case DType::kInt64:
      std::copy_n(data<int64_t>(), out.size(), out.begin());
      break;
    case DType::kInt32:
      std::copy_n(data<int32_t>(), out.size(), out.begin());
      break;
    case DType::kInt8:
      std::copy_n(data<int8_t>(), out.size(), out.begin());
      break;
    case DType::kUInt8:
    case DType::kBool:
      std::copy_n(static_cast<const uint8_t*>(raw()), out.size(), out.begin());
      break;
    case DType::kFloat32:
      throw_internal("Tensor::to_int64_vector: " + describe() + " is not an integer tensor");
  }
  return out;
}

std::vector<float> Tensor::to_float_vector() const {
  auto s = span<float>();
  return {s.begin(), s.end()};
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype_)) + shape_str(shape_);
}

void Tensor::dtype_mismatch(const char* wanted) const {
  throw_internal(std::string("Tensor: accessed ") + describe() + " as " + wanted);
}

}  // namespace qforge::kernels

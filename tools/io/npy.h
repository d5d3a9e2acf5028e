// NumPy .npy files: the format in which batches of inputs, golden outputs and calibration
// tensors travel between qforge and Python.
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "kernels/tensor.h"
#include "tools/io/check_finite.h"

namespace qforge::io {

// Reads format versions 1.0, 2.0 and 3.0 with dtype <f4, <i8, <i4, |i1, |u1 or |b1 ('=' and '<'
// spellings too; byte order is ignored for one-byte types), C order, any rank including 0-d.
// float64 (<f8) and float16 (<f2) arrays are read as float32: float64 rounded to nearest (as
// NumPy's astype), float16 exactly.
// Errors name the file: Io when it cannot be read; Invalid for a bad magic, a malformed header or
// a size mismatch ("expected N bytes of data, got M"); Unsupported for big-endian data, other
// dtypes, Fortran order or a newer format version.
kernels::Tensor read_npy(const std::string& path);

// An .npy file whose header is read and checked at open() (read_npy's errors, the data's size
// included) and whose data is read when asked: whole, or rows (slices along axis 0) at a time so
// that a dataset larger than memory can be streamed.
class NpyReader {
 public:
  static NpyReader open(const std::string& path);

  kernels::DType dtype() const { return dtype_; }
  const kernels::Shape& shape() const { return shape_; }
  const std::string& path() const { return path_; }
  // Copies all the data (bools as stored) into `out`. Io error naming the file when it cannot be
  // read.
  void read_all(void* out) const;
  // Copies rows [begin, begin + count) into `out` (count × row elements of dtype(), float64 and
  // float16 files widened to float32 as they are read). Io error
  // naming the file when it cannot be read; Invalid when the rows are out of range or the array
  // is 0-d; Unsupported for bool arrays.
  void read_rows(size_t begin, size_t count, void* out) const;

 private:
  void read_at(size_t offset, void* out, size_t n) const;
  // n bytes of the file's data from `offset` into `out`, widened to dtype() where it is stored
  // narrower or wider.
  void read_stored(size_t offset, void* out, size_t n) const;

  std::string path_;
  std::shared_ptr<std::FILE> file_;
  kernels::DType dtype_ = kernels::DType::kFloat32;
  size_t stored_size_ = 4;  // bytes per element in the file
  kernels::Shape shape_;
  size_t data_offset_ = 0;
  size_t data_bytes_ = 0;
};

// Parses .npy bytes already in memory; `name` is the file name used in error messages.
kernels::Tensor parse_npy(std::string_view bytes, const std::string& name);

// For an .npy read in parts (an .npz member): the bytes its preamble and header take, from its
// first min(size, 12) bytes, `size` being the whole array's; then the shape that header
// declares, from the first npy_header_size bytes. Errors as parse_npy's, naming `name`.
size_t npy_header_size(std::string_view first_bytes, size_t size, const std::string& name);
kernels::Shape npy_shape(std::string_view header_bytes, size_t size, const std::string& name);

// The exact bytes NumPy's np.save writes for this tensor: format 1.0, or 2.0 when the header
// does not fit in 65535 bytes; the header padded so that the data starts 64-byte aligned.
std::string encode_npy(const kernels::Tensor& tensor);

// Writes encode_npy(tensor) atomically (see AtomicFile); Io error naming the path on failure.
void write_npy(const std::string& path, const kernels::Tensor& tensor);

}  // namespace qforge::io

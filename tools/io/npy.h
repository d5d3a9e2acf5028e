// NumPy .npy files: the format in which batches of inputs, golden outputs and calibration
// tensors travel between qforge and Python.
#pragma once

#include <string>
#include <string_view>

#include "kernels/tensor.h"
#include "tools/io/check_finite.h"

namespace qforge::io {

// Reads format versions 1.0, 2.0 and 3.0 with dtype <f4, <i8, <i4, |i1, |u1 or |b1 ('=' and '<'
// spellings too; byte order is ignored for one-byte types), C order, any rank including 0-d.
// Errors name the file: Io when it cannot be read; Invalid for a bad magic, a malformed header or
// a size mismatch ("expected N bytes of data, got M"); Unsupported for big-endian data, other
// dtypes, Fortran order or a newer format version.
kernels::Tensor read_npy(const std::string& path);

// Parses .npy bytes already in memory; `name` is the file name used in error messages.
kernels::Tensor parse_npy(std::string_view bytes, const std::string& name);

// The exact bytes NumPy's np.save writes for this tensor: format 1.0, or 2.0 when the header
// does not fit in 65535 bytes; the header padded so that the data starts 64-byte aligned.
std::string encode_npy(const kernels::Tensor& tensor);

// Writes encode_npy(tensor) atomically (see AtomicFile); Io error naming the path on failure.
void write_npy(const std::string& path, const kernels::Tensor& tensor);

}  // namespace qforge::io

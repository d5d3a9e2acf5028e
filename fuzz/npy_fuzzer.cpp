// Fuzz target: .npy bytes through the reader (preamble, header dict, dtype, shape, data size)
// and through the header-only reader of an .npz member's shape. Whatever the reader accepts must
// encode back to a file it reads as the same tensor, and have the shape its header alone gives.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "kernels/error.h"
#include "tools/io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qforge;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // The header-only path (an .npz member's shape, io::read_npz_shapes) on the same bytes: it
  // must not crash, and must give the shape of any array the whole read accepts.
  kernels::Shape header_shape;
  bool header_read = false;
  try {
    const size_t header = io::npy_header_size(bytes.substr(0, 12), size, "fuzz.npy");
    if (header > size) std::abort();  // the header must lie within the bytes
    header_shape = io::npy_shape(bytes.substr(0, header), size, "fuzz.npy");
    header_read = true;
  } catch (const Error&) {
  }
  kernels::Tensor tensor;
  try {
    tensor = io::parse_npy(bytes, "fuzz.npy");
  } catch (const Error&) {
    return 0;
  }
  if (!header_read || header_shape != tensor.shape()) std::abort();
  // Round trip: the reader and the writer agree on everything the reader accepts.
  kernels::Tensor again = io::parse_npy(io::encode_npy(tensor), "round-trip.npy");
  if (again.dtype() != tensor.dtype() || again.shape() != tensor.shape() ||
      again.nbytes() != tensor.nbytes() ||
      (tensor.nbytes() && std::memcmp(again.raw(), tensor.raw(), tensor.nbytes()) != 0)) {
    std::abort();
  }
  return 0;
}

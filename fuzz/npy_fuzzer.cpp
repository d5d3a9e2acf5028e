// Fuzz target: .npy bytes through the reader (preamble, header dict, dtype, shape, data size).
// Whatever it accepts must encode back to a file it reads as the same tensor.
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
  kernels::Tensor tensor;
  try {
    tensor = io::parse_npy(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.npy");
  } catch (const Error&) {
    return 0;
  }
  // Round trip: the reader and the writer agree on everything the reader accepts.
  kernels::Tensor again = io::parse_npy(io::encode_npy(tensor), "round-trip.npy");
  if (again.dtype() != tensor.dtype() || again.shape() != tensor.shape() ||
      again.nbytes() != tensor.nbytes() ||
      (tensor.nbytes() && std::memcmp(again.raw(), tensor.raw(), tensor.nbytes()) != 0)) {
    std::abort();
  }
  return 0;
}

// NumPy .npz archives (np.savez): a zip of .npy members, one array per name. The reference
// values `qforge verify` reads come this way.
#pragma once

#include <map>
#include <string>

#include "kernels/tensor.h"

namespace qforge::io {

// Every member "<name>.npy" as a tensor keyed by <name>, in name order; stored or deflated
// members alike. Errors name the file: Io when it cannot be read; Invalid when it is not a zip
// archive or a member is not a valid .npy (read_npy's messages, with the member named).
std::map<std::string, kernels::Tensor> read_npz(const std::string& path);

// The shape of every member's array, keyed as read_npz keys them, from the members' headers
// alone (the data is not read). Errors as read_npz's.
std::map<std::string, kernels::Shape> read_npz_shapes(const std::string& path);

// The bytes of an uncompressed archive of the tensors, as np.savez writes it.
std::string encode_npz(const std::map<std::string, kernels::Tensor>& tensors);

// Writes encode_npz's bytes atomically (see AtomicFile).
void write_npz(const std::string& path, const std::map<std::string, kernels::Tensor>& tensors);

}  // namespace qforge::io

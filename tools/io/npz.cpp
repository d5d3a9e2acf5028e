// .npz through libzip: members are read whole into memory and parsed by parse_npy, or only
// their headers, for their shapes.
#include "tools/io/npz.h"

#include <zip.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "tools/io/atomic_file.h"
#include "tools/io/npy.h"

namespace qforge::io {
namespace {

std::string zip_error_text(int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  std::string text = zip_error_strerror(&error);
  zip_error_fini(&error);
  return text;
}

struct ZipCloser {
  void operator()(zip_t* z) const { zip_discard(z); }
};

}  // namespace

namespace {

// Calls fn(name, where, file, size) for each .npy member of the archive at `path`, its name
// without '.npy', `where` naming it in messages, `file` open for reading.
template <typename Fn>
void for_each_member(const std::string& path, Fn&& fn) {
  int code = 0;
  std::unique_ptr<zip_t, ZipCloser> archive(zip_open(path.c_str(), ZIP_RDONLY, &code));
  if (!archive) {
    const std::string message = "cannot read '" + path + "': " + zip_error_text(code);
    if (code == ZIP_ER_OPEN || code == ZIP_ER_READ || code == ZIP_ER_NOENT) throw_io(message);
    throw_invalid(message);
  }
  const zip_int64_t count = zip_get_num_entries(archive.get(), 0);
  for (zip_int64_t i = 0; i < count; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(archive.get(), static_cast<zip_uint64_t>(i), 0, &st) != 0) {
      throw_invalid("'" + path + "': " + zip_strerror(archive.get()));
    }
    std::string name = st.name;
    if (!name.empty() && name.back() == '/') continue;  // a directory entry
    const std::string where = path + ": member '" + name + "'";
    if (name.size() < 4 || name.compare(name.size() - 4, 4, ".npy") != 0) {
      throw_invalid("'" + where + "': expected an .npy member");
    }
    zip_file_t* file = zip_fopen_index(archive.get(), static_cast<zip_uint64_t>(i), 0);
    if (!file) throw_invalid("'" + where + "': " + zip_strerror(archive.get()));
    name.resize(name.size() - 4);
    try {
      fn(name, where, file, static_cast<size_t>(st.size));
    } catch (...) {
      zip_fclose(file);
      throw;
    }
    zip_fclose(file);
  }
}

// The next `n` bytes of `file`; Invalid naming `where` when it holds fewer.
std::string read_member(zip_file_t* file, size_t n, const std::string& where) {
  std::string bytes(n, '\0');
  const zip_int64_t got = zip_fread(file, bytes.data(), bytes.size());
  if (got != static_cast<zip_int64_t>(bytes.size())) {
    throw_invalid("'" + where + "': cannot be read whole");
  }
  return bytes;
}

}  // namespace

std::map<std::string, kernels::Tensor> read_npz(const std::string& path) {
  std::map<std::string, kernels::Tensor> tensors;
  for_each_member(
      path, [&](const std::string& name, const std::string& where, zip_file_t* file, size_t size) {
        tensors[name] = parse_npy(read_member(file, size, where), where);
      });
  return tensors;
}

std::map<std::string, kernels::Shape> read_npz_shapes(const std::string& path) {
  std::map<std::string, kernels::Shape> shapes;
  for_each_member(
      path, [&](const std::string& name, const std::string& where, zip_file_t* file, size_t size) {
        std::string head = read_member(file, std::min<size_t>(size, 12), where);
        const size_t header = npy_header_size(head, size, where);
        if (header > head.size()) head += read_member(file, header - head.size(), where);
        shapes[name] = npy_shape(head, size, where);
      });
  return shapes;
}

std::string encode_npz(const std::map<std::string, kernels::Tensor>& tensors) {
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* memory = zip_source_buffer_create(nullptr, 0, 0, &error);
  if (!memory) throw_internal("write_npz: " + std::string(zip_error_strerror(&error)));
  zip_t* archive = zip_open_from_source(memory, ZIP_TRUNCATE, &error);
  if (!archive) {
    zip_source_free(memory);
    throw_internal("write_npz: " + std::string(zip_error_strerror(&error)));
  }
  zip_source_keep(memory);
  // Member bytes must live until zip_close.
  std::vector<std::string> members;
  members.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    members.push_back(encode_npy(tensor));
    zip_source_t* src = zip_source_buffer(archive, members.back().data(), members.back().size(), 0);
    const zip_int64_t index = src ? zip_file_add(archive, (name + ".npy").c_str(), src,
                                                 ZIP_FL_OVERWRITE | ZIP_FL_ENC_UTF_8)
                                  : -1;
    if (index < 0) {
      if (src) zip_source_free(src);
      const std::string message = zip_strerror(archive);
      zip_discard(archive);
      zip_source_free(memory);
      throw_internal("write_npz: member '" + name + "': " + message);
    }
    zip_set_file_compression(archive, static_cast<zip_uint64_t>(index), ZIP_CM_STORE, 0);
  }
  if (zip_close(archive) != 0) {
    const std::string message = zip_strerror(archive);
    zip_discard(archive);
    zip_source_free(memory);
    throw_internal("write_npz: " + message);
  }
  std::string bytes;
  zip_stat_t st;
  zip_stat_init(&st);
  if (zip_source_open(memory) != 0 || zip_source_stat(memory, &st) != 0) {
    zip_source_free(memory);
    throw_internal("write_npz: cannot read the archive back");
  }
  bytes.resize(static_cast<size_t>(st.size));
  const zip_int64_t got = zip_source_read(memory, bytes.data(), bytes.size());
  zip_source_close(memory);
  zip_source_free(memory);
  if (got != static_cast<zip_int64_t>(bytes.size())) {
    throw_internal("write_npz: cannot read the archive back");
  }
  return bytes;
}

void write_npz(const std::string& path, const std::map<std::string, kernels::Tensor>& tensors) {
  write_file_atomic(path, encode_npz(tensors));
}

}  // namespace qforge::io

// .npy reading and writing. The header is a Python dict literal; only the subset NumPy writes
// (quoted strings, True/False, tuples of integers) is accepted.
#include "tools/io/npy.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "kernels/error.h"
#include "kernels/half.h"
#include "tools/io/atomic_file.h"
#include "tools/io/posix_io.h"

namespace qforge::io {

// .npy data is little-endian; every platform qforge builds for is too, so bytes copy as they are.
static_assert(std::endian::native == std::endian::little, "qforge assumes a little-endian host");

namespace {

constexpr std::string_view kMagic = "\x93NUMPY";
// np.save pads the header so that the data starts at a multiple of this.
constexpr size_t kHeaderAlignment = 64;
// np.save leaves room for the first dimension to grow to this many digits in place.
constexpr size_t kGrowthAxisMaxDigits = 21;

struct DTypeSpelling {
  kernels::DType dtype;
  const char* descr;  // what np.save writes
};
constexpr DTypeSpelling kDTypes[] = {
    {kernels::DType::kFloat32, "<f4"}, {kernels::DType::kInt64, "<i8"},
    {kernels::DType::kInt32, "<i4"},   {kernels::DType::kInt8, "|i1"},
    {kernels::DType::kUInt8, "|u1"},   {kernels::DType::kBool, "|b1"},
};

const char* descr_of(kernels::DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.descr;
  }
  throw_internal(std::string("npy: no descr for dtype ") + kernels::dtype_name(dtype));
}

// Printable form of raw bytes for error messages: ASCII as is, anything else as \xNN.
std::string escape_bytes(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char c : bytes) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && u != '\\') {
      out += c;
    } else {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

// The type an array is delivered in and the bytes each of its elements takes in the file:
// float64 and float16 arrays are read as float32 (stored 8 and 2).
struct StoredType {
  kernels::DType dtype;
  size_t stored_size;
};

StoredType stored_type_from_descr(const std::string& descr, const std::string& name) {
  std::string_view body = descr;
  char order = '=';
  if (!body.empty() && std::string_view("<>=|").find(body.front()) != std::string_view::npos) {
    order = body.front();
    body.remove_prefix(1);
  }
  std::optional<kernels::DType> dtype;
  size_t stored = 0;
  if (body == "f8") stored = 8;
  if (body == "f2") stored = 2;
  if (body == "f4" || stored) dtype = kernels::DType::kFloat32;
  if (body == "i8") dtype = kernels::DType::kInt64;
  if (body == "i4") dtype = kernels::DType::kInt32;
  if (body == "i1") dtype = kernels::DType::kInt8;
  if (body == "u1") dtype = kernels::DType::kUInt8;
  if (body == "b1" || body == "?") dtype = kernels::DType::kBool;
  if (!dtype) {
    throw_unsupported(name + ": dtype '" + descr +
                      "' is not supported (expected <f4, <f8, <f2, <i8, <i4, |i1, |u1 or |b1)");
  }
  if (!stored) stored = kernels::dtype_size(*dtype);
  if (order == '>' && stored > 1) {
    throw_unsupported(name + ": big-endian dtype '" + descr +
                      "' is not supported (expected little-endian '<" + std::string(body) +
                      "'; convert with arr.astype('<" + std::string(body) + "'))");
  }
  return {*dtype, stored};
}

// n float64 or float16 values (stored_size 8 or 2) as float32 (float64 rounded to nearest).
void widen_to_float(const void* stored, size_t stored_size, size_t n, float* out) {
  const auto* bytes = static_cast<const unsigned char*>(stored);
  for (size_t i = 0; i < n; ++i) {
    if (stored_size == 8) {
      double d;
      std::memcpy(&d, bytes + 8 * i, 8);
      out[i] = static_cast<float>(d);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      out[i] = kernels::float_from_half(h);
    }
  }
}

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  kernels::Shape shape;
};

// Parses the header dict, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& name) : text_(text), name_(name) {}

  NpyHeader parse() {
    NpyHeader header;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      std::string key = parse_string();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (peek() == '[') {
          throw_unsupported(name_ +
                            ": structured dtypes are not supported (expected a plain "
                            "dtype such as '<f4')");
        }
        header.descr = parse_string();
        seen_descr = true;
      } else if (key == "fortran_order") {
        header.fortran_order = parse_bool();
        seen_order = true;
      } else if (key == "shape") {
        header.shape = parse_shape();
        seen_shape = true;
      } else {
        fail("unexpected key '" + key + "' (expected descr, fortran_order and shape)");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') fail("expected ',' or '}'");
    }
    ++pos_;
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the closing '}'");
    if (!seen_descr) fail("missing key 'descr'");
    if (!seen_order) fail("missing key 'fortran_order'");
    if (!seen_shape) fail("missing key 'shape'");
    return header;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw_invalid(name_ + ": bad .npy header: " + what + " at offset " + std::to_string(pos_) +
                  " in \"" + escape_bytes(text_) + "\"");
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string parse_string() {
    skip_space();
    char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a quoted string");
    size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string value(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return value;
  }
  bool parse_bool() {
    if (text_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (text_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  int64_t parse_dim() {
    skip_space();
    size_t start = pos_;
    int64_t value = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      int digit = text_[pos_] - '0';
      if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) fail("dimension too large");
      value = value * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) fail("expected a non-negative integer dimension");
    if (peek() == 'L') ++pos_;  // headers written by Python 2
    return value;
  }
  kernels::Shape parse_shape() {
    kernels::Shape shape;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') break;
      shape.push_back(parse_dim());
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != ')') fail("expected ',' or ')' in the shape");
    }
    ++pos_;
    return shape;
  }

  std::string_view text_;
  const std::string& name_;
  size_t pos_ = 0;
};

std::string shape_repr(const kernels::Shape& shape) {
  // Python's tuple repr: (), (4,), (2, 3)
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ',';
  return out + ")";
}

// Magic, version and header, exactly as NumPy's format.write_array lays them out.
std::string encode_npy_header(const kernels::Tensor& tensor) {
  const kernels::Shape& shape = tensor.shape();
  std::string dict = std::string("{'descr': '") + descr_of(tensor.dtype()) +
                     "', 'fortran_order': False, 'shape': " + shape_repr(shape) + ", }";
  if (!shape.empty()) dict.append(kGrowthAxisMaxDigits - std::to_string(shape[0]).size(), ' ');
  for (int major : {1, 2}) {
    size_t length_bytes = major == 1 ? 2 : 4;
    size_t preamble = kMagic.size() + 2 + length_bytes;
    size_t unpadded = preamble + dict.size() + 1;  // + the final '\n'
    // Like NumPy, always at least one byte of padding, so an aligned header gains a full block.
    size_t padding = kHeaderAlignment - unpadded % kHeaderAlignment;
    size_t header_len = dict.size() + padding + 1;
    if (major == 1 && header_len > 0xffff) continue;
    std::string out(kMagic);
    out += static_cast<char>(major);
    out += '\0';
    for (size_t i = 0; i < length_bytes; ++i)
      out += static_cast<char>((header_len >> (8 * i)) & 0xff);
    out += dict;
    out.append(padding, ' ');
    out += '\n';
    return out;
  }
  throw_internal("npy: header of " + std::to_string(dict.size()) + " bytes does not fit");
}

}  // namespace

namespace {

// The preamble is the magic string, the version and the header length.
constexpr size_t kLongestPreamble = 12;

struct NpyLayout {
  kernels::DType dtype;
  size_t stored_size;  // bytes per element in the file
  kernels::Shape shape;
  std::string descr;
  size_t data_offset;  // bytes from the start of the file
  size_t data_bytes;   // what the shape and dtype call for, in the file
};

// Validates the preamble in `prefix` (the first min(file_size, 12) bytes) and returns the header
// length; file_size is the size of the whole file.
size_t parse_preamble(std::string_view prefix, size_t file_size, const std::string& name,
                      size_t* preamble_size) {
  if (prefix.size() < kMagic.size() || prefix.substr(0, kMagic.size()) != kMagic) {
    throw_invalid(name + ": not a .npy file (expected the magic string \\x93NUMPY, got \"" +
                  escape_bytes(prefix.substr(0, kMagic.size())) + "\")");
  }
  if (file_size < kMagic.size() + 2) {
    throw_invalid(name + ": truncated .npy file: expected a format version after the magic " +
                  "string, got " + std::to_string(file_size) + " bytes in all");
  }
  int major = static_cast<unsigned char>(prefix[6]);
  int minor = static_cast<unsigned char>(prefix[7]);
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    throw_unsupported(name + ": .npy format version " + std::to_string(major) + "." +
                      std::to_string(minor) + " is not supported (expected 1.0, 2.0 or 3.0)");
  }
  size_t length_bytes = major == 1 ? 2 : 4;
  size_t preamble = kMagic.size() + 2 + length_bytes;
  if (file_size < preamble) {
    throw_invalid(name + ": truncated .npy file: expected a " + std::to_string(preamble) +
                  "-byte preamble, got " + std::to_string(file_size) + " bytes");
  }
  size_t header_len = 0;
  for (size_t i = 0; i < length_bytes; ++i) {
    header_len |= static_cast<size_t>(static_cast<unsigned char>(prefix[8 + i])) << (8 * i);
  }
  if (file_size - preamble < header_len) {
    throw_invalid(name + ": truncated .npy header: expected " + std::to_string(header_len) +
                  " bytes, got " + std::to_string(file_size - preamble));
  }
  *preamble_size = preamble;
  return header_len;
}

// Parses the header text and checks that the file holds exactly the data it announces.
NpyLayout parse_layout(std::string_view header_text, size_t data_offset, size_t file_size,
                       const std::string& name) {
  NpyHeader header = HeaderParser(header_text, name).parse();
  const StoredType type = stored_type_from_descr(header.descr, name);
  // Fortran order lays out the same bytes as C order when at most one dimension exceeds 1.
  int64_t long_dims = 0;
  for (int64_t d : header.shape) long_dims += d > 1;
  if (header.fortran_order && long_dims > 1) {
    throw_unsupported(name + ": Fortran-order arrays are not supported (expected C order; " +
                      "save np.ascontiguousarray(arr))");
  }
  size_t expected = type.stored_size;
  for (int64_t d : header.shape) {
    if (__builtin_mul_overflow(expected, static_cast<size_t>(d), &expected)) {
      throw_invalid(name + ": shape " + kernels::shape_str(header.shape) + " is too large");
    }
  }
  size_t got = file_size - data_offset;
  if (got != expected) {
    throw_invalid(name + ": expected " + std::to_string(expected) + " bytes of data, got " +
                  std::to_string(got) + " (" + header.descr + " " +
                  kernels::shape_str(header.shape) + ")");
  }
  return {type.dtype,  type.stored_size, std::move(header.shape), std::move(header.descr),
          data_offset, expected};
}

// NumPy reads any non-zero bool byte as True; qforge keeps bools as exactly 0 or 1.
void normalize_bools(kernels::Tensor& tensor) {
  if (tensor.dtype() != kernels::DType::kBool) return;
  auto* b = static_cast<uint8_t*>(tensor.raw());
  for (size_t i = 0; i < tensor.nbytes(); ++i) b[i] = b[i] != 0;
}

// Closes the file when the last NpyReader copy holding it goes.
struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

kernels::Tensor parse_npy(std::string_view bytes, const std::string& name) {
  size_t preamble = 0;
  size_t header_len =
      parse_preamble(bytes.substr(0, kLongestPreamble), bytes.size(), name, &preamble);
  NpyLayout layout =
      parse_layout(bytes.substr(preamble, header_len), preamble + header_len, bytes.size(), name);
  kernels::Tensor tensor(layout.dtype, layout.shape);
  if (layout.stored_size != kernels::dtype_size(layout.dtype)) {
    widen_to_float(bytes.data() + layout.data_offset, layout.stored_size,
                   static_cast<size_t>(tensor.numel()), tensor.data<float>());
  } else if (layout.data_bytes) {
    std::memcpy(tensor.raw(), bytes.data() + layout.data_offset, layout.data_bytes);
  }
  normalize_bools(tensor);
  return tensor;
}

size_t npy_header_size(std::string_view first_bytes, size_t size, const std::string& name) {
  size_t preamble = 0;
  const size_t header_len =
      parse_preamble(first_bytes.substr(0, kLongestPreamble), size, name, &preamble);
  return preamble + header_len;
}

kernels::Shape npy_shape(std::string_view header_bytes, size_t size, const std::string& name) {
  size_t preamble = 0;
  const size_t header_len =
      parse_preamble(header_bytes.substr(0, kLongestPreamble), size, name, &preamble);
  return parse_layout(header_bytes.substr(preamble, header_len), preamble + header_len, size, name)
      .shape;
}

kernels::Tensor read_npy(const std::string& path) {
  const NpyReader reader = NpyReader::open(path);
  // The data goes straight into the tensor: calibration arrays can be large.
  kernels::Tensor tensor(reader.dtype(), reader.shape());
  reader.read_all(tensor.raw());
  normalize_bools(tensor);
  return tensor;
}

NpyReader NpyReader::open(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw_io("cannot read '" + path + "': is a directory (expected a .npy file)");
  }
  NpyReader r;
  r.path_ = path;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) {
    int error_number = errno;
    throw_io("cannot read '" + path + "': " + std::strerror(error_number));
  }
  r.file_.reset(file, FileCloser{});
  uintmax_t file_size = std::filesystem::file_size(path, ec);
  if (ec) throw_io("cannot read '" + path + "': " + ec.message());
  std::string prefix(std::min<uintmax_t>(file_size, kLongestPreamble), '\0');
  r.read_at(0, prefix.data(), prefix.size());
  size_t preamble = 0;
  const size_t header_len = parse_preamble(prefix, file_size, path, &preamble);
  std::string header(header_len, '\0');
  r.read_at(preamble, header.data(), header.size());
  NpyLayout layout = parse_layout(header, preamble + header_len, file_size, path);
  r.dtype_ = layout.dtype;
  r.stored_size_ = layout.stored_size;
  r.shape_ = std::move(layout.shape);
  r.data_offset_ = layout.data_offset;
  r.data_bytes_ = layout.data_bytes;
  return r;
}

void NpyReader::read_all(void* out) const {
  read_stored(data_offset_, out, data_bytes_);
}

void NpyReader::read_stored(size_t offset, void* out, size_t n) const {
  if (stored_size_ == kernels::dtype_size(dtype_)) {
    read_at(offset, out, n);
    return;
  }
  // Widened to float32 a block at a time.
  constexpr size_t kBlockValues = 1 << 16;
  std::vector<unsigned char> block(std::min(n, kBlockValues * stored_size_));
  auto* dst = static_cast<float*>(out);
  for (size_t done = 0; done < n;) {
    const size_t bytes = std::min(block.size(), n - done);
    read_at(offset + done, block.data(), bytes);
    widen_to_float(block.data(), stored_size_, bytes / stored_size_, dst + done / stored_size_);
    done += bytes;
  }
}

void NpyReader::read_at(size_t offset, void* out, size_t n) const {
  if (n == 0) return;
  // pread: no shared file position, so concurrent readers do not disturb each other.
  const int error_number = pread_fully(fileno(file_.get()), out, n, static_cast<off_t>(offset));
  if (error_number != 0) {
    throw_io("cannot read '" + path_ + "': " +
             (error_number == ENODATA ? "file shrank while read" : std::strerror(error_number)));
  }
}

void NpyReader::read_rows(size_t begin, size_t count, void* out) const {
  if (shape_.empty()) throw_invalid(path_ + ": a 0-d array has no rows");
  if (dtype_ == kernels::DType::kBool) {
    // Bool bytes need normalising (read_npy does it); rows are read raw.
    throw_unsupported(path_ + ": bool arrays cannot be read by rows");
  }
  const auto rows = static_cast<size_t>(shape_[0]);
  const size_t row_bytes = rows > 0 ? data_bytes_ / rows : 0;
  if (begin > rows || count > rows - begin) {
    throw_invalid(path_ + ": rows [" + std::to_string(begin) + ", " +
                  std::to_string(begin + count) + ") are out of range (the array has " +
                  std::to_string(rows) + ")");
  }
  read_stored(data_offset_ + begin * row_bytes, out, count * row_bytes);
}

std::string encode_npy(const kernels::Tensor& tensor) {
  if (!tensor.defined()) throw_internal("encode_npy: undefined tensor");
  std::string out = encode_npy_header(tensor);
  out.append(static_cast<const char*>(tensor.raw()), tensor.nbytes());
  return out;
}

void write_npy(const std::string& path, const kernels::Tensor& tensor) {
  if (!tensor.defined()) throw_internal("write_npy: undefined tensor for '" + path + "'");
  AtomicFile file(path);
  file.write(encode_npy_header(tensor));
  file.write(tensor.raw(), tensor.nbytes());
  file.commit();
}

}  // namespace qforge::io

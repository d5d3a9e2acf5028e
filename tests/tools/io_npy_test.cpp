// .npy reading and writing: round trips, files written by NumPy, and precise errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "kernels/error.h"
#include "kernels/tensor.h"
#include "tests/support/errors.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge::io {
namespace {

namespace fs = std::filesystem;
using kernels::DType;
using kernels::Shape;
using kernels::Tensor;

// QFORGE_DATA_DIR is <repo>/data; the fixtures sit next to this file.
const fs::path kFixtures = fs::path(QFORGE_DATA_DIR).parent_path() / "tests" / "tools" / "fixtures";

using testing::TempDir;

void write_bytes(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

using testing::error_of;

// Distinct, sign-mixed values of every dtype, so a byte swap or offset shows.
Tensor patterned(DType dtype, const Shape& shape) {
  Tensor t(dtype, shape);
  int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::kFloat32:
        t.data<float>()[i] = 0.25f * static_cast<float>(i) - 3.5f;
        break;
      case DType::kInt64:
        t.data<int64_t>()[i] = (i % 2 ? -1 : 1) * (int64_t{1} << 40) * i;
        break;
      case DType::kInt32:
        t.data<int32_t>()[i] = static_cast<int32_t>(i * 100003 - 70000);
        break;
      case DType::kInt8:
        t.data<int8_t>()[i] = static_cast<int8_t>(i * 37 - 128);
        break;
      case DType::kUInt8:
        t.data<uint8_t>()[i] = static_cast<uint8_t>(i * 53 + 7);
        break;
      case DType::kBool:
        static_cast<uint8_t*>(t.raw())[i] = static_cast<uint8_t>(i % 3 == 0);
        break;
    }
  }
  return t;
}

void expect_same(const Tensor& a, const Tensor& b) {
  ASSERT_EQ(a.dtype(), b.dtype());
  ASSERT_EQ(a.shape(), b.shape());
  ASSERT_EQ(a.nbytes(), b.nbytes());
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << a.describe();
}

// Preamble of a version 1.0 file with the given header text (which must include padding).
std::string v1_file(const std::string& header, std::string_view data) {
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header + std::string(data);
}

TEST(IoNpy, RoundTripEveryDtypeAndRank) {
  TempDir dir;
  const Shape shapes[] = {{}, {5}, {2, 3}, {2, 1, 3}, {1, 2, 3, 2}};
  for (DType dtype :
       {DType::kFloat32, DType::kInt64, DType::kInt32, DType::kInt8, DType::kUInt8, DType::kBool}) {
    for (const Shape& shape : shapes) {
      SCOPED_TRACE(std::string(kernels::dtype_name(dtype)) + kernels::shape_str(shape));
      Tensor t = patterned(dtype, shape);
      std::string path = dir.file("t.npy");
      write_npy(path, t);
      expect_same(read_npy(path), t);
      std::string bytes = read_bytes(path);
      EXPECT_EQ(bytes, encode_npy(t));
      // The data starts 64-byte aligned, as np.save lays it out.
      EXPECT_EQ((bytes.size() - t.nbytes()) % 64, 0u);
    }
  }
}

TEST(IoNpy, RoundTripEmptyTensor) {
  TempDir dir;
  Tensor t(DType::kFloat32, {0, 3});
  write_npy(dir.file("e.npy"), t);
  expect_same(read_npy(dir.file("e.npy")), t);
}

TEST(IoNpy, EncodeIsByteIdenticalToNumpy) {
  // np.save(f, (np.arange(6, dtype='<f4').reshape(2, 3) * 0.5 - 1)) in fixtures/README.md.
  Tensor t = Tensor::from_vector<float>({2, 3}, {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f});
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  header.append(117 - header.size(), ' ');
  header += '\n';
  std::string expected = v1_file(header, {static_cast<const char*>(t.raw()), t.nbytes()});
  EXPECT_EQ(encode_npy(t), expected);
  EXPECT_EQ(encode_npy(t), read_bytes((kFixtures / "npy_f4_2x3.npy").string()));
  // 0-d and bool: no growth padding for a 0-d shape; '|b1' and a 1-tuple "(4,)".
  EXPECT_EQ(encode_npy(Tensor::scalar_i64(-7)),
            read_bytes((kFixtures / "npy_i8_scalar.npy").string()));
  Tensor flags = Tensor::from_vector<uint8_t>({4}, {1, 0, 0, 1});
  Tensor bools(DType::kBool, {4});
  std::memcpy(bools.raw(), flags.raw(), 4);
  EXPECT_EQ(encode_npy(bools), read_bytes((kFixtures / "npy_b1_4.npy").string()));
}

TEST(IoNpy, ReadsNumpyFixtures) {
  Tensor f = read_npy((kFixtures / "npy_f4_2x3.npy").string());
  ASSERT_EQ(f.describe(), "float32[2, 3]");
  EXPECT_EQ(f.to_float_vector(), (std::vector<float>{-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f}));

  Tensor s = read_npy((kFixtures / "npy_i8_scalar.npy").string());
  ASSERT_EQ(s.describe(), "int64[]");
  EXPECT_EQ(s.data<int64_t>()[0], -7);

  Tensor b = read_npy((kFixtures / "npy_b1_4.npy").string());
  ASSERT_EQ(b.describe(), "bool[4]");
  EXPECT_EQ(b.to_int64_vector(), (std::vector<int64_t>{1, 0, 0, 1}));

  Tensor u = read_npy((kFixtures / "npy_u1_2x2x2_v2.npy").string());  // format 2.0
  ASSERT_EQ(u.describe(), "uint8[2, 2, 2]");
  EXPECT_EQ(u.to_int64_vector(), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));

  Tensor i = read_npy((kFixtures / "npy_i4_3_v3.npy").string());  // format 3.0
  ASSERT_EQ(i.describe(), "int32[3]");
  EXPECT_EQ(i.to_int64_vector(), (std::vector<int64_t>{-1, 0, 2147483647}));
}

// float64 and float16 arrays written by NumPy read as float32: float64 rounded to nearest as
// NumPy's astype(np.float32) gives (the values below, printed by it), float16 exactly (its
// largest, smallest subnormal, infinity and -0 included); whole and by rows alike.
TEST(IoNpy, Float64AndFloat16ArraysReadAsFloat32) {
  const std::vector<float> f8 = {0x1.99999ap-4f,  -2.5f,           0x1.555556p-2f,
                                 0x1.2a05f2p+33f, 0x1.4484cp-100f, 65504.0f};
  Tensor a = read_npy((kFixtures / "npy_f8_2x3.npy").string());
  ASSERT_EQ(a.describe(), "float32[2, 3]");
  for (size_t i = 0; i < f8.size(); ++i) EXPECT_EQ(a.data<float>()[i], f8[i]) << i;
  const std::vector<float> f2 = {
      0x1.998p-4f, -2.5f, 65504.0f, 0x1p-24f, std::numeric_limits<float>::infinity(), -0.0f};
  Tensor h = read_npy((kFixtures / "npy_f2_6.npy").string());
  ASSERT_EQ(h.describe(), "float32[6]");
  for (size_t i = 0; i < f2.size(); ++i) {
    EXPECT_EQ(h.data<float>()[i], f2[i]) << i;
    EXPECT_EQ(std::signbit(h.data<float>()[i]), std::signbit(f2[i])) << i;
  }
  const io::NpyReader reader = io::NpyReader::open((kFixtures / "npy_f8_2x3.npy").string());
  EXPECT_EQ(reader.dtype(), DType::kFloat32);
  float row[3];
  reader.read_rows(1, 1, row);
  EXPECT_EQ(std::vector<float>(row, row + 3), std::vector<float>(f8.begin() + 3, f8.end()));
  EXPECT_EQ(parse_npy(read_bytes((kFixtures / "npy_f2_6.npy").string()), "f2.npy").describe(),
            "float32[6]");
  // Larger than one block of the widening: 100000 rows of 2 values, whole and by rows.
  TempDir dir;
  std::string doubles(200000 * sizeof(double), '\0');
  for (size_t i = 0; i < 200000; ++i) {
    const double v = 0.5 * static_cast<double>(i) - 7.0;
    std::memcpy(doubles.data() + i * sizeof v, &v, sizeof v);
  }
  write_bytes(
      dir.file("big.npy"),
      v1_file("{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 2), }\n", doubles));
  const Tensor big = read_npy(dir.file("big.npy"));
  ASSERT_EQ(big.describe(), "float32[100000, 2]");
  for (size_t i = 0; i < 200000; ++i) {
    ASSERT_EQ(big.data<float>()[i], 0.5f * static_cast<float>(i) - 7.0f) << i;
  }
  std::vector<float> rows(2 * 40000);
  io::NpyReader::open(dir.file("big.npy")).read_rows(30000, 40000, rows.data());
  EXPECT_EQ(rows, std::vector<float>(big.data<float>() + 60000, big.data<float>() + 140000));
  // A float64 file is as long as its 8-byte values say.
  const std::string bytes = read_bytes((kFixtures / "npy_f8_2x3.npy").string());
  write_bytes(dir.file("short.npy"), bytes.substr(0, bytes.size() - 4));
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { read_npy(dir.file("short.npy")); })
                .find(": expected 48 bytes of data, got 44"),
            std::string::npos);
}

TEST(IoNpy, ReadsHandWrittenNumpyHeaders) {
  TempDir dir;
  const char data_i4[] = {1, 0, 0, 0, -2, -1, -1, -1, 0, 0, 0, -128};
  // np.save of np.array([1, -2, -2**31], '<i4') with NumPy 1.24.
  std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
  header.append(117 - header.size(), ' ');
  header += '\n';
  write_bytes(dir.file("a.npy"), v1_file(header, {data_i4, sizeof data_i4}));
  Tensor a = read_npy(dir.file("a.npy"));
  ASSERT_EQ(a.describe(), "int32[3]");
  EXPECT_EQ(a.to_int64_vector(),
            (std::vector<int64_t>{1, -2, std::numeric_limits<int32_t>::min()}));

  // Older NumPy: 16-byte alignment, no growth padding; '=' byte order; Python 2 long suffix.
  std::string old_header = "{'descr': '=f4', 'fortran_order': False, 'shape': (1L, 2L), }";
  old_header.append(16 - (10 + old_header.size() + 1) % 16, ' ');
  old_header += '\n';
  const float values[] = {2.5f, -0.125f};
  write_bytes(dir.file("b.npy"),
              v1_file(old_header, {reinterpret_cast<const char*>(values), sizeof values}));
  Tensor b = read_npy(dir.file("b.npy"));
  ASSERT_EQ(b.describe(), "float32[1, 2]");
  EXPECT_EQ(b.to_float_vector(), (std::vector<float>{2.5f, -0.125f}));

  // Double quotes, no trailing comma, keys in another order, a '<' on a one-byte type.
  std::string odd = "{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<i1\"}\n";
  write_bytes(dir.file("c.npy"), v1_file(odd, "\x7f\x80"));
  EXPECT_EQ(read_npy(dir.file("c.npy")).to_int64_vector(), (std::vector<int64_t>{127, -128}));

  // Fortran order is the same layout when at most one dimension exceeds 1.
  std::string column = "{'descr': '|u1', 'fortran_order': True, 'shape': (3, 1), }\n";
  write_bytes(dir.file("d.npy"), v1_file(column, "\x01\x02\x03"));
  EXPECT_EQ(read_npy(dir.file("d.npy")).to_int64_vector(), (std::vector<int64_t>{1, 2, 3}));

  // NumPy reads any non-zero bool byte as True; qforge stores it as 1.
  std::string flags = "{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }\n";
  write_bytes(dir.file("e.npy"), v1_file(flags, std::string("\x00\x02\xff", 3)));
  EXPECT_EQ(read_npy(dir.file("e.npy")).to_int64_vector(), (std::vector<int64_t>{0, 1, 1}));
}

TEST(IoNpy, ReadsBundledGoldenInput) {
  std::string path = std::string(QFORGE_DATA_DIR) + "/golden/resnet_input.npy";
  if (!fs::exists(path)) GTEST_SKIP() << path << " is not present";
  Tensor t = read_npy(path);
  EXPECT_EQ(t.describe(), "float32[4, 3, 32, 32]");
  EXPECT_NO_THROW(check_finite(t.data<float>(), static_cast<size_t>(t.numel()), path));
}

TEST(IoNpy, UnsupportedNumpyFilesNameTheFile) {
  struct Case {
    const char* file;
    const char* message;
  };
  for (const Case& c : {Case{"npy_i1_2x3_fortran.npy", "Fortran-order arrays are not supported"},
                        Case{"npy_f4_big_endian.npy", "big-endian dtype '>f4' is not supported"},
                        Case{"npy_c8_2.npy", "dtype '<c8' is not supported"}}) {
    std::string path = (kFixtures / c.file).string();
    std::string message = error_of(ErrorKind::kUnsupported, [&] { read_npy(path); });
    EXPECT_NE(message.find(path + ": "), std::string::npos) << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(IoNpy, TruncatedAndOversizedDataAreInvalid) {
  TempDir dir;
  std::string bytes = encode_npy(patterned(DType::kFloat32, {2, 3}));
  std::string path = dir.file("short.npy");
  write_bytes(path, bytes.substr(0, bytes.size() - 3));
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { read_npy(path); })
                .find(path + ": expected 24 bytes of data, got 21"),
            std::string::npos);
  write_bytes(path, bytes + "xy");
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { read_npy(path); })
                .find(path + ": expected 24 bytes of data, got 26"),
            std::string::npos);
  // Cut inside the header.
  write_bytes(path, bytes.substr(0, 40));
  std::string message = error_of(ErrorKind::kInvalid, [&] { read_npy(path); });
  EXPECT_NE(message.find(path + ": truncated .npy header: expected 118 bytes, got 30"),
            std::string::npos)
      << message;
  write_bytes(path, bytes.substr(0, 9));
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { read_npy(path); }).find(path + ": truncated"),
            std::string::npos);
}

TEST(IoNpy, GarbageIsInvalid) {
  TempDir dir;
  std::string path = dir.file("garbage.npy");
  write_bytes(path, "PK\x03\x04 this is a zip file");
  std::string message = error_of(ErrorKind::kInvalid, [&] { read_npy(path); });
  EXPECT_NE(message.find(path + ": not a .npy file"), std::string::npos) << message;
  write_bytes(path, "");
  EXPECT_NE(error_of(ErrorKind::kInvalid, [&] { read_npy(path); }).find(path + ": not a .npy"),
            std::string::npos);
}

TEST(IoNpy, MalformedHeadersAreInvalid) {
  TempDir dir;
  std::string path = dir.file("bad.npy");
  for (const char* header : {
           "{'descr': '<f4', 'fortran_order': False}\n",                         // no shape
           "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n",       // negative
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}\n",  // extra key
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk\n",   // trailing
           "{'descr': '<f4', 'fortran_order': maybe, 'shape': (2,), }\n",        // not a bool
           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)\n",           // unclosed
           "{'descr: '<f4', 'fortran_order': False, 'shape': (2,), }\n",         // quotes
           "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }\n",
       }) {
    SCOPED_TRACE(header);
    write_bytes(path, v1_file(header, std::string(8, '\0')));
    std::string message = error_of(ErrorKind::kInvalid, [&] { read_npy(path); });
    EXPECT_NE(message.find(path + ": bad .npy header"), std::string::npos) << message;
  }
}

TEST(IoNpy, UnknownVersionAndStructuredDtypeAreUnsupported) {
  TempDir dir;
  std::string path = dir.file("v4.npy");
  std::string bytes = encode_npy(patterned(DType::kInt8, {3}));
  bytes[6] = 4;
  write_bytes(path, bytes);
  std::string message = error_of(ErrorKind::kUnsupported, [&] { read_npy(path); });
  EXPECT_NE(message.find(path + ": .npy format version 4.0 is not supported"), std::string::npos)
      << message;

  write_bytes(path, v1_file("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }\n",
                            std::string(4, '\0')));
  message = error_of(ErrorKind::kUnsupported, [&] { read_npy(path); });
  EXPECT_NE(message.find(path + ": structured dtypes are not supported"), std::string::npos)
      << message;
}

TEST(IoNpy, MissingFileIsIoError) {
  TempDir dir;
  std::string path = dir.file("nope.npy");
  std::string message = error_of(ErrorKind::kIo, [&] { read_npy(path); });
  EXPECT_EQ(message, "cannot read '" + path + "': No such file or directory");
  message = error_of(ErrorKind::kIo, [&] { read_npy(dir.path().string()); });
  EXPECT_NE(message.find("is a directory"), std::string::npos) << message;
}

TEST(IoNpy, HugeHeaderUsesVersion2) {
  // 25,000 unit dimensions give a header beyond version 1.0's 65,535 bytes.
  TempDir dir;
  Tensor t = patterned(DType::kInt32, Shape(25000, 1));
  std::string bytes = encode_npy(t);
  EXPECT_EQ(bytes[6], 2);
  EXPECT_EQ((bytes.size() - t.nbytes()) % 64, 0u);
  write_npy(dir.file("deep.npy"), t);
  expect_same(read_npy(dir.file("deep.npy")), t);
}

TEST(IoNpy, WriteToMissingFolderIsIoErrorAndLeavesNothing) {
  TempDir dir;
  std::string path = dir.file("missing/out.npy");
  std::string message =
      error_of(ErrorKind::kIo, [&] { write_npy(path, Tensor::scalar_f32(1.0f)); });
  EXPECT_EQ(message, "cannot write '" + path + "': No such file or directory");
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(IoCheckFinite, NamesTheInputAndTheElement) {
  const float ok[] = {0.0f, -1.0f, 3.0e38f};
  EXPECT_NO_THROW(check_finite(ok, 3, "batch.npy"));
  const float nan[] = {0.0f, std::nanf(""), 1.0f};
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { check_finite(nan, 3, "batch.npy"); }),
            "batch.npy: element 1 is NaN (expected finite values)");
  const float inf[] = {0.0f, 1.0f, -std::numeric_limits<float>::infinity()};
  EXPECT_EQ(error_of(ErrorKind::kInvalid, [&] { check_finite(inf, 3, "x"); }),
            "x: element 2 is -Inf (expected finite values)");
}

// Rows streamed from the file are the rows of the whole array; the header is checked at open.
TEST(NpyReader, ReadsRowRangesOfTheArray) {
  TempDir dir;
  Tensor t(DType::kFloat32, {5, 2, 3});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 0.5f * static_cast<float>(i) - 3;
  write_npy(dir.file("rows.npy"), t);
  const NpyReader r = NpyReader::open(dir.file("rows.npy"));
  EXPECT_EQ(r.dtype(), DType::kFloat32);
  EXPECT_EQ(r.shape(), (Shape{5, 2, 3}));
  std::vector<float> rows(12);
  r.read_rows(3, 2, rows.data());
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i], t.data<float>()[18 + i]) << i;
  EXPECT_THROW(r.read_rows(4, 2, rows.data()), Error);
  EXPECT_THROW(NpyReader::open(dir.file("missing.npy")), Error);
  // A 0-d array opens (read_npy reads it whole) but has no rows.
  const NpyReader scalar = NpyReader::open((kFixtures / "npy_i8_scalar.npy").string());
  EXPECT_TRUE(scalar.shape().empty());
  int64_t value = 0;
  EXPECT_THROW(scalar.read_rows(0, 1, &value), Error);
  scalar.read_all(&value);
  EXPECT_EQ(value, -7);
}

}  // namespace
}  // namespace qforge::io

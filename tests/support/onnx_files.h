// ONNX files in the tests of import and export: a file's protobuf, a model's tensors moved to
// external data files as the ONNX specification lays them out, and two graphs compared constant
// by constant.
#pragma once

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cstddef>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include "graph/ir.h"
#include "tests/support/test_support.h"

namespace qforge::testing {

inline onnx::ModelProto read_proto(const std::string& path) {
  onnx::ModelProto model;
  EXPECT_TRUE(model.ParseFromString(read_text(path))) << path;
  return model;
}

// Sets the external data entry `key` of `t` (added when missing).
inline void set_entry(onnx::TensorProto& t, const std::string& key, const std::string& value) {
  for (auto& e : *t.mutable_external_data()) {
    if (e.key() == key) {
      e.set_value(value);
      return;
    }
  }
  auto* e = t.add_external_data();
  e->set_key(key);
  e->set_value(value);
}

// Moves the raw data of the model's tensors (initializers of at least `min_bytes` and tensor
// attributes) into files beside it, as the ONNX specification lays external data out: the first
// tensor at the start of "weights.bin" with neither offset nor length written, the next ones
// each at a 4096-byte boundary with both, every third one in "parts/more.bin". Writes the model
// to `folder`/model.onnx and returns that path.
inline std::string externalize(onnx::ModelProto model, const TempDir& folder,
                               size_t min_bytes = 64) {
  std::filesystem::create_directories(folder.path() / "parts");
  std::map<std::string, std::string> files;  // location -> bytes
  int moved = 0;
  auto move = [&](onnx::TensorProto& t) {
    if (!t.has_raw_data() || t.raw_data().size() < min_bytes) return;
    const std::string location = moved % 3 == 2 ? "parts/more.bin" : "weights.bin";
    std::string& bytes = files[location];
    set_entry(t, "location", location);
    if (moved > 0) {
      bytes.resize((bytes.size() + 4095) / 4096 * 4096, '\0');
      set_entry(t, "offset", std::to_string(bytes.size()));
      set_entry(t, "length", std::to_string(t.raw_data().size()));
    }
    bytes.append(t.raw_data());
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
    ++moved;
  };
  for (auto& t : *model.mutable_graph()->mutable_initializer()) move(t);
  for (auto& n : *model.mutable_graph()->mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_t()) move(*a.mutable_t());
    }
  }
  EXPECT_GT(moved, 2);
  for (const auto& [location, bytes] : files) write_bytes(folder.file(location), bytes);
  const std::string path = folder.file("model.onnx");
  write_bytes(path, model.SerializeAsString());
  return path;
}

struct SameConstants {
  size_t constants = 0;  // compared
  size_t float32 = 0;    // of them float32
};

// Every constant of `a` is in `b` under its name with the same dtype, shape and bytes, and the
// two have as many nodes.
inline SameConstants expect_same_constants(const graph::Graph& a, const graph::Graph& b) {
  SameConstants same;
  EXPECT_EQ(a.nodes().size(), b.nodes().size());
  for (const graph::Value* v : a.values()) {
    if (!v->is_constant()) continue;
    const graph::Value* w = b.find_value(v->name());
    if (!w || !w->is_constant()) {
      ADD_FAILURE() << v->name() << " is no constant of the second graph";
      continue;
    }
    const kernels::Tensor& x = v->constant();
    const kernels::Tensor& y = w->constant();
    if (x.describe() != y.describe()) {
      ADD_FAILURE() << v->name() << ": " << x.describe() << " against " << y.describe();
      continue;
    }
    EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << v->name();
    ++same.constants;
    same.float32 += x.dtype() == kernels::DType::kFloat32;
  }
  return same;
}

}  // namespace qforge::testing

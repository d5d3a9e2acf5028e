// Small ONNX models written directly as protobuf: seeds for the importer's fuzz target (a few
// hundred bytes each, so that mutations reach the checker, shape inference and resolution
// quickly, where the bundled models take a megabyte per run) and the graph the plan target
// applies its plans to.
#pragma once

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

namespace qforge::fuzz {

class ModelWriter {
 public:
  explicit ModelWriter(const std::string& name) {
    model_.set_ir_version(8);
    model_.set_producer_name("qforge-fuzz-seeds");
    auto* opset = model_.add_opset_import();
    opset->set_domain("");
    opset->set_version(17);
    graph()->set_name(name);
  }
  onnx::GraphProto* graph() { return model_.mutable_graph(); }
  void opset(int64_t version) { model_.mutable_opset_import(0)->set_version(version); }

  // A float value with the given dims; a negative dim is the dynamic batch "N".
  void input(const std::string& name, std::initializer_list<int64_t> dims) {
    value(graph()->add_input(), name, dims);
  }
  void output(const std::string& name, std::initializer_list<int64_t> dims) {
    value(graph()->add_output(), name, dims);
  }
  // A float initializer holding `values`, or when empty 0.1, -0.2, 0.3, ... (period 7).
  void weight(const std::string& name, std::initializer_list<int64_t> dims,
              std::vector<float> values = {}) {
    auto* t = graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    int64_t count = 1;
    for (int64_t d : dims) {
      t->add_dims(d);
      count *= d;
    }
    for (int64_t i = 0; i < count; ++i) {
      t->add_float_data(values.empty() ? static_cast<float>((i % 2 ? -1 : 1) * 0.1 * (i % 7 + 1))
                                       : values[static_cast<size_t>(i)]);
    }
  }
  void int64_weight(const std::string& name, std::vector<int64_t> values, bool scalar = false) {
    auto* t = graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    if (!scalar) t->add_dims(static_cast<int64_t>(values.size()));
    for (int64_t v : values) t->add_int64_data(v);
  }
  onnx::NodeProto* node(const std::string& op, const std::string& name,
                        std::initializer_list<std::string> inputs,
                        std::initializer_list<std::string> outputs) {
    auto* n = graph()->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    return n;
  }
  static void ints(onnx::NodeProto* n, const std::string& name,
                   std::initializer_list<int64_t> values) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
  }
  static void text(onnx::NodeProto* n, const std::string& name, const std::string& value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::STRING);
    a->set_s(value);
  }
  static void integer(onnx::NodeProto* n, const std::string& name, int64_t value) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(value);
  }
  void metadata(const std::string& key, const std::string& value) {
    auto* p = model_.add_metadata_props();
    p->set_key(key);
    p->set_value(value);
  }
  // Every float initializer named in `names` keeps its values in external data: `location` at
  // consecutive offsets from `offset` on (each with its length), its float_data cleared. The
  // fuzz target serves that location from external_data_blob(), whose values they then read.
  void make_external(std::initializer_list<std::string> names, const std::string& location,
                     size_t offset) {
    for (auto& t : *graph()->mutable_initializer()) {
      if (std::find(names.begin(), names.end(), t.name()) == names.end()) continue;
      const size_t length = static_cast<size_t>(t.float_data_size()) * sizeof(float);
      t.clear_float_data();
      t.set_data_location(onnx::TensorProto::EXTERNAL);
      for (const auto& [key, value] : {std::pair<std::string, std::string>{"location", location},
                                       {"offset", std::to_string(offset)},
                                       {"length", std::to_string(length)}}) {
        auto* e = t.add_external_data();
        e->set_key(key);
        e->set_value(value);
      }
      offset += length;
    }
  }
  std::string bytes() const { return model_.SerializeAsString(); }

 private:
  static void value(onnx::ValueInfoProto* v, const std::string& name,
                    std::initializer_list<int64_t> dims) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    auto* shape = t->mutable_shape();
    for (int64_t d : dims) {
      if (d < 0) {
        shape->add_dim()->set_dim_param("N");
      } else {
        shape->add_dim()->set_dim_value(d);
      }
    }
  }

  onnx::ModelProto model_;
};

// The bytes the fuzz target serves as the external data file "weights.bin": 1024 floats, 0.01,
// -0.02, 0.03, ... (period 11).
inline constexpr char kExternalDataLocation[] = "weights.bin";
inline std::string external_data_blob() {
  std::string blob(1024 * sizeof(float), '\0');
  for (size_t i = 0; i < 1024; ++i) {
    const auto v = static_cast<float>((i % 2 ? -1 : 1) * 0.01 * static_cast<double>(i % 11 + 1));
    std::memcpy(blob.data() + i * sizeof(float), &v, sizeof v);
  }
  return blob;
}

// Conv → BN → Relu → MaxPool → 1×1 Conv → Add(residual) → Relu → GlobalAveragePool → Flatten →
// Gemm, on a dynamic batch of 3×8×8 images: the shape of the bundled CNNs in miniature; with
// `external`, its convolution and Gemm weights in external data (external_data_blob()).
inline std::string conv_net_model(bool external = false) {
  ModelWriter m("conv_net");
  m.input("x", {-1, 3, 8, 8});
  m.output("y", {-1, 2});
  m.metadata("qforge.input_shape", "3,8,8");
  m.metadata("qforge.mean", "0.5,0.5,0.5");
  m.weight("w1", {4, 3, 3, 3});
  m.weight("b1", {4});
  for (const char* p : {"bn_scale", "bn_bias", "bn_mean"}) m.weight(p, {4});
  m.weight("bn_var", {4}, {1.0f, 2.0f, 0.5f, 1.5f});  // variances must be positive
  m.weight("w2", {4, 4, 1, 1});
  m.weight("fc_w", {2, 4});
  m.weight("fc_b", {2});
  auto* conv = m.node("Conv", "conv1", {"x", "w1", "b1"}, {"c1"});
  ModelWriter::ints(conv, "kernel_shape", {3, 3});
  ModelWriter::ints(conv, "pads", {1, 1, 1, 1});
  ModelWriter::ints(conv, "strides", {1, 1});
  m.node("BatchNormalization", "bn1", {"c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"}, {"n1"});
  m.node("Relu", "relu1", {"n1"}, {"r1"});
  auto* pool = m.node("MaxPool", "pool1", {"r1"}, {"p1"});
  ModelWriter::ints(pool, "kernel_shape", {2, 2});
  ModelWriter::ints(pool, "strides", {2, 2});
  auto* conv2 = m.node("Conv", "conv2", {"p1", "w2"}, {"c2"});
  ModelWriter::ints(conv2, "kernel_shape", {1, 1});
  m.node("Add", "add1", {"c2", "p1"}, {"a1"});
  m.node("Relu", "relu2", {"a1"}, {"r2"});
  m.node("GlobalAveragePool", "gap", {"r2"}, {"g"});
  auto* flatten = m.node("Flatten", "flatten", {"g"}, {"f"});
  ModelWriter::integer(flatten, "axis", 1);
  ModelWriter::integer(m.node("Gemm", "fc", {"f", "fc_w", "fc_b"}, {"y"}), "transB", 1);
  if (external) m.make_external({"w1", "w2", "fc_w"}, kExternalDataLocation, 64);
  return m.bytes();
}

// LayerNorm → MatMul + bias → Softmax, then a Reshape whose target shape comes from a
// Shape → Gather → Unsqueeze → Concat subgraph (folded away once the batch is known), as
// torch.onnx writes a transformer block.
inline std::string token_net_model() {
  ModelWriter m("token_net");
  m.input("x", {-1, 4, 8});
  m.output("y", {-1, 32});
  m.weight("ln_scale", {8});
  m.weight("ln_bias", {8});
  m.weight("w", {8, 8});
  m.weight("b", {8});
  m.int64_weight("zero", {0}, /*scalar=*/true);
  m.int64_weight("axes0", {0});
  m.int64_weight("minus_one", {-1});
  auto* ln = m.node("LayerNormalization", "ln", {"x", "ln_scale", "ln_bias"}, {"l"});
  ModelWriter::integer(ln, "axis", -1);
  m.node("MatMul", "proj", {"l", "w"}, {"mm"});
  m.node("Add", "proj_bias", {"mm", "b"}, {"h"});
  auto* softmax = m.node("Softmax", "softmax", {"h"}, {"s"});
  ModelWriter::integer(softmax, "axis", -1);
  m.node("Shape", "shape", {"x"}, {"xs"});
  m.node("Gather", "batch", {"xs", "zero"}, {"n"});
  m.node("Unsqueeze", "batch_1d", {"n", "axes0"}, {"n1"});
  auto* concat = m.node("Concat", "target", {"n1", "minus_one"}, {"target_shape"});
  ModelWriter::integer(concat, "axis", 0);
  m.node("Reshape", "flatten", {"s", "target_shape"}, {"y"});
  return m.bytes();
}

// At opset 24, the ops the importer rewrites (graph/decompose_import.h): a Swish, then Q, K and
// V projections into one causal two-head Attention on 3-D inputs, whose default scale and causal
// mask come from Shape subgraphs folded once the batch is known.
inline std::string attention_net_model() {
  ModelWriter m("attention_net");
  m.opset(24);
  m.input("x", {-1, 4, 8});
  m.output("y", {-1, 4, 8});
  for (const char* w : {"wq", "wk", "wv"}) m.weight(w, {8, 8});
  m.node("Swish", "swish", {"x"}, {"s"});
  m.node("MatMul", "q", {"s", "wq"}, {"q"});
  m.node("MatMul", "k", {"s", "wk"}, {"k"});
  m.node("MatMul", "v", {"s", "wv"}, {"v"});
  auto* attention = m.node("Attention", "attention", {"q", "k", "v"}, {"y"});
  ModelWriter::integer(attention, "q_num_heads", 2);
  ModelWriter::integer(attention, "kv_num_heads", 2);
  ModelWriter::integer(attention, "is_causal", 1);
  return m.bytes();
}

// At opset 16, the sampling, selection and scatter ops: on constants (folded at resolution, so
// that mutated values, shapes and attributes reach their kernels) DepthToSpace, SpaceToDepth,
// GridSample, ReduceProd and GatherND; on the dynamic batch TopK, GatherElements,
// ScatterElements, OneHot, ReduceMin and LogSoftmax.
inline std::string sampling_net_model() {
  ModelWriter m("sampling_net");
  m.opset(16);
  m.input("x", {-1, 4, 3, 3});
  m.output("y", {-1, 36});
  m.output("log_probabilities", {-1, 4});
  m.output("picked", {2, 6});
  m.output("blocks", {1, 4, 6, 6});
  m.output("products", {1, 4, 1, 1});
  m.weight("w", {1, 4, 6, 6});
  m.weight("grid", {1, 3, 3, 2});
  m.weight("table", {4, 6, 6});
  m.int64_weight("tuples", {1, 2, 3, 0});
  m.graph()->mutable_initializer()->rbegin()->clear_dims();
  m.graph()->mutable_initializer()->rbegin()->add_dims(2);
  m.graph()->mutable_initializer()->rbegin()->add_dims(2);
  m.int64_weight("flat_shape", {0, 36});
  m.int64_weight("k", {4});
  m.int64_weight("depth", {36});
  m.weight("values", {2}, {0.0f, 1.0f});
  ModelWriter::integer(m.node("DepthToSpace", "to_space", {"w"}, {"space"}), "blocksize", 2);
  ModelWriter::integer(m.node("SpaceToDepth", "to_depth", {"space"}, {"blocks"}), "blocksize", 2);
  m.node("GridSample", "sample", {"w", "grid"}, {"sampled"});
  ModelWriter::ints(m.node("ReduceProd", "product", {"w"}, {"products"}), "axes", {2, 3});
  m.node("GatherND", "gather_nd", {"table", "tuples"}, {"picked"});
  m.node("Add", "add", {"x", "sampled"}, {"a"});
  m.node("Reshape", "flatten", {"a", "flat_shape"}, {"f"});
  m.node("TopK", "top", {"f", "k"}, {"top_values", "top_indices"});
  ModelWriter::integer(m.node("GatherElements", "gather", {"f", "top_indices"}, {"g"}), "axis", 1);
  m.node("LogSoftmax", "log_softmax", {"g"}, {"log_probabilities"});
  ModelWriter::integer(
      m.node("ScatterElements", "scatter", {"f", "top_indices", "top_values"}, {"s"}), "axis", 1);
  m.node("OneHot", "one_hot", {"top_indices", "depth", "values"}, {"hot"});
  auto* least = m.node("ReduceMin", "least", {"hot"}, {"m"});
  ModelWriter::ints(least, "axes", {1});
  ModelWriter::integer(least, "keepdims", 0);
  m.node("Add", "join", {"s", "m"}, {"y"});
  return m.bytes();
}

// At opset 14, the ops the import rewrites into others: a bidirectional LSTM over the steps of a
// batch-first input (graph/rnn_import.h), a GRU of linear_before_reset after it, an Einsum of two
// contracted letters and one of three terms (graph/einsum_import.h), a variadic Sum and Mean.
inline std::string recurrent_net_model() {
  ModelWriter m("recurrent_net");
  m.opset(14);
  m.input("x", {-1, 5, 3});
  m.output("y", {-1, 5});
  m.output("z", {-1, 4});
  m.weight("w", {2, 16, 3});
  m.weight("r", {2, 16, 4});
  m.weight("b", {2, 32});
  m.weight("gw", {1, 12, 4});
  m.weight("gr", {1, 12, 4});
  m.weight("v", {2, 4});
  m.weight("u", {4, 4});
  m.weight("s", {4});
  ModelWriter::ints(m.node("Transpose", "steps_first", {"x"}, {"t"}), "perm", {1, 0, 2});
  auto* lstm = m.node("LSTM", "lstm", {"t", "w", "r", "b"}, {"h", "h_last"});
  ModelWriter::integer(lstm, "hidden_size", 4);
  ModelWriter::text(lstm, "direction", "bidirectional");
  ModelWriter::text(m.node("Einsum", "pool", {"h", "v"}, {"y_steps"}), "equation", "tdbh,dh->bt");
  m.node("Identity", "y_out", {"y_steps"}, {"y"});
  ModelWriter::text(m.node("Einsum", "chain", {"h_last", "u", "s"}, {"c"}), "equation",
                    "dbh,hk,k->bk");
  m.node("Sum", "sum", {"h_last", "h_last"}, {"twice"});
  m.node("Mean", "mean", {"twice", "h_last", "twice"}, {"average"});
  auto* last = m.node("Gather", "first_direction", {"average", "zero"}, {"first"});
  ModelWriter::integer(last, "axis", 0);
  m.int64_weight("zero", {0}, /*scalar=*/true);
  auto* gru = m.node("GRU", "gru", {"h_last", "gw", "gr"}, {"", "g_last"});
  ModelWriter::integer(gru, "hidden_size", 4);
  ModelWriter::integer(gru, "linear_before_reset", 1);
  m.node("Squeeze", "g_squeeze", {"g_last", "zero_axis"}, {"g"});
  m.int64_weight("zero_axis", {0});
  m.node("Add", "join", {"first", "g"}, {"j"});
  m.node("Add", "z_out", {"j", "c"}, {"z"});
  return m.bytes();
}

// Post-processing that qforge cuts off at import and writes back (graph/tail.h): a score
// threshold through NonZero, NonMaxSuppression with a Constant node and an initializer it shares
// with the graph, a Gather and GatherND of the kept boxes, and a threshold scaled by a count of
// boxes that the graph computes from a shape and reads too.
inline std::string nms_tail_model() {
  ModelWriter m("nms_tail");
  m.input("x", {1, 6, 4});
  m.output("scores", {1, 1, 6});
  m.output("kept_boxes", {-1, 4});
  m.output("above", {2, -1});
  m.graph()->mutable_output(2)->mutable_type()->mutable_tensor_type()->set_elem_type(
      onnx::TensorProto::INT64);
  m.weight("w", {1, 6, 4});
  m.int64_weight("k", {2});
  m.int64_weight("sum_axes", {2});
  m.int64_weight("batch_box", {0, 2});
  m.weight("threshold", {1}, {0.1f});
  m.int64_weight("box_axis", {1}, /*scalar=*/true);
  m.node("Add", "shift", {"x", "w"}, {"boxes"});
  m.node("Shape", "shape", {"boxes"}, {"box_shape"});
  m.node("Gather", "count", {"box_shape", "box_axis"}, {"count"});
  ModelWriter::integer(m.node("Cast", "count_float", {"count"}, {"count_f"}), "to",
                       onnx::TensorProto::FLOAT);
  m.node("ReduceSum", "sum", {"boxes", "sum_axes"}, {"total"});
  m.node("Div", "mean", {"total", "count_f"}, {"s"});
  ModelWriter::ints(m.node("Transpose", "to_classes", {"s"}, {"scores"}), "perm", {0, 2, 1});
  ModelWriter::integer(m.node("TopK", "top", {"s", "k"}, {"top_values", "top_indices"}), "axis", 1);
  auto* iou = m.node("Constant", "iou", {}, {"iou_threshold"});
  auto* a = iou->add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  a->mutable_t()->set_data_type(onnx::TensorProto::FLOAT);
  a->mutable_t()->add_float_data(0.5f);
  m.node("Mul", "scaled", {"boxes", "iou_threshold"}, {"unused_scaled"});
  m.node("NonMaxSuppression", "nms", {"boxes", "scores", "k", "iou_threshold", "threshold"},
         {"selected"});
  ModelWriter::integer(m.node("Gather", "pick", {"selected", "batch_box"}, {"pairs"}), "axis", 1);
  m.node("GatherND", "kept", {"boxes", "pairs"}, {"kept_boxes"});
  m.node("Mul", "scaled_threshold", {"threshold", "count_f"}, {"count_threshold"});
  m.node("Greater", "over", {"scores", "count_threshold"}, {"mask"});
  m.node("NonZero", "where", {"mask"}, {"above_all"});
  m.node("Gather", "rows", {"above_all", "batch_box"}, {"above"});
  return m.bytes();
}

}  // namespace qforge::fuzz

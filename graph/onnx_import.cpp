// ONNX protobuf to the qforge IR.
#include "graph/onnx_import.h"

#include <fcntl.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "graph/catalog.h"

namespace qforge::graph {
namespace {

constexpr int64_t kMinOpset = 13;

template <class T>
void copy_typed(const google::protobuf::RepeatedField<T>& src, std::byte* dst, size_t n) {
  for (size_t i = 0; i < n; ++i)
    std::memcpy(dst + i * sizeof(T), &src[static_cast<int>(i)], sizeof(T));
}

// Stores the 32-bit field of narrower integer types element by element.
template <class Narrow>
void copy_narrow(const google::protobuf::RepeatedField<int32_t>& src, std::byte* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    auto v = static_cast<Narrow>(src[static_cast<int>(i)]);
    std::memcpy(dst + i * sizeof(Narrow), &v, sizeof(Narrow));
  }
}

Tensor tensor_from_proto(const onnx::TensorProto& proto, const std::string& where) {
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    throw_unsupported("import: tensor '" + proto.name() + "' in " + where +
                      ": external tensor data is not supported");
  }
  DType dtype = dtype_from_onnx(proto.data_type(), where + ", tensor '" + proto.name() + "'");
  Shape shape(proto.dims().begin(), proto.dims().end());
  for (int64_t d : shape) {
    if (d < 0) throw_invalid("import: tensor '" + proto.name() + "' has a negative dimension");
  }
  Tensor t(dtype, shape);
  const size_t n = static_cast<size_t>(t.numel());
  auto* dst = static_cast<std::byte*>(t.raw());
  if (proto.has_raw_data()) {
    if (proto.raw_data().size() != t.nbytes()) {
      throw_invalid("import: tensor '" + proto.name() + "' in " + where + ": expected " +
                    std::to_string(t.nbytes()) + " bytes of raw data for " + t.describe() +
                    ", got " + std::to_string(proto.raw_data().size()));
    }
    if (n) std::memcpy(dst, proto.raw_data().data(), t.nbytes());
    return t;
  }
  auto check_count = [&](int count) {
    if (static_cast<size_t>(count) != n) {
      throw_invalid("import: tensor '" + proto.name() + "' in " + where + ": expected " +
                    std::to_string(n) + " values for " + t.describe() + ", got " +
                    std::to_string(count));
    }
  };
  switch (dtype) {
    case DType::kFloat32:
      check_count(proto.float_data_size());
      copy_typed(proto.float_data(), dst, n);
      break;
    case DType::kInt64:
      check_count(proto.int64_data_size());
      copy_typed(proto.int64_data(), dst, n);
      break;
    case DType::kInt32:
      check_count(proto.int32_data_size());
      copy_typed(proto.int32_data(), dst, n);
      break;
    case DType::kInt8:
      check_count(proto.int32_data_size());
      copy_narrow<int8_t>(proto.int32_data(), dst, n);
      break;
    case DType::kUInt8:
    case DType::kBool:
      check_count(proto.int32_data_size());
      copy_narrow<uint8_t>(proto.int32_data(), dst, n);
      break;
  }
  return t;
}

AttributeValue attribute_from_proto(const onnx::AttributeProto& a, const std::string& where) {
  using A = onnx::AttributeProto;
  switch (a.type()) {
    case A::INT:
      return a.i();
    case A::FLOAT:
      return a.f();
    case A::STRING:
      return a.s();
    case A::INTS:
      return std::vector<int64_t>(a.ints().begin(), a.ints().end());
    case A::FLOATS:
      return std::vector<float>(a.floats().begin(), a.floats().end());
    case A::STRINGS:
      return std::vector<std::string>(a.strings().begin(), a.strings().end());
    case A::TENSOR:
      return tensor_from_proto(a.t(), where);
    default:
      throw_unsupported("import: " + where + ": attribute '" + a.name() + "' of type " +
                        A::AttributeType_Name(a.type()) + " is not supported");
  }
}

// Static dims of a value's type (-1 for a symbolic or missing dim); nullopt without a shape.
std::optional<Shape> shape_from_type(const onnx::TypeProto& type) {
  if (!type.has_tensor_type() || !type.tensor_type().has_shape()) return std::nullopt;
  Shape shape;
  for (const auto& d : type.tensor_type().shape().dim()) {
    shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
  }
  return shape;
}

std::string ints_text(std::span<const int64_t> values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out.append(", ");
    out.append(std::to_string(values[i]));
  }
  return out + "]";
}

// The leading dimension of a value's declared shape, when it has one.
std::optional<DeclaredBatch> declared_batch_of(const onnx::TypeProto& type) {
  if (!type.has_tensor_type() || !type.tensor_type().has_shape()) return std::nullopt;
  const onnx::TensorShapeProto& shape = type.tensor_type().shape();
  if (shape.dim_size() == 0) return std::nullopt;
  const auto& d = shape.dim(0);
  DeclaredBatch batch;
  if (d.has_dim_value()) {
    batch.size = d.dim_value();
  } else {
    batch.param = d.dim_param();
  }
  return batch;
}

// A declared shape as the file gives it: symbolic dims by name ("N"), missing ones as "?".
std::string declared_shape_text(const onnx::TensorShapeProto& shape) {
  std::string out = "[";
  for (int i = 0; i < shape.dim_size(); ++i) {
    if (i) out.append(", ");
    const auto& d = shape.dim(i);
    out.append(d.has_dim_value()       ? std::to_string(d.dim_value())
               : d.dim_param().empty() ? std::string("?")
                                       : d.dim_param());
  }
  return out + "]";
}

const onnx::TensorShapeProto* declared_shape(const onnx::ValueInfoProto& v) {
  if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape()) return nullptr;
  return &v.type().tensor_type().shape();
}

// Every static dimension of a model input is at least 1 (a batch of 0 would divide by zero in
// shape inference and the kernels); no declared dimension of any value is negative.
void check_declared_shapes(const onnx::GraphProto& gp,
                           const std::unordered_map<std::string, const onnx::TensorProto*>& inits) {
  for (const auto& in : gp.input()) {
    if (inits.count(in.name())) continue;
    const onnx::TensorShapeProto* shape = declared_shape(in);
    if (!shape) continue;
    for (const auto& d : shape->dim()) {
      if (d.has_dim_value() && d.dim_value() < 1) {
        throw_invalid("import: input '" + in.name() +
                      "': expected every dimension >= 1 or symbolic, got " +
                      declared_shape_text(*shape));
      }
    }
  }
  for (const auto* list : {&gp.output(), &gp.value_info()}) {
    for (const auto& v : *list) {
      const onnx::TensorShapeProto* shape = declared_shape(v);
      if (!shape) continue;
      for (const auto& d : shape->dim()) {
        if (d.has_dim_value() && d.dim_value() < 0) {
          throw_invalid("import: value '" + v.name() + "': expected dimensions >= 0, got " +
                        declared_shape_text(*shape));
        }
      }
    }
  }
}

const onnx::AttributeProto* find_attribute(const onnx::NodeProto& np, std::string_view name) {
  for (const auto& a : np.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

std::vector<int64_t> attribute_ints(const onnx::AttributeProto& a) {
  if (a.type() == onnx::AttributeProto::INT) return {a.i()};
  return {a.ints().begin(), a.ints().end()};
}

// The node's integer attributes against the catalog's bounds, and for Conv and the pools the
// window attributes against each other and Conv's weight against its input and bias, before
// shape inference or a kernel divides by a stride or indexes by a channel count.
void check_node_attributes(
    const onnx::NodeProto& np, const std::string& label,
    const std::unordered_map<std::string, const onnx::TensorProto*>& inits,
    const std::unordered_map<std::string, const onnx::TensorShapeProto*>& declared) {
  for (const AttributeRule* rule : attribute_rules(np.op_type())) {
    const onnx::AttributeProto* a = find_attribute(np, rule->attribute);
    if (!a) continue;
    const std::string name(rule->attribute);
    if (a->type() != onnx::AttributeProto::INT && a->type() != onnx::AttributeProto::INTS) {
      throw_invalid("import: " + label + ": expected integer attribute '" + name + "', got " +
                    onnx::AttributeProto::AttributeType_Name(a->type()));
    }
    const std::vector<int64_t> values = attribute_ints(*a);
    for (int64_t v : values) {
      if (v >= rule->min && v <= rule->max) continue;
      std::string bound =
          rule->max == std::numeric_limits<int64_t>::max()
              ? ">= " + std::to_string(rule->min)
              : "in [" + std::to_string(rule->min) + ", " + std::to_string(rule->max) + "]";
      throw_invalid(
          "import: " + label + ": expected attribute '" + name + "' values " + bound + ", got " +
          (a->type() == onnx::AttributeProto::INT ? std::to_string(v) : ints_text(values)));
    }
  }
  if (!has_window_attributes(np.op_type())) return;

  const bool conv = np.op_type() == "Conv";
  const onnx::TensorProto* weight = nullptr;
  if (conv && np.input_size() > 1) {
    auto it = inits.find(np.input(1));
    if (it != inits.end()) weight = it->second;
  }
  const onnx::AttributeProto* kernel_attr = find_attribute(np, "kernel_shape");
  if (!conv && !kernel_attr) {
    throw_invalid("import: " + label + ": expected attribute 'kernel_shape', got none");
  }
  std::vector<int64_t> kernel;
  if (kernel_attr) kernel = attribute_ints(*kernel_attr);
  if (weight) {
    const std::vector<int64_t> w(weight->dims().begin(), weight->dims().end());
    if (w.size() < 3) {
      throw_invalid("import: " + label + ": expected weight '" + weight->name() +
                    "' of rank >= 3 (out channels, in channels / group, kernel...), got " +
                    ints_text(w));
    }
    for (int64_t d : w) {
      if (d < 1) {
        throw_invalid("import: " + label + ": expected weight '" + weight->name() +
                      "' dimensions >= 1, got " + ints_text(w));
      }
    }
    const std::vector<int64_t> w_kernel(w.begin() + 2, w.end());
    if (kernel_attr && kernel != w_kernel) {
      throw_invalid("import: " + label + ": expected kernel_shape equal to weight '" +
                    weight->name() + "' spatial dims " + ints_text(w_kernel) + ", got " +
                    ints_text(kernel));
    }
    kernel = w_kernel;
    const onnx::AttributeProto* group_attr = find_attribute(np, "group");
    const std::vector<int64_t> groups =
        group_attr ? attribute_ints(*group_attr) : std::vector<int64_t>{1};
    if (groups.size() != 1) {
      throw_invalid("import: " + label + ": expected one value of attribute 'group', got " +
                    ints_text(groups));
    }
    const int64_t group = groups[0];
    if (w[0] % group != 0) {
      throw_invalid("import: " + label + ": expected weight '" + weight->name() +
                    "' output channels divisible by group " + std::to_string(group) + ", got " +
                    ints_text(w));
    }
    auto x = declared.find(np.input(0));
    if (x != declared.end() && x->second->dim_size() >= 2 && x->second->dim(1).has_dim_value()) {
      const int64_t channels = x->second->dim(1).dim_value();
      if (channels != w[1] * group) {
        throw_invalid("import: " + label + ": expected weight '" + weight->name() +
                      "' with input channels / group = " + std::to_string(channels) + " / " +
                      std::to_string(group) + " in dim 1, got " + ints_text(w) + " for input '" +
                      np.input(0) + "' " + declared_shape_text(*x->second));
      }
    }
    if (np.input_size() > 2 && !np.input(2).empty()) {
      auto b = inits.find(np.input(2));
      if (b != inits.end() && (b->second->dims_size() != 1 || b->second->dims(0) != w[0])) {
        throw_invalid(
            "import: " + label + ": expected bias '" + b->second->name() + "' of shape [" +
            std::to_string(w[0]) + "], got " +
            ints_text(std::vector<int64_t>(b->second->dims().begin(), b->second->dims().end())));
      }
    }
  }
  if (kernel.empty()) return;  // Conv with a computed weight: the runtime checks it
  const size_t rank = kernel.size();
  for (const char* name : {"strides", "dilations", "pads"}) {
    const onnx::AttributeProto* a = find_attribute(np, name);
    if (!a) continue;
    const size_t expected = std::string_view(name) == "pads" ? 2 * rank : rank;
    const std::vector<int64_t> values = attribute_ints(*a);
    if (values.size() != expected) {
      throw_invalid("import: " + label + ": expected attribute '" + name + "' with " +
                    std::to_string(expected) + " values for kernel " + ints_text(kernel) +
                    ", got " + ints_text(values));
    }
  }
}

// The opset and the op catalog are checked before the ONNX checker, so that an op qforge does
// not know is reported as such (naming op, node and opset), not as a checker failure.
int64_t check_opset_and_ops(const onnx::ModelProto& model, const std::string& source) {
  if (!model.has_graph()) throw_invalid("import: '" + source + "' holds no graph");
  int64_t opset = -1;
  for (const auto& imp : model.opset_import()) {
    if (imp.domain().empty() || imp.domain() == "ai.onnx") opset = imp.version();
  }
  if (opset < 0) throw_invalid("import: '" + source + "' declares no default-domain opset");
  if (opset < kMinOpset) {
    throw_unsupported("import: '" + source + "' uses opset " + std::to_string(opset) +
                      "; qforge supports opset " + std::to_string(kMinOpset) +
                      " and later (convert the model with onnx.version_converter)");
  }
  int index = 0;
  for (const auto& np : model.graph().node()) {
    std::string name = np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name();
    ++index;
    std::string label = "node '" + name + "' (" + np.op_type() + ")";
    if (!np.domain().empty() && np.domain() != "ai.onnx") {
      throw_unsupported("import: " + label + ": op '" + np.op_type() + "' of domain '" +
                        np.domain() + "' is not supported by qforge");
    }
    const OpSchema* schema = find_schema(np.op_type());
    if (!schema || schema->kind != SchemaKind::kOnnx) {
      throw_unsupported("import: " + label + ": op '" + np.op_type() + "' (opset " +
                        std::to_string(opset) + ") is not supported by qforge");
    }
  }
  // Then what the file declares, before libonnx's checker and shape inference read it.
  const onnx::GraphProto& gp = model.graph();
  std::unordered_map<std::string, const onnx::TensorProto*> inits;
  for (const auto& t : gp.initializer()) inits[t.name()] = &t;
  check_declared_shapes(gp, inits);
  std::unordered_map<std::string, const onnx::TensorShapeProto*> declared;
  for (const auto* list : {&gp.value_info(), &gp.input()}) {
    for (const auto& v : *list) {
      if (const onnx::TensorShapeProto* shape = declared_shape(v)) declared[v.name()] = shape;
    }
  }
  index = 0;
  for (const auto& np : gp.node()) {
    std::string name = np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name();
    ++index;
    check_node_attributes(np, "node '" + name + "' (" + np.op_type() + ")", inits, declared);
  }
  return opset;
}

std::unique_ptr<Graph> build_graph(onnx::ModelProto& model, const std::string& source,
                                   const ImportOptions& options) {
  const int64_t opset = check_opset_and_ops(model, source);

  if (options.run_shape_inference) {
    onnx::ShapeInferenceOptions si{};
    si.check_type = false;
    si.error_mode = 0;
    si.enable_data_propagation = false;
    try {
      onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), si);
    } catch (const std::exception&) {
      // Shape inference only adds information qforge recomputes itself; it must not block import.
    }
  }

  const onnx::GraphProto& gp = model.graph();
  auto graph = std::make_unique<Graph>();
  graph->name = gp.name();
  graph->opset = opset;
  graph->source_path = source;
  for (const auto& kv : model.metadata_props()) graph->metadata[kv.key()] = kv.value();

  std::unordered_map<std::string, const onnx::TypeProto*> value_types;
  for (const auto& vi : gp.value_info()) value_types[vi.name()] = &vi.type();
  for (const auto& vi : gp.output()) value_types[vi.name()] = &vi.type();

  for (int i = 0; i < gp.initializer_size(); ++i) {
    onnx::TensorProto* init = model.mutable_graph()->mutable_initializer(i);
    graph->add_constant(init->name(), tensor_from_proto(*init, "initializers of '" + source + "'"));
    // The graph has its own copy now: freeing the proto's keeps the weights resident once.
    std::string().swap(*init->mutable_raw_data());
  }
  if (gp.sparse_initializer_size() > 0) {
    throw_unsupported("import: '" + source + "': sparse initializers are not supported");
  }
  for (const auto& in : gp.input()) {
    if (graph->find_value(in.name())) continue;  // an initializer listed as input (IR < 4)
    if (!in.type().has_tensor_type()) {
      throw_unsupported("import: input '" + in.name() + "' is not a tensor");
    }
    DType dtype = dtype_from_onnx(in.type().tensor_type().elem_type(), "input '" + in.name() + "'");
    graph->add_input(in.name(), dtype, shape_from_type(in.type()));
    if (auto batch = declared_batch_of(in.type())) graph->declared_batch[in.name()] = *batch;
  }

  auto value_for = [&](const std::string& name, const std::string& node_label) -> Value* {
    if (name.empty()) return nullptr;
    Value* v = graph->find_value(name);
    if (!v) {
      throw_invalid("import: " + node_label + ": input '" + name +
                    "' is neither a graph input, an initializer nor an earlier node's output");
    }
    return v;
  };

  int index = 0;
  for (const auto& np : gp.node()) {
    std::string name = np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name();
    ++index;
    std::string label = "node '" + name + "' (" + np.op_type() + ")";
    const OpSchema* schema = find_schema(np.op_type());
    if (np.input_size() < schema->min_inputs || np.input_size() > schema->max_inputs ||
        np.output_size() < schema->min_outputs || np.output_size() > schema->max_outputs) {
      throw_invalid("import: " + label + ": expected " + std::to_string(schema->min_inputs) + ".." +
                    std::to_string(schema->max_inputs) + " inputs and " +
                    std::to_string(schema->min_outputs) + ".." +
                    std::to_string(schema->max_outputs) + " outputs, got " +
                    std::to_string(np.input_size()) + " and " + std::to_string(np.output_size()));
    }
    NodeSpec spec;
    spec.name = name;
    spec.op_type = np.op_type();
    for (const auto& in : np.input()) spec.inputs.push_back(value_for(in, label));
    for (const auto& out : np.output()) {
      spec.output_names.push_back(out.empty() ? graph->unique_value_name(name + "_unused") : out);
    }
    for (const auto& a : np.attribute()) {
      if (!a.ref_attr_name().empty()) {
        throw_unsupported("import: " + label + ": attribute references are not supported");
      }
      spec.attributes[a.name()] = attribute_from_proto(a, label);
    }
    Node* node = graph->add_node(std::move(spec));
    for (Value* out : node->outputs()) {
      auto it = value_types.find(out->name());
      if (it == value_types.end() || !it->second->has_tensor_type()) continue;
      int elem = it->second->tensor_type().elem_type();
      try {
        DType dtype = dtype_from_onnx(elem, "");
        auto shape = shape_from_type(*it->second);
        if (shape) {
          out->set_type(dtype, *shape);  // dims may be -1 until resolution
        } else {
          out->set_dtype(dtype);
        }
      } catch (const Error&) {
        // An intermediate dtype qforge does not model: the runtime's own inference decides.
      }
    }
  }

  for (const auto& out : gp.output()) {
    Value* v = graph->find_value(out.name());
    if (!v) throw_invalid("import: graph output '" + out.name() + "' is never produced");
    graph->mark_output(v);
    if (auto batch = declared_batch_of(out.type())) graph->declared_batch[out.name()] = *batch;
  }
  graph->check_consistency();
  return graph;
}

}  // namespace

DType dtype_from_onnx(int onnx_type, const std::string& where) {
  switch (onnx_type) {
    case onnx::TensorProto::FLOAT:
      return DType::kFloat32;
    case onnx::TensorProto::INT64:
      return DType::kInt64;
    case onnx::TensorProto::INT32:
      return DType::kInt32;
    case onnx::TensorProto::INT8:
      return DType::kInt8;
    case onnx::TensorProto::UINT8:
      return DType::kUInt8;
    case onnx::TensorProto::BOOL:
      return DType::kBool;
    default:
      throw_unsupported(
          "import: " + where + ": data type " +
          onnx::TensorProto::DataType_Name(static_cast<onnx::TensorProto::DataType>(onnx_type)) +
          " is not supported");
  }
}

int onnx_from_dtype(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return onnx::TensorProto::FLOAT;
    case DType::kInt64:
      return onnx::TensorProto::INT64;
    case DType::kInt32:
      return onnx::TensorProto::INT32;
    case DType::kInt8:
      return onnx::TensorProto::INT8;
    case DType::kUInt8:
      return onnx::TensorProto::UINT8;
    case DType::kBool:
      return onnx::TensorProto::BOOL;
  }
  return onnx::TensorProto::UNDEFINED;
}

namespace {

// The opset and op checks, then onnx::checker when asked.
void check_model_proto(const onnx::ModelProto& model, const std::string& source_name,
                       const ImportOptions& options) {
  check_opset_and_ops(model, source_name);
  if (options.run_checker) {
    try {
      onnx::checker::check_model(model);
    } catch (const std::exception& e) {
      std::string what = e.what();
      while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
      throw_invalid("import: '" + source_name + "' fails the ONNX checker: " + what);
    }
  }
}

[[noreturn]] void throw_not_onnx(const std::string& source_name) {
  throw_invalid("import: '" + source_name +
                "' is not a valid ONNX model (protobuf parsing failed; truncated or not ONNX)");
}

onnx::ModelProto parse_model_proto(std::string_view bytes, const std::string& source_name,
                                   const ImportOptions& options) {
  onnx::ModelProto model;
  if (bytes.empty()) throw_invalid("import: '" + source_name + "' is empty, not an ONNX model");
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    throw_not_onnx(source_name);
  }
  check_model_proto(model, source_name, options);
  return model;
}

// Parsed from the file as it is read: no copy of the file's bytes is held besides the message.
onnx::ModelProto read_model_proto(const std::string& path, const ImportOptions& options) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io("cannot read '" + path + "': " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_io("cannot read '" + path + "': " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw_io("cannot read '" + path + "': " + std::strerror(EISDIR));
  if (S_ISREG(st.st_mode) && st.st_size == 0) {
    throw_invalid("import: '" + path + "' is empty, not an ONNX model");
  }
  onnx::ModelProto model;
  google::protobuf::io::FileInputStream stream(fd);
  const bool parsed = model.ParseFromZeroCopyStream(&stream);
  if (stream.GetErrno() != 0) {
    throw_io("cannot read '" + path + "': " + std::strerror(stream.GetErrno()));
  }
  if (!parsed) throw_not_onnx(path);
  check_model_proto(model, path, options);
  return model;
}

}  // namespace

std::unique_ptr<Graph> parse_onnx(std::string_view bytes, const std::string& source_name,
                                  const ImportOptions& options) {
  onnx::ModelProto model = parse_model_proto(bytes, source_name, options);
  return build_graph(model, source_name, options);
}

std::unique_ptr<Graph> load_onnx(const std::string& path, const ImportOptions& options) {
  onnx::ModelProto model = read_model_proto(path, options);
  return build_graph(model, path, options);
}

}  // namespace qforge::graph

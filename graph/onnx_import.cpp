// ONNX protobuf to the qforge IR.
#include "graph/onnx_import.h"

#include <fcntl.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <onnx/version_converter/convert.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "graph/catalog.h"
#include "graph/decompose_import.h"
#include "graph/einsum_import.h"
#include "graph/loop_unroll.h"
#include "graph/proto_names.h"
#include "graph/rnn_import.h"
#include "graph/sample_axis.h"
#include "graph/tail.h"
#include "kernels/half.h"

namespace qforge::graph {
namespace {

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
    throw_internal("import: tensor '" + proto.name() + "' in " + where +
                   ": external data left unread");
  }
  DType dtype = dtype_from_onnx(proto.data_type(), where + ", tensor '" + proto.name() + "'");
  Shape shape(proto.dims().begin(), proto.dims().end());
  for (int64_t d : shape) {
    if (d < 0) throw_invalid("import: tensor '" + proto.name() + "' has a negative dimension");
  }
  // The data the file holds must fill the dims before anything is allocated for them: a
  // malformed file's dims could ask for more memory than there is.
  const auto n = static_cast<size_t>(kernels::shape_numel(shape));
  const std::string described = std::string(kernels::dtype_name(dtype)) + kernels::shape_str(shape);
  if (proto.has_raw_data()) {
    const size_t nbytes = n * kernels::dtype_size(dtype);
    if (n > proto.raw_data().size() || proto.raw_data().size() != nbytes) {
      throw_invalid("import: tensor '" + proto.name() + "' in " + where + ": expected " +
                    (n > proto.raw_data().size() ? std::to_string(n) + " elements"
                                                 : std::to_string(nbytes) + " bytes") +
                    " of raw data for " + described + ", got " +
                    std::to_string(proto.raw_data().size()) + " bytes");
    }
    Tensor t(dtype, shape);
    if (n) std::memcpy(t.raw(), proto.raw_data().data(), nbytes);
    return t;
  }
  int count = 0;
  switch (dtype) {
    case DType::kFloat32:
      count = proto.float_data_size();
      break;
    case DType::kInt64:
      count = proto.int64_data_size();
      break;
    default:  // int32, and the narrower integers and bool stored in the 32-bit field
      count = proto.int32_data_size();
      break;
  }
  if (static_cast<size_t>(count) != n) {
    throw_invalid("import: tensor '" + proto.name() + "' in " + where + ": expected " +
                  std::to_string(n) + " values for " + described + ", got " +
                  std::to_string(count));
  }
  Tensor t(dtype, shape);
  auto* dst = static_cast<std::byte*>(t.raw());
  switch (dtype) {
    case DType::kFloat32:
      copy_typed(proto.float_data(), dst, n);
      break;
    case DType::kInt64:
      copy_typed(proto.int64_data(), dst, n);
      break;
    case DType::kInt32:
      copy_typed(proto.int32_data(), dst, n);
      break;
    case DType::kInt8:
      copy_narrow<int8_t>(proto.int32_data(), dst, n);
      break;
    case DType::kUInt8:
    case DType::kBool:
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

// The newest default-domain opset the linked libonnx has schemas for (17 for libonnx 1.12): its
// checker and shape inference refuse or misread models above it.
int64_t libonnx_newest_opset() {
  const auto& map = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  auto it = map.find(onnx::ONNX_DOMAIN);
  return it == map.end() ? kConvertedOpset : it->second.second;
}

int64_t declared_opset(const onnx::ModelProto& model, const std::string& source) {
  if (!model.has_graph()) throw_invalid("import: '" + source + "' holds no graph");
  int64_t opset = -1;
  for (const auto& imp : model.opset_import()) {
    if (imp.domain().empty() || imp.domain() == "ai.onnx") opset = imp.version();
  }
  if (opset < 0) throw_invalid("import: '" + source + "' declares no default-domain opset");
  if (opset < kOldestImportedOpset || opset > kNewestImportedOpset) {
    throw_unsupported("import: '" + source + "' uses opset " + std::to_string(opset) +
                      "; qforge imports opsets " + std::to_string(kOldestImportedOpset) + " to " +
                      std::to_string(kNewestImportedOpset));
  }
  return opset;
}

// The opset from which a reduction takes its axes as input 1 with noop_with_empty_axes (13 for
// ReduceSum, 18 for the others); 0 for an op that is not a reduction.
int64_t reduce_axes_input_opset(std::string_view op) {
  if (op == "ReduceSum") return 13;
  for (std::string_view r : {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                             "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}) {
    if (op == r) return 18;
  }
  return 0;
}

// The ops whose form changed between opset 13 and 26 (ONNX's operator changelog), checked
// against the model's opset: libonnx's checker knows none of the forms above 17.
void check_opset_form(const onnx::NodeProto& np, const std::string& label, int64_t opset) {
  const std::string& op = np.op_type();
  const std::string at = " at opset " + std::to_string(opset);
  if (const int64_t since = reduce_axes_input_opset(op); since > 0) {
    const std::string from = " (axes is an input from opset " + std::to_string(since) + ")";
    if (opset < since && np.input_size() > 1) {
      throw_invalid("import: " + label + ": expected 1 input" + at + from + ", got " +
                    std::to_string(np.input_size()));
    }
    if (opset >= since && find_attribute(np, "axes")) {
      throw_invalid("import: " + label + ": expected axes as input 1" + at + from +
                    ", got attribute 'axes'");
    }
    if (opset < since && find_attribute(np, "noop_with_empty_axes")) {
      throw_invalid("import: " + label + ": expected no attribute 'noop_with_empty_axes'" + at +
                    from + ", got one");
    }
  } else if (op == "Pad" && opset < 18 && np.input_size() > 3) {
    throw_invalid("import: " + label + ": expected at most 3 inputs" + at +
                  " (axes is input 3 from opset 18), got " + std::to_string(np.input_size()));
  } else if (op == "GroupNormalization") {
    if (opset < 18) {
      throw_invalid("import: " + label +
                    ": expected opset 18 or later for GroupNormalization, got opset " +
                    std::to_string(opset));
    }
    if (opset < 21 && find_attribute(np, "stash_type")) {
      throw_invalid("import: " + label + ": expected no attribute 'stash_type'" + at +
                    " (added in opset 21), got one");
    }
  } else if (op == "QuantizeLinear" || op == "DequantizeLinear") {
    // Opset 23's precision of the division and type of the dequantized output: float32 here.
    const char* added = op == "QuantizeLinear" ? "precision" : "output_dtype";
    const onnx::AttributeProto* a = find_attribute(np, added);
    if (a && opset < 23) {
      throw_invalid("import: " + label + ": expected no attribute '" + added + "'" + at +
                    " (added in opset 23), got one");
    }
    if (a && a->i() != 0 && a->i() != onnx::TensorProto::FLOAT) {
      throw_unsupported("import: " + label + ": expected " + added + " 1 (float) or none, got " +
                        std::to_string(a->i()));
    }
  } else if (op == "Gelu") {
    if (opset < 20) {
      throw_invalid("import: " + label + ": expected opset 20 or later for Gelu, got opset " +
                    std::to_string(opset));
    }
    if (const onnx::AttributeProto* a = find_attribute(np, "approximate")) {
      if (a->type() != onnx::AttributeProto::STRING || (a->s() != "none" && a->s() != "tanh")) {
        throw_invalid("import: " + label + ": expected attribute 'approximate' \"none\" or " +
                      "\"tanh\", got " +
                      (a->type() == onnx::AttributeProto::STRING
                           ? "\"" + a->s() + "\""
                           : onnx::AttributeProto::AttributeType_Name(a->type())));
      }
    }
  } else if (op == "ScatterElements" && opset < 16 && find_attribute(np, "reduction")) {
    throw_invalid("import: " + label + ": expected no attribute 'reduction'" + at +
                  " (added in opset 16), got one");
  } else if (op == "GridSample") {
    if (opset < 16) {
      throw_invalid("import: " + label + ": expected opset 16 or later for GridSample, got opset " +
                    std::to_string(opset));
    }
    // Opset 20 renamed the interpolation modes (bilinear → linear, bicubic → cubic).
    if (const onnx::AttributeProto* a = find_attribute(np, "mode")) {
      const bool renamed = opset >= 20;
      const std::string want = renamed ? "\"linear\", \"nearest\" or \"cubic\""
                                       : "\"bilinear\", \"nearest\" or \"bicubic\"";
      const bool ok = a->type() == onnx::AttributeProto::STRING &&
                      (a->s() == "nearest" || a->s() == (renamed ? "linear" : "bilinear") ||
                       a->s() == (renamed ? "cubic" : "bicubic"));
      if (!ok) {
        throw_invalid("import: " + label + ": expected attribute 'mode' " + want + at + ", got " +
                      (a->type() == onnx::AttributeProto::STRING
                           ? "\"" + a->s() + "\""
                           : onnx::AttributeProto::AttributeType_Name(a->type())));
      }
    }
  }
}

// The value of `name` where the file gives it: an initializer or a Constant node's `value`.
std::optional<Tensor> constant_in_file(const onnx::GraphProto& gp, const std::string& name) {
  for (const auto& t : gp.initializer()) {
    if (t.name() == name) return tensor_from_proto(t, "initializer '" + name + "'");
  }
  for (const auto& np : gp.node()) {
    if (np.op_type() != "Constant" || np.output_size() != 1 || np.output(0) != name) continue;
    const onnx::AttributeProto* value = find_attribute(np, "value");
    if (!value || value->type() != onnx::AttributeProto::TENSOR) return std::nullopt;
    return tensor_from_proto(value->t(), "Constant '" + name + "'");
  }
  return std::nullopt;
}

// Upsample (deprecated in opset 10, where Resize replaces it) as exporters write it: X and the
// scales as input 1 (opset 9) or attribute 'scales' (opsets 7 and 8), mode nearest or linear,
// every scale >= 1. The version converter turns it into a Resize (convert_to_supported_opset).
void check_upsample(const onnx::GraphProto& gp, const onnx::NodeProto& np, const std::string& label,
                    int64_t opset) {
  if (opset > 9) {
    throw_invalid("import: " + label +
                  ": expected Upsample at opset 9 or older (Resize replaces it from opset 10), "
                  "got opset " +
                  std::to_string(opset));
  }
  const onnx::AttributeProto* scales_attribute = find_attribute(np, "scales");
  const bool attribute_form = opset < 9;
  if (np.input_size() != (attribute_form ? 1 : 2) ||
      (scales_attribute == nullptr) == attribute_form) {
    throw_invalid("import: " + label + ": expected " +
                  (attribute_form ? "input X and attribute 'scales' at opset 7 and 8"
                                  : "inputs X and scales at opset 9 (no attribute 'scales')") +
                  ", got " + std::to_string(np.input_size()) + " inputs " +
                  (scales_attribute ? "and" : "without") + " attribute 'scales'");
  }
  const onnx::AttributeProto* mode = find_attribute(np, "mode");
  if (mode && (mode->type() != onnx::AttributeProto::STRING ||
               (mode->s() != "nearest" && mode->s() != "linear"))) {
    throw_invalid("import: " + label +
                  ": expected attribute 'mode' \"nearest\" or \"linear\", got " +
                  (mode->type() == onnx::AttributeProto::STRING
                       ? "\"" + mode->s() + "\""
                       : onnx::AttributeProto::AttributeType_Name(mode->type())));
  }
  std::optional<Tensor> scales;
  if (attribute_form) {
    if (scales_attribute->type() != onnx::AttributeProto::FLOATS) {
      throw_invalid("import: " + label + ": expected attribute 'scales' of floats, got " +
                    onnx::AttributeProto::AttributeType_Name(scales_attribute->type()));
    }
    scales = Tensor::from_vector<float>(
        {scales_attribute->floats_size()},
        std::vector<float>(scales_attribute->floats().begin(), scales_attribute->floats().end()));
  } else {
    scales = constant_in_file(gp, np.input(1));
  }
  if (!scales) return;  // computed: the Resize it becomes checks it when shapes are inferred
  if (scales->dtype() != DType::kFloat32 || scales->rank() != 1) {
    throw_invalid("import: " + label + ": expected scales '" + np.input(1) +
                  "' as a 1-D float tensor, got " + scales->describe());
  }
  for (int64_t i = 0; i < scales->numel(); ++i) {
    const float v = scales->data<float>()[i];
    if (!(v >= 1.0f) || !std::isfinite(v)) {
      std::string got("scale ");
      got.append(std::to_string(v)).append(" at axis ").append(std::to_string(i));
      throw_invalid("import: " + label + ": expected finite scales >= 1, got " + got);
    }
  }
}

// Every op in the catalog; the ops whose form depends on the opset in the form of the model's
// (after conversion for old models). Checked before the ONNX checker, so that an op qforge does
// not know is reported as such (naming op, node and opset), not as a checker failure.
// The branches of an If node (graph/control_flow.h); nullptr where an attribute is missing or
// not a graph, which check_if_node reports.
const onnx::GraphProto* branch_of(const onnx::NodeProto& np, std::string_view name) {
  const onnx::AttributeProto* a = find_attribute(np, name);
  return a && a->type() == onnx::AttributeProto::GRAPH ? &a->g() : nullptr;
}

void check_if_node(const onnx::NodeProto& np, const std::string& label) {
  if (np.input_size() != 1 || np.output_size() < 1) {
    throw_invalid("import: " + label + ": expected 1 input and at least 1 output, got " +
                  std::to_string(np.input_size()) + " and " + std::to_string(np.output_size()));
  }
  for (const char* name : {"then_branch", "else_branch"}) {
    const onnx::GraphProto* branch = branch_of(np, name);
    if (!branch) throw_invalid("import: " + label + ": expected graph attribute '" + name + "'");
    if (branch->output_size() != np.output_size()) {
      throw_invalid("import: " + label + ": its " + name + " has " +
                    std::to_string(branch->output_size()) + " outputs, the node " +
                    std::to_string(np.output_size()));
    }
  }
}

// `tail`: the nodes of the post-processing tail, by index, which qforge keeps but never runs.
void check_graph_ops(const onnx::GraphProto& gp, int64_t opset,
                     const std::vector<bool>& tail = {}) {
  int index = 0;
  for (const auto& np : gp.node()) {
    const bool in_tail =
        static_cast<size_t>(index) < tail.size() && tail[static_cast<size_t>(index)];
    const std::string label = proto_node_label(np, index++);
    if (in_tail) continue;
    if (!np.domain().empty() && np.domain() != "ai.onnx") {
      throw_unsupported("import: " + label + ": op '" + np.op_type() + "' of domain '" +
                        np.domain() + "' is not supported by qforge");
    }
    if (np.op_type() == "Upsample") {
      check_upsample(gp, np, label, opset);
      continue;
    }
    if (is_recurrent_op(np.op_type())) continue;  // unrolled once the sample shape is fixed
    if (np.op_type() == "If") {
      check_if_node(np, label);
      check_graph_ops(*branch_of(np, "then_branch"), opset);
      check_graph_ops(*branch_of(np, "else_branch"), opset);
      continue;
    }
    const OpSchema* schema = find_schema(np.op_type());
    if (!schema || schema->kind != SchemaKind::kOnnx) {
      throw_unsupported("import: " + label + ": op '" + np.op_type() + "' (opset " +
                        std::to_string(opset) + ") is not supported by qforge");
    }
    if (opset >= kConvertedOpset) check_opset_form(np, label, opset);
  }
}

// Every op in the catalog (the If nodes' branches included); the ops whose form depends on the
// opset in the form of the model's (after conversion for old models). Checked before the ONNX
// checker, so that an op qforge does not know is reported as such (naming op, node and opset),
// not as a checker failure. The post-processing tail (graph/tail.h) is not checked: it is
// written back as the file has it.
void check_ops(const onnx::ModelProto& model, int64_t opset) {
  check_graph_ops(model.graph(), opset, tail_nodes(model.graph()));
}

// Where libonnx's checker does not run first (the version converter reads a model before it;
// above opset 17 it never runs): each node reads values defined before it, defines values no one
// else defines, and has the input and output it reads and writes first; each graph output is
// defined.
void check_structure(const onnx::ModelProto& model) {
  const onnx::GraphProto& gp = model.graph();
  std::unordered_map<std::string, bool> defined;
  for (const auto& t : gp.initializer()) defined[t.name()] = true;
  for (const auto& in : gp.input()) defined[in.name()] = true;
  int index = 0;
  for (const auto& np : gp.node()) {
    const std::string label = proto_node_label(np, index++);
    const OpSchema* schema = find_schema(np.op_type());
    const int min_inputs = schema ? std::min(schema->min_inputs, 1) : 1;  // Upsample: 1
    if (np.input_size() < min_inputs || np.output_size() < 1) {
      throw_invalid("import: " + label + ": expected at least " + std::to_string(min_inputs) +
                    " input and 1 output, got " + std::to_string(np.input_size()) + " and " +
                    std::to_string(np.output_size()));
    }
    for (const auto& in : np.input()) {
      if (!in.empty() && !defined.count(in)) {
        throw_invalid("import: " + label + ": input '" + in +
                      "' is neither a graph input, an initializer nor an earlier node's output");
      }
    }
    for (const auto& out : np.output()) {
      if (out.empty()) continue;
      if (defined.count(out)) {
        throw_invalid("import: " + label + ": output '" + out + "' is defined twice");
      }
      defined[out] = true;
    }
  }
  // libonnx's version converter dereferences the producer of every graph output.
  for (const auto& out : gp.output()) {
    if (!defined.count(out.name())) {
      throw_invalid("import: graph output '" + out.name() + "' is never produced");
    }
  }
}

// What the file declares, before libonnx's checker and shape inference read it.
// A graph's declarations and node attributes; an If's branches see the enclosing graphs' names
// as well as their own.
void check_graph_declarations(
    const onnx::GraphProto& gp, std::unordered_map<std::string, const onnx::TensorProto*> inits,
    std::unordered_map<std::string, const onnx::TensorShapeProto*> declared) {
  for (const auto& t : gp.initializer()) inits[t.name()] = &t;
  check_declared_shapes(gp, inits);
  for (const auto* list : {&gp.value_info(), &gp.input()}) {
    for (const auto& v : *list) {
      if (const onnx::TensorShapeProto* shape = declared_shape(v)) declared[v.name()] = shape;
    }
  }
  int index = 0;
  for (const auto& np : gp.node()) {
    check_node_attributes(np, proto_node_label(np, index++), inits, declared);
    if (np.op_type() != "If") continue;
    for (const char* name : {"then_branch", "else_branch"}) {
      if (const onnx::GraphProto* branch = branch_of(np, name)) {
        check_graph_declarations(*branch, inits, declared);
      }
    }
  }
}

void check_declarations(const onnx::ModelProto& model) {
  check_graph_declarations(model.graph(), {}, {});
}

// The graph inputs that are not initializers (IR < 4 lists initializers as inputs too).
std::vector<onnx::ValueInfoProto*> model_inputs(onnx::ModelProto& model) {
  std::unordered_map<std::string, bool> inits;
  for (const auto& t : model.graph().initializer()) inits[t.name()] = true;
  std::vector<onnx::ValueInfoProto*> out;
  for (auto& in : *model.mutable_graph()->mutable_input()) {
    if (!inits.count(in.name())) out.push_back(&in);
  }
  return out;
}

// options.sample_shape written into the declared input shape, then the dims after the batch
// checked static when options.require_static_sample asks.
void fix_sample_shape(onnx::ModelProto& model, const std::string& source,
                      const ImportOptions& options) {
  std::vector<onnx::ValueInfoProto*> inputs = model_inputs(model);
  // `sample` written into input `in`'s declared shape after its batch.
  auto fix = [&](onnx::ValueInfoProto& in, const Shape& sample) {
    const std::string given = options.sample_shape_origin + " " + ints_text(sample);
    if (!in.type().has_tensor_type()) {
      throw_unsupported("import: input '" + in.name() + "' is not a tensor");
    }
    const bool had_shape = in.type().tensor_type().has_shape();
    auto* shape = in.mutable_type()->mutable_tensor_type()->mutable_shape();
    if (!had_shape) {
      shape->add_dim()->set_dim_param("N");
      for (size_t i = 0; i < sample.size(); ++i) shape->add_dim();
    }
    bool fits = shape->dim_size() == static_cast<int>(sample.size()) + 1;
    for (size_t i = 0; fits && i < sample.size(); ++i) {
      const auto& d = shape->dim(static_cast<int>(i) + 1);
      fits = !d.has_dim_value() || d.dim_value() == sample[i];
    }
    if (!fits && options.sample_shape_must_match) {
      throw_invalid("import: input '" + in.name() + "' " + declared_shape_text(*shape) +
                    ": expected " + std::to_string(shape->dim_size() - 1) +
                    " dims after the batch agreeing with its static dims, got " + given);
    }
    for (size_t i = 0; fits && i < sample.size(); ++i) {
      if (sample[i] < 1) {
        throw_invalid("import: input '" + in.name() + "': expected dims >= 1, got " + given);
      }
      shape->mutable_dim(static_cast<int>(i) + 1)->set_dim_value(sample[i]);
    }
  };
  if (options.sample_shape) {
    if (inputs.size() != 1) {
      throw_invalid("import: '" + source + "': expected one model input for " +
                    options.sample_shape_origin + " " + ints_text(*options.sample_shape) +
                    ", got " + std::to_string(inputs.size()) +
                    " (give each input's dims as NAME=D1,D2,..., or feed an .npz of every "
                    "input)");
    }
    fix(*inputs[0], *options.sample_shape);
  }
  for (const auto& entry : options.input_sample_shapes) {
    const std::string& name = entry.first;  // not a binding: the lambda below captures it
    const auto it = std::find_if(inputs.begin(), inputs.end(), [&](const onnx::ValueInfoProto* in) {
      return in->name() == name;
    });
    if (it != inputs.end()) {
      fix(**it, entry.second);
    } else if (options.sample_shape_must_match) {
      std::string names;
      for (const onnx::ValueInfoProto* in : inputs) {
        names.append(names.empty() ? "'" : ", '").append(in->name()).append("'");
      }
      throw_invalid("import: '" + source + "' has no input '" + name + "' for " +
                    options.sample_shape_origin + " (its inputs: " + names + ")");
    }
  }
  if (!options.require_static_sample) return;
  for (const onnx::ValueInfoProto* in : inputs) {
    const onnx::TensorShapeProto* shape = declared_shape(*in);
    std::string dynamic;
    for (int i = 1; shape && i < shape->dim_size(); ++i) {
      const auto& d = shape->dim(i);
      if (d.has_dim_value()) continue;
      if (!dynamic.empty()) dynamic.append(", ");
      dynamic.append(d.dim_param().empty() ? "dim " + std::to_string(i)
                                           : "'" + d.dim_param() + "'");
    }
    if (!shape) dynamic = "all (no declared shape)";
    if (dynamic.empty()) continue;
    throw_invalid("import: input '" + in->name() + "' " +
                  (shape ? declared_shape_text(*shape) : std::string("[?]")) +
                  ": expected static dims after the batch, got dynamic " + dynamic + "; " +
                  *options.require_static_sample);
  }
}

// The node the version converter fails on: each node converted alone, its inputs typed as shape
// inference left them. Empty when every node converts alone (the failure is the model's).
std::string failing_conversion_node(const onnx::ModelProto& model, int64_t target) {
  const onnx::GraphProto& gp = model.graph();
  std::unordered_map<std::string, const onnx::ValueInfoProto*> infos;
  for (const auto* list : {&gp.input(), &gp.value_info(), &gp.output()}) {
    for (const auto& v : *list) infos[v.name()] = &v;
  }
  std::unordered_map<std::string, const onnx::TensorProto*> inits;
  for (const auto& t : gp.initializer()) inits[t.name()] = &t;
  int index = 0;
  for (const auto& np : gp.node()) {
    const std::string label = proto_node_label(np, index++);
    onnx::ModelProto one;
    one.set_ir_version(model.ir_version());
    *one.mutable_opset_import() = model.opset_import();
    onnx::GraphProto* g = one.mutable_graph();
    g->set_name("node");
    *g->add_node() = np;
    for (const auto& in : np.input()) {
      if (in.empty()) continue;
      auto init = inits.find(in);
      if (init != inits.end()) {
        *g->add_initializer() = *init->second;
        auto* vi = g->add_input();
        vi->set_name(in);
        auto* tt = vi->mutable_type()->mutable_tensor_type();
        tt->set_elem_type(init->second->data_type());
        for (int64_t d : init->second->dims()) tt->mutable_shape()->add_dim()->set_dim_value(d);
        continue;
      }
      auto info = infos.find(in);
      if (info != infos.end()) {
        *g->add_input() = *info->second;
      } else {
        g->add_input()->set_name(in);
      }
    }
    for (const auto& out : np.output()) {
      auto info = infos.find(out);
      if (info != infos.end()) {
        *g->add_output() = *info->second;
      } else {
        g->add_output()->set_name(out);
      }
    }
    try {
      onnx::version_conversion::ConvertVersion(one, static_cast<int>(target));
    } catch (const std::exception&) {
      return label;
    }
  }
  return {};
}

std::string trimmed_what(const std::exception& e) {
  std::string what = e.what();
  while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
  return what;
}

// Attribute defaults that libonnx 1.12's adapters read as required: Pad before opset 11 without
// 'value' (0 by the spec) would fail the 10 → 11 adapter.
void write_defaults_adapters_require(onnx::ModelProto& model, int64_t opset) {
  if (opset >= 11) return;
  for (onnx::NodeProto& np : *model.mutable_graph()->mutable_node()) {
    if (np.op_type() != "Pad" || find_attribute(np, "value")) continue;
    onnx::AttributeProto* value = np.add_attribute();
    value->set_name("value");
    value->set_type(onnx::AttributeProto::FLOAT);
    value->set_f(0.0f);
  }
}

// The rank of each Reshape output that shape inference left unknown, from the length of its shape
// input. A Reshape whose shape is computed (Shape → Gather → Unsqueeze → Concat, as exporters write
// a view on a dynamic batch) has no inferred output before opset 13, where libonnx 1.12
// propagates no data; its length is known all the same, and a Softmax after it needs only the
// rank to be converted. Returns whether any rank was added.
bool add_reshape_output_ranks(onnx::ModelProto& model) {
  onnx::GraphProto& g = *model.mutable_graph();
  std::unordered_map<std::string, const onnx::TypeProto*> types;
  for (const auto& vi : g.input()) types[vi.name()] = &vi.type();
  for (const auto& vi : g.value_info()) types[vi.name()] = &vi.type();
  for (const auto& vi : g.output()) {
    if (vi.type().tensor_type().has_shape()) types[vi.name()] = &vi.type();
  }
  std::unordered_map<std::string, int64_t> init_length;
  for (const auto& t : g.initializer()) {
    if (t.dims_size() == 1) init_length[t.name()] = t.dims(0);
  }
  std::vector<std::pair<std::string, int64_t>> ranks;
  std::vector<int32_t> elem_types;
  for (const auto& np : g.node()) {
    if (np.op_type() != "Reshape" || np.input_size() < 2 || np.output_size() < 1) continue;
    const auto known = types.find(np.output(0));
    if (known != types.end() && known->second->tensor_type().has_shape()) continue;
    int64_t length = -1;
    if (auto it = init_length.find(np.input(1)); it != init_length.end()) {
      length = it->second;
    } else if (auto st = types.find(np.input(1)); st != types.end()) {
      const auto& shape = st->second->tensor_type().shape();
      if (shape.dim_size() == 1 && shape.dim(0).has_dim_value()) length = shape.dim(0).dim_value();
    }
    if (length <= 0) continue;
    int32_t elem = onnx::TensorProto::FLOAT;
    if (auto dt = types.find(np.input(0));
        dt != types.end() && dt->second->tensor_type().elem_type())
      elem = dt->second->tensor_type().elem_type();
    ranks.emplace_back(np.output(0), length);
    elem_types.push_back(elem);
  }
  for (size_t i = 0; i < ranks.size(); ++i) {
    onnx::ValueInfoProto* vi = g.add_value_info();
    vi->set_name(ranks[i].first);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(elem_types[i]);
    for (int64_t d = 0; d < ranks[i].second; ++d) tt->mutable_shape()->add_dim();
  }
  return !ranks.empty();
}

// An Upsample node before conversion: the converter replaces it by a Resize reading the same X
// and scales, without its name and with a new output name.
struct UpsampleNode {
  std::string name;
  std::string x;
  std::string scales;
  std::string output;
};

std::vector<UpsampleNode> upsample_nodes(const onnx::ModelProto& model) {
  std::vector<UpsampleNode> out;
  int index = 0;
  for (const auto& np : model.graph().node()) {
    const std::string name =
        np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name();
    ++index;
    if (np.op_type() != "Upsample") continue;
    // Opsets 7 and 8: the scales are an attribute, input 1 of the Resize a new Constant.
    out.push_back({name, np.input(0), np.input_size() > 1 ? np.input(1) : "", np.output(0)});
  }
  return out;
}

void rename_value(onnx::GraphProto& g, const std::string& from, const std::string& to) {
  for (onnx::NodeProto& np : *g.mutable_node()) {
    for (std::string& in : *np.mutable_input()) {
      if (in == from) in = to;
    }
    for (std::string& out : *np.mutable_output()) {
      if (out == from) out = to;
    }
  }
  for (auto* list : {g.mutable_output(), g.mutable_value_info()}) {
    for (onnx::ValueInfoProto& v : *list) {
      if (v.name() == from) v.set_name(to);
    }
  }
}

// The Resizes the converter made from opset-10 Resizes and from Upsamples, in their semantics:
// both compute source coordinates as output / scale (asymmetric) and take the nearest pixel by
// truncation when upsampling and by rounding up when downsampling (as ONNX Runtime does), where
// the 10 -> 11 adapter leaves opset 11's defaults (half_pixel, round_prefer_floor). Nearest
// scales on both sides of 1 have no one nearest_mode and are refused naming the node; computed
// scales are taken as upsampling (Upsample's only form). A Resize made from an Upsample gets
// its name and output back.
void restore_old_resize_semantics(onnx::ModelProto& model, int64_t opset,
                                  const std::vector<UpsampleNode>& upsamples) {
  if (opset >= 11) return;
  onnx::GraphProto& g = *model.mutable_graph();
  std::vector<bool> matched(upsamples.size(), false);
  std::vector<std::pair<std::string, std::string>> renames;
  int index = 0;
  for (onnx::NodeProto& np : *g.mutable_node()) {
    ++index;
    if (np.op_type() != "Resize") continue;
    for (size_t i = 0; i < upsamples.size(); ++i) {
      const UpsampleNode& u = upsamples[i];
      if (matched[i] || np.input_size() < 3 || np.input(0) != u.x ||
          (!u.scales.empty() && np.input(2) != u.scales) || np.output_size() != 1) {
        continue;
      }
      matched[i] = true;
      np.set_name(u.name);
      if (np.output(0) != u.output) renames.emplace_back(np.output(0), u.output);
      break;
    }
    auto set_string = [&](const char* name, const char* value) {
      onnx::AttributeProto* a = nullptr;
      for (auto& existing : *np.mutable_attribute()) {
        if (existing.name() == name) a = &existing;
      }
      if (!a) a = np.add_attribute();
      a->set_name(name);
      a->set_type(onnx::AttributeProto::STRING);
      a->set_s(value);
    };
    set_string("coordinate_transformation_mode", "asymmetric");
    const onnx::AttributeProto* mode = find_attribute(np, "mode");
    if (mode && mode->s() != "nearest") continue;
    bool up = false, down = false;
    std::optional<Tensor> scales;
    if (np.input_size() > 2) scales = constant_in_file(g, np.input(2));
    if (scales && scales->dtype() == DType::kFloat32) {
      for (int64_t i = 0; i < scales->numel(); ++i) {
        up = up || scales->data<float>()[i] > 1.0f;
        down = down || scales->data<float>()[i] < 1.0f;
      }
    }
    if (up && down) {
      std::string got;
      for (int64_t i = 0; i < scales->numel(); ++i) {
        got.append(i ? ", " : "[").append(std::to_string(scales->data<float>()[i]));
      }
      throw_unsupported("import: " + proto_node_label(np, index - 1) +
                        ": expected nearest scales all >= 1 or all <= 1 below opset 11 (the "
                        "nearest pixel is rounded down when upsampling, up when downsampling), "
                        "got " +
                        got + "]");
    }
    set_string("nearest_mode", down ? "ceil" : "floor");
  }
  for (const auto& [from, to] : renames) rename_value(g, from, to);
}

// A model below kConvertedOpset brought to it by libonnx's version converter, after shape
// inference (some adapters, Softmax's among them, need the input's rank and dims).
void convert_to_supported_opset(onnx::ModelProto& model, int64_t opset, const std::string& source) {
  write_defaults_adapters_require(model, opset);
  const std::vector<UpsampleNode> upsamples = upsample_nodes(model);
  onnx::ShapeInferenceOptions si{};
  si.check_type = false;
  si.error_mode = 0;
  // Each round infers what it can, then gives the computed Reshapes their ranks for the next.
  for (int round = 0; round < 4; ++round) {
    try {
      onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), si);
    } catch (const std::exception&) {
      // The converter reports what it cannot convert without the shapes.
    }
    if (!add_reshape_output_ranks(model)) break;
  }
  const std::string from =
      "from opset " + std::to_string(opset) + " to " + std::to_string(kConvertedOpset);
  try {
    model = onnx::version_conversion::ConvertVersion(model, static_cast<int>(kConvertedOpset));
  } catch (const std::exception& e) {
    const std::string node = failing_conversion_node(model, kConvertedOpset);
    throw_unsupported("import: " + (node.empty() ? "'" + source + "'" : node) + ": converting " +
                      from + " failed: " + trimmed_what(e));
  }
  restore_old_resize_semantics(model, opset, upsamples);
}

// Every tensor a model holds: its initializers and its nodes' tensor attributes (Constant's value
// among them; subgraphs are refused later).
template <class Visit>
void for_each_tensor(onnx::GraphProto& g, Visit visit) {
  for (onnx::TensorProto& t : *g.mutable_initializer()) visit(t);
  for (onnx::NodeProto& n : *g.mutable_node()) {
    for (onnx::AttributeProto& a : *n.mutable_attribute()) {
      if (a.has_t()) visit(*a.mutable_t());
    }
  }
}

bool is_half_type(int32_t type) {
  return type == onnx::TensorProto::FLOAT16 || type == onnx::TensorProto::BFLOAT16;
}

// A FLOAT16 or BFLOAT16 tensor rewritten as the FLOAT tensor of the same values (exact: every
// half and every bfloat16 is a float).
void upcast_tensor(onnx::TensorProto& t) {
  if (!is_half_type(t.data_type())) return;
  std::vector<uint16_t> halves;
  if (t.has_raw_data()) {
    const std::string& raw = t.raw_data();
    halves.resize(raw.size() / 2);
    for (size_t i = 0; i < halves.size(); ++i) {
      halves[i] = static_cast<uint16_t>(static_cast<uint8_t>(raw[2 * i]) |
                                        static_cast<uint8_t>(raw[2 * i + 1]) << 8);
    }
    if (raw.size() % 2) halves.push_back(0);  // refused below as a size mismatch
  } else {
    for (int32_t v : t.int32_data()) halves.push_back(static_cast<uint16_t>(v));
  }
  const bool brain = t.data_type() == onnx::TensorProto::BFLOAT16;
  std::string out(halves.size() * sizeof(float), '\0');
  for (size_t i = 0; i < halves.size(); ++i) {
    const float f =
        brain ? kernels::float_from_bfloat16(halves[i]) : kernels::float_from_half(halves[i]);
    std::memcpy(out.data() + i * sizeof f, &f, sizeof f);
  }
  t.clear_int32_data();
  t.set_raw_data(std::move(out));
  t.set_data_type(onnx::TensorProto::FLOAT);
}

// The attributes that name a float output type: Cast's target, the output type of the ops that
// create a tensor from nothing, the Q/DQ pair's precision and output type, Attention's softmax
// precision and RMSNormalization's stash type (opset 23).
bool is_type_attribute(const onnx::NodeProto& n, const onnx::AttributeProto& a) {
  const std::string& op = n.op_type();
  return (a.name() == "to" && op == "Cast") ||
         (a.name() == "dtype" && (op.rfind("Random", 0) == 0 || op == "EyeLike")) ||
         (a.name() == "precision" && op == "QuantizeLinear") ||
         (a.name() == "output_dtype" && op == "DequantizeLinear") ||
         (a.name() == "softmax_precision" && op == "Attention") ||
         (a.name() == "stash_type" && op == "RMSNormalization");
}

// A model that computes in float16 or bfloat16 computes in float32 here: its FLOAT16 and BFLOAT16
// tensors (initializers, tensor attributes), declared values and type attributes become FLOAT.
// Every half and bfloat16 value is a float, so the weights are the file's exactly; the results are
// float32's. Returns what was upcast ("float16", "bfloat16", "float16 and bfloat16"), empty when
// nothing was.
std::string upcast_half_types(onnx::ModelProto& model) {
  bool half = false, brain = false;
  auto note = [&](int64_t type) {
    half = half || type == onnx::TensorProto::FLOAT16;
    brain = brain || type == onnx::TensorProto::BFLOAT16;
  };
  onnx::GraphProto& g = *model.mutable_graph();
  for_each_tensor(g, [&](onnx::TensorProto& t) {
    note(t.data_type());
    upcast_tensor(t);
  });
  for (auto* list : {g.mutable_input(), g.mutable_output(), g.mutable_value_info()}) {
    for (auto& v : *list) {
      if (!v.type().has_tensor_type()) continue;
      auto* t = v.mutable_type()->mutable_tensor_type();
      if (!is_half_type(t->elem_type())) continue;
      note(t->elem_type());
      t->set_elem_type(onnx::TensorProto::FLOAT);
    }
  }
  for (auto& n : *g.mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (!is_type_attribute(n, a) || !is_half_type(static_cast<int32_t>(a.i()))) continue;
      note(a.i());
      a.set_i(onnx::TensorProto::FLOAT);
    }
  }
  if (half && brain) return "float16 and bfloat16";
  return half ? "float16" : brain ? "bfloat16" : "";
}

// The batch axis of a model that takes one sample without one (its input's, into `added`), the
// opset range, the catalog, the declarations, the sample shape; then the conversion of old models
// and libonnx's checker where it knows the opset. Returns the opset the graph runs at.
int64_t prepare_model(onnx::ModelProto& model, const std::string& source,
                      const ImportOptions& options, AddedBatchAxis& added) {
  if (const std::string upcast = upcast_half_types(model); !upcast.empty()) {
    auto* note = model.add_metadata_props();
    note->set_key(std::string(kUpcastMetadataKey));
    note->set_value(upcast + " to float32");
  }
  int64_t opset = declared_opset(model, source);
  if (options.no_batch_axis) check_unbatched_input(model, source);
  if (options.no_batch_axis ||
      (options.data_sample_rank && takes_unbatched_sample(model, *options.data_sample_rank))) {
    added.inputs.push_back(add_input_batch_axis(model, opset));
  }
  rewrite_einsum_nodes(model, opset);
  decompose_newer_ops(model, opset);
  unroll_loops_and_sequences(model, opset);
  check_ops(model, opset);
  check_declarations(model);
  fix_sample_shape(model, source, options);
  if (opset < kConvertedOpset) {
    check_structure(model);
    convert_to_supported_opset(model, opset, source);
    opset = declared_opset(model, source);
    check_ops(model, opset);
    check_declarations(model);
  }
  unroll_recurrent_nodes(model, opset);
  if (opset > libonnx_newest_opset()) check_structure(model);
  if (options.run_checker && opset <= libonnx_newest_opset()) {
    try {
      onnx::checker::check_model(model);
    } catch (const std::exception& e) {
      throw_invalid("import: '" + source + "' fails the ONNX checker: " + trimmed_what(e));
    }
  }
  return opset;
}

// The names the nodes of `gp` (and of the branches of its If nodes) read that `gp` does not
// define: values of the enclosing graphs, in the order first read.
void add_outer_names(const onnx::GraphProto& gp, std::vector<std::string>& names) {
  std::unordered_set<std::string> defined;
  for (const auto& t : gp.initializer()) defined.insert(t.name());
  for (const auto& in : gp.input()) defined.insert(in.name());
  auto read = [&](const std::string& name) {
    if (!name.empty() && !defined.count(name) &&
        std::find(names.begin(), names.end(), name) == names.end()) {
      names.push_back(name);
    }
  };
  for (const auto& np : gp.node()) {
    for (const auto& in : np.input()) read(in);
    if (np.op_type() == "If") {
      std::vector<std::string> inner;
      for (const char* name : {"then_branch", "else_branch"}) {
        if (const onnx::GraphProto* branch = branch_of(np, name)) add_outer_names(*branch, inner);
      }
      for (const auto& name : inner) read(name);
    }
    for (const auto& out : np.output()) defined.insert(out);
  }
  for (const auto& out : gp.output()) read(out.name());
}

void add_graph_nodes(const onnx::GraphProto& gp, Graph& graph, const std::string& source);

// An If's branch as a graph whose inputs are `outer` (values of `enclosing`, by name).
Subgraph build_branch(const onnx::GraphProto& gp, const Graph& enclosing,
                      const std::vector<std::string>& outer, const std::string& source,
                      const std::string& label) {
  auto branch = std::make_shared<Graph>();
  branch->name = gp.name();
  branch->opset = enclosing.opset;
  for (const auto& name : outer) {
    const Value* v = enclosing.find_value(name);
    if (!v) {
      throw_invalid("import: " + label + ": a branch reads '" + name +
                    "', which is neither a graph input, an initializer nor an earlier node's "
                    "output");
    }
    branch->add_input(name, v->dtype(), v->shape());
  }
  for (const auto& init : gp.initializer()) {
    branch->add_constant(init.name(), tensor_from_proto(init, "initializers of " + label));
  }
  add_graph_nodes(gp, *branch, source);
  for (const auto& out : gp.output()) {
    Value* v = branch->find_value(out.name());
    if (!v)
      throw_invalid("import: " + label + ": branch output '" + out.name() + "' is never produced");
    branch->mark_output(v);
  }
  branch->check_consistency();
  return branch;
}

// The nodes of `gp`, added to `graph`, whose inputs and initializers are already there.
void add_graph_nodes(const onnx::GraphProto& gp, Graph& graph, const std::string& source) {
  std::unordered_map<std::string, const onnx::TypeProto*> value_types;
  for (const auto& vi : gp.value_info()) value_types[vi.name()] = &vi.type();
  for (const auto& vi : gp.output()) value_types[vi.name()] = &vi.type();

  auto value_for = [&](const std::string& name, const std::string& node_label) -> Value* {
    if (name.empty()) return nullptr;
    Value* v = graph.find_value(name);
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
    if (schema &&
        (np.input_size() < schema->min_inputs || np.input_size() > schema->max_inputs ||
         np.output_size() < schema->min_outputs || np.output_size() > schema->max_outputs)) {
      throw_invalid("import: " + label + ": expected " + std::to_string(schema->min_inputs) + ".." +
                    std::to_string(schema->max_inputs) + " inputs and " +
                    std::to_string(schema->min_outputs) + ".." +
                    std::to_string(schema->max_outputs) + " outputs, got " +
                    std::to_string(np.input_size()) + " and " + std::to_string(np.output_size()));
    }
    NodeSpec spec;
    spec.name = name;
    spec.op_type = np.op_type();
    if (np.op_type() == "If") {
      // The condition, then the enclosing values the branches read (graph/control_flow.h).
      std::vector<std::string> outer;
      for (const char* branch : {"then_branch", "else_branch"}) {
        add_outer_names(*branch_of(np, branch), outer);
      }
      spec.inputs.push_back(value_for(np.input(0), label));
      for (const auto& in : outer) spec.inputs.push_back(value_for(in, label));
      for (const char* branch : {"then_branch", "else_branch"}) {
        spec.attributes[branch] = build_branch(*branch_of(np, branch), graph, outer, source, label);
      }
    } else {
      for (const auto& in : np.input()) spec.inputs.push_back(value_for(in, label));
    }
    for (const auto& out : np.output()) {
      spec.output_names.push_back(out.empty() ? graph.unique_value_name(name + "_unused") : out);
    }
    for (const auto& a : np.attribute()) {
      if (np.op_type() == "If" && a.type() == onnx::AttributeProto::GRAPH) continue;
      if (!a.ref_attr_name().empty()) {
        throw_unsupported("import: " + label + ": attribute references are not supported");
      }
      spec.attributes[a.name()] = attribute_from_proto(a, label);
    }
    Node* node = graph.add_node(std::move(spec));
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
}

// libonnx 1.12's LayerNormalization inference, for a node with its Mean and InvStdDev outputs,
// indexes the input's dims at an axis it never checks (a read far outside them for an axis below
// -rank). Those outputs are hidden from it (every graph's, branches included) and given back
// after: their shapes are qforge's own inference's, as every shape is in the end.
using HiddenOutputs = std::vector<std::pair<onnx::NodeProto*, std::vector<std::string>>>;

void hide_layer_norm_statistics(onnx::GraphProto& g, HiddenOutputs& hidden) {
  for (auto& np : *g.mutable_node()) {
    if (np.op_type() == "LayerNormalization" && np.output_size() > 1) {
      hidden.emplace_back(&np,
                          std::vector<std::string>(np.output().begin() + 1, np.output().end()));
      np.mutable_output()->DeleteSubrange(1, np.output_size() - 1);
    }
    for (auto& a : *np.mutable_attribute()) {
      if (a.has_g()) hide_layer_norm_statistics(*a.mutable_g(), hidden);
    }
  }
}

std::unique_ptr<Graph> build_graph(onnx::ModelProto& model, const std::string& source,
                                   const ImportOptions& options) {
  AddedBatchAxis added;
  const int64_t opset = prepare_model(model, source, options, added);

  // libonnx would infer opset 18+ ops with the schemas of 17 (ReduceMean's axes input unread).
  if (options.run_shape_inference && opset <= libonnx_newest_opset()) {
    onnx::ShapeInferenceOptions si{};
    si.check_type = false;
    si.error_mode = 0;
    si.enable_data_propagation = false;
    HiddenOutputs hidden;
    hide_layer_norm_statistics(*model.mutable_graph(), hidden);
    try {
      onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), si);
    } catch (const std::exception&) {
      // Shape inference only adds information qforge recomputes itself; it must not block import.
    }
    for (auto& [np, outputs] : hidden) {
      for (const std::string& o : outputs) np->add_output(o);
    }
  }

  // The post-processing qforge does not run leaves the model here, once shape inference has typed
  // the values it reads.
  std::shared_ptr<const Tail> tail = cut_tail(model);
  // The outputs of a model given a batch axis get one too (what its tail reads, when it has one).
  if (added.any()) added.outputs = add_output_batch_axes(model, opset);

  const onnx::GraphProto& gp = model.graph();
  auto graph = std::make_unique<Graph>();
  graph->tail = std::move(tail);
  graph->added_batch_axis = std::move(added);
  graph->name = gp.name();
  graph->opset = opset;
  graph->source_path = source;
  for (const auto& kv : model.metadata_props()) graph->metadata[kv.key()] = kv.value();

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

  add_graph_nodes(gp, *graph, source);

  for (const auto& out : gp.output()) {
    Value* v = graph->find_value(out.name());
    if (!v) throw_invalid("import: graph output '" + out.name() + "' is never produced");
    graph->mark_output(v);
    // What the post-processing reads is no output of the file: it declares no batch for it.
    const bool tail_read =
        graph->tail && std::find(graph->tail->outputs.begin(), graph->tail->outputs.end(),
                                 out.name()) == graph->tail->outputs.end();
    if (auto batch = declared_batch_of(out.type()); batch && !tail_read) {
      graph->declared_batch[out.name()] = *batch;
    }
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

[[noreturn]] void throw_not_onnx(const std::string& source_name) {
  throw_invalid("import: '" + source_name +
                "' is not a valid ONNX model (protobuf parsing failed; truncated or not ONNX)");
}

onnx::ModelProto parse_model_proto(std::string_view bytes, const std::string& source_name) {
  onnx::ModelProto model;
  if (bytes.empty()) throw_invalid("import: '" + source_name + "' is empty, not an ONNX model");
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    throw_not_onnx(source_name);
  }
  return model;
}

// Parsed from the file as it is read: no copy of the file's bytes is held besides the message.
onnx::ModelProto read_model_proto(const std::string& path) {
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
  return model;
}

// ONNX external data: a tensor whose bytes lie in a file beside the model, named by the entries
// `location` (relative to the model's folder), `offset` and `length` (bytes; optional), in the
// tensor's raw little-endian layout. Each such tensor of the model (initializers and tensor
// attributes) gets its bytes as raw_data, so that the checker, the version converter and shape
// inference see an ordinary model; the files are opened once each.
class ExternalData {
 public:
  // from_file: model_path is the model's file, whose folder holds the data files (else only
  // options.external_data_bytes are read).
  ExternalData(std::string model_path, bool from_file, const ImportOptions& options)
      : model_path_(std::move(model_path)),
        from_file_(from_file),
        paths_(options.external_data_paths),
        in_memory_(options.external_data_bytes) {
    const size_t slash = model_path_.find_last_of('/');
    folder_ = slash == std::string::npos ? std::string() : model_path_.substr(0, slash + 1);
  }
  ~ExternalData() {
    for (const auto& [path, file] : files_) ::close(file.fd);
  }
  ExternalData(const ExternalData&) = delete;
  ExternalData& operator=(const ExternalData&) = delete;

  void read_into(onnx::TensorProto& proto) {
    const std::string tensor = "tensor '" + proto.name() + "' of '" + model_path_ + "'";
    const std::string where = "import: " + tensor;
    std::string location;
    std::optional<uint64_t> offset, length;
    for (const auto& entry : proto.external_data()) {
      if (entry.key() == "location") {
        location = entry.value();
      } else if (entry.key() == "offset") {
        offset = number(entry, where);
      } else if (entry.key() == "length") {
        length = number(entry, where);
      }  // checksum and basepath are not needed to read the bytes
    }
    if (location.empty()) throw_invalid(where + ": external data without a location");
    if (location.front() == '/' || escapes_folder(location)) {
      throw_invalid(where + ": external data location '" + location +
                    "' must be a relative path inside the model's folder");
    }
    // Float16 and bfloat16 tensors are upcast once read.
    const bool half = is_half_type(proto.data_type());
    const uint64_t size =
        half ? 2 : kernels::dtype_size(dtype_from_onnx(proto.data_type(), tensor));
    const std::string type_name =
        half ? (proto.data_type() == onnx::TensorProto::FLOAT16 ? "float16" : "bfloat16")
             : kernels::dtype_name(dtype_from_onnx(proto.data_type(), tensor));
    uint64_t count = 1;
    for (int64_t d : proto.dims()) {
      if (d < 0) throw_invalid(where + ": negative dimension " + std::to_string(d));
      if (d != 0 && count > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
        throw_invalid(where + ": its dimensions' product overflows");
      }
      count *= static_cast<uint64_t>(d);
    }
    if (count > std::numeric_limits<uint64_t>::max() / size) {
      throw_invalid(where + ": its size in bytes overflows");
    }
    const uint64_t bytes = count * size;
    if (length && *length != bytes) {
      throw_invalid(where + ": expected " + std::to_string(bytes) + " bytes for " +
                    std::to_string(count) + " " + type_name +
                    " values, the external data gives a length of " + std::to_string(*length));
    }
    const uint64_t start = offset.value_or(0);
    auto check_range = [&](const std::string& what, uint64_t held) {
      if (start > held || bytes > held - start) {
        throw_invalid(where + ": expected bytes [" + std::to_string(start) + ", " +
                      std::to_string(start + bytes) + ") of external data '" + what +
                      "', which holds " + std::to_string(held));
      }
    };
    std::string& raw = *proto.mutable_raw_data();
    if (const auto held = in_memory_.find(location); held != in_memory_.end()) {
      check_range(location, held->second.size());
      raw.assign(held->second.substr(static_cast<size_t>(start), static_cast<size_t>(bytes)));
    } else if (!from_file_) {
      throw_unsupported(where +
                        ": its data lies in an external file, which is read only when the "
                        "model is loaded from its own file (its location is relative to the "
                        "model's folder)");
    } else {
      const auto elsewhere = paths_.find(location);
      const std::string path = elsewhere != paths_.end() ? elsewhere->second : folder_ + location;
      const File& file = open(path, where);
      check_range(path, file.size);
      raw.resize(static_cast<size_t>(bytes));
      for (uint64_t done = 0; done < bytes;) {
        const ssize_t n = ::pread(file.fd, raw.data() + done, static_cast<size_t>(bytes - done),
                                  static_cast<off_t>(start + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          throw_io(where + ": cannot read external data '" + path +
                   "': " + (n < 0 ? std::strerror(errno) : "unexpected end of file"));
        }
        done += static_cast<uint64_t>(n);
      }
    }
    proto.clear_external_data();
    proto.set_data_location(onnx::TensorProto::DEFAULT);
  }

 private:
  struct File {
    int fd = -1;
    uint64_t size = 0;
  };

  static uint64_t number(const onnx::StringStringEntryProto& entry, const std::string& where) {
    const std::string& text = entry.value();
    uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
      throw_invalid(where + ": external data " + entry.key() +
                    " must be a non-negative integer, got '" + text + "'");
    }
    return value;
  }

  // Whether a relative path has a ".." component.
  static bool escapes_folder(const std::string& location) {
    size_t start = 0;
    while (start <= location.size()) {
      size_t end = location.find_first_of("/\\", start);
      if (end == std::string::npos) end = location.size();
      if (location.compare(start, end - start, "..") == 0) return true;
      start = end + 1;
    }
    return false;
  }

  const File& open(const std::string& path, const std::string& where) {
    auto it = files_.find(path);
    if (it != files_.end()) return it->second;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      throw_io(where + ": cannot read external data '" + path + "': " + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      const int error = errno;
      ::close(fd);
      const std::string reason = S_ISDIR(st.st_mode) ? std::strerror(EISDIR)
                                 : st.st_mode != 0   ? "not a regular file"
                                                     : std::strerror(error);
      throw_io(where + ": cannot read external data '" + path + "': " + reason);
    }
    return files_.emplace(path, File{fd, static_cast<uint64_t>(st.st_size)}).first->second;
  }

  std::string model_path_;
  bool from_file_;
  const std::map<std::string, std::string>& paths_;
  const std::map<std::string, std::string_view>& in_memory_;
  std::string folder_;
  std::map<std::string, File> files_;
};

// Reads the external data of the model's tensors from the files beside `path`, the model's file;
// without a file (a model given as bytes) only options.external_data_bytes serve.
void read_external_data(onnx::ModelProto& model, const std::string& path, bool from_file,
                        const ImportOptions& options) {
  std::optional<ExternalData> files;
  for_each_tensor(*model.mutable_graph(), [&](onnx::TensorProto& t) {
    if (t.data_location() != onnx::TensorProto::EXTERNAL) return;
    if (!files) files.emplace(path, from_file, options);
    files->read_into(t);
  });
}

}  // namespace

std::unique_ptr<Graph> parse_onnx(std::string_view bytes, const std::string& source_name,
                                  const ImportOptions& options) {
  onnx::ModelProto model = parse_model_proto(bytes, source_name);
  read_external_data(model, source_name, false, options);
  return build_graph(model, source_name, options);
}

std::unique_ptr<Graph> load_onnx(const std::string& path, const ImportOptions& options) {
  onnx::ModelProto model = read_model_proto(path);
  read_external_data(model, path, true, options);
  return build_graph(model, path, options);
}

}  // namespace qforge::graph

// The qforge IR to ONNX protobuf.
#include "graph/onnx_export.h"

#include <fcntl.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <exception>
#include <limits>

#include "graph/catalog.h"
#include "graph/onnx_import.h"
#include "graph/sample_axis.h"
#include "graph/tail.h"

namespace qforge::graph {
namespace {

constexpr int64_t kMinOpset = 13;

// IR version a runtime expects next to an opset: 7 up to opset 14, 8 from opset 15 (ONNX's own
// versioning table), never above what the linked libonnx knows.
int64_t ir_version_for(int64_t opset) {
  int64_t ir = opset <= 14 ? 7 : 8;
  return std::min<int64_t>(ir, onnx::Version::IR_VERSION);
}

void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* proto) {
  proto->set_name(name);
  proto->set_data_type(onnx_from_dtype(t.dtype()));
  for (int64_t d : t.shape()) proto->add_dims(d);
  std::string* raw = proto->mutable_raw_data();
  raw->resize(t.nbytes());
  if (t.nbytes() == 0) return;
  std::memcpy(raw->data(), t.raw(), t.nbytes());
  if constexpr (std::endian::native == std::endian::big) {
    // ONNX raw_data is little-endian.
    const size_t width = kernels::dtype_size(t.dtype());
    for (size_t i = 0; i < raw->size(); i += width) {
      std::reverse(raw->begin() + static_cast<std::ptrdiff_t>(i),
                   raw->begin() + static_cast<std::ptrdiff_t>(i + width));
    }
  }
}

void attribute_to_proto(const std::string& name, const AttributeValue& value,
                        onnx::AttributeProto* a) {
  using A = onnx::AttributeProto;
  a->set_name(name);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          a->set_type(A::INT);
          a->set_i(v);
        } else if constexpr (std::is_same_v<T, float>) {
          a->set_type(A::FLOAT);
          a->set_f(v);
        } else if constexpr (std::is_same_v<T, std::string>) {
          a->set_type(A::STRING);
          a->set_s(v);
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          a->set_type(A::INTS);
          for (int64_t x : v) a->add_ints(x);
        } else if constexpr (std::is_same_v<T, std::vector<float>>) {
          a->set_type(A::FLOATS);
          for (float x : v) a->add_floats(x);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          a->set_type(A::STRINGS);
          for (const auto& x : v) a->add_strings(x);
        } else if constexpr (std::is_same_v<T, Tensor>) {
          a->set_type(A::TENSOR);
          tensor_to_proto(v, "", a->mutable_t());
        } else {
          static_assert(std::is_same_v<T, Subgraph>);
          throw_internal("export: graph attribute '" + name + "' reached the writer");
        }
      },
      value);
}

// A dynamic dim (-1) becomes a symbolic one: for the leading (batch) axis the name the graph
// declares for this value (graph.declared_batch; unknown when that has none), else "N".
void value_info_to_proto(const Graph& graph, const Value& value, onnx::ValueInfoProto* vi) {
  vi->set_name(value.name());
  auto* tensor_type = vi->mutable_type()->mutable_tensor_type();
  tensor_type->set_elem_type(onnx_from_dtype(value.dtype()));
  if (!value.has_shape()) return;
  auto* shape = tensor_type->mutable_shape();
  const Shape& dims = *value.shape();
  for (size_t i = 0; i < dims.size(); ++i) {
    auto* dim = shape->add_dim();
    if (dims[i] >= 0) {
      dim->set_dim_value(dims[i]);
    } else if (i > 0) {
      dim->set_dim_param("dim_" + std::to_string(i));
    } else {
      auto declared = graph.declared_batch.find(value.name());
      if (declared == graph.declared_batch.end()) {
        dim->set_dim_param("N");
      } else if (!declared->second.param.empty()) {
        dim->set_dim_param(declared->second.param);
      }
    }
  }
}

// With release_constants each constant leaves the graph once copied into the message.
onnx::ModelProto build_model(const Graph& graph, const ExportOptions& options,
                             bool release_constants = false) {
  const int64_t opset = options.opset.value_or(std::max(graph.opset, kMinOpset));
  if (opset < kMinOpset) {
    throw_unsupported("export: expected opset " + std::to_string(kMinOpset) + " or later, got " +
                      std::to_string(opset));
  }
  onnx::ModelProto model;
  model.set_ir_version(ir_version_for(opset));
  model.set_producer_name(options.producer_name);
  model.set_producer_version(options.producer_version);
  auto* opset_import = model.add_opset_import();
  opset_import->set_domain("");
  opset_import->set_version(opset);
  for (const auto& [key, value] : graph.metadata) {
    auto* prop = model.add_metadata_props();
    prop->set_key(key);
    prop->set_value(value);
  }

  onnx::GraphProto* gp = model.mutable_graph();
  gp->set_name(graph.name.empty() ? std::string("qforge") : graph.name);
  for (const Value* in : graph.inputs()) value_info_to_proto(graph, *in, gp->add_input());
  for (const Value* out : graph.outputs()) value_info_to_proto(graph, *out, gp->add_output());
  // Constants nobody reads are dropped, as the importer would never see them used.
  for (Value* v : graph.values()) {
    if (!v->is_constant() || (v->consumers().empty() && !v->is_graph_output())) continue;
    tensor_to_proto(v->constant(), v->name(), gp->add_initializer());
    if (release_constants) v->release_constant();
  }

  for (const Node* node : graph.nodes()) {
    const OpSchema* schema = find_schema(node->op_type());
    if (schema && schema->kind != SchemaKind::kOnnx) {
      throw_unsupported("export: " + node->label() + ": expected an ONNX op, got the qforge op '" +
                        node->op_type() +
                        "' (lower modules with graph::lower_modules first; runtime-only ops are "
                        "never exported)");
    }
    if (node->op_type() == "If") {
      // Resolution replaces each If by the branch its condition takes (graph/control_flow.h).
      throw_unsupported("export: " + node->label() +
                        ": an If is written only as the branch it takes, once the model is "
                        "resolved");
    }
    onnx::NodeProto* np = gp->add_node();
    np->set_name(node->name());
    np->set_op_type(node->op_type());
    if (!node->domain().empty()) np->set_domain(node->domain());
    for (const Value* in : node->inputs()) np->add_input(in ? in->name() : std::string());
    for (const Value* out : node->outputs()) np->add_output(out->name());
    for (const auto& [name, value] : node->attributes()) {
      attribute_to_proto(name, value, np->add_attribute());
    }
  }
  if (graph.added_batch_axis.any()) {
    remove_added_output_axes(graph.added_batch_axis, *gp, opset,
                             graph.tail ? graph.tail->defines : std::vector<std::string>{});
  }
  append_tail(graph, model);
  if (graph.added_batch_axis.any()) remove_added_input_axis(graph.added_batch_axis, *gp, opset);
  return model;
}

std::string strip_trailing_space(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Temporary in the destination's folder, so that the final rename stays on one filesystem.
class TempFile {
 public:
  explicit TempFile(const std::string& path)
      : path_(path), temp_path_(path + ".tmp." + std::to_string(::getpid())) {
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(errno);
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write_all(const std::string& bytes) { write_all(bytes.data(), bytes.size()); }
  void write_all(const void* data, size_t nbytes) {
    const char* p = static_cast<const char*>(data);
    size_t left = nbytes;
    while (left > 0) {
      ssize_t n = ::write(fd_, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail(errno);
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }

  void commit() {
    if (::fsync(fd_) != 0) fail(errno);
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail(errno);
    if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail(errno);
    committed_ = true;
  }

 private:
  [[noreturn]] void fail(int error_number) {
    std::string message = "export: cannot write '";
    message.append(path_).append("': ").append(std::strerror(error_number));
    throw_io(message);
  }

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

namespace {

// Where the tensors of an external data file start: a multiple of this, so that a runtime can
// map each one from the file as it is.
constexpr size_t kExternalDataAlignment = 4096;

// The data file's name is a file in the model's folder.
void check_external_data_name(const std::string& location) {
  if (location.find('/') != std::string::npos || location == "." || location == "..") {
    throw_invalid("export: external data file '" + location +
                  "': expected a file name in the model's folder");
  }
}

// Moves the initializers of at least options.external_data_min_bytes out of the model into the
// data file `data_sink` writes, in the model's order.
void move_to_external_data(onnx::ModelProto& model, const ExportOptions& options,
                           const ByteSink& data_sink) {
  const std::string& location = options.external_data;
  check_external_data_name(location);
  if (!data_sink) throw_internal("export: external data '" + location + "' without a sink");
  static const std::string zeros(kExternalDataAlignment, '\0');
  size_t offset = 0;
  for (onnx::TensorProto& t : *model.mutable_graph()->mutable_initializer()) {
    const std::string& raw = t.raw_data();
    if (raw.size() < options.external_data_min_bytes || raw.empty()) continue;
    const size_t pad =
        (kExternalDataAlignment - offset % kExternalDataAlignment) % kExternalDataAlignment;
    if (pad) data_sink(zeros.data(), pad);
    offset += pad;
    data_sink(raw.data(), raw.size());
    auto entry = [&t](const char* key, const std::string& value) {
      auto* e = t.add_external_data();
      e->set_key(key);
      e->set_value(value);
    };
    entry("location", location);
    entry("offset", std::to_string(offset));
    entry("length", std::to_string(raw.size()));
    offset += raw.size();
    std::string().swap(*t.mutable_raw_data());
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
  }
}

// build_model, checked, with its size bounded by protobuf's limit; with external data, the
// large initializers then moved to the data file (the checker sees them in the model: it would
// look for the file beside the working folder).
onnx::ModelProto checked_model(const Graph& graph, const ExportOptions& options,
                               bool release_constants = false, const ByteSink& data_sink = {}) {
  onnx::ModelProto model = build_model(graph, options, release_constants);
  // libonnx's checker knows the opsets up to its own newest (17 for 1.12) and refuses newer
  // forms (Gelu, ReduceMean's axes input); models above it are checked on re-import instead.
  const auto& versions = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  const auto newest = versions.find(onnx::ONNX_DOMAIN);
  const bool checker_knows_opset =
      newest != versions.end() && model.opset_import(0).version() <= newest->second.second;
  if (options.run_checker && checker_knows_opset) {
    try {
      onnx::checker::check_model(model);
    } catch (const std::exception& e) {
      std::string message = "export: expected a model the ONNX checker accepts, got: ";
      message.append(strip_trailing_space(e.what()));
      throw_internal(message);
    }
  }
  if (!options.external_data.empty()) move_to_external_data(model, options, data_sink);
  const size_t size = model.ByteSizeLong();
  if (size > static_cast<size_t>(std::numeric_limits<int>::max())) {
    throw_unsupported("export: expected a model under 2 GiB (protobuf's limit), got " +
                      std::to_string(size) +
                      " bytes; calibrate, qat and transform can write its weights to a file "
                      "beside it (--external-data)");
  }
  return model;
}

// A sink's exception (a full disk) must not cross protobuf's code: the adaptor would write
// again from its destructor and throw during unwinding. It is kept and thrown after the adaptor
// is gone.
class SinkStream final : public google::protobuf::io::CopyingOutputStream {
 public:
  explicit SinkStream(const ByteSink& sink) : sink_(sink) {}
  bool Write(const void* buffer, int size) override {
    if (error_) return false;
    try {
      sink_(buffer, static_cast<size_t>(size));
    } catch (...) {
      error_ = std::current_exception();
      return false;
    }
    return true;
  }
  std::exception_ptr error() const { return error_; }

 private:
  const ByteSink& sink_;
  std::exception_ptr error_;
};

}  // namespace

std::string serialize_onnx(const Graph& graph, const ExportOptions& options) {
  const onnx::ModelProto model = checked_model(graph, options);
  std::string bytes;
  if (!model.SerializeToString(&bytes)) throw_internal("export: protobuf serialization failed");
  return bytes;
}

namespace {

size_t write_model(const onnx::ModelProto& model, const ByteSink& sink) {
  SinkStream stream(sink);
  bool written = false;
  {
    constexpr int kChunk = 1 << 20;
    google::protobuf::io::CopyingOutputStreamAdaptor adaptor(&stream, kChunk);
    written = model.SerializeToZeroCopyStream(&adaptor) && adaptor.Flush();
  }
  if (stream.error()) std::rethrow_exception(stream.error());
  if (!written) throw_internal("export: protobuf serialization failed");
  return model.ByteSizeLong();
}

}  // namespace

ByteSink append_to(std::string& bytes) {
  return [&bytes](const void* p, size_t n) { bytes.append(static_cast<const char*>(p), n); };
}

size_t write_onnx(const Graph& graph, const ByteSink& sink, const ExportOptions& options,
                  const ByteSink& data_sink) {
  return write_model(checked_model(graph, options, false, data_sink), sink);
}

size_t write_onnx(std::unique_ptr<Graph> graph, const ByteSink& sink, const ExportOptions& options,
                  const ByteSink& data_sink) {
  const onnx::ModelProto model =
      checked_model(*graph, options, /*release_constants=*/true, data_sink);
  graph.reset();
  return write_model(model, sink);
}

void save_onnx(const Graph& graph, const std::string& path, const ExportOptions& options) {
  if (options.external_data.empty()) {
    std::string bytes = serialize_onnx(graph, options);
    TempFile file(path);
    file.write_all(bytes);
    file.commit();
    return;
  }
  check_external_data_name(options.external_data);
  const size_t slash = path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  TempFile data(folder + options.external_data);
  std::string bytes;
  write_onnx(graph, append_to(bytes), options,
             [&data](const void* p, size_t n) { data.write_all(p, n); });
  TempFile file(path);
  file.write_all(bytes);
  data.commit();
  file.commit();
}

std::string external_data_name(const std::string& model_path) {
  const size_t slash = model_path.find_last_of('/');
  return (slash == std::string::npos ? model_path : model_path.substr(slash + 1)) + ".data";
}

}  // namespace qforge::graph

#include "graph/sample_axis.h"

#include <algorithm>
#include <optional>
#include <unordered_set>

#include "graph/proto_names.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

bool is_initializer(const onnx::GraphProto& g, const std::string& name) {
  return std::any_of(g.initializer().begin(), g.initializer().end(),
                     [&](const onnx::TensorProto& t) { return t.name() == name; });
}

std::vector<onnx::ValueInfoProto*> data_inputs(onnx::GraphProto& g) {
  std::vector<onnx::ValueInfoProto*> inputs;
  for (auto& in : *g.mutable_input()) {
    if (!is_initializer(g, in.name())) inputs.push_back(&in);
  }
  return inputs;
}

// `shape` with a leading dim of 1, or without its leading dim.
void prepend_one(onnx::TensorShapeProto& shape) {
  onnx::TensorShapeProto old;
  old.Swap(&shape);
  shape.add_dim()->set_dim_value(1);
  for (const auto& d : old.dim()) *shape.add_dim() = d;
}

void drop_leading(onnx::ValueInfoProto& v) {
  if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape()) return;
  auto* dims = v.mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim();
  if (!dims->empty()) dims->erase(dims->begin());
}

// A node `op` (Squeeze or Unsqueeze) of axis 0 from `from` to `to`, in `opset`'s form: the axes
// an attribute before 13, an int64 initializer named by `names` from 13 on.
onnx::NodeProto axis_node(onnx::GraphProto& g, FreshValueNames& names, const std::string& op,
                          const std::string& from, const std::string& to, int64_t opset) {
  onnx::NodeProto np;
  np.set_op_type(op);
  np.set_name(to + "_" + op);
  np.add_input(from);
  np.add_output(to);
  if (opset < 13) {
    auto* axes = np.add_attribute();
    axes->set_name("axes");
    axes->set_type(onnx::AttributeProto::INTS);
    axes->add_ints(0);
  } else {
    onnx::TensorProto* axes = g.add_initializer();
    axes->set_name(names.take(to + "_batch_axis"));
    axes->set_data_type(onnx::TensorProto::INT64);
    axes->add_dims(1);
    axes->add_int64_data(0);
    np.add_input(axes->name());
  }
  return np;
}

void insert_front(onnx::GraphProto& g, onnx::NodeProto np) {
  g.add_node()->Swap(&np);
  auto* nodes = g.mutable_node();
  for (int i = nodes->size() - 1; i > 0; --i) nodes->SwapElements(i, i - 1);
}

// The int64 values of initializer `name`, when `g` has it.
std::optional<std::vector<int64_t>> int64_initializer(const onnx::GraphProto& g,
                                                      const std::string& name) {
  for (const auto& t : g.initializer()) {
    if (t.name() != name || t.data_type() != onnx::TensorProto::INT64) continue;
    if (!t.raw_data().empty()) {
      std::vector<int64_t> values(t.raw_data().size() / sizeof(int64_t));
      std::copy_n(t.raw_data().data(), values.size() * sizeof(int64_t),
                  reinterpret_cast<char*>(values.data()));
      return values;
    }
    return std::vector<int64_t>(t.int64_data().begin(), t.int64_data().end());
  }
  return std::nullopt;
}

// Whether `np` is a `op` of axis 0 alone, the form axis_node writes (or an equal one).
bool axis_zero_node(const onnx::GraphProto& g, const onnx::NodeProto& np, const std::string& op) {
  if (np.op_type() != op || !np.domain().empty() || np.output_size() != 1) return false;
  std::optional<std::vector<int64_t>> axes;
  if (np.input_size() == 2) axes = int64_initializer(g, np.input(1));
  for (const auto& a : np.attribute()) {
    if (a.name() == "axes") axes = std::vector<int64_t>(a.ints().begin(), a.ints().end());
  }
  return axes && *axes == std::vector<int64_t>{0};
}

// Drops the initializers of `g` that no node reads.
void drop_unread_initializers(onnx::GraphProto& g, const std::unordered_set<std::string>& names) {
  std::unordered_set<std::string> read;
  for (const auto& np : g.node()) {
    for (const auto& in : np.input()) read.insert(in);
  }
  auto* inits = g.mutable_initializer();
  inits->erase(std::remove_if(inits->begin(), inits->end(),
                              [&](const onnx::TensorProto& t) {
                                return names.count(t.name()) && !read.count(t.name());
                              }),
               inits->end());
}

void drop_value_info(onnx::GraphProto& g, const std::string& name) {
  auto* infos = g.mutable_value_info();
  infos->erase(std::remove_if(infos->begin(), infos->end(),
                              [&](const onnx::ValueInfoProto& v) { return v.name() == name; }),
               infos->end());
}

// Renames value `from` to `to` where `g` defines it (a node's output, an initializer) and
// wherever its nodes read it (their subgraphs included); declarations are left to the caller.
void rename_definition_and_reads(onnx::GraphProto& g, const std::string& from,
                                 const std::string& to) {
  for (auto& np : *g.mutable_node()) {
    rename_reads(np, from, to);
    for (auto& o : *np.mutable_output()) {
      if (o == from) o = to;
    }
  }
  for (auto& t : *g.mutable_initializer()) {
    if (t.name() == from) t.set_name(to);
  }
}

}  // namespace

bool takes_unbatched_sample(const onnx::ModelProto& model, size_t sample_rank) {
  std::vector<const onnx::ValueInfoProto*> inputs;
  for (const auto& in : model.graph().input()) {
    if (!is_initializer(model.graph(), in.name())) inputs.push_back(&in);
  }
  if (inputs.size() != 1) return false;
  const onnx::TypeProto& type = inputs[0]->type();
  return type.has_tensor_type() && type.tensor_type().has_shape() &&
         static_cast<size_t>(type.tensor_type().shape().dim_size()) == sample_rank;
}

void check_unbatched_input(const onnx::ModelProto& model, const std::string& source) {
  std::vector<std::string> names;
  for (const auto& in : model.graph().input()) {
    if (!is_initializer(model.graph(), in.name())) names.push_back("'" + in.name() + "'");
  }
  const std::string taken = "import: '" + source + "': taking its input as one sample without a ";
  if (names.size() != 1) {
    std::string list;
    for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
    throw_invalid(taken + "batch axis needs a model of one input; it has " +
                  std::to_string(names.size()) + (names.empty() ? "" : " (" + list + ")"));
  }
  for (const auto& in : model.graph().input()) {
    if (is_initializer(model.graph(), in.name())) continue;
    const onnx::TypeProto& type = in.type();
    if (!type.has_tensor_type() || !type.tensor_type().has_shape()) {
      throw_invalid(taken + "batch axis needs its rank; input " + names[0] + " declares none");
    }
  }
}

std::string add_input_batch_axis(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  std::vector<onnx::ValueInfoProto*> inputs = data_inputs(g);
  if (inputs.size() != 1) throw_internal("add_input_batch_axis: expected one model input");
  onnx::ValueInfoProto& in = *inputs[0];
  for (const auto& out : g.output()) {
    if (out.name() == in.name()) {
      throw_unsupported("import: input '" + in.name() +
                        "' is also an output; qforge cannot give it a batch axis");
    }
  }
  FreshValueNames names(g);
  const std::string sample = names.take(in.name() + "_sample");
  for (auto& np : *g.mutable_node()) rename_reads(np, in.name(), sample);
  prepend_one(*in.mutable_type()->mutable_tensor_type()->mutable_shape());
  insert_front(g, axis_node(g, names, "Squeeze", in.name(), sample, opset));
  return in.name();
}

std::vector<std::string> add_output_batch_axes(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  FreshValueNames names(g);
  std::vector<std::string> added;
  for (auto& out : *g.mutable_output()) {
    const std::string name = out.name();
    if (std::find(added.begin(), added.end(), name) != added.end()) {
      throw_unsupported("import: output '" + name +
                        "' is listed twice; qforge cannot give it a batch axis");
    }
    for (const auto& in : g.input()) {
      if (in.name() == name) {
        throw_unsupported("import: output '" + name +
                          "' is also an input; qforge cannot give it a batch axis");
      }
    }
    const std::string sample = names.take(name + "_sample");
    rename_definition_and_reads(g, name, sample);
    for (auto& v : *g.mutable_value_info()) {
      if (v.name() == name) v.set_name(sample);
    }
    if (out.type().has_tensor_type()) {
      prepend_one(*out.mutable_type()->mutable_tensor_type()->mutable_shape());
    }
    g.add_node()->CopyFrom(axis_node(g, names, "Unsqueeze", sample, name, opset));
    added.push_back(name);
  }
  return added;
}

namespace {

int producer_of(const onnx::GraphProto& g, const std::string& name) {
  for (int i = 0; i < g.node_size(); ++i) {
    const auto& outs = g.node(i).output();
    if (std::find(outs.begin(), outs.end(), name) != outs.end()) return i;
  }
  return -1;
}

std::vector<int> readers_of(const onnx::GraphProto& g, const std::string& name) {
  std::vector<int> found;
  for (int i = 0; i < g.node_size(); ++i) {
    const auto& ins = g.node(i).input();
    if (std::find(ins.begin(), ins.end(), name) != ins.end()) found.push_back(i);
  }
  return found;
}

// Removes node `index`, and its axes initializer when nothing else reads it.
void remove_axis_node(onnx::GraphProto& g, int index) {
  std::unordered_set<std::string> axes;
  const onnx::NodeProto& np = g.node(index);
  for (int k = 1; k < np.input_size(); ++k) axes.insert(np.input(k));
  g.mutable_node()->erase(g.mutable_node()->begin() + index);
  drop_unread_initializers(g, axes);
}

}  // namespace

void remove_added_output_axes(const AddedBatchAxis& added, onnx::GraphProto& g, int64_t opset,
                              const std::vector<std::string>& reserved) {
  FreshValueNames names(g);
  for (const std::string& name : reserved) names.reserve(name);
  for (const std::string& name : added.outputs) {
    for (auto& out : *g.mutable_output()) {
      if (out.name() == name) drop_leading(out);
    }
    const int made = producer_of(g, name);
    if (made < 0) continue;  // no node computes it (a constant output): left as written
    const std::vector<int> reading = readers_of(g, name);
    if (axis_zero_node(g, g.node(made), "Unsqueeze") && reading.empty()) {
      // The Unsqueeze the import added: its input is the output again.
      const std::string sample = g.node(made).input(0);
      remove_axis_node(g, made);
      rename_definition_and_reads(g, sample, name);
      drop_value_info(g, sample);
      continue;
    }
    const std::string batched = names.take(name + "_batched");
    for (auto& o : *g.mutable_node(made)->mutable_output()) {
      if (o == name) o = batched;
    }
    for (int i : reading) rename_reads(*g.mutable_node(i), name, batched);
    drop_value_info(g, name);
    g.add_node()->CopyFrom(axis_node(g, names, "Squeeze", batched, name, opset));
  }
}

void remove_added_input_axis(const AddedBatchAxis& added, onnx::GraphProto& g, int64_t opset) {
  FreshValueNames names(g);
  for (const std::string& name : added.inputs) {
    for (auto& in : *g.mutable_input()) {
      if (in.name() == name) drop_leading(in);
    }
    const std::vector<int> reading = readers_of(g, name);
    if (reading.size() == 1 && axis_zero_node(g, g.node(reading[0]), "Squeeze")) {
      // The Squeeze the import added: its output is the input again.
      const std::string sample = g.node(reading[0]).output(0);
      remove_axis_node(g, reading[0]);
      for (auto& np : *g.mutable_node()) rename_reads(np, sample, name);
      for (auto& out : *g.mutable_output()) {
        if (out.name() == sample) out.set_name(name);
      }
      drop_value_info(g, sample);
      continue;
    }
    const std::string batched = names.take(name + "_batched");
    for (int i : reading) rename_reads(*g.mutable_node(i), name, batched);
    insert_front(g, axis_node(g, names, "Unsqueeze", name, batched, opset));
  }
}

}  // namespace qforge::graph

// Loops of a constant trip count unrolled, and sequence values resolved to lists of tensors, on
// the protobuf at import (see loop_unroll.h).
#include "graph/loop_unroll.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "graph/catalog.h"
#include "graph/proto_names.h"
#include "graph/tail.h"

namespace qforge::graph {
namespace {

using Nodes = google::protobuf::RepeatedPtrField<onnx::NodeProto>;

bool standard_domain(const onnx::NodeProto& np) {
  return np.domain().empty() || np.domain() == "ai.onnx";
}

bool is_sequence_op(const onnx::NodeProto& np) {
  static const std::unordered_set<std::string> kOps = {
      "SequenceEmpty", "SequenceConstruct", "SequenceInsert",     "SequenceErase",
      "SequenceAt",    "SequenceLength",    "ConcatFromSequence", "SplitToSequence"};
  return standard_domain(np) && kOps.count(np.op_type()) > 0;
}

bool has_subgraph(const onnx::NodeProto& np) {
  for (const auto& a : np.attribute()) {
    if (a.has_g() || a.graphs_size() > 0) return true;
  }
  return false;
}

int64_t int_attribute(const onnx::NodeProto& np, const std::string& name, int64_t fallback) {
  const onnx::AttributeProto* a = find_attribute(np, name);
  return a && a->type() == onnx::AttributeProto::INT ? a->i() : fallback;
}

// A small integer or bool tensor known at import: a count, a position, a condition.
struct IntConstant {
  int32_t elem_type = 0;
  std::vector<int64_t> dims;
  std::vector<int64_t> values;  // bools as 0 and 1
};

// Only small constants are decoded: counts and positions are a few elements, weights are not read.
constexpr int64_t kMaxDecodedElements = 1024;

std::optional<IntConstant> decode_int_tensor(const onnx::TensorProto& t) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL) return std::nullopt;
  int64_t n = 1;
  for (int64_t d : t.dims()) {
    if (d < 0 || d > kMaxDecodedElements) return std::nullopt;
    n *= d;
    if (n > kMaxDecodedElements) return std::nullopt;
  }
  size_t width = 0;
  switch (t.data_type()) {
    case onnx::TensorProto::INT64:
      width = 8;
      break;
    case onnx::TensorProto::INT32:
      width = 4;
      break;
    case onnx::TensorProto::BOOL:
      width = 1;
      break;
    default:
      return std::nullopt;
  }
  IntConstant c{t.data_type(), {t.dims().begin(), t.dims().end()}, {}};
  if (t.has_raw_data()) {
    const std::string& raw = t.raw_data();
    if (raw.size() != static_cast<size_t>(n) * width) return std::nullopt;
    for (int64_t i = 0; i < n; ++i) {
      const char* p = raw.data() + static_cast<size_t>(i) * width;
      if (width == 8) {
        int64_t v;
        std::memcpy(&v, p, 8);
        c.values.push_back(v);
      } else if (width == 4) {
        int32_t v;
        std::memcpy(&v, p, 4);
        c.values.push_back(v);
      } else {
        c.values.push_back(*p != 0 ? 1 : 0);
      }
    }
  } else if (t.data_type() == onnx::TensorProto::INT64) {
    c.values.assign(t.int64_data().begin(), t.int64_data().end());
  } else {
    for (int32_t v : t.int32_data()) c.values.push_back(width == 1 ? (v != 0) : v);
  }
  if (c.values.size() != static_cast<size_t>(n)) return std::nullopt;
  return c;
}

// The small integer constants of one graph by name: its initializers and its Constant nodes.
class IntConstants {
 public:
  void add_initializers(const onnx::GraphProto& g) {
    for (const auto& t : g.initializer()) add(t.name(), decode_int_tensor(t));
  }
  void add_node(const onnx::NodeProto& np) {
    if (np.op_type() != "Constant" || !standard_domain(np) || np.output_size() != 1) return;
    for (const auto& a : np.attribute()) {
      if (a.name() == "value" && a.type() == onnx::AttributeProto::TENSOR) {
        add(np.output(0), decode_int_tensor(a.t()));
      } else if (a.name() == "value_int" && a.type() == onnx::AttributeProto::INT) {
        add(np.output(0), IntConstant{onnx::TensorProto::INT64, {}, {a.i()}});
      } else if (a.name() == "value_ints" && a.type() == onnx::AttributeProto::INTS) {
        add(np.output(0), IntConstant{onnx::TensorProto::INT64,
                                      {static_cast<int64_t>(a.ints_size())},
                                      {a.ints().begin(), a.ints().end()}});
      }
    }
  }
  const IntConstant* find(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? nullptr : &it->second;
  }
  // The value of a one-element integer constant (a count, a position, an index).
  std::optional<int64_t> scalar(const std::string& name) const {
    const IntConstant* c = find(name);
    if (!c || c->elem_type == onnx::TensorProto::BOOL || c->values.size() != 1) return std::nullopt;
    return c->values[0];
  }
  bool all_true(const std::string& name) const {
    const IntConstant* c = find(name);
    if (!c || c->elem_type != onnx::TensorProto::BOOL || c->values.empty()) return false;
    for (int64_t v : c->values) {
      if (v == 0) return false;
    }
    return true;
  }

 private:
  void add(const std::string& name, std::optional<IntConstant> c) {
    if (c) values_[name] = std::move(*c);
  }
  std::unordered_map<std::string, IntConstant> values_;
};

// Writes the nodes the rewrite adds, in the form of the model's opset (axes and split as inputs
// from opset 13, attributes before: the rewrite runs before the version converter).
class NodeWriter {
 public:
  NodeWriter(FreshValueNames& names, Nodes& out, int64_t opset)
      : names_(names), out_(out), opset_(opset) {}

  FreshValueNames& names() { return names_; }
  Nodes& out() { return out_; }

  onnx::NodeProto& node(const std::string& op, const std::string& name,
                        const std::vector<std::string>& inputs,
                        const std::vector<std::string>& outputs) {
    onnx::NodeProto& n = *out_.Add();
    n.set_op_type(op);
    n.set_name(name);
    for (const auto& i : inputs) n.add_input(i);
    for (const auto& o : outputs) n.add_output(o);
    return n;
  }
  // A Constant node `name` of `elem_type` (INT64 or BOOL), shape `dims`, into `output` (a fresh
  // value named from the node where empty); returns the value's name.
  std::string constant(const std::string& name, int32_t elem_type, const std::vector<int64_t>& dims,
                       const std::vector<int64_t>& values, const std::string& output = "") {
    onnx::NodeProto& n = node("Constant", name, {}, {output.empty() ? names_.take(name) : output});
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name("value");
    a.set_type(onnx::AttributeProto::TENSOR);
    onnx::TensorProto& t = *a.mutable_t();
    t.set_data_type(elem_type);
    for (int64_t d : dims) t.add_dims(d);
    for (int64_t v : values) {
      if (elem_type == onnx::TensorProto::BOOL) {
        t.add_int32_data(v != 0);
      } else {
        t.add_int64_data(v);
      }
    }
    return n.output(0);
  }
  // Unsqueeze or Squeeze of `x` at `axis`.
  std::string axis_op(const std::string& op, const std::string& name, const std::string& x,
                      int64_t axis, const std::string& output = "") {
    const std::string y = output.empty() ? names_.take(name) : output;
    if (opset_ >= 13) {
      const std::string axes = constant(name + "/axes", onnx::TensorProto::INT64, {1}, {axis});
      node(op, name, {x, axes}, {y});
    } else {
      ints(node(op, name, {x}, {y}), "axes", {axis});
    }
    return y;
  }
  void split(const std::string& name, const std::string& x, int64_t axis,
             const std::vector<int64_t>& sizes, const std::vector<std::string>& outputs) {
    onnx::NodeProto* n = nullptr;
    if (opset_ >= 13) {
      const std::string split = constant(name + "/split", onnx::TensorProto::INT64,
                                         {static_cast<int64_t>(sizes.size())}, sizes);
      n = &node("Split", name, {x, split}, outputs);
    } else {
      n = &node("Split", name, {x}, outputs);
      ints(*n, "split", sizes);
    }
    integer(*n, "axis", axis);
  }
  static void integer(onnx::NodeProto& n, const std::string& name, int64_t v) {
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name(name);
    a.set_type(onnx::AttributeProto::INT);
    a.set_i(v);
  }
  static void ints(onnx::NodeProto& n, const std::string& name, const std::vector<int64_t>& v) {
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name(name);
    a.set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a.add_ints(x);
  }

 private:
  FreshValueNames& names_;
  Nodes& out_;
  int64_t opset_;
};

// Every name any node of `g` (or of its nested graphs) defines or reads: kept from fresh names,
// so that no new top-level value shadows a value of a subgraph.
void reserve_subgraph_names(const onnx::GraphProto& g, FreshValueNames& names) {
  for (const auto& in : g.input()) names.reserve(in.name());
  for (const auto& t : g.initializer()) names.reserve(t.name());
  for (const auto& np : g.node()) {
    for (const auto& v : np.input()) names.reserve(v);
    for (const auto& v : np.output()) names.reserve(v);
    for (const auto& a : np.attribute()) {
      if (a.has_g()) reserve_subgraph_names(a.g(), names);
      for (const auto& sub : a.graphs()) reserve_subgraph_names(sub, names);
    }
  }
}

// Whether `np` reads, directly or from one of its subgraphs, a name in `names`.
template <class Set>
bool reads_any(const onnx::NodeProto& np, const Set& names) {
  for (const auto& in : np.input()) {
    if (names.count(in)) return true;
  }
  for (const auto& a : np.attribute()) {
    auto inside = [&](const onnx::GraphProto& g) {
      for (const auto& inner : g.node()) {
        if (reads_any(inner, names)) return true;
      }
      for (const auto& out : g.output()) {
        if (names.count(out.name())) return true;
      }
      return false;
    };
    if (a.has_g() && inside(a.g())) return true;
    for (const auto& g : a.graphs()) {
      if (inside(g)) return true;
    }
  }
  return false;
}

// The one dim or none (a scalar) that a Loop body declares for its iteration number or condition.
std::vector<int64_t> declared_dims_of_one(const onnx::ValueInfoProto& v) {
  if (v.type().has_tensor_type() && v.type().tensor_type().has_shape() &&
      v.type().tensor_type().shape().dim_size() == 1) {
    return {1};
  }
  return {};
}

// The Loop's body graph, or nullptr.
const onnx::GraphProto* loop_body(const onnx::NodeProto& loop) {
  const onnx::AttributeProto* a = find_attribute(loop, "body");
  return a && a->type() == onnx::AttributeProto::GRAPH ? &a->g() : nullptr;
}

// Whether the body's condition output is true in every iteration, given that the loop starts
// with a true condition: the condition input passed on, an Identity of it, or a constant true
// (of the body or of the graph around it, through Identities).
bool keeps_condition_true(const onnx::GraphProto& body, const IntConstants& outer) {
  IntConstants inner;
  inner.add_initializers(body);
  std::unordered_map<std::string, const onnx::NodeProto*> producer;
  for (const auto& np : body.node()) {
    inner.add_node(np);
    for (const auto& out : np.output()) producer[out] = &np;
  }
  std::string v = body.output(0).name();
  for (int hops = 0; hops <= body.node_size(); ++hops) {
    if (v == body.input(1).name()) return true;
    if (inner.find(v)) return inner.all_true(v);
    auto it = producer.find(v);
    if (it == producer.end()) return outer.all_true(v);
    const onnx::NodeProto& np = *it->second;
    if (np.op_type() != "Identity" || !standard_domain(np) || np.input_size() != 1) return false;
    v = np.input(0);
  }
  return false;
}

// The trip count of a Loop that can be unrolled, or nullopt: see unroll_loops_and_sequences.
std::optional<int64_t> unrolled_trips(const onnx::NodeProto& loop, const IntConstants& outer) {
  const onnx::GraphProto* body = loop_body(loop);
  if (!body || loop.input_size() < 2 || loop.input(0).empty()) return std::nullopt;
  const int carried = loop.input_size() - 2;
  const int scanned = loop.output_size() - carried;
  if (scanned < 0 || body->input_size() != 2 + carried ||
      body->output_size() != 1 + carried + scanned || body->sparse_initializer_size() > 0) {
    return std::nullopt;
  }
  const std::optional<int64_t> trips = outer.scalar(loop.input(0));
  if (!trips || *trips < 0 || *trips > kMaxUnrolledTrips) return std::nullopt;
  // Scan outputs of no iteration are empty tensors of a shape the body never shows.
  if (*trips == 0 && scanned > 0) return std::nullopt;
  if (!loop.input(1).empty() && !outer.all_true(loop.input(1))) return std::nullopt;
  if (!keeps_condition_true(*body, outer)) return std::nullopt;
  for (const auto& np : body->node()) {
    if (!standard_domain(np) || has_subgraph(np)) return std::nullopt;
    if (is_sequence_op(np)) continue;
    const OpSchema* schema = find_schema(np.op_type());
    if (!schema || schema->kind != SchemaKind::kOnnx || starts_tail(np.domain(), np.op_type())) {
      return std::nullopt;
    }
  }
  return trips;
}

// Writes `trips` copies of the Loop's body in its place. Each copy reads its iteration number and
// condition as Constants, the carried values of the copy before (the Loop's initial values
// first), and the graph's values by their names; every value it defines gets a fresh name
// suffixed `_iter<i>`. The last copy defines the Loop's carried outputs under their names where
// it computes them (an Identity otherwise); a scan output is the Concat along a new axis 0 of its
// per-iteration values.
void unroll_loop(const onnx::NodeProto& loop, const std::string& stem, int64_t trips, NodeWriter& w,
                 std::unordered_map<std::string, int64_t>& scan_lengths) {
  const onnx::GraphProto& body = *loop_body(loop);
  const int carried = loop.input_size() - 2;
  const int scanned = loop.output_size() - carried;

  std::unordered_set<std::string> body_reads;
  std::unordered_set<std::string> body_defined;
  for (const auto& np : body.node()) {
    for (const auto& in : np.input()) body_reads.insert(in);
    for (const auto& out : np.output()) body_defined.insert(out);
  }
  for (const auto& out : body.output()) body_reads.insert(out.name());

  // The body's initializers, constants of every iteration, written once.
  std::unordered_map<std::string, std::string> lifted;
  for (const auto& t : body.initializer()) {
    onnx::NodeProto& n =
        w.node("Constant", stem + "/" + t.name(), {}, {w.names().take(stem + "/" + t.name())});
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name("value");
    a.set_type(onnx::AttributeProto::TENSOR);
    *a.mutable_t() = t;
    a.mutable_t()->clear_name();
    lifted[t.name()] = n.output(0);
  }

  // Which Loop output the last copy may define under its own name: a carried output computed by
  // a body node, bound to no other carried output.
  std::unordered_map<std::string, std::string> final_names;
  for (int k = 0; k < carried; ++k) {
    const std::string& value = body.output(1 + k).name();
    const std::string& result = loop.output(k);
    if (!result.empty() && body_defined.count(value) && !final_names.count(value)) {
      final_names[value] = result;
    }
  }

  std::vector<std::string> current(loop.input().begin() + 2, loop.input().end());
  std::vector<std::vector<std::string>> scans(static_cast<size_t>(scanned));
  for (int64_t i = 0; i < trips; ++i) {
    const std::string suffix = "_iter" + std::to_string(i);
    const bool last = i + 1 == trips;
    std::unordered_map<std::string, std::string> local = lifted;
    auto mapped = [&](const std::string& name) {
      auto it = local.find(name);
      return it == local.end() ? name : it->second;  // the graph's value, or no input ("")
    };
    const std::string& iteration = body.input(0).name();
    if (body_reads.count(iteration)) {
      local[iteration] = w.constant(stem + "/iteration" + suffix, onnx::TensorProto::INT64,
                                    declared_dims_of_one(body.input(0)), {i});
    }
    const std::string& condition = body.input(1).name();
    if (body_reads.count(condition)) {
      local[condition] = w.constant(stem + "/condition" + suffix, onnx::TensorProto::BOOL,
                                    declared_dims_of_one(body.input(1)), {1});
    }
    for (int k = 0; k < carried; ++k) local[body.input(2 + k).name()] = current[k];
    int index = 0;
    for (const auto& np : body.node()) {
      onnx::NodeProto& copy = *w.out().Add();
      copy = np;
      copy.set_name((np.name().empty() ? np.op_type() + "_" + std::to_string(index) : np.name()) +
                    suffix);
      ++index;
      for (auto& in : *copy.mutable_input()) {
        if (!in.empty()) in = mapped(in);
      }
      for (auto& out : *copy.mutable_output()) {
        if (out.empty()) continue;
        auto final_name = last ? final_names.find(out) : final_names.end();
        const std::string renamed =
            final_name != final_names.end() ? final_name->second : w.names().take(out + suffix);
        local[out] = renamed;
        out = renamed;
      }
    }
    for (int k = 0; k < carried; ++k) current[k] = mapped(body.output(1 + k).name());
    for (int j = 0; j < scanned; ++j) {
      scans[j].push_back(mapped(body.output(1 + carried + j).name()));
    }
  }

  for (int k = 0; k < carried; ++k) {
    const std::string& result = loop.output(k);
    if (!result.empty() && current[k] != result) {
      w.node("Identity", stem + "/" + result, {current[k]}, {result});
    }
  }
  for (int j = 0; j < scanned; ++j) {
    const std::string& result = loop.output(carried + j);
    if (result.empty()) continue;
    scan_lengths[result] = trips;
    std::vector<std::string> rows;
    for (size_t i = 0; i < scans[j].size(); ++i) {
      rows.push_back(w.axis_op("Unsqueeze",
                               stem + "/scan" + std::to_string(j) + "_iter" + std::to_string(i),
                               scans[j][i], 0));
    }
    NodeWriter::integer(w.node("Concat", stem + "/scan" + std::to_string(j), rows, {result}),
                        "axis", 0);
  }
}

// The static dims the graph declares for its values (inputs, value_info, outputs, initializers);
// -1 where a dim is not a number.
std::unordered_map<std::string, std::vector<int64_t>> declared_shapes(const onnx::GraphProto& g) {
  std::unordered_map<std::string, std::vector<int64_t>> shapes;
  for (const auto* list : {&g.input(), &g.value_info(), &g.output()}) {
    for (const auto& v : *list) {
      if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape()) continue;
      std::vector<int64_t> dims;
      for (const auto& d : v.type().tensor_type().shape().dim()) {
        dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
      }
      shapes[v.name()] = dims;
    }
  }
  for (const auto& t : g.initializer()) shapes[t.name()] = {t.dims().begin(), t.dims().end()};
  return shapes;
}

// Replaces the sequence values of `nodes` by lists of tensor names, writing the rewritten nodes
// to `w`; false (and `w`'s nodes to be dropped) where one cannot be resolved. `scan_lengths`:
// the leading dim of the unrolled Loops' scan outputs, which the graph does not always declare.
class SequenceResolver {
 public:
  SequenceResolver(const onnx::GraphProto& g, const Nodes& nodes, NodeWriter& w,
                   std::unordered_map<std::string, int64_t> scan_lengths)
      : shapes_(declared_shapes(g)), scan_lengths_(std::move(scan_lengths)), w_(w) {
    constants_.add_initializers(g);
    for (const auto& np : nodes) constants_.add_node(np);
  }

  bool resolve(const Nodes& nodes) {
    int index = 0;
    for (const auto& np : nodes) {
      const std::string name = proto_node_name(np, index++);
      if (is_sequence_op(np)) {
        if (!resolve_sequence_op(np, name)) return false;
      } else if (np.op_type() == "Identity" && standard_domain(np) && np.input_size() == 1 &&
                 np.output_size() == 1 && lists_.count(np.input(0))) {
        lists_[np.output(0)] = lists_[np.input(0)];
      } else if (reads_any(np, lists_)) {
        return false;  // a sequence read by an op that is not resolved here
      } else {
        *w_.out().Add() = np;
      }
    }
    return true;
  }
  bool defines_sequence(const std::string& name) const { return lists_.count(name) > 0; }

 private:
  // The list `name` holds, or nullptr where it is not a resolved sequence.
  const std::vector<std::string>* list(const onnx::NodeProto& np, int input) const {
    if (np.input_size() <= input) return nullptr;
    auto it = lists_.find(np.input(input));
    return it == lists_.end() ? nullptr : &it->second;
  }
  // A constant position into a list of `size` (negative from the back; `size` itself allowed
  // for an insertion), or nullopt.
  std::optional<size_t> position(const std::string& value, size_t size, bool insertion) const {
    std::optional<int64_t> p = constants_.scalar(value);
    if (!p) return std::nullopt;
    const auto n = static_cast<int64_t>(size);
    if (*p < 0) *p += n;
    if (*p < 0 || *p > n || (*p == n && !insertion)) return std::nullopt;
    return static_cast<size_t>(*p);
  }
  bool present(const onnx::NodeProto& np, int input) const {
    return np.input_size() > input && !np.input(input).empty();
  }

  bool resolve_sequence_op(const onnx::NodeProto& np, const std::string& name) {
    const std::string& op = np.op_type();
    if (np.output_size() != 1 || np.output(0).empty()) return false;
    const std::string& result = np.output(0);
    if (op == "SequenceEmpty") {
      lists_[result] = {};
    } else if (op == "SequenceConstruct") {
      std::vector<std::string> items;
      for (const auto& in : np.input()) {
        if (in.empty() || lists_.count(in)) return false;
        items.push_back(in);
      }
      lists_[result] = items;
    } else if (op == "SequenceInsert") {
      const std::vector<std::string>* items = list(np, 0);
      if (!items || !present(np, 1) || lists_.count(np.input(1))) return false;
      std::vector<std::string> grown = *items;
      size_t at = grown.size();
      if (present(np, 2)) {
        std::optional<size_t> p = position(np.input(2), grown.size(), true);
        if (!p) return false;
        at = *p;
      }
      grown.insert(grown.begin() + static_cast<std::ptrdiff_t>(at), np.input(1));
      lists_[result] = grown;
    } else if (op == "SequenceErase") {
      const std::vector<std::string>* items = list(np, 0);
      if (!items || items->empty()) return false;
      std::vector<std::string> shrunk = *items;
      size_t at = shrunk.size() - 1;
      if (present(np, 1)) {
        std::optional<size_t> p = position(np.input(1), shrunk.size(), false);
        if (!p) return false;
        at = *p;
      }
      shrunk.erase(shrunk.begin() + static_cast<std::ptrdiff_t>(at));
      lists_[result] = shrunk;
    } else if (op == "SequenceAt") {
      const std::vector<std::string>* items = list(np, 0);
      if (!items || !present(np, 1)) return false;
      std::optional<size_t> p = position(np.input(1), items->size(), false);
      if (!p) return false;
      w_.node("Identity", name, {(*items)[*p]}, {result});
    } else if (op == "SequenceLength") {
      const std::vector<std::string>* items = list(np, 0);
      if (!items) return false;
      w_.constant(name, onnx::TensorProto::INT64, {}, {static_cast<int64_t>(items->size())},
                  result);
    } else if (op == "ConcatFromSequence") {
      return concat_from_sequence(np, name);
    } else if (op == "SplitToSequence") {
      return split_to_sequence(np, name);
    } else {
      return false;
    }
    return true;
  }

  // Concat of the list's tensors along `axis`; with new_axis, each Unsqueezed at `axis` first
  // (an axis of the output's rank, as ConcatFromSequence counts it).
  bool concat_from_sequence(const onnx::NodeProto& np, const std::string& name) {
    const std::vector<std::string>* items = list(np, 0);
    const onnx::AttributeProto* axis_attribute = find_attribute(np, "axis");
    if (!items || items->empty() || !axis_attribute ||
        axis_attribute->type() != onnx::AttributeProto::INT) {
      return false;
    }
    const int64_t axis = axis_attribute->i();
    const int64_t new_axis = int_attribute(np, "new_axis", 0);
    std::vector<std::string> parts = *items;
    if (new_axis == 1) {
      for (size_t i = 0; i < parts.size(); ++i) {
        parts[i] =
            w_.axis_op("Unsqueeze", name + "/unsqueeze_" + std::to_string(i), parts[i], axis);
      }
    } else if (new_axis != 0) {
      return false;
    }
    NodeWriter::integer(w_.node("Concat", name, parts, {np.output(0)}), "axis", axis);
    return true;
  }

  // Split of the input along `axis` into the pieces `split` gives: a list of sizes, one size
  // (the last piece the remainder), or none (pieces of 1, Squeezed without keepdims). The last
  // two need the dim, which the graph must declare.
  bool split_to_sequence(const onnx::NodeProto& np, const std::string& name) {
    if (!present(np, 0) || lists_.count(np.input(0))) return false;
    const std::string& x = np.input(0);
    const int64_t axis = int_attribute(np, "axis", 0);
    const bool keepdims = int_attribute(np, "keepdims", 1) != 0;
    std::vector<int64_t> sizes;
    const IntConstant* split = present(np, 1) ? constants_.find(np.input(1)) : nullptr;
    if (present(np, 1) && (!split || split->elem_type == onnx::TensorProto::BOOL)) return false;
    if (split && split->dims.size() == 1) {
      sizes = split->values;
      for (int64_t size : sizes) {
        if (size < 0) return false;
      }
    } else if (split && !split->dims.empty()) {
      return false;  // a split of rank 2 or more: invalid, left to the import's refusal
    } else {
      const std::optional<int64_t> dim = declared_dim(x, axis);
      const int64_t chunk = split ? split->values[0] : 1;
      // As many pieces as a sequence of decoded constants may hold, no more.
      if (!dim || chunk < 1 || *dim / chunk >= kMaxDecodedElements) return false;
      for (int64_t left = *dim; left > 0; left -= chunk) sizes.push_back(std::min(chunk, left));
    }
    if (sizes.empty()) return false;
    const bool squeeze = !split && !keepdims;
    std::vector<std::string> pieces;
    for (size_t i = 0; i < sizes.size(); ++i) {
      pieces.push_back(w_.names().take(np.output(0) + "_" + std::to_string(i)));
    }
    w_.split(name, x, axis, sizes, pieces);
    if (squeeze) {
      for (size_t i = 0; i < pieces.size(); ++i) {
        pieces[i] = w_.axis_op("Squeeze", name + "/squeeze_" + std::to_string(i), pieces[i], axis);
      }
    }
    lists_[np.output(0)] = pieces;
    return true;
  }

  std::optional<int64_t> declared_dim(const std::string& value, int64_t axis) const {
    if (auto scan = scan_lengths_.find(value); scan != scan_lengths_.end() && axis == 0) {
      return scan->second;
    }
    auto it = shapes_.find(value);
    if (it == shapes_.end()) return std::nullopt;
    const auto rank = static_cast<int64_t>(it->second.size());
    if (axis < 0) axis += rank;
    if (axis < 0 || axis >= rank || it->second[axis] < 0) return std::nullopt;
    return it->second[axis];
  }

  IntConstants constants_;
  std::unordered_map<std::string, std::vector<int64_t>> shapes_;
  std::unordered_map<std::string, int64_t> scan_lengths_;
  std::unordered_map<std::string, std::vector<std::string>> lists_;
  NodeWriter& w_;
};

// Adds every name `np` reads, its subgraphs' reads included (a superset: names a subgraph
// defines itself are added too, which only keeps more).
void add_all_reads(const onnx::NodeProto& np, std::unordered_set<std::string>& reads) {
  for (const auto& in : np.input()) reads.insert(in);
  for (const auto& a : np.attribute()) {
    auto inside = [&](const onnx::GraphProto& g) {
      for (const auto& inner : g.node()) add_all_reads(inner, reads);
      for (const auto& out : g.output()) reads.insert(out.name());
    };
    if (a.has_g()) inside(a.g());
    for (const auto& g : a.graphs()) inside(g);
  }
}

// Drops the nodes the rewrite wrote (their outputs all in `written`) whose outputs nothing reads:
// each copy's condition, the iteration numbers a body reads only for its condition, the pieces
// of a sequence no one takes. The file's own nodes stay as they are.
void drop_unread_written_nodes(Nodes& nodes, const std::unordered_set<std::string>& written,
                               const onnx::GraphProto& g) {
  std::unordered_set<std::string> reads;
  for (const auto& out : g.output()) reads.insert(out.name());
  std::vector<bool> keep(static_cast<size_t>(nodes.size()), true);
  for (int i = nodes.size() - 1; i >= 0; --i) {
    const onnx::NodeProto& np = nodes.Get(i);
    bool unread = np.output_size() > 0;
    for (const auto& out : np.output()) {
      unread = unread && (out.empty() || (written.count(out) && !reads.count(out)));
    }
    if (unread) {
      keep[static_cast<size_t>(i)] = false;
    } else {
      add_all_reads(np, reads);
    }
  }
  Nodes kept;
  for (int i = 0; i < nodes.size(); ++i) {
    if (keep[static_cast<size_t>(i)]) kept.Add()->Swap(nodes.Mutable(i));
  }
  nodes.Swap(&kept);
}

}  // namespace

void unroll_loops_and_sequences(onnx::ModelProto& model, int64_t opset) {
  onnx::GraphProto& g = *model.mutable_graph();
  bool any = false;
  for (const auto& np : g.node()) {
    any = any || is_sequence_op(np) || (np.op_type() == "Loop" && standard_domain(np));
  }
  if (!any) return;

  FreshValueNames names(g);
  reserve_subgraph_names(g, names);
  for (const auto& out : g.output()) names.reserve(out.name());

  // The unrolled nodes, then the resolved ones; the model takes them only if both succeed.
  Nodes unrolled;
  NodeWriter unroll_writer(names, unrolled, opset);
  IntConstants constants;
  constants.add_initializers(g);
  std::unordered_map<std::string, int64_t> scan_lengths;
  bool changed = false;
  int index = 0;
  for (const auto& np : g.node()) {
    const std::string name = proto_node_name(np, index++);
    constants.add_node(np);
    const std::optional<int64_t> trips = np.op_type() == "Loop" && standard_domain(np)
                                             ? unrolled_trips(np, constants)
                                             : std::nullopt;
    if (trips) {
      unroll_loop(np, name, *trips, unroll_writer, scan_lengths);
      changed = true;
    } else {
      *unrolled.Add() = np;
      changed = changed || is_sequence_op(np);
    }
  }
  if (!changed) return;

  Nodes resolved;
  NodeWriter resolve_writer(names, resolved, opset);
  SequenceResolver resolver(g, unrolled, resolve_writer, std::move(scan_lengths));
  if (!resolver.resolve(unrolled)) return;
  for (const auto& out : g.output()) {
    if (resolver.defines_sequence(out.name())) return;
  }

  std::unordered_set<std::string> original;
  for (const auto& np : g.node()) original.insert(np.output().begin(), np.output().end());
  std::unordered_set<std::string> written;
  for (const auto& np : resolved) {
    for (const auto& out : np.output()) {
      if (!original.count(out)) written.insert(out);
    }
  }
  drop_unread_written_nodes(resolved, written, g);
  *g.mutable_node() = std::move(resolved);
  auto* infos = g.mutable_value_info();
  for (int i = infos->size() - 1; i >= 0; --i) {
    if (infos->Get(i).type().has_sequence_type()) infos->DeleteSubrange(i, 1);
  }
}

}  // namespace qforge::graph

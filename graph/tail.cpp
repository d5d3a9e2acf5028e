#include "graph/tail.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <functional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "graph/proto_names.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

bool foreign_domain(const std::string& domain) {
  return !domain.empty() && domain != "ai.onnx";
}

// The graphs a node holds as attributes (If's branches, Loop's and Scan's bodies).
template <class Visit>
void for_each_subgraph(const onnx::NodeProto& np, Visit visit) {
  for (const auto& a : np.attribute()) {
    if (a.has_g()) visit(a.g());
    for (const auto& g : a.graphs()) visit(g);
  }
}

void add_reads(const onnx::NodeProto& np, std::vector<std::string>& names);

// The names `g` reads that it does not define: values of the graphs around it.
void add_outer_reads(const onnx::GraphProto& g, std::vector<std::string>& names) {
  std::unordered_set<std::string> defined;
  for (const auto& t : g.initializer()) defined.insert(t.name());
  for (const auto& in : g.input()) defined.insert(in.name());
  std::vector<std::string> read;
  for (const auto& np : g.node()) {
    read.clear();
    add_reads(np, read);
    for (const auto& name : read) {
      if (!defined.count(name)) names.push_back(name);
    }
    for (const auto& out : np.output()) defined.insert(out);
  }
  for (const auto& out : g.output()) {
    if (!defined.count(out.name())) names.push_back(out.name());
  }
}

// Every name a node reads: its inputs and what its subgraphs read from outside them.
void add_reads(const onnx::NodeProto& np, std::vector<std::string>& names) {
  for (const auto& in : np.input()) {
    if (!in.empty()) names.push_back(in);
  }
  for_each_subgraph(np, [&](const onnx::GraphProto& g) { add_outer_reads(g, names); });
}

std::vector<std::string> reads_of(const onnx::NodeProto& np) {
  std::vector<std::string> names;
  add_reads(np, names);
  return names;
}

bool holds_tail_op(const onnx::NodeProto& np) {
  if (starts_tail(np.domain(), np.op_type())) return true;
  bool held = false;
  for_each_subgraph(np, [&](const onnx::GraphProto& g) {
    for (const auto& inner : g.node()) held = held || holds_tail_op(inner);
  });
  return held;
}

bool is_shape_type(int32_t elem_type) {
  switch (elem_type) {
    case onnx::TensorProto::INT64:
    case onnx::TensorProto::INT32:
    case onnx::TensorProto::BOOL:
      return true;
    default:
      return false;
  }
}

// The element type of every value the graph declares (inputs, outputs, value_info).
std::unordered_map<std::string, int32_t> value_types(const onnx::GraphProto& gp) {
  std::unordered_map<std::string, int32_t> types;
  for (const auto* list : {&gp.value_info(), &gp.output(), &gp.input()}) {
    for (const auto& v : *list) {
      if (v.type().has_tensor_type()) types[v.name()] = v.type().tensor_type().elem_type();
    }
  }
  return types;
}

}  // namespace

bool starts_tail(const std::string& domain, const std::string& op_type) {
  if (foreign_domain(domain)) return true;
  static const std::set<std::string, std::less<>> kDataDependent = {
      "NonMaxSuppression", "NonZero", "Loop", "Scan", "Unique", "Compress"};
  return kDataDependent.count(op_type) > 0;
}

std::vector<bool> tail_nodes(const onnx::GraphProto& gp) {
  const int n = gp.node_size();
  std::vector<bool> marks(static_cast<size_t>(n), false);
  std::unordered_set<std::string> tail_values;
  bool any = false;
  for (int i = 0; i < n; ++i) {
    const onnx::NodeProto& np = gp.node(i);
    bool in_tail = holds_tail_op(np);
    if (!in_tail && any) {
      for (const auto& name : reads_of(np)) {
        if (tail_values.count(name)) {
          in_tail = true;
          break;
        }
      }
    }
    if (!in_tail) continue;
    any = true;
    marks[static_cast<size_t>(i)] = true;
    for (const auto& out : np.output()) tail_values.insert(out);
  }
  if (!any) return marks;

  // The shape computations only the tail reads go with it.
  const std::unordered_map<std::string, int32_t> types = value_types(gp);
  std::unordered_map<std::string, std::vector<int>> readers;
  for (int i = 0; i < n; ++i) {
    for (const auto& name : reads_of(gp.node(i))) readers[name].push_back(i);
  }
  std::unordered_set<std::string> outputs;
  for (const auto& out : gp.output()) outputs.insert(out.name());
  for (int i = n - 1; i >= 0; --i) {
    if (marks[static_cast<size_t>(i)]) continue;
    const onnx::NodeProto& np = gp.node(i);
    bool moves = np.output_size() > 0;
    for (const auto& out : np.output()) {
      if (!moves) break;
      if (out.empty()) continue;
      auto r = readers.find(out);
      auto t = types.find(out);
      moves = !outputs.count(out) && r != readers.end() &&
              std::all_of(r->second.begin(), r->second.end(),
                          [&](int k) { return marks[static_cast<size_t>(k)]; }) &&
              (np.op_type() == "Constant" || (t != types.end() && is_shape_type(t->second)));
    }
    if (moves) marks[static_cast<size_t>(i)] = true;
  }
  return marks;
}

std::shared_ptr<const Tail> cut_tail(onnx::ModelProto& model) {
  onnx::GraphProto& g = *model.mutable_graph();
  const std::vector<bool> marks = tail_nodes(g);
  if (std::find(marks.begin(), marks.end(), true) == marks.end()) return nullptr;

  auto tail = std::make_shared<Tail>();
  onnx::GraphProto part;
  // The names the copies it takes of the graph's values get.
  FreshValueNames fresh(g);
  std::unordered_set<std::string> tail_defined, body_reads, initializers, inputs;
  for (const auto& t : g.initializer()) initializers.insert(t.name());
  for (const auto& in : g.input()) {
    if (!initializers.count(in.name())) inputs.insert(in.name());
  }
  std::set<std::string> ops;
  for (int i = 0; i < g.node_size(); ++i) {
    const onnx::NodeProto& np = g.node(i);
    if (!marks[static_cast<size_t>(i)]) {
      for (const auto& name : reads_of(np)) body_reads.insert(name);
      continue;
    }
    if (tail->first.empty() && holds_tail_op(np)) tail->first = proto_node_label(np, i);
    ops.insert(np.domain().empty() ? np.op_type() : np.domain() + "." + np.op_type());
    for (const auto& out : np.output()) {
      if (!out.empty()) tail_defined.insert(out);
    }
  }
  if (tail->first.empty()) {  // a tail always holds the op that starts it
    throw_internal("import: a post-processing tail without the op that starts it");
  }
  for (const auto& out : g.output()) body_reads.insert(out.name());

  // The values of the Constant nodes before it that it reads: copied like shared initializers.
  std::unordered_map<std::string, onnx::TensorProto> constants;
  for (int i = 0; i < g.node_size(); ++i) {
    const onnx::NodeProto& np = g.node(i);
    if (marks[static_cast<size_t>(i)] || np.op_type() != "Constant" || np.output_size() != 1) {
      continue;
    }
    for (const auto& a : np.attribute()) {
      if (a.name() == "value" && a.has_t()) constants[np.output(0)] = a.t();
    }
  }

  // Integer computations the tail shares with the graph (a shape, a count both read) are copied
  // into it under new names, so that what it reads is computed tensors, which follow the batch,
  // not values resolution folds at one batch.
  std::vector<onnx::NodeProto> copies;
  // Nodes copied into the tail that nothing else read: they leave the graph.
  std::vector<bool> dropped(static_cast<size_t>(g.node_size()), false);
  {
    const std::unordered_map<std::string, int32_t> types = value_types(g);
    std::unordered_map<std::string, int> producer;
    for (int i = 0; i < g.node_size(); ++i) {
      if (marks[static_cast<size_t>(i)]) continue;
      for (const auto& out : g.node(i).output()) producer[out] = i;
    }
    std::unordered_set<std::string> constant_values(initializers);
    for (const auto& [name, value] : constants) constant_values.insert(name);
    // A node computing integers, or computing from integers and constants only (a Cast of a size
    // to float, a scale factor from it): what resolution folds once shapes are fixed.
    std::unordered_map<int, bool> memo;
    std::function<bool(int)> integer_node = [&](int i) -> bool {
      if (auto m = memo.find(i); m != memo.end()) return m->second;
      memo[i] = false;  // a cycle cannot occur; this only guards the recursion
      const onnx::NodeProto& np = g.node(i);
      if (np.op_type() == "Constant" || np.output_size() == 0) return false;
      for (const auto& a : np.attribute()) {
        if (a.has_g() || a.graphs_size() > 0) return false;
      }
      auto integer = [&](const std::string& name) {
        auto t = types.find(name);
        return name.empty() || (t != types.end() && is_shape_type(t->second));
      };
      bool result = std::all_of(np.output().begin(), np.output().end(), integer);
      if (!result) {
        result = std::all_of(np.input().begin(), np.input().end(), [&](const std::string& in) {
          if (integer(in) || constant_values.count(in)) return true;
          auto p = producer.find(in);
          return p != producer.end() && integer_node(p->second);
        });
      }
      memo[i] = result;
      return result;
    };
    std::vector<bool> copied(static_cast<size_t>(g.node_size()), false);
    std::vector<std::string> pending;
    for (int i = 0; i < g.node_size(); ++i) {
      if (!marks[static_cast<size_t>(i)]) continue;
      for (const auto& name : reads_of(g.node(i))) pending.push_back(name);
    }
    while (!pending.empty()) {
      const std::string name = pending.back();
      pending.pop_back();
      auto p = producer.find(name);
      if (p == producer.end()) continue;
      const auto i = static_cast<size_t>(p->second);
      if (copied[i] || !integer_node(p->second)) continue;
      copied[i] = true;
      for (const auto& in : reads_of(g.node(p->second))) pending.push_back(in);
    }
    std::vector<std::pair<std::string, std::string>> renamed;
    for (int i = 0; i < g.node_size(); ++i) {
      if (!copied[static_cast<size_t>(i)]) continue;
      onnx::NodeProto& c = copies.emplace_back(g.node(i));
      if (!c.name().empty()) c.set_name(c.name() + "_tail");
      for (auto& out : *c.mutable_output()) {
        if (out.empty()) continue;
        const std::string to = fresh.take(out + "_tail");
        tail_defined.insert(to);
        renamed.emplace_back(out, to);
        out = to;
      }
      ops.insert(c.op_type());
    }
    for (const auto& [from, to] : renamed) {
      for (auto& c : copies) rename_reads(c, from, to);
      for (int i = 0; i < g.node_size(); ++i) {
        if (marks[static_cast<size_t>(i)]) rename_reads(*g.mutable_node(i), from, to);
      }
    }
    std::unordered_map<std::string, std::vector<int>> readers;
    for (int i = 0; i < g.node_size(); ++i) {
      if (marks[static_cast<size_t>(i)]) continue;
      for (const auto& name : reads_of(g.node(i))) readers[name].push_back(i);
    }
    std::unordered_set<std::string> outputs;
    for (const auto& out : g.output()) outputs.insert(out.name());
    for (int i = g.node_size() - 1; i >= 0; --i) {
      if (!copied[static_cast<size_t>(i)]) continue;
      const auto& out = g.node(i).output();
      dropped[static_cast<size_t>(i)] =
          std::none_of(out.begin(), out.end(), [&](const std::string& name) {
            if (outputs.count(name)) return true;
            auto r = readers.find(name);
            return r != readers.end() &&
                   std::any_of(r->second.begin(), r->second.end(),
                               [&](int k) { return !dropped[static_cast<size_t>(k)]; });
          });
    }
    body_reads.clear();
    for (int i = 0; i < g.node_size(); ++i) {
      if (marks[static_cast<size_t>(i)] || dropped[static_cast<size_t>(i)]) continue;
      for (const auto& name : reads_of(g.node(i))) body_reads.insert(name);
    }
    for (const auto& out : g.output()) body_reads.insert(out.name());
  }

  // What the tail reads from before it, in the order first read.
  std::vector<std::string> reads;
  {
    std::unordered_set<std::string> seen;
    auto add = [&](const onnx::NodeProto& np) {
      for (const auto& name : reads_of(np)) {
        if (!tail_defined.count(name) && seen.insert(name).second) reads.push_back(name);
      }
    };
    for (const auto& c : copies) add(c);
    for (int i = 0; i < g.node_size(); ++i) {
      if (marks[static_cast<size_t>(i)]) add(g.node(i));
    }
  }

  // Its nodes, then its initializers: shared ones copied under a new name.
  google::protobuf::RepeatedPtrField<onnx::NodeProto> body_nodes;
  for (auto& c : copies) part.add_node()->Swap(&c);
  for (int i = 0; i < g.node_size(); ++i) {
    onnx::NodeProto& np = *g.mutable_node(i);
    if (dropped[static_cast<size_t>(i)]) continue;
    (marks[static_cast<size_t>(i)] ? part.add_node() : body_nodes.Add())->Swap(&np);
  }
  g.mutable_node()->Swap(&body_nodes);
  bool computed = false;
  for (const auto& name : reads) {
    const auto constant = constants.find(name);
    if (!initializers.count(name) && constant == constants.end()) {
      tail->reads.push_back(name);
      computed = computed || !inputs.count(name);
      continue;
    }
    onnx::TensorProto* t = part.add_initializer();
    if (constant != constants.end()) {
      t->Swap(&constant->second);
    } else {
      auto* init = g.mutable_initializer();
      auto it = std::find_if(init->begin(), init->end(),
                             [&](const onnx::TensorProto& i) { return i.name() == name; });
      if (!body_reads.count(name)) {
        t->Swap(&*it);
        init->erase(it);
        continue;
      }
      t->CopyFrom(*it);
    }
    const std::string copy = fresh.take(name + "_tail");
    t->set_name(copy);
    for (auto& np : *part.mutable_node()) rename_reads(np, name, copy);
    tail_defined.insert(copy);
  }
  if (!computed) {
    throw_unsupported("import: " + tail->first +
                      ": the ops from it on are post-processing qforge keeps but does not run, "
                      "and no node computes anything before them");
  }
  // Initializers that were listed as inputs (IR < 4) and now only the tail reads.
  {
    auto* in = g.mutable_input();
    for (int i = in->size() - 1; i >= 0; --i) {
      const std::string& name = in->Get(i).name();
      if (initializers.count(name) && !body_reads.count(name) &&
          std::find(reads.begin(), reads.end(), name) != reads.end()) {
        in->DeleteSubrange(i, 1);
      }
    }
  }

  // value_info of its values moves with it.
  std::unordered_map<std::string, const onnx::ValueInfoProto*> known;
  {
    google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> kept;
    for (auto& vi : *g.mutable_value_info()) {
      (tail_defined.count(vi.name()) ? part.add_value_info() : kept.Add())->Swap(&vi);
    }
    g.mutable_value_info()->Swap(&kept);
    for (const auto& vi : g.value_info()) known[vi.name()] = &vi;
  }

  // The file's outputs: those the tail computes move to it; what it reads becomes outputs.
  {
    google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> kept;
    for (auto& out : *g.mutable_output()) {
      tail->outputs.push_back(out.name());
      (tail_defined.count(out.name()) ? part.add_output() : kept.Add())->Swap(&out);
    }
    g.mutable_output()->Swap(&kept);
    std::unordered_set<std::string> listed;
    for (const auto& out : g.output()) listed.insert(out.name());
    for (const auto& name : tail->reads) {
      if (inputs.count(name) || listed.count(name)) continue;
      onnx::ValueInfoProto* out = g.add_output();
      if (auto it = known.find(name); it != known.end()) {
        out->CopyFrom(*it->second);
      } else {
        out->set_name(name);
      }
    }
  }

  for (const auto& op : model.opset_import()) {
    if (foreign_domain(op.domain())) tail->domains[op.domain()] = op.version();
  }
  tail->defines.assign(tail_defined.begin(), tail_defined.end());
  std::sort(tail->defines.begin(), tail->defines.end());
  tail->ops.assign(ops.begin(), ops.end());
  tail->node_count = static_cast<size_t>(part.node_size());
  tail->nodes = part.SerializeAsString();
  return tail;
}

void append_tail(const Graph& graph, onnx::ModelProto& model) {
  if (!graph.tail) return;
  const Tail& tail = *graph.tail;
  onnx::GraphProto part;
  if (!part.ParseFromString(tail.nodes)) {
    throw_internal("export: the post-processing tail does not parse");
  }
  for (const auto& name : tail.reads) {
    if (!graph.find_value(name)) {
      throw_internal("export: the post-processing tail reads '" + name +
                     "', which the graph no longer has");
    }
  }
  onnx::GraphProto& g = *model.mutable_graph();
  for (auto& np : *part.mutable_node()) g.add_node()->Swap(&np);
  for (auto& t : *part.mutable_initializer()) g.add_initializer()->Swap(&t);
  for (auto& vi : *part.mutable_value_info()) g.add_value_info()->Swap(&vi);

  std::unordered_map<std::string, onnx::ValueInfoProto*> outputs;
  for (auto& out : *part.mutable_output()) outputs[out.name()] = &out;
  for (auto& out : *g.mutable_output()) outputs.emplace(out.name(), &out);
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> written;
  for (const auto& name : tail.outputs) {
    auto it = outputs.find(name);
    if (it == outputs.end()) {
      throw_internal("export: the model's output '" + name +
                     "' is neither the graph's nor the "
                     "post-processing tail's");
    }
    written.Add()->CopyFrom(*it->second);
  }
  // Outputs marked after import (verify --mark-outputs) stay, after the file's.
  for (const auto& out : g.output()) {
    if (std::find(tail.outputs.begin(), tail.outputs.end(), out.name()) == tail.outputs.end() &&
        std::find(tail.reads.begin(), tail.reads.end(), out.name()) == tail.reads.end()) {
      written.Add()->CopyFrom(out);
    }
  }
  g.mutable_output()->Swap(&written);

  for (const auto& entry : tail.domains) {
    const auto& imports = model.opset_import();
    if (std::any_of(imports.begin(), imports.end(), [&](const onnx::OperatorSetIdProto& op) {
          return op.domain() == entry.first;
        })) {
      continue;
    }
    auto* op = model.add_opset_import();
    op->set_domain(entry.first);
    op->set_version(entry.second);
  }
}

std::string describe_tail(const Tail& tail) {
  std::string ops;
  constexpr size_t kShown = 8;
  for (size_t i = 0; i < tail.ops.size() && i < kShown; ++i) {
    ops += (i ? ", " : "") + tail.ops[i];
  }
  if (tail.ops.size() > kShown) ops += ", …";
  return "the post-processing from " + tail.first + " on: " + std::to_string(tail.node_count) +
         " node" + (tail.node_count == 1 ? "" : "s") + " (" + ops + ")";
}

}  // namespace qforge::graph

// Graph edits that keep producer/consumer links, the node order and names consistent.
#include "graph/ir.h"

#include <algorithm>
#include <set>
#include <unordered_map>

namespace qforge::graph {

const Shape& Value::known_shape() const {
  if (!shape_) throw_internal("value '" + name_ + "' has no known shape");
  return *shape_;
}

void Value::set_constant(Tensor value) {
  dtype_ = value.dtype();
  shape_ = value.shape();
  constant_ = std::move(value);
  released_ = false;
}

void Value::release_constant() {
  if (!is_constant()) throw_internal("value '" + name_ + "' is not a constant to release");
  constant_ = Tensor();
  released_ = true;
}

void Value::throw_released() const {
  throw_internal("value '" + name_ +
                 "': its constant values were released once the kernels had prepared their own "
                 "form of them; reload the model to read them");
}

// ---------------------------------------------------------------------------------------------
// Attributes

template <class T>
const T* Node::find_attr(std::string_view name) const {
  auto it = attrs_.find(name);
  if (it == attrs_.end()) return nullptr;
  const T* v = std::get_if<T>(&it->second);
  if (!v) {
    throw_invalid("attributes: " + label() + ": attribute '" + std::string(name) +
                  "' has an unexpected type");
  }
  return v;
}

namespace {
[[noreturn]] void missing_attr(const Node& node, std::string_view name) {
  throw_invalid("attributes: " + node.label() + ": expected attribute '" + std::string(name) +
                "', got none");
}
}  // namespace

int64_t Node::attr_int(std::string_view name) const {
  if (const auto* v = find_attr<int64_t>(name)) return *v;
  missing_attr(*this, name);
}
int64_t Node::attr_int(std::string_view name, int64_t fallback) const {
  const auto* v = find_attr<int64_t>(name);
  return v ? *v : fallback;
}
float Node::attr_float(std::string_view name) const {
  if (const auto* v = find_attr<float>(name)) return *v;
  missing_attr(*this, name);
}
float Node::attr_float(std::string_view name, float fallback) const {
  const auto* v = find_attr<float>(name);
  return v ? *v : fallback;
}
std::string Node::attr_string(std::string_view name) const {
  if (const auto* v = find_attr<std::string>(name)) return *v;
  missing_attr(*this, name);
}
std::string Node::attr_string(std::string_view name, std::string fallback) const {
  const auto* v = find_attr<std::string>(name);
  return v ? *v : fallback;
}
std::vector<int64_t> Node::attr_ints(std::string_view name) const {
  if (const auto* v = find_attr<std::vector<int64_t>>(name)) return *v;
  missing_attr(*this, name);
}
std::vector<int64_t> Node::attr_ints(std::string_view name, std::vector<int64_t> fallback) const {
  const auto* v = find_attr<std::vector<int64_t>>(name);
  return v ? *v : fallback;
}
std::vector<float> Node::attr_floats(std::string_view name, std::vector<float> fallback) const {
  const auto* v = find_attr<std::vector<float>>(name);
  return v ? *v : fallback;
}
const Tensor& Node::attr_tensor(std::string_view name) const {
  if (const auto* v = find_attr<Tensor>(name)) return *v;
  missing_attr(*this, name);
}

const Graph& Node::attr_graph(std::string_view name) const {
  if (const auto* v = find_attr<Subgraph>(name); v && *v) return **v;
  missing_attr(*this, name);
}

std::string Node::label() const {
  return "node '" + name_ + "' (" + op_type_ + ")";
}

bool Tail::defines_name(std::string_view name) const {
  return std::binary_search(defines.begin(), defines.end(), name);
}

// ---------------------------------------------------------------------------------------------
// Graph

std::unique_ptr<Graph> Graph::clone() const {
  auto g = std::make_unique<Graph>();
  g->name = name;
  g->opset = opset;
  g->metadata = metadata;
  g->source_path = source_path;
  g->declared_batch = declared_batch;
  g->tail = tail;
  g->added_batch_axis = added_batch_axis;
  g->derivations_ = derivations_;
  std::unordered_map<const Value*, Value*> map;
  for (const auto& v : value_store_) {
    auto copy = std::make_unique<Value>();
    copy->name_ = v->name_;
    copy->dtype_ = v->dtype_;
    copy->shape_ = v->shape_;
    copy->constant_ = v->constant_;
    copy->released_ = v->released_;
    copy->literal_ = v->literal_;
    copy->graph_input_ = v->graph_input_;
    copy->graph_output_ = v->graph_output_;
    map[v.get()] = copy.get();
    g->values_by_name_[copy->name_] = copy.get();
    g->value_store_.push_back(std::move(copy));
  }
  for (const Node* n : order_) {
    auto copy = std::make_unique<Node>();
    copy->name_ = n->name_;
    copy->op_type_ = n->op_type_;
    copy->domain_ = n->domain_;
    copy->attrs_ = n->attrs_;
    for (Value* in : n->inputs_) {
      Value* m = in ? map.at(in) : nullptr;
      copy->inputs_.push_back(m);
      if (m) m->consumers_.push_back(copy.get());
    }
    for (Value* out : n->outputs_) {
      Value* m = map.at(out);
      m->producer_ = copy.get();
      copy->outputs_.push_back(m);
    }
    g->nodes_by_name_[copy->name_] = copy.get();
    g->order_.push_back(copy.get());
    g->node_store_.push_back(std::move(copy));
  }
  for (Value* v : inputs_) g->inputs_.push_back(map.at(v));
  for (Value* v : outputs_) g->outputs_.push_back(map.at(v));
  return g;
}

Value* Graph::add_value(const std::string& value_name) {
  if (values_by_name_.count(value_name)) {
    throw_invalid("graph: value '" + value_name + "' is defined twice");
  }
  auto v = std::make_unique<Value>();
  v->name_ = value_name;
  Value* raw = v.get();
  values_by_name_[value_name] = raw;
  value_store_.push_back(std::move(v));
  return raw;
}

Value* Graph::add_input(const std::string& value_name, DType dtype, std::optional<Shape> shape) {
  Value* v = add_value(value_name);
  v->dtype_ = dtype;
  v->shape_ = std::move(shape);
  v->graph_input_ = true;
  inputs_.push_back(v);
  return v;
}

Value* Graph::add_constant(const std::string& value_name, Tensor value) {
  Value* v = add_value(value_name);
  v->set_constant(std::move(value));
  return v;
}

void Graph::mark_output(Value* value) {
  if (!value->graph_output_) {
    value->graph_output_ = true;
    outputs_.push_back(value);
  }
}

Node* Graph::add_node(NodeSpec spec) {
  return insert_node(std::move(spec), nullptr);
}

Node* Graph::insert_node(NodeSpec spec, const Node* position) {
  auto n = std::make_unique<Node>();
  n->name_ = spec.name.empty() ? unique_node_name(spec.op_type) : spec.name;
  if (nodes_by_name_.count(n->name_)) n->name_ = unique_node_name(n->name_);
  n->op_type_ = std::move(spec.op_type);
  n->domain_ = std::move(spec.domain);
  n->attrs_ = std::move(spec.attributes);
  n->inputs_ = std::move(spec.inputs);
  for (Value* in : n->inputs_) {
    if (in) in->consumers_.push_back(n.get());
  }
  for (auto& out_name : spec.output_names) {
    Value* out = add_value(out_name);
    out->producer_ = n.get();
    n->outputs_.push_back(out);
  }
  Node* raw = n.get();
  nodes_by_name_[raw->name_] = raw;
  node_store_.push_back(std::move(n));
  if (position) {
    auto it = std::find(order_.begin(), order_.end(), position);
    order_.insert(it, raw);
  } else {
    order_.push_back(raw);
  }
  return raw;
}

Value* Graph::find_value(std::string_view value_name) const {
  auto it = values_by_name_.find(value_name);
  return it == values_by_name_.end() ? nullptr : it->second;
}

Node* Graph::find_node(std::string_view node_name) const {
  auto it = nodes_by_name_.find(node_name);
  return it == nodes_by_name_.end() ? nullptr : it->second;
}

std::string Graph::unique_value_name(std::string_view stem) const {
  // A name the tail defines is taken too: the written model holds both.
  auto taken = [&](const std::string& name) {
    return values_by_name_.count(name) || (tail && tail->defines_name(name));
  };
  std::string base(stem);
  if (!taken(base)) return base;
  for (int i = 1;; ++i) {
    std::string candidate = base + "_" + std::to_string(i);
    if (!taken(candidate)) return candidate;
  }
}

std::string Graph::unique_node_name(std::string_view stem) const {
  std::string base(stem);
  for (int i = static_cast<int>(nodes_by_name_.size());; ++i) {
    std::string candidate = base + "_" + std::to_string(i);
    if (!nodes_by_name_.count(candidate)) return candidate;
  }
}

void Graph::rename_value(Value* value, const std::string& new_name) {
  if (value->name_ == new_name) return;
  if (values_by_name_.count(new_name)) {
    throw_internal("graph: cannot rename '" + value->name_ + "' to existing '" + new_name + "'");
  }
  values_by_name_.erase(value->name_);
  for (Derivation& d : derivations_) {
    if (d.derived == value->name_) d.derived = new_name;
    for (DerivedTerm& t : d.terms) {
      if (t.source == value->name_) t.source = new_name;
    }
  }
  value->name_ = new_name;
  values_by_name_[new_name] = value;
}

void Graph::rename_node(Node* node, const std::string& new_name) {
  if (node->name_ == new_name) return;
  if (nodes_by_name_.count(new_name)) {
    throw_internal("graph: cannot rename node '" + node->name_ + "' to existing '" + new_name +
                   "'");
  }
  nodes_by_name_.erase(node->name_);
  node->name_ = new_name;
  nodes_by_name_[new_name] = node;
}

void Graph::record_derivation(Derivation derivation) {
  std::erase_if(derivations_, [&](const Derivation& d) { return d.derived == derivation.derived; });
  derivations_.push_back(std::move(derivation));
}

void Graph::replace_all_uses(Value* from, Value* to) {
  if (from == to) return;
  for (Node* consumer : std::vector<Node*>(from->consumers_)) {
    for (size_t i = 0; i < consumer->inputs_.size(); ++i) {
      if (consumer->inputs_[i] == from) set_input(consumer, i, to);
    }
  }
  for (auto& out : outputs_) {
    if (out == from) {
      out = to;
      from->graph_output_ = false;
      to->graph_output_ = true;
    }
  }
}

void Graph::set_input(Node* node, size_t index, Value* value) {
  Value* old = node->inputs_.at(index);
  if (old == value) return;
  node->inputs_[index] = value;
  if (old && std::count(node->inputs_.begin(), node->inputs_.end(), old) == 0) {
    std::erase(old->consumers_, node);
  }
  if (value && std::count(value->consumers_.begin(), value->consumers_.end(), node) == 0) {
    value->consumers_.push_back(node);
  }
}

void Graph::remove_node(Node* node) {
  for (Value* out : node->outputs_) {
    if (!out->consumers_.empty() || out->graph_output_) {
      throw_internal("graph: cannot remove " + node->label() + ": output '" + out->name_ +
                     "' is still used");
    }
  }
  for (Value* in : node->inputs_) {
    if (in) std::erase(in->consumers_, node);
  }
  // The outputs go with the node: nothing uses them.
  for (Value* out : node->outputs_) {
    values_by_name_.erase(out->name_);
    std::erase_if(value_store_, [&](const std::unique_ptr<Value>& v) { return v.get() == out; });
  }
  std::erase(order_, node);
  nodes_by_name_.erase(node->name_);
  std::erase_if(node_store_, [&](const std::unique_ptr<Node>& p) { return p.get() == node; });
}

void Graph::fold_node(Node* node, std::vector<Tensor> values, const Node* literal_from) {
  if (values.size() != node->outputs_.size()) {
    throw_internal("graph: folding " + node->label() + " with a wrong number of values");
  }
  bool literal = true;
  for (const Value* in : (literal_from ? literal_from : node)->inputs_) {
    if (in && in->is_constant() && !in->literal_) literal = false;
  }
  for (size_t i = 0; i < values.size(); ++i) {
    node->outputs_[i]->set_constant(std::move(values[i]));
    node->outputs_[i]->producer_ = nullptr;
    node->outputs_[i]->literal_ = literal;
  }
  for (Value* in : node->inputs_) {
    if (!in) continue;
    std::erase(in->consumers_, node);
    // A constant that only this node read leaves memory now rather than at the next
    // remove_dead: folding every weight of a model (a Q/DQ model's weight quantizers) would
    // otherwise hold the weights twice.
    if (in->consumers_.empty() && !in->graph_output_ && in->constant_.defined()) {
      in->release_constant();
    }
  }
  std::erase(order_, node);
  nodes_by_name_.erase(node->name_);
  std::erase_if(node_store_, [&](const std::unique_ptr<Node>& p) { return p.get() == node; });
}

size_t Graph::remove_dead() {
  size_t removed = 0;
  for (auto it = order_.rbegin(); it != order_.rend();) {
    Node* n = *it;
    bool used = std::any_of(n->outputs_.begin(), n->outputs_.end(), [](const Value* v) {
      return !v->consumers_.empty() || v->graph_output_;
    });
    if (used) {
      ++it;
      continue;
    }
    // Erase through the forward iterator; reverse iteration continues at the same position.
    auto fwd = std::next(it).base();
    for (Value* in : n->inputs_) {
      if (in) std::erase(in->consumers_, n);
    }
    for (Value* out : n->outputs_) out->producer_ = nullptr;
    nodes_by_name_.erase(n->name_);
    it = std::make_reverse_iterator(order_.erase(fwd));
    std::erase_if(node_store_, [&](const std::unique_ptr<Node>& p) { return p.get() == n; });
    ++removed;
  }
  std::erase_if(value_store_, [&](const std::unique_ptr<Value>& v) {
    bool orphan = !v->producer_ && v->consumers_.empty() && !v->graph_input_ && !v->graph_output_;
    if (orphan) values_by_name_.erase(v->name_);
    return orphan;
  });
  return removed;
}

std::vector<Value*> Graph::values() const {
  std::vector<Value*> out;
  out.reserve(value_store_.size());
  for (const auto& v : value_store_) out.push_back(v.get());
  return out;
}

void Graph::check_consistency() const {
  std::set<const Value*> defined;
  for (const auto& v : value_store_) {
    if (v->graph_input_ || v->is_constant()) defined.insert(v.get());
  }
  for (const Node* n : order_) {
    for (const Value* in : n->inputs_) {
      if (!in) continue;
      if (!defined.count(in)) {
        throw_internal("graph: " + n->label() + " uses '" + in->name_ + "' before it is produced");
      }
      if (std::find(in->consumers_.begin(), in->consumers_.end(), n) == in->consumers_.end()) {
        throw_internal("graph: '" + in->name_ + "' does not list consumer " + n->label());
      }
    }
    for (const Value* out : n->outputs_) {
      if (out->producer_ != n) {
        throw_internal("graph: '" + out->name_ + "' does not list producer " + n->label());
      }
      defined.insert(out);
    }
  }
  for (const auto& v : value_store_) {
    for (const Node* c : v->consumers_) {
      if (std::find(c->inputs_.begin(), c->inputs_.end(), v.get()) == c->inputs_.end()) {
        throw_internal("graph: '" + v->name_ + "' lists " + c->label() +
                       " as consumer, which does not use it");
      }
    }
  }
  for (const Value* out : outputs_) {
    if (!defined.count(out)) throw_internal("graph: output '" + out->name_ + "' is never produced");
  }
}

std::optional<size_t> sample_rank_of(const Graph& graph) {
  if (!graph.added_batch_axis.any() || graph.inputs().empty() ||
      !graph.inputs().front()->has_shape()) {
    return std::nullopt;
  }
  return graph.inputs().front()->shape()->size() - 1;
}

}  // namespace qforge::graph

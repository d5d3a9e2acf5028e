#include "quant/shared_prefix.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <variant>

#include "graph/subgraph.h"
#include "kernels/parallel.h"

namespace qforge::quant {
namespace {

using graph::Node;
using graph::Value;

// A hash of a tensor's bytes: of each 1 MiB block (in parallel), then of the blocks' hashes in
// order, so that it is the same for any thread count.
uint64_t hash_of(const kernels::Tensor& t) {
  constexpr int64_t kBlock = int64_t{1} << 20;
  const char* bytes = static_cast<const char*>(t.raw());
  const auto size = static_cast<int64_t>(t.nbytes());
  std::vector<uint64_t> blocks(static_cast<size_t>((size + kBlock - 1) / kBlock));
  kernels::parallel_for(static_cast<int64_t>(blocks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t at = b * kBlock;
      blocks[static_cast<size_t>(b)] = std::hash<std::string_view>{}(
          std::string_view(bytes + at, static_cast<size_t>(std::min(kBlock, size - at))));
    }
  });
  return std::hash<std::string_view>{}(std::string_view(
      reinterpret_cast<const char*>(blocks.data()), blocks.size() * sizeof(uint64_t)));
}

bool same_tensor(const kernels::Tensor& a, const kernels::Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  return a.raw() == b.raw() || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

bool same_attributes(const Node& a, const Node& b) {
  const auto& x = a.attributes();
  const auto& y = b.attributes();
  if (x.size() != y.size()) return false;
  for (auto i = x.begin(), j = y.begin(); i != x.end(); ++i, ++j) {
    if (i->first != j->first || i->second.index() != j->second.index()) return false;
    const bool same = std::visit(
        [&](const auto& mine) {
          using T = std::decay_t<decltype(mine)>;
          const T& theirs = std::get<T>(j->second);
          if constexpr (std::is_same_v<T, kernels::Tensor>) {
            return same_tensor(mine, theirs);
          } else {
            return mine == theirs;
          }
        },
        i->second);
    if (!same) return false;
  }
  return true;
}

size_t output_index(const Node* n, const Value* out) {
  for (size_t i = 0; i < n->num_outputs(); ++i) {
    if (n->output(i) == out) return i;
  }
  return n->num_outputs();
}

// Whether a node of the base and one of a variant compute the same values, given the variant's
// counterparts of the base's computing nodes before it. Nodes that read constants alone are
// compared through their inputs, recursively (memoised). Node names are not compared: a graph
// numbers the nodes it inserts, so a variant with fewer Q/DQ nodes names later ones otherwise.
class NodeMatcher {
 public:
  NodeMatcher(const std::unordered_set<const Node*>& constant,
              const std::unordered_map<const Value*, uint64_t>& hashes,
              const std::unordered_map<const Node*, const Node*>& matched)
      : constant_(constant), hashes_(hashes), matched_(matched) {}

  bool same(const Node* b, const Node* v) {
    if (auto it = memo_.find(b); it != memo_.end()) return it->second == v;
    if (!same_node(b, v)) return false;
    if (constant_.count(b)) memo_.emplace(b, v);
    return true;
  }

 private:
  bool same_constant(const Value* x, const Value* y) {
    if (!y->is_constant() || y->is_released() || y->dtype() != x->dtype() ||
        y->shape() != x->shape()) {
      return false;
    }
    const auto base_hash = hashes_.find(x);
    if (base_hash == hashes_.end()) return false;  // released before the base was taken
    auto [it, fresh] = variant_hashes_.emplace(y, 0);
    if (fresh) it->second = hash_of(y->constant());
    return it->second == base_hash->second;
  }

  bool same_node(const Node* b, const Node* v) {
    if (b->op_type() != v->op_type() || b->domain() != v->domain() ||
        b->num_inputs() != v->num_inputs() || b->num_outputs() != v->num_outputs() ||
        !same_attributes(*b, *v)) {
      return false;
    }
    for (size_t i = 0; i < b->num_outputs(); ++i) {
      if (b->output(i)->name() != v->output(i)->name() ||
          b->output(i)->dtype() != v->output(i)->dtype()) {
        return false;
      }
    }
    for (size_t i = 0; i < b->num_inputs(); ++i) {
      const Value* x = b->input(i);
      const Value* y = v->input(i);
      if (!x || !y) {
        if (x != y) return false;
        continue;
      }
      if (x->is_constant()) {
        if (!same_constant(x, y)) return false;
        continue;
      }
      if (x->is_graph_input()) {
        if (!y->is_graph_input() || x->name() != y->name()) return false;
        continue;
      }
      const Node* p = x->producer();
      const Node* q = y->producer();
      if (!q) return false;
      if (constant_.count(p)) {
        if (output_index(p, x) != output_index(q, y) || !same(p, q)) return false;
      } else if (const auto m = matched_.find(p);
                 x->name() != y->name() || m == matched_.end() || m->second != q) {
        return false;
      }
    }
    return true;
  }

  const std::unordered_set<const Node*>& constant_;
  const std::unordered_map<const Value*, uint64_t>& hashes_;
  const std::unordered_map<const Node*, const Node*>& matched_;  // computing nodes so far
  std::unordered_map<const Value*, uint64_t> variant_hashes_;
  std::unordered_map<const Node*, const Node*> memo_;
};

// The nodes of `g` that read constants alone, directly or through other such nodes (a weight's
// quantizer): they compute the same values in every run. One pass in graph order.
std::unordered_set<const Node*> constant_nodes(const graph::Graph& g) {
  std::unordered_set<const Node*> constant;
  for (const Node* n : g.nodes()) {
    bool alone = true;
    for (const Value* in : n->inputs()) {
      alone =
          alone && (!in || in->is_constant() || (in->producer() && constant.count(in->producer())));
    }
    if (alone) constant.insert(n);
  }
  return constant;
}

// The node of `variant` that produces what `b` produces (a value of the same name), if any.
const Node* counterpart(const graph::Graph& variant, const Node* b) {
  if (b->num_outputs() == 0) return nullptr;
  const Value* v = variant.find_value(b->output(0)->name());
  return v ? v->producer() : nullptr;
}

}  // namespace

SharedPrefix::SharedPrefix(std::unique_ptr<graph::Graph> base) : base_(std::move(base)) {
  constant_ = constant_nodes(*base_);
  for (const Node* n : base_->nodes()) {
    if (!constant_.count(n)) computing_.push_back(n);
  }
  for (graph::Value* v : base_->values()) {
    if (v->is_constant() && !v->is_released()) {
      hashes_.emplace(v, hash_of(v->constant()));
      v->release_constant();
    }
  }
}

SharedPrefix::~SharedPrefix() = default;

std::vector<const graph::Value*> SharedPrefix::live(size_t cut) const {
  std::unordered_map<const Node*, size_t> index;
  for (size_t i = 0; i < computing_.size(); ++i) index.emplace(computing_[i], i);
  auto read_from_cut = [&](const Value* v) {
    if (v->is_graph_output()) return true;
    for (const Node* c : v->consumers()) {
      if (auto it = index.find(c); it != index.end() && it->second >= cut) return true;
    }
    return false;
  };
  std::unordered_set<const Value*> handed_on;
  for (const Value* v : base_->inputs()) {
    if (read_from_cut(v)) handed_on.insert(v);
  }
  for (size_t i = 0; i < cut && i < computing_.size(); ++i) {
    for (const Value* v : computing_[i]->outputs()) {
      if (!read_from_cut(v)) continue;
      handed_on.insert(v);
      // A variant that drops this point reads its float value instead: it goes along.
      const Node* dq = v->producer();
      if (dq->op_type() != "DequantizeLinear") continue;
      const Node* q = dq->input(0)->producer();
      if (q && q->op_type() == "QuantizeLinear" && index.count(q)) handed_on.insert(q->input(0));
    }
  }
  std::vector<const Value*> values;
  for (const Value* v : base_->inputs()) {
    if (handed_on.count(v)) values.push_back(v);
  }
  for (size_t i = 0; i < cut && i < computing_.size(); ++i) {
    for (const Value* v : computing_[i]->outputs()) {
      if (handed_on.count(v)) values.push_back(v);
    }
  }
  return values;
}

std::unique_ptr<graph::Graph> SharedPrefix::segment(const graph::Graph& variant, size_t from,
                                                    size_t to) const {
  std::unordered_set<const Node*> in_segment;
  std::vector<const Node*> nodes;
  for (size_t i = from; i < to; ++i) {
    in_segment.insert(computing_[i]);
    nodes.push_back(counterpart(variant, computing_[i]));
  }
  // The variant's own nodes that read constants alone: what the segment needs of them stays.
  const std::unordered_set<const Node*> constant = constant_nodes(variant);
  for (const Node* n : variant.nodes()) {
    if (constant.count(n)) nodes.push_back(n);
  }
  std::vector<const Value*> inputs;
  for (const Value* v : live(from)) {
    for (const Node* c : v->consumers()) {
      if (in_segment.count(c)) {
        inputs.push_back(variant.find_value(v->name()));
        break;
      }
    }
  }
  std::vector<const Value*> outputs;
  for (const Value* v : live(to)) {
    if (v->producer() && in_segment.count(v->producer())) {
      outputs.push_back(variant.find_value(v->name()));
    }
  }
  return graph::extract(variant, nodes, inputs, outputs);
}

SharedPrefix::Departure SharedPrefix::departure(const graph::Graph& variant) const {
  std::unordered_map<const Node*, const Node*> counterparts;
  NodeMatcher matcher(constant_, hashes_, counterparts);
  Departure d;
  std::unordered_set<const Node*> matched;
  for (const Node* b : computing_) {
    const Node* v = counterpart(variant, b);
    if (!v || !matcher.same(b, v)) break;
    matched.insert(v);
    counterparts.emplace(b, v);
    ++d.cut;
  }
  // What the rest reads from the matched nodes and the graph inputs, found among the values
  // the base hands on at the cut.
  auto from_prefix = [&](const Value* v) {
    return v->is_graph_input() || (v->producer() && matched.count(v->producer()));
  };
  std::vector<const Node*> rest;
  std::set<std::string> read;
  for (const Node* n : variant.nodes()) {
    if (matched.count(n)) continue;
    rest.push_back(n);
    for (const Value* in : n->inputs()) {
      if (in && !in->is_constant() && from_prefix(in)) read.insert(in->name());
    }
  }
  for (const Value* out : variant.outputs()) {
    if (from_prefix(out)) return d;
  }
  std::vector<const Value*> inputs;
  for (const Value* v : live(d.cut)) {
    if (!read.count(v->name())) continue;
    const Value* mine = variant.find_value(v->name());
    if (mine->dtype() != v->dtype() || !mine->has_shape() || !v->has_shape() ||
        *mine->shape() != *v->shape()) {
      return d;
    }
    inputs.push_back(mine);
    read.erase(v->name());
  }
  if (!read.empty()) return d;  // read from the prefix, but not handed on by the base
  std::vector<const Value*> outputs(variant.outputs().begin(), variant.outputs().end());
  d.rest = graph::extract(variant, rest, inputs, outputs);
  return d;
}

}  // namespace qforge::quant

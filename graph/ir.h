// The IR: a Graph of Nodes connected by Values. Structure only; constant tensors ride along as
// Value payloads (initializers and folded constants) but the graph never computes them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "graph/derivation.h"
#include "kernels/tensor.h"

namespace qforge::graph {

using kernels::DType;
using kernels::Shape;
using kernels::Tensor;

class Graph;
class Node;

class Value {
 public:
  const std::string& name() const { return name_; }
  DType dtype() const { return dtype_; }
  // Static shape; empty optional when not yet known (before shape resolution).
  const std::optional<Shape>& shape() const { return shape_; }
  bool has_shape() const { return shape_.has_value(); }
  const Shape& known_shape() const;  // throws when unknown

  Node* producer() const { return producer_; }
  const std::vector<Node*>& consumers() const { return consumers_; }

  // A released constant (release_constant) is still a constant of known type and shape, but
  // its values are gone: constant() then throws.
  bool is_constant() const { return released_ || constant_.defined(); }
  const Tensor& constant() const {
    if (released_) throw_released();
    return constant_;
  }
  bool is_released() const { return released_; }
  // A constant the model writes as a literal: folded from a node that reads no other constant
  // than literals (a Constant node's value, a LayerNorm's epsilon, GELU's √2), never from an
  // initializer. Training leaves literals alone, as PyTorch does the numbers in a forward.
  bool is_literal() const { return literal_; }

  bool is_graph_input() const { return graph_input_; }
  bool is_graph_output() const { return graph_output_; }

  void set_type(DType dtype, Shape shape) {
    dtype_ = dtype;
    shape_ = std::move(shape);
  }
  void set_dtype(DType dtype) { dtype_ = dtype; }
  void clear_shape() { shape_.reset(); }
  void set_constant(Tensor value);  // also sets dtype and shape
  // Drops this graph's reference to the constant's values (dtype and shape stay). An executor
  // does this for weights its kernels keep in a prepared form of their own, so that the original
  // values can be freed (runtime/executor.h, ExecutorOptions::release_prepared_constants).
  void release_constant();

 private:
  friend class Graph;
  [[noreturn]] void throw_released() const;
  std::string name_;
  DType dtype_ = DType::kFloat32;
  std::optional<Shape> shape_;
  Node* producer_ = nullptr;
  std::vector<Node*> consumers_;
  Tensor constant_;
  bool released_ = false;
  bool literal_ = false;
  bool graph_input_ = false;
  bool graph_output_ = false;
};

// How a graph input's or output's leading (batch) dimension is declared in the file it came
// from: a fixed size, a symbolic name ("N", "batch_size"), or unknown (neither). Resolution
// fixes the batch; the exports write the declared form back (runtime/batch_dimension.h).
struct DeclaredBatch {
  std::optional<int64_t> size;  // a fixed batch
  std::string param;            // a symbolic batch's name; empty with neither: unknown
};

// A graph attribute (If's branches): a graph of its own whose inputs are the values of the
// enclosing graph it reads, by name and in the order the node that holds it lists them after its
// own inputs (graph/control_flow.h). Never edited once made, so copies share it.
using Subgraph = std::shared_ptr<const Graph>;

// Post-processing qforge keeps but does not run: the nodes of an ONNX file from its first op of
// data-dependent output shape or foreign domain on (NonMaxSuppression, NonZero, Loop, a TensorRT
// plugin…), with the shape computations only they read, written back after the graph's own nodes
// as the file had them (graph/tail.h). The graph's outputs are then the values these nodes read
// and the file's outputs computed before them.
struct Tail {
  std::string nodes;                       // a serialized onnx::GraphProto: nodes, initializers,
                                           // value_info, and as outputs the file's it computes
  std::vector<std::string> reads;          // the graph's values it reads (inputs or outputs of it)
  std::vector<std::string> outputs;        // the file's outputs, in its order
  std::vector<std::string> defines;        // the values its nodes define, sorted
  std::map<std::string, int64_t> domains;  // the opsets of other domains its nodes use
  std::string first;                       // the node it starts at, as node labels read
  std::vector<std::string> ops;            // its op types, sorted, each once
  size_t node_count = 0;
  bool defines_name(std::string_view name) const;
};

// The graph inputs and outputs an import gave a batch axis their file does not declare.
struct AddedBatchAxis {
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  bool any() const { return !inputs.empty(); }
};

using AttributeValue = std::variant<int64_t, float, std::string, std::vector<int64_t>,
                                    std::vector<float>, std::vector<std::string>, Tensor, Subgraph>;

class Node {
 public:
  const std::string& name() const { return name_; }
  const std::string& op_type() const { return op_type_; }
  const std::string& domain() const { return domain_; }

  // Omitted optional inputs are nullptr.
  const std::vector<Value*>& inputs() const { return inputs_; }
  const std::vector<Value*>& outputs() const { return outputs_; }
  Value* input(size_t i) const { return i < inputs_.size() ? inputs_[i] : nullptr; }
  Value* output(size_t i) const { return i < outputs_.size() ? outputs_[i] : nullptr; }
  size_t num_inputs() const { return inputs_.size(); }
  size_t num_outputs() const { return outputs_.size(); }

  const std::map<std::string, AttributeValue, std::less<>>& attributes() const { return attrs_; }
  bool has_attr(std::string_view name) const { return attrs_.find(name) != attrs_.end(); }
  void set_attr(std::string name, AttributeValue value) {
    attrs_[std::move(name)] = std::move(value);
  }

  // Typed attribute access. The overloads with a default return it when the attribute is absent;
  // those without throw an Invalid error naming the node. A wrong attribute type is Invalid.
  int64_t attr_int(std::string_view name) const;
  int64_t attr_int(std::string_view name, int64_t fallback) const;
  float attr_float(std::string_view name) const;
  float attr_float(std::string_view name, float fallback) const;
  std::string attr_string(std::string_view name) const;
  std::string attr_string(std::string_view name, std::string fallback) const;
  std::vector<int64_t> attr_ints(std::string_view name) const;
  std::vector<int64_t> attr_ints(std::string_view name, std::vector<int64_t> fallback) const;
  std::vector<float> attr_floats(std::string_view name, std::vector<float> fallback) const;
  const Tensor& attr_tensor(std::string_view name) const;
  const Graph& attr_graph(std::string_view name) const;

  // "node 'name' (OpType)": the prefix of every message about this node.
  std::string label() const;

 private:
  friend class Graph;
  template <class T>
  const T* find_attr(std::string_view name) const;

  std::string name_;
  std::string op_type_;
  std::string domain_;
  std::vector<Value*> inputs_;
  std::vector<Value*> outputs_;
  std::map<std::string, AttributeValue, std::less<>> attrs_;
};

struct NodeSpec {
  std::string name;  // empty: a unique one is generated from op_type
  std::string op_type;
  std::vector<Value*> inputs;
  std::vector<std::string> output_names;  // values created by add_node
  std::map<std::string, AttributeValue, std::less<>> attributes;
  std::string domain;
};

// Owns nodes and values. Nodes are kept in a topological order; every edit keeps producer and
// consumer links consistent (check_consistency verifies it).
class Graph {
 public:
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  Graph(Graph&&) = default;
  Graph& operator=(Graph&&) = default;

  // A deep copy of the structure; constant tensors share storage (they are never mutated).
  std::unique_ptr<Graph> clone() const;

  Value* add_value(const std::string& name);  // throws if the name exists
  Value* add_input(const std::string& name, DType dtype, std::optional<Shape> shape);
  Value* add_constant(const std::string& name, Tensor value);
  void mark_output(Value* value);
  // Appends a node at the end of the order (inputs must already be produced).
  Node* add_node(NodeSpec spec);
  // Inserts before `position` in the order (nullptr: at the end).
  Node* insert_node(NodeSpec spec, const Node* position);

  Value* find_value(std::string_view name) const;
  Node* find_node(std::string_view name) const;
  std::string unique_value_name(std::string_view stem) const;
  std::string unique_node_name(std::string_view stem) const;

  // Gives a value another name (unique in the graph).
  void rename_value(Value* value, const std::string& new_name);
  // Gives a node another name (unique in the graph).
  void rename_node(Node* node, const std::string& new_name);
  // Replaces every use of `from` (node inputs and graph outputs) by `to`.
  void replace_all_uses(Value* from, Value* to);
  void set_input(Node* node, size_t index, Value* value);
  // Removes a node and its outputs, which must have no consumers and not be graph outputs.
  void remove_node(Node* node);
  // Replaces a node by constants: its outputs keep their names and uses and now hold `values`.
  // Constant inputs that nothing else reads are released (remove_dead then removes them). The
  // outputs are literals when no input is a constant that is not (`literal_from` when given:
  // the inputs of the node whose value this is, as a Q/DQ pair folds into its DequantizeLinear).
  void fold_node(Node* node, std::vector<Tensor> values, const Node* literal_from = nullptr);
  // Removes nodes whose outputs nobody uses, and values nobody refers to.
  size_t remove_dead();

  const std::vector<Node*>& nodes() const { return order_; }
  const std::vector<Value*>& inputs() const { return inputs_; }
  const std::vector<Value*>& outputs() const { return outputs_; }
  std::vector<Value*> values() const;

  // Throws kInternal with a description if links, order or names are inconsistent.
  void check_consistency() const;

  // Constants the transforms derived from other constants (graph/derivation.h), in the order
  // they were made; what pulls a training gradient back onto the initializers. A record for a
  // name already recorded replaces it; rename_value renames the records too.
  void record_derivation(Derivation derivation);
  const std::vector<Derivation>& derivations() const { return derivations_; }

  // Model-level facts from the ONNX file.
  std::string name;
  int64_t opset = 0;                            // default-domain opset
  std::map<std::string, std::string> metadata;  // metadata_props
  std::string source_path;                      // file it was loaded from, if any
  // The declared batch of each graph input and output with a leading dimension, by value name.
  std::map<std::string, DeclaredBatch, std::less<>> declared_batch;
  // The post-processing after the graph's nodes, when the file has one; never edited once made.
  std::shared_ptr<const Tail> tail;
  // Of a model whose file takes one sample without a batch axis: the inputs and outputs the
  // import gave a leading axis of size 1 (graph/onnx_import.h, ImportOptions::data_sample_rank),
  // which the exports take away again.
  AddedBatchAxis added_batch_axis;

 private:
  std::vector<std::unique_ptr<Node>> node_store_;
  std::vector<std::unique_ptr<Value>> value_store_;
  std::vector<Node*> order_;
  std::map<std::string, Value*, std::less<>> values_by_name_;
  std::map<std::string, Node*, std::less<>> nodes_by_name_;
  std::vector<Value*> inputs_;
  std::vector<Value*> outputs_;
  std::vector<Derivation> derivations_;
};

// The ImportOptions::data_sample_rank that gives a model written from `graph` its batch axis
// again (the rank of its input's sample, graph/sample_axis.h), or none when its import added
// none.
std::optional<size_t> sample_rank_of(const Graph& graph);

}  // namespace qforge::graph

// SliceUpdate: the box a ScatterND's indices address (graph/slice_update.h).
#include "graph/slice_update.h"

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <string>

#include "graph/rewrite_util.h"
#include "kernels/error.h"

namespace qforge::graph {
namespace {

struct Box {
  std::vector<int64_t> starts;
  std::vector<int64_t> steps;
};

// The index values along one axis of the index space, `dim` the data's size there: within
// [-dim, dim) (negative ones count from the end, as ScatterND's do), then start + step·j with
// step >= 1. Gives start and step.
bool arithmetic_run(std::vector<int64_t> values, int64_t dim, int64_t& start, int64_t& step) {
  for (int64_t& v : values) {
    if (v < -dim || v >= dim) return false;
    if (v < 0) v += dim;
  }
  if (values.empty()) return false;
  start = values[0];
  step = values.size() > 1 ? values[1] - values[0] : 1;
  if (step < 1) return false;
  for (size_t j = 0; j < values.size(); ++j) {
    if (values[j] != start + step * static_cast<int64_t>(j)) return false;
  }
  return true;
}

int64_t normalized(int64_t v, int64_t dim) {
  return v < 0 ? v + dim : v;
}

// A constant index tensor [I..., q] with q = rank(I): each column k is read along axis k, then
// every position is checked against the box (a tensor small enough to have been folded).
std::optional<Box> box_of_constant(const Tensor& indices, const Shape& data) {
  if (indices.dtype() != DType::kInt64 || indices.rank() < 2) return std::nullopt;
  const Shape& shape = indices.shape();
  const size_t q = static_cast<size_t>(shape.back());
  if (shape.size() - 1 != q || q > data.size()) return std::nullopt;
  const Shape strides = kernels::contiguous_strides(shape);
  const int64_t* idx = indices.data<int64_t>();
  Box box;
  for (size_t k = 0; k < q; ++k) {
    std::vector<int64_t> values(static_cast<size_t>(shape[k]));
    for (size_t j = 0; j < values.size(); ++j) {
      values[j] = idx[static_cast<int64_t>(j) * strides[k] + static_cast<int64_t>(k)];
    }
    int64_t start = 0, step = 0;
    if (!arithmetic_run(std::move(values), data[k], start, step)) return std::nullopt;
    box.starts.push_back(start);
    box.steps.push_back(step);
  }
  // Every position: its multi-index counted up as the flat position runs.
  std::vector<int64_t> at(q, 0);
  const int64_t positions = indices.numel() / static_cast<int64_t>(q);
  for (int64_t p = 0; p < positions; ++p) {
    for (size_t k = 0; k < q; ++k) {
      if (normalized(idx[p * static_cast<int64_t>(q) + static_cast<int64_t>(k)], data[k]) !=
          box.starts[k] + box.steps[k] * at[k]) {
        return std::nullopt;
      }
    }
    for (size_t k = q; k-- > 0;) {
      if (++at[k] < shape[k]) break;
      at[k] = 0;
    }
  }
  return box;
}

// The Expand of a column: the column's producer, or that of the Unsqueeze that makes it one.
const Node* column_expand(const Value* column) {
  const Node* n = column->producer();
  return n->op_type() == "Expand" ? n : n->input(0)->producer();
}

// The columns as box_index_nodes finds them: column k an Expand of a constant C_k to I or to
// [I..., 1], which addresses a box when C_k varies along axis k of I alone (it has size 1 on the
// others) and holds an arithmetic run there of I_k values (one value where I_k is 1).
std::optional<Box> box_of_columns(const Node& concat, const Shape& data) {
  const size_t q = concat.num_inputs();
  const Shape& all = concat.output(0)->known_shape();
  if (q == 0 || q > data.size() || all.size() != q + 1 || all.back() != static_cast<int64_t>(q)) {
    return std::nullopt;
  }
  const Shape space(all.begin(), all.end() - 1);
  Shape column = space;
  column.push_back(1);
  Box box;
  for (size_t k = 0; k < q; ++k) {
    const Node* expand = column_expand(concat.input(k));
    const Value* c = expand->input(0);
    const Shape& e = expand->output(0)->known_shape();
    if (!c || !c->is_constant() || c->constant().dtype() != DType::kInt64 ||
        concat.input(k)->known_shape() != column || (e != space && e != column)) {
      return std::nullopt;
    }
    const Tensor& values = c->constant();
    if (values.rank() > static_cast<int>(e.size())) return std::nullopt;
    const size_t lead = e.size() - static_cast<size_t>(values.rank());
    for (size_t j = 0; j < e.size(); ++j) {
      const int64_t dim = j < lead ? 1 : values.shape()[j - lead];
      if (j != k && dim != 1) return std::nullopt;
      if (j == k && dim != space[k] && !(dim == 1 && space[k] == 1)) return std::nullopt;
    }
    const int64_t* v = values.data<int64_t>();
    int64_t start = 0, step = 0;
    if (!arithmetic_run(std::vector<int64_t>(v, v + values.numel()), data[k], start, step)) {
      return std::nullopt;
    }
    box.starts.push_back(start);
    box.steps.push_back(step);
  }
  return box;
}

// A value read by one node and not a graph output.
bool read_once(const Value* v) {
  return v && v->consumers().size() == 1 && !v->is_graph_output();
}

// Lowering. A box of unit steps is written as Slices and Concats: along each axis the box does
// not cover whole, from the last such axis out, the data before the box, the box's content and
// the data after it are joined, the box's content being the updates at the innermost axis and
// the data's rows of the box around them further out. These ops follow the batch (a box that
// covers it is written for any batch) and cost TensorRT no scatter. A box with longer steps is
// written as a ScatterND whose indices address the axes the box does not cover whole (constant
// aranges expanded to [counts…, 1] and concatenated: a few values per axis, where the file's
// computed columns fold to the box's every position), those axes moved first by a Transpose of
// the data and the updates where a whole axis (the batch) comes before them, and moved back.
void lower_slice_update(Graph& g, Node& node, Lowered& /*lowered*/) {
  Value* data = node.input(0);
  Value* updates = node.input(1);
  const std::vector<int64_t> starts = node.attr_ints("starts");
  const std::vector<int64_t> steps = node.attr_ints("steps");
  const Shape& u = updates->known_shape();
  const Shape& d = data->known_shape();
  const size_t q = starts.size();
  auto ints = [&](const std::string& part, Shape shape, const std::vector<int64_t>& values) {
    return g.add_constant(g.unique_value_name(node.name() + "/" + part),
                          Tensor::from_vector<int64_t>(std::move(shape), values));
  };
  auto add = [&](const std::string& part, std::string op, std::vector<Value*> inputs,
                 std::map<std::string, AttributeValue, std::less<>> attributes = {}) {
    Node* n = g.insert_node({.name = g.unique_node_name(node.name() + "/" + part),
                             .op_type = std::move(op),
                             .inputs = std::move(inputs),
                             .output_names = {g.unique_value_name(node.name() + "/" + part)},
                             .attributes = std::move(attributes)},
                            &node);
    return n->output(0);
  };
  Value* y = nullptr;
  if (std::all_of(steps.begin(), steps.end(), [](int64_t s) { return s == 1; })) {
    std::vector<size_t> axes;  // the axes the box does not cover whole
    for (size_t k = 0; k < q; ++k) {
      if (starts[k] != 0 || u[k] != d[k]) axes.push_back(k);
    }
    auto slice = [&](Value* x, size_t k, int64_t from, int64_t to, const std::string& part) {
      const std::string axis = std::to_string(k);
      return add(
          part + "_" + axis, "Slice",
          {x, ints(part + "_start_" + axis, {1}, {from}), ints(part + "_end_" + axis, {1}, {to}),
           ints(part + "_axis_" + axis, {1}, {static_cast<int64_t>(k)})});
    };
    // rows[i]: the data's rows of the box along axes[0..i) (rows[0] the data).
    std::vector<Value*> rows = {data};
    for (size_t i = 0; i + 1 < axes.size(); ++i) {
      const size_t k = axes[i];
      rows.push_back(slice(rows.back(), k, starts[k], starts[k] + u[k], "rows"));
    }
    y = updates;
    for (size_t i = axes.size(); i-- > 0;) {
      const size_t k = axes[i];
      std::vector<Value*> parts;
      if (starts[k] > 0) parts.push_back(slice(rows[i], k, 0, starts[k], "before"));
      parts.push_back(y);
      if (starts[k] + u[k] < d[k]) {
        parts.push_back(
            slice(rows[i], k, starts[k] + u[k], std::numeric_limits<int64_t>::max(), "after"));
      }
      if (parts.size() > 1) {
        y = add("Concat_" + std::to_string(k), "Concat", std::move(parts),
                {{"axis", static_cast<int64_t>(k)}});
      }
    }
    if (y == updates) y = add("Identity", "Identity", {updates});  // the box is the whole data
  } else {
    // The axes the box does not cover whole go first (a Transpose where one comes after a whole
    // axis), so that the indices leave out the whole ones, the batch among them.
    std::vector<int64_t> perm;
    for (size_t k = 0; k < q; ++k) {
      if (starts[k] != 0 || steps[k] != 1 || u[k] != d[k]) perm.push_back(static_cast<int64_t>(k));
    }
    const size_t p = perm.size();
    for (size_t k = 0; k < d.size(); ++k) {
      if (std::find(perm.begin(), perm.end(), static_cast<int64_t>(k)) == perm.end()) {
        perm.push_back(static_cast<int64_t>(k));
      }
    }
    const bool moved = !std::is_sorted(perm.begin(), perm.end());
    Shape column(p + 1, 1);
    for (size_t i = 0; i < p; ++i) column[i] = u[static_cast<size_t>(perm[i])];
    Value* column_shape = ints("column_shape", {static_cast<int64_t>(p + 1)}, column);
    std::vector<Value*> columns;
    for (size_t i = 0; i < p; ++i) {
      const auto k = static_cast<size_t>(perm[i]);
      const std::string axis = std::to_string(k);
      Shape range_shape(p + 1, 1);
      range_shape[i] = u[k];
      std::vector<int64_t> values(static_cast<size_t>(u[k]));
      for (size_t j = 0; j < values.size(); ++j) {
        values[j] = starts[k] + steps[k] * static_cast<int64_t>(j);
      }
      columns.push_back(add("column_" + axis, "Expand",
                            {ints("range_" + axis, range_shape, values), column_shape}));
    }
    Value* indices = add("indices", "Concat", columns, {{"axis", int64_t{-1}}});
    if (!moved) {
      y = add("ScatterND", "ScatterND", {data, indices, updates});
    } else {
      std::vector<int64_t> back(perm.size());
      for (size_t i = 0; i < perm.size(); ++i) back[static_cast<size_t>(perm[i])] = int64_t(i);
      Value* data_t = add("Transpose_data", "Transpose", {data}, {{"perm", perm}});
      Value* updates_t = add("Transpose_updates", "Transpose", {updates}, {{"perm", perm}});
      Value* scattered = add("ScatterND", "ScatterND", {data_t, indices, updates_t});
      y = add("Transpose", "Transpose", {scattered}, {{"perm", back}});
    }
  }
  const Value* out = node.output(0);
  if (out->has_shape()) y->set_type(out->dtype(), *out->shape());
  replace_output(g, node, y);
}

constexpr std::array kSchemas = {
    // SliceUpdate(data, updates) -> data with data[box] = updates; attributes starts and steps
    // (one per leading axis of the box, steps >= 1), the counts the updates' leading dims.
    OpSchema{.op_type = "SliceUpdate",
             .min_inputs = 2,
             .max_inputs = 2,
             .min_outputs = 1,
             .max_outputs = 1,
             .since_opset = 11,
             .gradient = Gradient::kBackward,
             .kind = SchemaKind::kModule,
             .inputs = {{{"data", Role::kData}, {"updates", Role::kData}}},
             .lower = lower_slice_update,
             .summary = "the data with a strided box replaced by the updates (a ScatterND of a "
                        "box's indices)"},
};

}  // namespace

std::vector<Node*> box_index_nodes(const Node& scatter) {
  if (scatter.op_type() != "ScatterND" || !read_once(scatter.input(1))) return {};
  Node* concat = scatter.input(1)->producer();
  if (!concat || concat->op_type() != "Concat" || concat->num_inputs() == 0) return {};
  std::vector<Node*> expands, unsqueezes;
  for (Value* column : concat->inputs()) {
    Node* n = column ? column->producer() : nullptr;
    if (!read_once(column) || !n) return {};
    if (n->op_type() == "Unsqueeze") {
      unsqueezes.push_back(n);
      column = n->input(0);
      n = column ? column->producer() : nullptr;
      if (!read_once(column) || !n) return {};
    }
    if (n->op_type() != "Expand") return {};
    expands.push_back(n);
  }
  std::vector<Node*> nodes = expands;
  nodes.insert(nodes.end(), unsqueezes.begin(), unsqueezes.end());
  nodes.push_back(concat);
  return nodes;
}

Node* replace_box_scatter(Graph& graph, Node& scatter) {
  if (scatter.op_type() != "ScatterND" || scatter.attr_string("reduction", "none") != "none") {
    return nullptr;
  }
  const Value* data = scatter.input(0);
  const Value* indices = scatter.input(1);
  if (!data->has_shape() || !indices->has_shape()) return nullptr;
  const Shape& data_shape = *data->shape();
  std::optional<Box> box;
  if (indices->is_constant()) {
    box = box_of_constant(indices->constant(), data_shape);
  } else if (!box_index_nodes(scatter).empty()) {
    box = box_of_columns(*indices->producer(), data_shape);
  }
  if (!box) return nullptr;

  const std::string name = scatter.name();
  const Value* out = scatter.output(0);
  Node* update =
      graph.insert_node({.name = graph.unique_node_name(name + "/SliceUpdate"),
                         .op_type = "SliceUpdate",
                         .inputs = {scatter.input(0), scatter.input(2)},
                         .output_names = {graph.unique_value_name(out->name() + "/SliceUpdate")},
                         .attributes = {{"starts", box->starts}, {"steps", box->steps}}},
                        &scatter);
  if (out->has_shape()) update->output(0)->set_type(out->dtype(), *out->shape());
  replace_output(graph, scatter, update->output(0));
  graph.rename_node(update, name);
  return update;
}

std::span<const OpSchema> slice_update_schemas() {
  return kSchemas;
}

}  // namespace qforge::graph

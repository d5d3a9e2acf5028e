// QuantizeLinear → DequantizeLinear fusion.
#include "runtime/fuse_qdq.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "kernels/error.h"
#include "kernels/fake_quant.h"
#include "runtime/fusion_util.h"

namespace qforge::runtime {
namespace {

using graph::Node;
using graph::Tensor;
using graph::Value;
using kernels::DType;

bool per_tensor(const Tensor& scale) {
  return scale.rank() <= 1 && scale.numel() == 1;
}

// The normalised axis a node's per-axis scale applies to; nullopt for a per-tensor scale.
std::optional<int64_t> scale_axis(const Node& n, const Tensor& scale, int rank) {
  if (per_tensor(scale)) return std::nullopt;
  const int64_t axis = n.attr_int("axis", 1);
  return axis < 0 ? axis + rank : axis;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.numel() == b.numel() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The zero point's constant, or a zero of the grid's dtype for an omitted one; undefined when
// not constant.
Tensor zero_point_of(const Node& n, const Tensor& scale, DType grid) {
  const Value* zp = n.input(2);
  if (!zp) return Tensor(grid, scale.shape());
  return zp->is_constant() ? zp->constant() : Tensor();
}

bool qdq_params_match(const Node& q, const Node& dq, int rank, DType grid) {
  const Value* qs = q.input(1);
  const Value* ds = dq.input(1);
  if (!qs->is_constant() || !ds->is_constant() || q.attr_int("block_size", 0) != 0 ||
      dq.attr_int("block_size", 0) != 0) {
    return false;
  }
  const Tensor& q_scale = qs->constant();
  const Tensor& dq_scale = ds->constant();
  if (!same_bytes(q_scale, dq_scale) || per_tensor(q_scale) != per_tensor(dq_scale) ||
      scale_axis(q, q_scale, rank) != scale_axis(dq, dq_scale, rank)) {
    return false;
  }
  const Tensor q_zp = zero_point_of(q, q_scale, grid);
  const Tensor dq_zp = zero_point_of(dq, dq_scale, grid);
  return q_zp.defined() && dq_zp.defined() && same_bytes(q_zp, dq_zp);
}

}  // namespace

bool fake_quant_pair(const Node& q, const Node& dq) {
  const Value* x = q.input(0);
  const Value* quantized = q.output(0);
  const DType grid = quantized->dtype();
  if (dq.input(0) != quantized || !x->has_shape() || x->dtype() != DType::kFloat32 ||
      (grid != DType::kInt8 && grid != DType::kUInt8)) {
    return false;
  }
  return qdq_params_match(q, dq, static_cast<int>(x->shape()->size()), grid);
}

size_t fuse_qdq(graph::Graph& graph) {
  size_t fused = 0;
  const std::vector<Node*> order = graph.nodes();
  std::vector<const Node*> removed;
  for (Node* q : order) {
    // `order` is a snapshot: a node an earlier fusion removed is gone, and is not read.
    if (std::find(removed.begin(), removed.end(), q) != removed.end()) continue;
    if (q->op_type() != "QuantizeLinear") continue;
    Value* quantized = q->output(0);
    Node* dq = sole_consumer(quantized);
    if (!dq || dq->op_type() != "DequantizeLinear" || !dq->output(0)->has_shape() ||
        !fake_quant_pair(*q, *dq)) {
      continue;
    }
    const DType grid = quantized->dtype();
    const int rank = static_cast<int>(q->input(0)->shape()->size());

    Value* zero_point = q->input(2);
    if (!zero_point) {
      zero_point = graph.add_constant(graph.unique_value_name(q->name() + "_zero_point"),
                                      Tensor(grid, q->input(1)->constant().shape()));
    }
    graph::NodeSpec spec;
    spec.name = q->name();
    spec.op_type = "FakeQuant";
    spec.inputs = {q->input(0), q->input(1), zero_point};
    const std::optional<int64_t> axis = scale_axis(*q, q->input(1)->constant(), rank);
    spec.attributes["axis"] = axis.value_or(int64_t{1});
    removed.push_back(q);
    removed.push_back(dq);
    Node* const chain[] = {q, dq};
    replace_chain(graph, std::move(spec), chain);
    ++fused;
  }
  graph.remove_dead();
  return fused;
}

size_t fuse_conv_output_quant(graph::Graph& graph) {
  struct Join {
    Node* conv;
    Node* fake_quant;
    kernels::TensorGrid grid;
  };
  std::vector<Join> joins;
  for (Node* fq : graph.nodes()) {
    if (fq->op_type() != "FakeQuant") continue;
    Value* x = fq->input(0);
    Node* conv = x->producer();
    if (!conv || (conv->op_type() != "Conv" && conv->op_type() != "FusedConv") ||
        sole_consumer(x) != fq || x->dtype() != DType::kFloat32 || !fq->input(1)->is_constant() ||
        !fq->input(2)->is_constant()) {
      continue;
    }
    const Tensor& scale = fq->input(1)->constant();
    const Tensor& zero_point = fq->input(2)->constant();
    if (!per_tensor(scale) || scale.dtype() != DType::kFloat32 || zero_point.numel() != 1 ||
        (zero_point.dtype() != DType::kInt8 && zero_point.dtype() != DType::kUInt8)) {
      continue;
    }
    kernels::TensorGrid grid;
    grid.scale = scale.data<float>()[0];
    grid.zero_point = static_cast<int32_t>(zero_point.to_int64_vector()[0]);
    grid.dtype = zero_point.dtype();
    try {
      kernels::check_tensor_grid("FakeQuant", grid);
    } catch (const Error&) {
      continue;  // the FakeQuant kernel names the node
    }
    joins.push_back({conv, fq, grid});
  }
  for (const Join& j : joins) {
    graph::NodeSpec spec;
    spec.name = j.conv->name();
    spec.op_type = "FusedConv";
    spec.attributes = j.conv->attributes();
    spec.attributes["quant_scale"] = j.grid.scale;
    spec.attributes["quant_zero_point"] = int64_t{j.grid.zero_point};
    spec.attributes["quant_unsigned"] = int64_t{j.grid.dtype == DType::kUInt8};
    spec.inputs.assign(j.conv->inputs().begin(), j.conv->inputs().end());
    Node* const chain[] = {j.conv, j.fake_quant};
    replace_chain(graph, std::move(spec), chain);
  }
  graph.remove_dead();
  return joins.size();
}

}  // namespace qforge::runtime

// A runtime pass over a resolved graph: Conv → [BatchNormalization] → [Add residual] →
// [Relu | Clip] → [HardSwish | HardSigmoid | Sigmoid | LeakyRelu | Elu | Silu | Gelu] chains
// become one FusedConv node whose output pass applies the rest, so the intermediate tensors are
// never written and read back. Outputs are unchanged up to the rounding of the folded
// BatchNormalization (the activations give their own kernels' bits). Run fuse_silu and
// fuse_gelu first, so that the SiLUs and GELUs torch.onnx writes join the convolutions.
#pragma once

#include <cstddef>

#include "graph/ir.h"

namespace qforge::runtime {

// Returns the number of chains fused. The graph must be resolved (static shapes, constants
// folded).
size_t fuse_conv_epilogues(graph::Graph& graph);

// Another pass of the same kind: Sigmoid(x) → Mul(x, ·) (SiLU, as torch.onnx writes it) becomes
// one Silu node, one pass over x where the two nodes made three; the same bits (the kernel
// computes x · (1 / (1 + e^-x)) as the two nodes do). Returns the number of pairs fused.
size_t fuse_silu(graph::Graph& graph);

// And GELU as torch.onnx writes it: x → Div(√2) → Erf → Add(1) → Mul(x, ·) → Mul(0.5) becomes one
// Gelu node (approximate "none"), one pass where the chain made five. Only with these
// constants exactly (√2 as float): the Gelu kernel computes (x · (erf(x / √2) + 1)) · 0.5 in the
// nodes' order, so the bits are the chain's. Returns the number of chains fused.
size_t fuse_gelu(graph::Graph& graph);

// And a Linear layer as torch.onnx writes it for inputs of rank 3: MatMul(x, W) → Add(·, b), W a
// constant matrix and b a constant row of W's width, becomes one MatMulAdd node whose kernel adds
// b to each block of the product as soon as the block is complete (kernels::matmul_add_row), not
// in a second pass over the output: the bits of the two nodes. An activation node after the Add
// (the module fusions' single-node activations, Relu and Clip included, or Silu: run fuse_silu
// and fuse_gelu first) joins it, applied to each block while it is in cache with its own
// kernel's bits. Returns the number of pairs fused.
size_t fuse_matmul_add(graph::Graph& graph);

}  // namespace qforge::runtime

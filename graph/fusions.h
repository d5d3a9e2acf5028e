// Fusion patterns and the fused modules they make for convolutional and linear layers
// (ConvBN, ConvBNAct, ConvBNAddAct, StemConvBNActMaxPool, LinearAct, Linear, LayerNorm,
// AdaptiveAvgPool, ActAdd).
#pragma once

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "graph/pattern.h"

namespace qforge::graph {

// Longest first, as fusions must be listed.
std::vector<Pattern> fusion_patterns();

// One of the nine activations as the fusions match it, so that other module families
// (graph/fusions_extra.h) recognise and lower exactly the same forms.
struct Activation {
  // Relu, Clip, LeakyRelu, Elu, Gelu, Silu, HardSwish, HardSigmoid or Sigmoid.
  std::string kind;
  std::vector<Node*> nodes;  // data-flow order
  Value* output = nullptr;
  float alpha = 0, beta = 0;
  float clip_min = -std::numeric_limits<float>::infinity();
  float clip_max = std::numeric_limits<float>::infinity();
};

// The activation reading `x`: a single node that is x's only reader, or the GELU (Erf form) or
// SiLU nodes that read x twice.
std::optional<Activation> match_activation(const Value* x);
// `node` as a single-node activation, whoever else reads its input.
std::optional<Activation> match_single_activation(Node& node);
// The module attributes `activation`, `alpha`, `beta`, `clip_min`, `clip_max` that describe it.
void write_activation_attributes(NodeSpec& spec, const Activation& activation);
// Inserts before `module` the standard nodes of the activation its attributes name, over `x`,
// named "<module>/<part>"; returns their output.
Value* lower_activation(Graph& graph, Node& module, Value* x);

}  // namespace qforge::graph

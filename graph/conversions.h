// Conversion patterns: structural rewrites that leave every graph output unchanged and normalise
// the graph for the fusion patterns (run them with run_conversions from graph/plan.h). Shape
// conditions read resolved shapes (runtime::resolve); values without a shape are refused.
#pragma once

#include <string>
#include <vector>

#include "graph/pattern.h"

namespace qforge::graph {

// Element-wise unary ops (extra inputs, like Clip's bounds, must be scalar constants): they
// compute the same on [N, C] and on [N, C, 1, 1].
const std::vector<std::string>& unary_elementwise_ops();

Pattern remove_identity_pattern();
// A Cast to the type its input has (F.softmax with dtype=torch.float32 of a float32 tensor).
Pattern remove_no_op_cast_pattern();
Pattern remove_inference_dropout_pattern();
Pattern remove_identity_pool_pattern();
Pattern flatten_linear_to_conv_pattern();
// nn.LayerNorm as torch.onnx writes it before opset 17 (ReduceMean, Sub, Pow, ReduceMean, Add ε,
// Sqrt, Div, Mul γ, Add β) becomes one LayerNormalization over the last axis; the LayerNorm
// module's lowering writes it out again for a model of such an opset.
Pattern compose_layer_norm_pattern();
// RMSNorm as Llama's modeling code writes it (Pow, ReduceMean, Add ε, Sqrt, a reciprocal or a
// Div, Mul by the weight), and as RMSNormalization imports from opset 23: one RMSNorm module,
// which SmoothQuant can smooth as it does a LayerNorm.
Pattern compose_rms_norm_pattern();

// Every conversion, removals first so that the chains they break are matched in later rounds.
std::vector<Pattern> conversion_patterns();

}  // namespace qforge::graph

// Ops of newer opsets rewritten on import into the ops older exporters write for the same
// computation, so that the kernels, fusions and Q/DQ rules written for those apply: Swish (opset
// 24) becomes x · Sigmoid(alpha · x), as torch.onnx writes SiLU; Attention (23) becomes the
// MatMul, scale, mask, Softmax and MatMul chain that ComposeSDPA makes one SDPA module of;
// RMSNormalization (23) the Mul, ReduceMean, Add, Sqrt, Div and Mul of its definition. The
// variadic Sum and Mean (any opset; torch writes neither, converters from other frameworks do)
// become Adds left to right, Mean's total times the count's reciprocal, as ONNX Runtime's.
#pragma once

#include <cstdint>

namespace onnx {
class ModelProto;
}

namespace qforge::graph {

// Rewrites every such node of `model` (opset `opset`); throws Invalid naming the node where its
// op is not in the opset or its attributes are malformed.
void decompose_newer_ops(onnx::ModelProto& model, int64_t opset);

}  // namespace qforge::graph

// Element-wise kernels: unary activations and math, numpy-broadcasting binary ops, Where, Not
// and Cast. Broadcast layouts are planned once (plan_broadcast) so that running allocates nothing.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "kernels/grad_mode.h"
#include "kernels/tensor.h"

namespace qforge::kernels {

enum class UnaryOp {
  kRelu,
  kLeakyRelu,
  kElu,
  kSigmoid,
  kHardSigmoid,
  kHardSwish,
  kErf,
  kTanh,
  kSqrt,
  kNeg,
  kClip,
  kExp,
  kLog,
  kSoftplus,    // ln(1 + e^x)
  kReciprocal,  // 1 / x
  kAbs,
  kSin,
  kCos,
  // Piecewise constant (no gradient passes; the catalog says so). Round halves to even, as ONNX
  // and torch.round.
  kFloor,
  kCeil,
  kRound,
  kSign,
  // Fused activations of the modules, in the operation order of the nodes they replace:
  // GELU's Erf form (x · (erf(x / √2) + 1)) · 0.5 and SiLU x · Sigmoid(x). Not ONNX ops, but
  // kGeluErf is also ONNX Gelu (opset 20) with approximate "none".
  kGeluErf,
  kSilu,
  // ONNX Gelu with approximate "tanh": 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³))).
  kGeluTanh,
};

struct UnaryParams {
  float alpha = 0.0f;  // LeakyRelu and Elu slope, HardSigmoid scale
  float beta = 0.0f;   // HardSigmoid offset
  // Clip bounds for float32 tensors, and for integer tensors.
  float min = -std::numeric_limits<float>::infinity();
  float max = std::numeric_limits<float>::infinity();
  int64_t int_min = std::numeric_limits<int64_t>::min();
  int64_t int_max = std::numeric_limits<int64_t>::max();
};

// True when `op` is defined for `dtype` (float32 for all; Relu, Neg and Clip also for the signed
// integer types).
bool unary_supports(UnaryOp op, DType dtype);
// y = op(x) for tensors of one dtype and element count.
void unary(UnaryOp op, const UnaryParams& params, const Tensor& x, Tensor& y);
// The float32 loop itself, over n elements (parallel for large n); x may equal y.
void unary_f32(UnaryOp op, const UnaryParams& params, const float* x, float* y, int64_t n);
// The same in place over `rows` runs of `count` values, `ld` apart, on the calling thread: for a
// kernel that applies an activation in its own output pass while the values are in cache (a
// convolution's epilogue). Each value gets the bits unary_f32 gives it.
void unary_rows_f32(UnaryOp op, const UnaryParams& params, float* y, int64_t rows, int64_t count,
                    int64_t ld);

// Backward of the float32 loop: dx = dy · f'(x) over n elements, from the forward's input x
// (Sigmoid, SiLU and Tanh recompute their output from it). The derivative rule of each op sits
// beside its forward in one table (elementwise.cpp), with PyTorch's autograd conventions at
// kinks and saturation bounds, where the derivative is one-sided:
//   Relu      dy where x > 0, else 0 (0 at x = 0, threshold_backward)
//   Clip      dy where min < x < max, else 0 (0 at both bounds, hardtanh_backward as ReLU6;
//             torch.clamp's backward would pass dy at the bounds themselves)
//   LeakyRelu dy where x > 0, else alpha·dy (alpha at 0)
//   Elu       dy where x > 0, else dy·alpha·e^x (alpha at 0)
//   HardSigmoid alpha·dy where 0 < alpha·x + beta < 1, else 0 (0 at both ends)
//   HardSwish 0 for x < -3, dy·(x/3 + 1/2) for -3 <= x < 3, dy for x >= 3 (PyTorch's
//             vectorised CPU kernel; its scalar and CUDA paths give 1.5·dy at exactly x = 3)
//   Sigmoid   dy·(1 - s)·s;  Tanh dy·(1 - t²);  SiLU dy·s·(1 + x·(1 - s)) with s = sigmoid(x)
//   GeluErf   dy·(Φ(x) + x·φ(x)), Φ the normal CDF (erf form) and φ its density
//   GeluTanh  dy·(0.5·(1 + t) + 0.5·x·(1 - t²)·√(2/π)·(1 + 3·0.044715·x²)), t the tanh above
//   Erf       dy·2/√π·e^(-x²);  Sqrt dy / (2·√x);  Neg -dy
// kOverwrite stores into dx (which may equal dy); kAccumulate adds to dx. Elements are
// independent and chunks fixed, so results never depend on the thread count.
void unary_backward_f32(UnaryOp op, const UnaryParams& params, const float* x, const float* dy,
                        float* dx, int64_t n, GradMode mode = GradMode::kOverwrite);

// The float math behind Sigmoid, Tanh, Erf and Elu is in kernels/vector_math.h.

// Broadcasting ---------------------------------------------------------------------------------

inline constexpr int kMaxBroadcastInputs = 3;

// Output shape of numpy-broadcasting the shapes together; nullopt when they do not broadcast.
std::optional<Shape> broadcast_shape(std::span<const Shape> shapes);

enum class BroadcastKind {
  kSame,     // every input has the output shape
  kScalar,   // two inputs, one a single element
  kChannel,  // two inputs, one full and one [C] against [outer, C, inner] (e.g. NCHW ⊙ C11)
  kRow,      // two inputs, one full and one [D] against [rows, D] (last-dim bias)
  kGeneral,  // any other numpy broadcast
};

// How 1 to 3 inputs broadcast to one output: the output dims after merging neighbours that every
// input steps through alike, and each input's element strides over them (0 where it broadcasts).
struct BroadcastPlan {
  Shape out_shape;
  int64_t numel = 0;
  BroadcastKind kind = BroadcastKind::kSame;
  int full_input = 0;    // kScalar/kChannel/kRow: the input that has the output shape
  int64_t channels = 1;  // kChannel: C; kRow: D
  int64_t inner = 1;     // kChannel: elements per channel run
  Shape dims;            // merged output dims, at least one
  std::vector<std::vector<int64_t>> strides;  // [input][dim]
};

// Throws an Internal error when the shapes do not broadcast (callers validate first) and an
// Unsupported one when the merged rank exceeds kMaxStridedRank (kernels/strided_index.h).
BroadcastPlan plan_broadcast(std::span<const Shape> input_shapes);

enum class BinaryOp {
  kAdd,
  kSub,
  kMul,
  kDiv,  // integer division truncates toward zero, as in C
  kPow,
  kMod,             // integers and floats: the result takes the divisor's sign (Python/numpy)
  kFmod,            // the result takes the dividend's sign (C fmod / truncating remainder)
  kEqual,           // output bool
  kGreater,         // output bool
  kLess,            // output bool
  kGreaterOrEqual,  // output bool
  kLessOrEqual,     // output bool
  kAnd,             // bool inputs and output
  kOr,              // bool inputs and output
  kXor,             // bool inputs and output
  kMax,             // NaN if either input is NaN
  kMin,
  kPRelu,  // a < 0 ? b · a : a, float32 only (b: the slope)
};

// The comparisons (Equal, Greater, Less, GreaterOrEqual, LessOrEqual) and And, Or, Xor: their
// output is bool.
bool binary_outputs_bool(BinaryOp op);
// And, Or, Xor: bool inputs.
bool binary_is_logical(BinaryOp op);
// a^b as every Pow path computes it (forward and backward): the common constant exponents done
// exactly as their cheap forms, so that a result never depends on which loop computed it.
inline float pow_f32(float a, float b) {
  if (b == 2.0f) return a * a;
  if (b == 1.0f) return a;
  if (b == 3.0f) return a * a * a;
  if (b == 0.5f) return std::sqrt(a);
  if (b == -0.5f) return 1.0f / std::sqrt(a);
  if (b == -1.0f) return 1.0f / a;
  return std::pow(a, b);
}

// True when `op` is defined for inputs of dtypes a, b (Pow allows a float32 base with an
// integer exponent; every other op wants equal dtypes). Output dtype: bool for the comparisons,
// else a.
bool binary_supports(BinaryOp op, DType a, DType b);
// y = op(a, b) under `plan` (made from a's and b's shapes). Integer division or modulo by zero
// throws an Invalid error "expected nonzero integer divisors, got 0" (callers add context).
void binary(BinaryOp op, const BroadcastPlan& plan, const Tensor& a, const Tensor& b, Tensor& y);

// out = cond ? x : y under `plan` (made from the three shapes); cond is bool, x, y, out share a
// dtype of any size.
void where(const BroadcastPlan& plan, const Tensor& cond, const Tensor& x, const Tensor& y,
           Tensor& out);

// y = !x for bool tensors.
void logical_not(const Tensor& x, Tensor& y);
// y (bool) = whether each element of float32 x is NaN (ONNX IsNaN); is infinite, +inf counted
// where `positive` and -inf where `negative` (IsInf's detect_positive and detect_negative).
void is_nan(const Tensor& x, Tensor& y);
void is_inf(const Tensor& x, Tensor& y, bool negative, bool positive);

// y = x converted to y's dtype, as C casts do, except that float to integer saturates at the
// target's range (NaN gives 0) and anything to bool is x != 0.
void cast(const Tensor& x, Tensor& y);

}  // namespace qforge::kernels

// The teacher-forced check of a Q/DQ model against another runtime's values of its tensors. Every
// activation QuantizeLinear is a point; the segment that produces its input starts at earlier
// points' integers, graph inputs and constants. qforge recomputes every segment from the
// reference's own integers at its inputs and compares the point's integers element by element:
// an element on another integer is a rounding flip when qforge's pre-quant value lies within a
// tolerance of a .5 boundary (float summation order may put it on either side, both following
// the ONNX rule), and a mismatch otherwise. A plain forward pass from the graph inputs shows
// where the first difference appears and how it spreads.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "graph/ir.h"
#include "kernels/tensor.h"

namespace qforge::quant {

// Another runtime's values of a model's tensors, by tensor name.
using ReferenceValues = std::map<std::string, kernels::Tensor>;

struct VerifyOptions {
  // An element on another integer is a flip when qforge's x / scale lies within this many steps
  // of a .5 rounding boundary (and the two integers are that boundary's neighbours).
  double flip_tolerance = 1e-4;
  // Differing elements listed per point (mismatches first, then the flips nearest a boundary
  // last); the counts cover them all.
  size_t listed_per_point = 8;
};

// One element of a point whose integers differ.
struct DifferingElement {
  int64_t index = 0;      // flat, row-major, in the point's tensor
  int32_t qforge = 0;     // qforge's integer
  int32_t reference = 0;  // the reference's integer
  double steps = 0;       // qforge's pre-quant value x / scale (in steps, zero point excluded)
  double boundary_distance = 0;  // |x / scale − nearest .5 boundary|, in steps
  bool flip = false;
};

struct PointCheck {
  std::string node;      // the QuantizeLinear node
  std::string tensor;    // its input, the pre-quant value
  std::string integers;  // its output
  int64_t elements = 0;
  int64_t flips = 0;
  int64_t mismatches = 0;
  int64_t max_step_difference = 0;  // max |qforge − reference| in integers
  double max_flip_distance = 0;     // the largest boundary distance among the flips, in steps
  // ‖x_qforge − x_ref‖ / ‖x_ref‖ of the pre-quant values, when the reference holds them.
  std::optional<double> pre_quant_relative_l2;
  std::vector<DifferingElement> listed;
  // Plain forward pass (no teacher forcing): elements on another integer than the reference's,
  // and the largest such difference.
  int64_t plain_differing = 0;
  int64_t plain_max_step_difference = 0;
};

struct OutputCheck {
  std::string tensor;
  // Relative L2 distance to the reference's value, teacher-forced and plain.
  double teacher_forced_relative_l2 = 0;
  double plain_relative_l2 = 0;
};

struct VerifyResult {
  std::vector<PointCheck> points;    // in the model's node order
  std::vector<OutputCheck> outputs;  // graph outputs the reference holds
  int64_t flips = 0;
  int64_t mismatches = 0;
  // Index into points of the first point whose plain-forward integers differ.
  std::optional<size_t> first_plain_difference;
  bool passed() const { return mismatches == 0; }
};

// The activation QuantizeLinear nodes of a resolved graph (weights' quantizers fold away in
// resolution), in node order.
std::vector<const graph::Node*> activation_quantizers(const graph::Graph& resolved);

// Checks `model` (as loaded; resolved here at the inputs' shapes) on `inputs` against
// `reference`. Each point's integers come from the reference's value of the QuantizeLinear
// output or, when it lacks that, of a DequantizeLinear reading it (converted back exactly).
// Invalid error naming the node and tensor when the reference holds neither, or a value of
// another shape or type.
VerifyResult verify_qdq(const graph::Graph& model, std::span<const kernels::Tensor> inputs,
                        const ReferenceValues& reference, const VerifyOptions& options = {});

// The ONNX bytes `model_bytes` (of file `source_name`) with every point's pre-quant and integer
// tensors added to the graph outputs, so that a runtime which returns graph outputs dumps what
// verify_qdq reads. Nodes and initializers stay as they are; the added outputs' dims are static for
// a model of fixed batch, unknown (rank only) otherwise.
std::string model_with_points_as_outputs(std::string_view model_bytes,
                                         const std::string& source_name);

}  // namespace qforge::quant

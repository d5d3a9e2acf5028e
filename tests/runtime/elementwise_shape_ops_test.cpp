// The element-wise and shape OpDefs through the registry: ONNX attribute and input semantics,
// shape inference from constant inputs, the errors it reports, and a torch-style shape
// subgraph folded by resolve().
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/op_registry.h"
#include "runtime/resolve.h"
#include "tests/support/op_runner.h"

namespace qforge::runtime {
namespace {

using graph::AttributeValue;
using Attributes = std::map<std::string, AttributeValue, std::less<>>;

using testing::OpInput;

OpInput runtime_input(Tensor value) {
  return {std::move(value), false};
}
OpInput constant_input(Tensor value) {
  return {std::move(value), true};
}
OpInput omitted() {
  return {};
}

// One node in a graph of its own: inferred, created and run through builtin_ops().
class OneNode : public testing::OneNodeGraph {
 public:
  OneNode(const std::string& op_type, const std::vector<OpInput>& inputs,
          const Attributes& attributes = {}, size_t outputs = 1)
      : OneNodeGraph(op_type, attributes, inputs, outputs) {}

  std::vector<Tensor> run() const {
    std::vector<TensorInfo> out_infos = infer();
    out_infos.resize(node_->num_outputs());
    std::unique_ptr<OpKernel> kernel = def_->create(*node_, infos_, out_infos);
    std::vector<Tensor> inputs;
    for (const OpInput& in : inputs_) inputs.push_back(in.value);
    std::vector<Tensor> outputs;
    for (const TensorInfo& info : out_infos) outputs.emplace_back(info.dtype, info.shape);
    std::vector<std::byte> workspace(kernel->workspace_bytes());
    kernel->forward(inputs, outputs, workspace.data());
    return outputs;
  }

  Tensor run_one() const { return run().at(0); }
};

Tensor ints(std::vector<int64_t> values) {
  const auto n = static_cast<int64_t>(values.size());
  return Tensor::from_vector<int64_t>({n}, values);
}

Tensor iota_f32(const Shape& shape) {
  Tensor t(DType::kFloat32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(i);
  return t;
}

// The message and kind of the error `fn` throws.
template <class Fn>
std::pair<ErrorKind, std::string> error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return {e.kind(), e.what()};
  }
  return {ErrorKind::kInternal, "no error"};
}

TEST(ElementwiseOps, EveryOpOfTheFamilyIsRegistered) {
  for (const char* op :
       {"Relu", "Clip", "LeakyRelu", "Elu",   "Sigmoid", "HardSigmoid", "HardSwish", "Erf",
        "Tanh", "Sqrt", "Neg",       "Not",   "Add",     "Sub",         "Mul",       "Div",
        "Pow",  "Mod",  "Equal",     "Where", "Cast",    "Exp",         "Log",       "Softplus"}) {
    EXPECT_NE(builtin_ops().find(op), nullptr) << op;
  }
  for (const char* op : {"Flatten", "Reshape", "Transpose", "Concat", "Slice", "Gather", "Squeeze",
                         "Unsqueeze", "Pad", "Identity", "Dropout", "Shape", "Constant",
                         "ConstantOfShape", "Range", "Expand", "ScatterND", "Split", "Resize"}) {
    EXPECT_NE(builtin_ops().find(op), nullptr) << op;
  }
}

// Element-wise ---------------------------------------------------------------------------------

TEST(ElementwiseOps, AddBroadcastsAndRejectsMismatchedShapes) {
  OneNode add("Add", {runtime_input(iota_f32({2, 3, 1})), constant_input(iota_f32({4}))});
  const std::vector<TensorInfo> out = add.infer();
  EXPECT_EQ(out[0].shape, (Shape{2, 3, 4}));
  const Tensor y = add.run_one();
  EXPECT_EQ(y.data<float>()[4 * 5 + 3], 5.0f + 3.0f);

  OneNode bad("Mul", {runtime_input(iota_f32({2, 3})), runtime_input(iota_f32({4}))});
  auto [kind, message] = error_of([&] { bad.infer(); });
  EXPECT_EQ(kind, ErrorKind::kInvalid);
  EXPECT_EQ(
      message,
      "shape inference: node 'node' (Mul): expected shapes that broadcast, got [2, 3] and [4]");

  OneNode mixed("Sub", {runtime_input(iota_f32({2})), runtime_input(ints({1, 2}))});
  EXPECT_EQ(error_of([&] { mixed.infer(); }).second,
            "shape inference: node 'node' (Sub): expected two float32, int64 or int32 inputs of "
            "one dtype, got float32 and int64");
}

TEST(ElementwiseOps, IntegerDivTruncatesAndDivisionByZeroNamesTheNode) {
  OneNode div("Div", {runtime_input(ints({7, -7})), constant_input(Tensor::scalar_i64(2))});
  EXPECT_EQ(div.run_one().to_int64_vector(), (std::vector<int64_t>{3, -3}));
  OneNode zero("Div", {runtime_input(ints({7, -7})), constant_input(Tensor::scalar_i64(0))});
  auto [kind, message] = error_of([&] { zero.run(); });
  EXPECT_EQ(kind, ErrorKind::kInvalid);
  EXPECT_EQ(message, "run: node 'node' (Div): expected nonzero integer divisors, got 0");
}

TEST(ElementwiseOps, ModFollowsTheFmodAttribute) {
  const Tensor a = ints({-7, 7});
  const Tensor b = Tensor::scalar_i64(3);
  EXPECT_EQ(OneNode("Mod", {runtime_input(a), runtime_input(b)}, {{"fmod", int64_t{0}}})
                .run_one()
                .to_int64_vector(),
            (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(OneNode("Mod", {runtime_input(a), runtime_input(b)}, {{"fmod", int64_t{1}}})
                .run_one()
                .to_int64_vector(),
            (std::vector<int64_t>{-1, 1}));
}

TEST(ElementwiseOps, ClipTakesOptionalBoundsAsConstantsOrRuntimeValues) {
  const Tensor x = Tensor::from_vector<float>({4}, {-2.0f, 0.5f, 3.0f, 7.0f});
  // ReLU6 as torch exports it: min and max constants.
  EXPECT_EQ(OneNode("Clip", {runtime_input(x), constant_input(Tensor::scalar_f32(0.0f)),
                             constant_input(Tensor::scalar_f32(6.0f))})
                .run_one()
                .to_float_vector(),
            (std::vector<float>{0.0f, 0.5f, 3.0f, 6.0f}));
  // min omitted, max computed at run time.
  EXPECT_EQ(OneNode("Clip", {runtime_input(x), omitted(), runtime_input(Tensor::scalar_f32(1.0f))})
                .run_one()
                .to_float_vector(),
            (std::vector<float>{-2.0f, 0.5f, 1.0f, 1.0f}));
  EXPECT_EQ(OneNode("Clip", {runtime_input(ints({-5, 2, 9})), constant_input(Tensor::scalar_i64(0)),
                             constant_input(Tensor::scalar_i64(4))})
                .run_one()
                .to_int64_vector(),
            (std::vector<int64_t>{0, 2, 4}));
  OneNode bad("Clip", {runtime_input(x), constant_input(Tensor::scalar_i64(0))});
  EXPECT_EQ(error_of([&] { bad.infer(); }).second,
            "shape inference: node 'node' (Clip): expected min as one float32 element, got "
            "int64[]");
}

TEST(ElementwiseOps, ActivationAttributesHaveOnnxDefaults) {
  const Tensor x = Tensor::from_vector<float>({2}, {-2.0f, 2.0f});
  EXPECT_EQ(OneNode("LeakyRelu", {runtime_input(x)}).run_one().to_float_vector(),
            (std::vector<float>{-0.02f, 2.0f}));
  EXPECT_EQ(OneNode("LeakyRelu", {runtime_input(x)}, {{"alpha", 0.5f}}).run_one().to_float_vector(),
            (std::vector<float>{-1.0f, 2.0f}));
  const std::vector<float> hs =
      OneNode("HardSigmoid", {runtime_input(x)}).run_one().to_float_vector();
  EXPECT_NEAR(hs[0], 0.1f, 1e-7);  // alpha 0.2, beta 0.5
  EXPECT_NEAR(hs[1], 0.9f, 1e-7);
  OneNode sig("Sigmoid", {runtime_input(ints({1}))});
  EXPECT_EQ(error_of([&] { sig.infer(); }).second,
            "shape inference: node 'node' (Sigmoid): expected a float32 input, got int64");
}

TEST(ElementwiseOps, EqualNotWhereBuildAMaskAsSwinDoes) {
  // Region ids compared pairwise: Equal -> Not -> Where(-100, 0).
  const Tensor ids = ints({0, 0, 1});
  OneNode equal("Equal",
                {runtime_input(ids.reshaped({3, 1})), runtime_input(ids.reshaped({1, 3}))});
  const Tensor same = equal.run_one();
  EXPECT_EQ(same.dtype(), DType::kBool);
  EXPECT_EQ(same.shape(), (Shape{3, 3}));
  const Tensor differ = OneNode("Not", {runtime_input(same)}).run_one();
  const Tensor mask =
      OneNode("Where", {runtime_input(differ), constant_input(Tensor::scalar_f32(-100.0f)),
                        constant_input(Tensor::scalar_f32(0.0f))})
          .run_one();
  EXPECT_EQ(mask.to_float_vector(), (std::vector<float>{0, 0, -100, 0, 0, -100, -100, -100, 0}));
  OneNode bad("Where", {runtime_input(iota_f32({3})), runtime_input(iota_f32({3})),
                        runtime_input(iota_f32({3}))});
  EXPECT_EQ(error_of([&] { bad.infer(); }).second,
            "shape inference: node 'node' (Where): expected a bool condition, got float32");
}

TEST(ElementwiseOps, CastMapsOnnxTypeCodes) {
  const Tensor x = Tensor::from_vector<float>({3}, {1.9f, -1.9f, 0.0f});
  EXPECT_EQ(OneNode("Cast", {runtime_input(x)}, {{"to", int64_t{7}}}).run_one().to_int64_vector(),
            (std::vector<int64_t>{1, -1, 0}));
  const Tensor b = OneNode("Cast", {runtime_input(x)}, {{"to", int64_t{9}}}).run_one();
  EXPECT_EQ(b.dtype(), DType::kBool);
  EXPECT_EQ(b.to_int64_vector(), (std::vector<int64_t>{1, 1, 0}));
  OneNode half("Cast", {runtime_input(x)}, {{"to", int64_t{10}}});
  auto [kind, message] = error_of([&] { half.infer(); });
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  EXPECT_NE(message.find("got 10"), std::string::npos) << message;
}

// Shape ops ------------------------------------------------------------------------------------

TEST(ShapeOps, ReshapeInfersZeroAndMinusOneFromAConstantShape) {
  const Tensor x = iota_f32({2, 3, 4});
  EXPECT_EQ(OneNode("Reshape", {runtime_input(x), constant_input(ints({0, -1}))}).infer()[0].shape,
            (Shape{2, 12}));
  EXPECT_EQ(
      OneNode("Reshape", {runtime_input(x), constant_input(ints({-1, 3, 0, 1}))}).infer()[0].shape,
      (Shape{2, 3, 4, 1}));
  // allowzero keeps a literal 0.
  EXPECT_EQ(OneNode("Reshape",
                    {runtime_input(Tensor(DType::kFloat32, {0, 3})), constant_input(ints({3, 0}))},
                    {{"allowzero", int64_t{1}}})
                .infer()[0]
                .shape,
            (Shape{3, 0}));
  const Tensor y = OneNode("Reshape", {runtime_input(x), constant_input(ints({4, 6}))}).run_one();
  EXPECT_EQ(y.shape(), (Shape{4, 6}));
  EXPECT_EQ(y.to_float_vector(), x.to_float_vector());

  OneNode dynamic("Reshape", {runtime_input(x), runtime_input(ints({4, 6}))});
  auto [kind, message] = error_of([&] { dynamic.infer(); });
  EXPECT_EQ(kind, ErrorKind::kInvalid);
  EXPECT_EQ(message,
            "shape inference: node 'node' (Reshape): expected the shape (input 1) as a constant, "
            "got a value computed at run time");
  OneNode wrong("Reshape", {runtime_input(x), constant_input(ints({5, -1}))});
  EXPECT_EQ(error_of([&] { wrong.infer(); }).second,
            "shape inference: node 'node' (Reshape): expected a shape that can hold the 24 "
            "elements of [2, 3, 4], got [5, -1]");
  OneNode two("Reshape", {runtime_input(x), constant_input(ints({-1, -1}))});
  EXPECT_EQ(error_of([&] { two.infer(); }).first, ErrorKind::kInvalid);
  // Entries whose product overflows 64 bits (a fuzzed file) are refused, not multiplied.
  OneNode huge("Reshape", {runtime_input(x), constant_input(ints({432345564227567616, 64, -1}))});
  EXPECT_EQ(error_of([&] { huge.infer(); }).second,
            "shape inference: node 'node' (Reshape): expected a shape whose element count fits "
            "in 64 bits, got [432345564227567616, 64, -1]");
}

TEST(ShapeOps, FlattenSqueezeUnsqueezeAndTransposeShapes) {
  const Tensor x = iota_f32({2, 1, 3, 1});
  EXPECT_EQ(OneNode("Flatten", {runtime_input(x)}).infer()[0].shape, (Shape{2, 3}));
  EXPECT_EQ(OneNode("Flatten", {runtime_input(x)}, {{"axis", int64_t{-1}}}).infer()[0].shape,
            (Shape{6, 1}));
  EXPECT_EQ(OneNode("Flatten", {runtime_input(x)}, {{"axis", int64_t{0}}}).infer()[0].shape,
            (Shape{1, 6}));
  EXPECT_EQ(OneNode("Squeeze", {runtime_input(x)}).infer()[0].shape, (Shape{2, 3}));
  EXPECT_EQ(OneNode("Squeeze", {runtime_input(x), constant_input(ints({-1}))}).infer()[0].shape,
            (Shape{2, 1, 3}));
  OneNode squeeze_bad("Squeeze", {runtime_input(x), constant_input(ints({2}))});
  EXPECT_EQ(error_of([&] { squeeze_bad.infer(); }).second,
            "shape inference: node 'node' (Squeeze): expected dim 1 at squeezed axis 2 of "
            "[2, 1, 3, 1], got 3");
  EXPECT_EQ(OneNode("Unsqueeze", {runtime_input(Tensor::scalar_i64(5)), constant_input(ints({0}))})
                .run_one()
                .to_int64_vector(),
            (std::vector<int64_t>{5}));
  EXPECT_EQ(OneNode("Unsqueeze", {runtime_input(iota_f32({3, 4})), constant_input(ints({-1, 0}))})
                .infer()[0]
                .shape,
            (Shape{1, 3, 4, 1}));
  const Tensor t = OneNode("Transpose", {runtime_input(iota_f32({2, 3}))}).run_one();
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(t.to_float_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  OneNode bad_perm("Transpose", {runtime_input(iota_f32({2, 3}))},
                   {{"perm", std::vector<int64_t>{0, 0}}});
  EXPECT_EQ(error_of([&] { bad_perm.infer(); }).second,
            "shape inference: node 'node' (Transpose): expected perm as a permutation of 2 axes, "
            "got [0, 0]");
}

TEST(ShapeOps, SliceReadsConstantBoundsWithNegativeSteps) {
  const Tensor x = iota_f32({4, 5});
  const int64_t kMin = std::numeric_limits<int64_t>::min();
  OneNode flip("Slice", {runtime_input(x), constant_input(ints({-1})), constant_input(ints({kMin})),
                         constant_input(ints({1})), constant_input(ints({-2}))});
  const Tensor y = flip.run_one();
  EXPECT_EQ(y.shape(), (Shape{4, 3}));
  EXPECT_EQ(y.data<float>()[0], 4.0f);
  EXPECT_EQ(y.data<float>()[1], 2.0f);
  EXPECT_EQ(y.data<float>()[2], 0.0f);
  OneNode dynamic("Slice", {runtime_input(x), runtime_input(ints({0})), constant_input(ints({2}))});
  EXPECT_EQ(error_of([&] { dynamic.infer(); }).second,
            "shape inference: node 'node' (Slice): expected starts (input 1) as a constant, got a "
            "value computed at run time");
  OneNode zero_step("Slice", {runtime_input(x), constant_input(ints({0})),
                              constant_input(ints({2})), omitted(), constant_input(ints({0}))});
  EXPECT_EQ(error_of([&] { zero_step.infer(); }).first, ErrorKind::kInvalid);
}

TEST(ShapeOps, ConcatGatherAndShapeFoldShapeVectors) {
  const Tensor x(DType::kFloat32, {1, 56, 56, 96});
  const Tensor shape = OneNode("Shape", {runtime_input(x)}).run_one();
  EXPECT_EQ(shape.to_int64_vector(), (std::vector<int64_t>{1, 56, 56, 96}));
  EXPECT_EQ(OneNode("Shape", {runtime_input(x)}, {{"start", int64_t{1}}, {"end", int64_t{-1}}})
                .run_one()
                .to_int64_vector(),
            (std::vector<int64_t>{56, 56}));
  const Tensor h =
      OneNode("Gather", {runtime_input(shape), constant_input(Tensor::scalar_i64(-3))}).run_one();
  EXPECT_EQ(h.shape(), Shape{});
  EXPECT_EQ(h.to_int64_vector(), (std::vector<int64_t>{56}));
  const Tensor joined = OneNode("Concat", {runtime_input(ints({1})), runtime_input(ints({49, 3}))},
                                {{"axis", int64_t{0}}})
                            .run_one();
  EXPECT_EQ(joined.to_int64_vector(), (std::vector<int64_t>{1, 49, 3}));
  OneNode far("Gather", {runtime_input(shape), constant_input(Tensor::scalar_i64(4))});
  EXPECT_EQ(error_of([&] { far.infer(); }).second,
            "shape inference: node 'node' (Gather): expected indices in [-4, 3], got 4");
  OneNode far_runtime("Gather", {runtime_input(shape), runtime_input(Tensor::scalar_i64(-5))});
  EXPECT_EQ(error_of([&] { far_runtime.run(); }).second,
            "run: node 'node' (Gather): expected indices in [-4, 3], got -5");
  OneNode mismatch("Concat", {runtime_input(iota_f32({2, 3})), runtime_input(iota_f32({3, 3}))},
                   {{"axis", int64_t{1}}});
  EXPECT_EQ(error_of([&] { mismatch.infer(); }).second,
            "shape inference: node 'node' (Concat): expected shapes equal except along axis 1, "
            "got [2, 3] and [3, 3]");
}

TEST(ShapeOps, PadTakesPadsAxesAndAConstantValue) {
  const Tensor x = iota_f32({2, 3});
  const Tensor y =
      OneNode("Pad", {runtime_input(x), constant_input(ints({1, 2})),
                      constant_input(Tensor::scalar_f32(-1.0f)), constant_input(ints({-1}))})
          .run_one();
  EXPECT_EQ(y.shape(), (Shape{2, 6}));
  EXPECT_EQ(y.to_float_vector(), (std::vector<float>{-1, 0, 1, 2, -1, -1, -1, 3, 4, 5, -1, -1}));
  const Tensor r = OneNode("Pad", {runtime_input(x), constant_input(ints({0, 2, 0, 0}))},
                           {{"mode", std::string("reflect")}})
                       .run_one();
  EXPECT_EQ(r.to_float_vector(), (std::vector<float>{2, 1, 0, 1, 2, 5, 4, 3, 4, 5}));
  OneNode wrap("Pad", {runtime_input(x), constant_input(ints({0, 1, 0, 1}))},
               {{"mode", std::string("wrap")}});
  EXPECT_EQ(error_of([&] { wrap.infer(); }).first, ErrorKind::kUnsupported);
  OneNode short_pads("Pad", {runtime_input(x), constant_input(ints({1, 1}))});
  EXPECT_EQ(error_of([&] { short_pads.infer(); }).second,
            "shape inference: node 'node' (Pad): expected 4 pads (begin and end for each axis), "
            "got [1, 1]");
}

TEST(ShapeOps, DropoutIsIdentityUnlessTrainingWithANonzeroRatio) {
  const Tensor x = iota_f32({2, 3});
  Tensor training(DType::kBool, {});
  static_cast<uint8_t*>(training.raw())[0] = 1;
  // torchvision's Softmax -> Dropout(ratio 0, training_mode true): an identity.
  OneNode zero_ratio(
      "Dropout",
      {runtime_input(x), constant_input(Tensor::scalar_f32(0.0f)), constant_input(training)}, {},
      2);
  const std::vector<Tensor> out = zero_ratio.run();
  EXPECT_EQ(out[0].to_float_vector(), x.to_float_vector());
  EXPECT_EQ(out[1].dtype(), DType::kBool);
  EXPECT_EQ(out[1].to_int64_vector(), std::vector<int64_t>(6, 1));
  EXPECT_EQ(OneNode("Dropout", {runtime_input(x)}).run_one().to_float_vector(),
            x.to_float_vector());
  OneNode real("Dropout", {runtime_input(x), constant_input(Tensor::scalar_f32(0.1f)),
                           constant_input(training)});
  auto [kind, message] = error_of([&] { real.infer(); });
  EXPECT_EQ(kind, ErrorKind::kUnsupported);
  EXPECT_EQ(message,
            "shape inference: node 'node' (Dropout): expected inference-mode dropout "
            "(training_mode false or ratio 0), got training_mode true with ratio 0.1");
  OneNode default_ratio("Dropout", {runtime_input(x), omitted(), constant_input(training)});
  EXPECT_EQ(error_of([&] { default_ratio.infer(); }).first, ErrorKind::kUnsupported);
}

TEST(ShapeOps, ConstantConstantOfShapeRangeAndExpand) {
  EXPECT_EQ(OneNode("Constant", {}, {{"value_ints", std::vector<int64_t>{3, 4}}})
                .run_one()
                .to_int64_vector(),
            (std::vector<int64_t>{3, 4}));
  const Tensor f = OneNode("Constant", {}, {{"value_float", 2.5f}}).run_one();
  EXPECT_EQ(f.shape(), Shape{});
  EXPECT_EQ(f.to_float_vector(), (std::vector<float>{2.5f}));
  EXPECT_EQ(OneNode("Constant", {}, {{"value", iota_f32({2, 2})}}).run_one().to_float_vector(),
            (std::vector<float>{0, 1, 2, 3}));

  const Tensor zeros = OneNode("ConstantOfShape", {constant_input(ints({2, 3}))}).run_one();
  EXPECT_EQ(zeros.dtype(), DType::kFloat32);
  EXPECT_EQ(zeros.to_float_vector(), std::vector<float>(6, 0.0f));
  const Tensor sevens = OneNode("ConstantOfShape", {constant_input(ints({3}))},
                                {{"value", Tensor::from_vector<int64_t>({1}, {7})}})
                            .run_one();
  EXPECT_EQ(sevens.to_int64_vector(), (std::vector<int64_t>{7, 7, 7}));
  EXPECT_EQ(OneNode("ConstantOfShape", {constant_input(ints({0}))}).infer()[0].shape, (Shape{0}));

  EXPECT_EQ(OneNode("Range",
                    {constant_input(Tensor::scalar_i64(0)), constant_input(Tensor::scalar_i64(7)),
                     constant_input(Tensor::scalar_i64(3))})
                .run_one()
                .to_int64_vector(),
            (std::vector<int64_t>{0, 3, 6}));
  OneNode dynamic_range(
      "Range", {runtime_input(Tensor::scalar_i64(0)), constant_input(Tensor::scalar_i64(7)),
                constant_input(Tensor::scalar_i64(3))});
  EXPECT_EQ(error_of([&] { dynamic_range.infer(); }).second,
            "shape inference: node 'node' (Range): expected start as a constant, got a value "
            "computed at run time");

  const Tensor e = OneNode("Expand", {runtime_input(ints({1, 2, 3}).reshaped({3, 1})),
                                      constant_input(ints({2, 1, 2}))})
                       .run_one();
  EXPECT_EQ(e.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(e.to_int64_vector(), (std::vector<int64_t>{1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3}));
}

TEST(ShapeOps, ScatterNdWritesRegionIdsAndValidatesShapes) {
  const Tensor data(DType::kFloat32, {3, 4});
  const Tensor indices = Tensor::from_vector<int64_t>({2, 1}, {2, 0});
  Tensor updates = iota_f32({2, 4});
  const Tensor y =
      OneNode("ScatterND", {runtime_input(data), constant_input(indices), runtime_input(updates)})
          .run_one();
  EXPECT_EQ(y.to_float_vector(), (std::vector<float>{4, 5, 6, 7, 0, 0, 0, 0, 0, 1, 2, 3}));
  OneNode bad("ScatterND",
              {runtime_input(data), constant_input(indices), runtime_input(iota_f32({2, 3}))});
  EXPECT_EQ(
      error_of([&] { bad.infer(); }).second,
      "shape inference: node 'node' (ScatterND): expected updates of shape [2, 4], got [2, 3]");
  OneNode add("ScatterND", {runtime_input(data), constant_input(indices), runtime_input(updates)},
              {{"reduction", std::string("add")}});
  EXPECT_EQ(error_of([&] { add.infer(); }).first, ErrorKind::kUnsupported);
}

// A torch-style shape subgraph folds to constants once the input shape is fixed:
// Shape -> Gather -> Mod -> Sub -> Mod -> Unsqueeze -> Concat -> Pad, as Swin computes its pads.
TEST(ShapeOps, ResolveFoldsASwinPadSubgraph) {
  graph::Graph g;
  g.opset = 17;
  graph::Value* x = g.add_input("x", DType::kFloat32, Shape{1, 54, 54, 96});
  graph::Value* seven = g.add_constant("seven", Tensor::scalar_i64(7));
  graph::Value* zero = g.add_constant("zero", ints({0}));
  graph::Value* axis0 = g.add_constant("axis0", ints({0}));
  graph::Value* two = g.add_constant("two", Tensor::scalar_i64(2));
  auto add = [&](const std::string& op, std::vector<graph::Value*> inputs, Attributes attrs = {}) {
    graph::NodeSpec spec;
    spec.op_type = op;
    spec.inputs = std::move(inputs);
    spec.attributes = std::move(attrs);
    spec.output_names = {g.unique_value_name(op)};
    return g.add_node(std::move(spec))->output(0);
  };
  graph::Value* shape = add("Shape", {x});
  graph::Value* w = add("Gather", {shape, two}, {{"axis", int64_t{0}}});
  graph::Value* rem = add("Mod", {w, seven}, {{"fmod", int64_t{0}}});
  graph::Value* gap = add("Sub", {seven, rem});
  graph::Value* pad_w = add("Mod", {gap, seven}, {{"fmod", int64_t{0}}});
  graph::Value* pad_w1 = add("Unsqueeze", {pad_w, axis0});
  graph::Value* pads =
      add("Concat", {zero, zero, zero, zero, zero, pad_w1, pad_w1, zero}, {{"axis", int64_t{0}}});
  graph::Value* padded = add("Pad", {x, pads}, {{"mode", std::string("constant")}});
  g.mark_output(padded);
  resolve(g, {});
  ASSERT_TRUE(pads->is_constant());
  EXPECT_EQ(pads->constant().to_int64_vector(), (std::vector<int64_t>{0, 0, 0, 0, 0, 2, 2, 0}));
  EXPECT_EQ(*padded->shape(), (Shape{1, 56, 56, 96}));
}

}  // namespace
}  // namespace qforge::runtime

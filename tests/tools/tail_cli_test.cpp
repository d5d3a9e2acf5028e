// Detection models that end in non-maximum suppression (data/generate/nms_models.py): qforge cuts
// the post-processing off at import (graph/tail.h), runs, calibrates and trains what comes before
// it, and writes it back, so that the models it writes compute the file's detections in ONNX
// Runtime.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <string>
#include <vector>

#include "fuzz/seed_models.h"
#include "graph/ir.h"
#include "graph/onnx_import.h"
#include "kernels/tensor.h"
#include "tests/support/float_checks.h"
#include "tests/support/ort_runner.h"
#include "tests/support/random.h"
#include "tests/support/test_support.h"
#include "tools/io/npy.h"

namespace qforge {
namespace {

using kernels::Tensor;
using testing::data_path;
using testing::run_cli;
using testing::TempDir;

const std::string kYolo = data_path("models/yolo_nms.onnx");
const std::string kYoloInput = data_path("golden/yolo_input.npy");
const std::string kTiny = data_path("models/ops/tiny_det_nms_opset11.onnx");

std::vector<std::string> output_names(const graph::Graph& g) {
  std::vector<std::string> names;
  for (const graph::Value* v : g.outputs()) names.push_back(v->name());
  return names;
}

onnx::ModelProto read_model(const std::string& path) {
  onnx::ModelProto proto;
  EXPECT_TRUE(proto.ParseFromString(testing::read_text(path))) << path;
  return proto;
}

// The nodes of `path` from its first `op` on, serialized one by one.
std::vector<std::string> nodes_from(const std::string& path, const std::string& op) {
  const onnx::ModelProto proto = read_model(path);
  std::vector<std::string> nodes;
  bool started = false;
  for (const auto& n : proto.graph().node()) {
    started = started || n.op_type() == op;
    if (started) nodes.push_back(n.SerializeAsString());
  }
  return nodes;
}

TEST(TailImport, CutsTheNonMaxSuppressionAndEndsAtWhatItReads) {
  auto g = graph::load_onnx(kYolo);
  ASSERT_NE(g->tail, nullptr);
  const graph::Tail& tail = *g->tail;
  EXPECT_EQ(tail.first, "node 'post_selected' (NonMaxSuppression)");
  EXPECT_EQ(tail.node_count, 4u);
  EXPECT_EQ(tail.ops, (std::vector<std::string>{"Gather", "GatherND", "NonMaxSuppression"}));
  EXPECT_EQ(tail.reads, (std::vector<std::string>{"boxes", "class_scores"}));
  EXPECT_EQ(tail.outputs, (std::vector<std::string>{"det_boxes", "det_scores", "selected"}));
  EXPECT_EQ(output_names(*g), (std::vector<std::string>{"boxes", "class_scores"}));
  // Its constants went with it; its names stay taken.
  EXPECT_EQ(g->find_value("post_iou"), nullptr);
  EXPECT_EQ(g->find_value("selected"), nullptr);
  EXPECT_EQ(g->unique_value_name("selected"), "selected_1");
  EXPECT_EQ(g->clone()->tail, g->tail);
}

TEST(TailImport, ModelsWithoutOneHaveNoTail) {
  EXPECT_EQ(graph::load_onnx(data_path("models/yolo_bn.onnx"))->tail, nullptr);
}

TEST(TailCli, InspectAndRunNameThePostProcessing) {
  const auto inspected = run_cli("inspect " + kYolo);
  ASSERT_EQ(inspected.exit_code, 0) << inspected.err;
  EXPECT_NE(inspected.out.find("tail     the post-processing from node 'post_selected' "
                               "(NonMaxSuppression) on: 4 nodes (Gather, GatherND, "
                               "NonMaxSuppression)"),
            std::string::npos)
      << inspected.out;
  EXPECT_NE(inspected.out.find("output   boxes  float32"), std::string::npos) << inspected.out;

  // `run` computes what the post-processing reads, as PyTorch's detector does.
  TempDir dir;
  const auto ran = run_cli("run " + kYolo + " --data " + kYoloInput + " -o " + dir.file("y.npy"));
  ASSERT_EQ(ran.exit_code, 0) << ran.err;
  EXPECT_NE(ran.err.find("note: '" + kYolo + "': the post-processing from node 'post_selected'"),
            std::string::npos)
      << ran.err;
  testing::expect_close_scaled(io::read_npy(dir.file("y.npy")),
                               io::read_npy(data_path("golden/yolo_nms_boxes.npy")), 1e-5, "boxes");
  testing::expect_close_scaled(io::read_npy(dir.file("y.1.npy")),
                               io::read_npy(data_path("golden/yolo_nms_class_scores.npy")), 1e-5,
                               "class_scores");
}

// The float model `transform` writes detects what the file does in ONNX Runtime, its
// post-processing byte for byte the file's.
void expect_same_detections(const std::string& original, const std::string& written,
                            const std::vector<Tensor>& inputs) {
  const std::vector<Tensor> want = testing::run_ort(original, inputs);
  const std::vector<Tensor> got = testing::run_ort(written, inputs);
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(want.size(), 3u);
  EXPECT_GT(want[0].dim(0), 0) << "no detection to compare";
  for (size_t i = 0; i < want.size(); ++i) {
    testing::expect_close_scaled(got[i], want[i], 1e-5, "output " + std::to_string(i));
  }
}

TEST(TailCli, TransformWritesThePostProcessingBack) {
  TempDir dir;
  const auto r = run_cli("transform " + kYolo + " --batch 4 -o " + dir.file("t.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nodes_from(dir.file("t.onnx"), "NonMaxSuppression"),
            nodes_from(kYolo, "NonMaxSuppression"));
  const onnx::ModelProto written = read_model(dir.file("t.onnx"));
  ASSERT_EQ(written.graph().output_size(), 3);
  EXPECT_EQ(written.graph().output(0).name(), "det_boxes");
  EXPECT_EQ(written.graph().output(2).name(), "selected");
  // The batch stays symbolic: ONNX Runtime runs the written model at 4 and at 1.
  const Tensor x = io::read_npy(kYoloInput);
  expect_same_detections(kYolo, dir.file("t.onnx"), {x});
  expect_same_detections(kYolo, dir.file("t.onnx"), {x.slice_rows(0, 1).clone()});
}

TEST(TailCli, TorchvisionBatchedNmsAtOpsetElevenIsConvertedAndWrittenBack) {
  TempDir dir;
  const auto inspected = run_cli("inspect " + kTiny);
  ASSERT_EQ(inspected.exit_code, 0) << inspected.err;
  EXPECT_NE(inspected.out.find("(NonZero) on:"), std::string::npos) << inspected.out;
  const auto r = run_cli("transform " + kTiny + " -o " + dir.file("t.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_model(dir.file("t.onnx")).opset_import(0).version(), 13);
  expect_same_detections(kTiny, dir.file("t.onnx"),
                         {testing::random_f32({1, 3, 32, 32}, 5, 0.0f, 1.0f)});

  // The file fixes batch 1, which its post-processing computes with.
  const auto dynamic = run_cli("transform " + kTiny + " --dynamic-batch -o " + dir.file("d.onnx"));
  EXPECT_NE(dynamic.exit_code, 0);
  EXPECT_NE(dynamic.err.find("qforge: error: --dynamic-batch: the post-processing from node "
                             "'/NonZero' (NonZero)"),
            std::string::npos)
      << dynamic.err;
  EXPECT_TRUE(testing::leftover_files(dir, {"t.onnx"}).empty());
}

// A TensorRT plugin (another domain) ends the model as NMS does: written back with its domain's
// opset.
TEST(TailCli, PluginOfAnotherDomainIsWrittenBackWithItsOpset) {
  TempDir dir;
  onnx::ModelProto proto = read_model(data_path("models/yolo_bn.onnx"));
  auto* g = proto.mutable_graph();
  const std::string raw = g->output(0).name();
  g->clear_output();
  onnx::NodeProto* nms = g->add_node();
  nms->set_name("nms_plugin");
  nms->set_op_type("EfficientNMS_TRT");
  nms->set_domain("TRT");
  nms->add_input(raw);
  nms->add_output("num_detections");
  onnx::AttributeProto* a = nms->add_attribute();
  a->set_name("max_output_boxes");
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(10);
  onnx::ValueInfoProto* out = g->add_output();
  out->set_name("num_detections");
  auto* type = out->mutable_type()->mutable_tensor_type();
  type->set_elem_type(onnx::TensorProto::INT32);
  type->mutable_shape()->add_dim()->set_dim_param("N");
  type->mutable_shape()->add_dim()->set_dim_value(1);
  onnx::OperatorSetIdProto* trt = proto.add_opset_import();
  trt->set_domain("TRT");
  trt->set_version(1);
  testing::write_bytes(dir.file("plugin.onnx"), proto.SerializeAsString());

  const auto r = run_cli("transform " + dir.file("plugin.onnx") + " -o " + dir.file("t.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(
      r.err.find("from node 'nms_plugin' (EfficientNMS_TRT) on: 1 node (TRT.EfficientNMS_TRT)"),
      std::string::npos)
      << r.err;
  const onnx::ModelProto written = read_model(dir.file("t.onnx"));
  EXPECT_EQ(nodes_from(dir.file("t.onnx"), "EfficientNMS_TRT"),
            std::vector<std::string>{nms->SerializeAsString()});
  ASSERT_EQ(written.opset_import_size(), 2);
  EXPECT_EQ(written.opset_import(1).domain(), "TRT");
  EXPECT_EQ(written.opset_import(1).version(), 1);
  ASSERT_EQ(written.graph().output_size(), 1);
  EXPECT_EQ(written.graph().output(0).name(), "num_detections");
}

// The importer's fuzz seed of post-processing: a Constant node, an initializer and a count
// computed from a shape that the tail shares with the graph are copied into it, a bool mask only
// it reads goes with it, and the model `transform` writes computes every output of the file in
// ONNX Runtime.
TEST(TailCli, SharedConstantsAreCopiedIntoThePostProcessing) {
  TempDir dir;
  const std::string path = dir.file("nms_tail.onnx");
  testing::write_bytes(path, fuzz::nms_tail_model());
  auto g = graph::load_onnx(path);
  ASSERT_NE(g->tail, nullptr);
  EXPECT_EQ(g->tail->first, "node 'nms' (NonMaxSuppression)");
  EXPECT_EQ(g->tail->reads, (std::vector<std::string>{"boxes", "scores"}));
  EXPECT_EQ(output_names(*g), (std::vector<std::string>{"scores", "boxes"}));
  EXPECT_EQ(g->tail->ops, (std::vector<std::string>{"Cast", "Gather", "GatherND", "Greater", "Mul",
                                                    "NonMaxSuppression", "NonZero", "Shape"}));
  // The count of boxes both sides read, from the boxes' shape, is computed in the tail too.
  EXPECT_TRUE(g->tail->defines_name("box_shape_tail"));
  EXPECT_TRUE(g->tail->defines_name("count_f_tail"));
  EXPECT_NE(g->find_value("count_f"), nullptr);
  EXPECT_NE(g->find_value("k"), nullptr);          // TopK's
  EXPECT_EQ(g->find_value("threshold"), nullptr);  // only the tail's
  EXPECT_TRUE(g->tail->defines_name("k_tail"));    // NMS's copy of it
  EXPECT_TRUE(g->tail->defines_name("iou_threshold_tail"));

  const auto r = run_cli("transform " + path + " -o " + dir.file("t.onnx"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Tensor x = testing::random_f32({1, 6, 4}, 3, 0.0f, 1.0f);
  const std::vector<Tensor> want = testing::run_ort(path, {x});
  const std::vector<Tensor> got = testing::run_ort(dir.file("t.onnx"), {x});
  ASSERT_EQ(want.size(), 3u);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_GT(want[1].dim(0), 0);
  for (size_t i = 0; i < want.size(); ++i) {
    testing::expect_close_scaled(got[i], want[i], 1e-6, "output " + std::to_string(i));
  }
}

// The calibrated model computes, in ONNX Runtime, what qforge's fake quant computes at every Q/DQ
// point, and ends in the file's post-processing.
void expect_verified(const std::string& model, const std::string& data, int batch,
                     const TempDir& dir) {
  const std::string qdq = dir.file("m.qdq.onnx");
  const auto cal = run_cli("calibrate " + model + " --data " + data + " --batch " +
                           std::to_string(batch) + " --flip-injections 0 -o " + qdq);
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  int quantize_nodes = 0;
  const onnx::ModelProto proto = read_model(qdq);
  for (const auto& n : proto.graph().node()) quantize_nodes += n.op_type() == "QuantizeLinear";
  EXPECT_GT(quantize_nodes, 2);
  const std::string dump = dir.file("ort.npz");
  testing::expect_verified_by_ort(qdq, data, dump);
}

TEST(TailCli, CalibratedYoloWithNmsRunsInOrtAsInQforge) {
  TempDir dir;
  expect_verified(kYolo, kYoloInput, 4, dir);
  EXPECT_EQ(nodes_from(dir.file("m.qdq.onnx"), "NonMaxSuppression"),
            nodes_from(kYolo, "NonMaxSuppression"));
}

TEST(TailCli, CalibratedTorchvisionNmsDetectorRunsInOrtAsInQforge) {
  TempDir dir;
  io::write_npy(dir.file("x.npy"), testing::random_f32({1, 3, 32, 32}, 11, 0.0f, 1.0f));
  // torchvision's detectors take the first image of the batch: they run at the file's batch 1.
  expect_verified(kTiny, dir.file("x.npy"), 1, dir);
}

// `qat` of the detector distills its boxes and class scores (its NMS cut off), with BN on its
// running statistics as the teacher's, the same bytes at 1 and 2 threads; the written model ends
// in the file's NMS and runs in ONNX Runtime as qforge's fake quant computes.
TEST(TailCli, QatDistillsTheDetectorAndWritesItsNmsBack) {
  TempDir dir;
  std::string bytes[2];
  for (int threads : {1, 2}) {
    const std::string out = dir.file("q" + std::to_string(threads) + ".onnx");
    const auto r = run_cli("qat " + kYolo + " --data " + kYoloInput +
                           " --distill --steps 3 --batch 4 --lr 1e-3 --threads " +
                           std::to_string(threads) + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("batch norm   on its running statistics from step 0"), std::string::npos)
        << r.out;
    bytes[threads - 1] = testing::read_text(out);
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  const std::string qdq = dir.file("q1.onnx");
  EXPECT_EQ(nodes_from(qdq, "NonMaxSuppression"), nodes_from(kYolo, "NonMaxSuppression"));
  testing::expect_verified_by_ort(qdq, kYoloInput, dir.file("ort.npz"));

  // Labels need logits: the image folder's classes are refused before calibration.
  const auto labelled = run_cli("qat " + kYolo + " --data " + data_path("datasets/digits/train") +
                                " --distill --steps 1 -o " + dir.file("l.onnx"));
  EXPECT_NE(labelled.exit_code, 0);
  EXPECT_NE(labelled.err.find("qforge: error: qat: the model has 2 float outputs ('boxes', "
                              "'class_scores'), no logits [batch, classes] alone, which labels "
                              "need: train it with --distill alone (--distill-weight 1)"),
            std::string::npos)
      << labelled.err;
  EXPECT_EQ(labelled.out.find("calibration"), std::string::npos) << labelled.out;
  // Of one output, its rank says it: the bundled segmentation model.
  const auto segmentation =
      run_cli("qat " + data_path("models/unet_bn.onnx") + " --data " +
              data_path("datasets/digits/train") + " --steps 1 -o " + dir.file("u.onnx"));
  EXPECT_NE(segmentation.exit_code, 0);
  EXPECT_NE(segmentation.err.find("qforge: error: qat: the model's output 'output' of 4 dims is no "
                                  "logits [batch, classes], which labels need"),
            std::string::npos)
      << segmentation.err;
  // Their outputs are distilled without a temperature: one is refused, naming the flag.
  const auto tempered = run_cli("qat " + kYolo + " --data " + kYoloInput +
                                " --distill 2 --steps 1 -o " + dir.file("t.onnx"));
  EXPECT_NE(tempered.exit_code, 0);
  EXPECT_NE(tempered.err.find("qforge: error: qat: --distill 2: the model has no logits, and its "
                              "outputs are distilled by their relative squared error, which has "
                              "no temperature; give --distill alone"),
            std::string::npos)
      << tempered.err;
  EXPECT_TRUE(testing::leftover_files(dir, {"q1.onnx", "q2.onnx", "ort.npz"}).empty());
}

}  // namespace
}  // namespace qforge

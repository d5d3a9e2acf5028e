#!/usr/bin/python3
"""Detection models that end in non-maximum suppression, as stock exports do, for
tests/tools/tail_cli_test.cpp (qforge keeps such post-processing and writes it back, graph/tail.h).

  * data/models/yolo_nms.onnx: the bundled YOLO-style detector (data/models/yolo_bn.onnx, its
    weights unchanged) with a post-processing block appended in ONNX, as exporters append one:
    the distances become corner boxes around each cell's centre ("boxes", [N, 64, 4]) next to the
    class scores ("class_scores", [N, 10, 64]), then NonMaxSuppression (at most 3 boxes per class,
    IoU 0.5, score 0.3) and GatherND of the kept boxes and scores. Outputs: "det_boxes" [K, 4],
    "det_scores" [K], "selected" [K, 3] (batch, class, box). Dynamic batch, opset 17.
    data/golden/yolo_nms_boxes.npy and yolo_nms_class_scores.npy are "boxes" and "class_scores"
    computed here from PyTorch's output of the bundled detector on data/golden/yolo_input.npy
    (data/golden/yolo_bn_output.npy).
  * data/models/ops/tiny_det_nms_opset11.onnx: a small random-weight conv detector whose
    post-processing torch.onnx traces, at opset 11 and batch 1: sigmoid class scores, their max
    and argmax, a score threshold (torch.where: Greater, NonZero), then torchvision's batched_nms
    (NonMaxSuppression over boxes offset by class) and the first 20 kept. qforge converts its
    opset to 13 with the post-processing inside.
  * data/models/ops/tiny_det_image_opset11.onnx: the same detector (other random weights) taking
    one image [3, 32, 32] without a batch axis, as torchvision's detectors do: it adds the batch
    itself (Unsqueeze) and ends in the same post-processing. qforge gives such a model a batch
    axis when its data is images (graph/sample_axis.h).

Seeded; run: /usr/bin/python3 data/generate/nms_models.py
"""
import os

import numpy as np
import onnx
import torch
import torchvision
from onnx import helper, numpy_helper
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..")
GRID = 8      # the bundled detector's 8x8 cells
STRIDE = 4    # of 4x4 pixels
CLASSES = 10


def cell_centres():
    """[1, 2, 64]: x and y of each cell's centre in pixels, cells row by row."""
    k = np.arange(GRID * GRID)
    x = (k % GRID + 0.5) * STRIDE
    y = (k // GRID + 0.5) * STRIDE
    return np.stack([x, y])[None].astype(np.float32)


def yolo_nms():
    model = onnx.load(os.path.join(DATA, "models", "yolo_bn.onnx"))
    g = model.graph
    (raw,) = [o.name for o in g.output]
    del g.output[:]

    def const(name, value):
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, outputs, **attrs):
        g.node.append(helper.make_node(op, inputs, outputs, name="post_" + outputs[0], **attrs))

    axis1 = const("post_axis1", np.array([1], np.int64))
    node("Slice", [raw, const("post_0", np.array([0], np.int64)),
                   const("post_2", np.array([2], np.int64)), axis1], ["lt"])
    node("Slice", [raw, "post_2", const("post_4", np.array([4], np.int64)), axis1], ["rb"])
    node("Slice", [raw, "post_4", const("post_14", np.array([4 + CLASSES], np.int64)), axis1],
         ["class_scores"])
    centres = const("post_centres", cell_centres())
    node("Sub", [centres, "lt"], ["xy1"])
    node("Add", [centres, "rb"], ["xy2"])
    node("Concat", ["xy1", "xy2"], ["corners"], axis=1)
    node("Transpose", ["corners"], ["boxes"], perm=[0, 2, 1])
    node("NonMaxSuppression",
         ["boxes", "class_scores", const("post_max_boxes", np.array([3], np.int64)),
          const("post_iou", np.array([0.5], np.float32)),
          const("post_score", np.array([0.3], np.float32))], ["selected"])
    node("Gather", ["selected", const("post_batch_box", np.array([0, 2], np.int64))],
         ["batch_box"], axis=1)
    node("GatherND", ["boxes", "batch_box"], ["det_boxes"])
    node("GatherND", ["class_scores", "selected"], ["det_scores"])
    g.output.extend([
        helper.make_tensor_value_info("det_boxes", onnx.TensorProto.FLOAT, ["K", 4]),
        helper.make_tensor_value_info("det_scores", onnx.TensorProto.FLOAT, ["K"]),
        helper.make_tensor_value_info("selected", onnx.TensorProto.INT64, ["K", 3]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(DATA, "models", "yolo_nms.onnx"))

    # The tensors the post-processing reads, from PyTorch's output of the detector.
    out = np.load(os.path.join(DATA, "golden", "yolo_bn_output.npy"))
    centres_np = cell_centres()
    boxes = np.concatenate([centres_np - out[:, 0:2], centres_np + out[:, 2:4]], axis=1)
    np.save(os.path.join(DATA, "golden", "yolo_nms_boxes.npy"),
            boxes.transpose(0, 2, 1).astype(np.float32))
    np.save(os.path.join(DATA, "golden", "yolo_nms_class_scores.npy"),
            out[:, 4:4 + CLASSES].astype(np.float32))


class TinyDetector(nn.Module):
    """A conv body on 32x32 images, one anchor per cell of an 8x8 grid: box offsets and sizes,
    three class logits; the post-processing of torchvision's detectors."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(16, 4 + 3, 1)
        self.register_buffer("centres", torch.from_numpy(cell_centres()[0].T.copy()))

    def forward(self, x):
        h = self.head(self.body(x)).flatten(2).transpose(1, 2)[0]  # [64, 7]
        xy = self.centres + h[:, :2] * STRIDE
        wh = torch.exp(h[:, 2:4].clamp(max=3.0)) * STRIDE
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
        scores, labels = h[:, 4:].sigmoid().max(dim=1)
        keep = torch.where(scores > 0.2)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)[:20]
        return boxes[keep], scores[keep], labels[keep]


def export_detector(model, seed, x_shape, name):
    """`model` (seeded by `seed`, BN statistics drawn so that folding them matters) exported at
    opset 11 on a random input of `x_shape` to data/models/ops/<name>."""
    torch.manual_seed(seed)
    model = model().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(*x_shape)
    path = os.path.join(DATA, "models", "ops", name)
    torch.onnx.export(model, x, path, opset_version=11, input_names=["image"],
                      output_names=["det_boxes", "det_scores", "det_labels"])
    onnx.checker.check_model(onnx.load(path))


class TinyImageDetector(TinyDetector):
    """TinyDetector on one image [3, 32, 32], batched inside."""

    def forward(self, image):
        return super().forward(image[None])


def main():
    torch.set_num_threads(1)
    yolo_nms()
    export_detector(TinyDetector, 7, (1, 3, 32, 32), "tiny_det_nms_opset11.onnx")
    export_detector(TinyImageDetector, 11, (3, 32, 32), "tiny_det_image_opset11.onnx")


if __name__ == "__main__":
    main()

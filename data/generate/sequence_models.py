#!/usr/bin/python3
"""Small models of sequence values and loops for tests/graph/loop_unroll_test.cpp (the import's
unrolling of constant-count Loops and resolution of sequences, graph/loop_unroll.h):

  * data/models/ops/tensor_split_opset17.onnx: x [1, 4, 6, 5] -> y [1, 4, 11, 5], as torch.onnx
    writes `torch.tensor_split` at opset 17 (torchvision's MViT splits its class token so):
    a SequenceEmpty, a Loop of a constant trip count (the number of split indices) whose body
    Gathers each piece's start and end with the iteration number, Slices a tensor of the graph
    around it and SequenceInserts the piece, one more SequenceInsert after it, and SequenceAt
    reads of the pieces. A 1x1 Conv, `tensor_split(x, (1,), dim=2)` (two pieces, one
    iteration) and `tensor_split(x, (1, 3), dim=1)` (three pieces, two iterations), a MatMul
    of one piece, a product of two, and Concats of the pieces. Seeded weights.
  * data/models/ops/sequence_ops_opset17.onnx: x [2, 3, 4] -> y [2, 3, 4], z [2, 8, 4],
    n [] (int64), s [3, 2, 4], built with onnx.helper from the ops torch.onnx does not write
    for tensor_split: SequenceConstruct, SequenceInsert at a position, SequenceErase,
    SequenceLength, ConcatFromSequence with and without new_axis, SplitToSequence with a split
    list and with none (keepdims 0), and a Loop of 3 iterations with a carried value and a
    scan output whose body reads a value of the graph around it.
  * data/models/ops/sequence_ops_opset11.onnx: the same at opset 11 (ReduceSum's axes an
    attribute), where the Split, Squeeze and Unsqueeze the import writes take theirs as
    attributes too, before the version converter brings the model to 13.

Seeded; run: /usr/bin/python3 data/generate/sequence_models.py
"""
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = os.path.join(HERE, "..", "models", "ops")


class TensorSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.proj = nn.Parameter(torch.randn(5, 5) * 0.5)

    def forward(self, x):
        x = self.conv(x)
        top, rest = torch.tensor_split(x, indices=(1,), dim=2)
        a, b, c = torch.tensor_split(x, (1, 3), dim=1)
        pieces = torch.cat([torch.matmul(a, self.proj), b, c + 1], 1)
        return torch.cat([rest * top, pieces], 2)


def export_tensor_split():
    torch.manual_seed(0)
    model = TensorSplit().eval()
    x = torch.from_numpy(np.random.RandomState(0).randn(1, 4, 6, 5).astype(np.float32))
    path = os.path.join(OPS, "tensor_split_opset17.onnx")
    torch.onnx.export(model, x, path, opset_version=17, input_names=["x"], output_names=["y"])
    ops = {n.op_type for n in onnx.load(path).graph.node}
    missing = {"SequenceEmpty", "Loop", "SequenceInsert", "SequenceAt"} - ops
    assert not missing, f"torch.onnx no longer writes {missing} for tensor_split"
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def build_sequence_ops(opset):
    h = helper
    # Loop body: carried acc -> acc + x[:, i] (x of the graph around it), scan output acc * 2.
    body = h.make_graph(
        [
            h.make_node("Gather", ["x", "i"], ["row"], name="row", axis=1),
            h.make_node("Add", ["acc_in", "row"], ["acc_out"], name="accumulate"),
            h.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
            h.make_node("Mul", ["acc_out", "two"], ["doubled"], name="double"),
        ],
        "body",
        [h.make_tensor_value_info("i", TensorProto.INT64, []),
         h.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         h.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 4])],
        [h.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         h.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 4]),
         h.make_tensor_value_info("doubled", TensorProto.FLOAT, [2, 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")])
    zeros = numpy_helper.from_array(np.zeros((2, 4), dtype=np.float32), "zeros")
    nodes = [
        h.make_node("Relu", ["x"], ["r"], name="relu"),
        h.make_node("Neg", ["x"], ["m"], name="neg"),
        h.make_node("SequenceConstruct", ["x", "r"], ["seq"], name="construct"),
        h.make_node("SequenceInsert", ["seq", "m", "zero"], ["seq2"], name="insert_front"),
        h.make_node("SequenceErase", ["seq2", "one_scalar"], ["seq3"], name="erase_middle"),
        h.make_node("SequenceLength", ["seq3"], ["n"], name="length"),
        h.make_node("ConcatFromSequence", ["seq3"], ["stacked"], name="stack", axis=1,
                    new_axis=1),  # [2, 2, 3, 4]
        # ReduceSum takes its axes as an input from opset 13, as an attribute before.
        h.make_node("ReduceSum", ["stacked", "one"], ["y"], name="sum_stack", keepdims=0)
        if opset >= 13 else
        h.make_node("ReduceSum", ["stacked"], ["y"], name="sum_stack", keepdims=0, axes=[1]),
        h.make_node("SplitToSequence", ["x", "split_sizes"], ["parts"], name="split_rows",
                    axis=1),  # [2, 1, 4], [2, 2, 4]
        h.make_node("SequenceAt", ["parts", "minus_one"], ["last_part"], name="last_part"),
        h.make_node("ConcatFromSequence", ["seq3"], ["joined"], name="join", axis=1),
        h.make_node("Concat", ["joined", "last_part"], ["z0"], name="join_last", axis=1),
        h.make_node("Slice", ["z0", "zero_1d", "eight", "one"], ["z"], name="first_eight"),
        h.make_node("Loop", ["three", "", "zeros_init"], ["acc", "scanned"], name="rows",
                    body=body),
        h.make_node("SplitToSequence", ["scanned"], ["per_step"], name="per_step", axis=0,
                    keepdims=0),
        h.make_node("SequenceAt", ["per_step", "one_scalar"], ["second"], name="second_step"),
        h.make_node("Add", ["scanned", "second"], ["s0"], name="add_second"),
        h.make_node("Add", ["s0", "acc"], ["s"], name="add_acc"),
        h.make_node("Constant", [], ["three"], name="three",
                    value=numpy_helper.from_array(np.array(3, dtype=np.int64))),
        h.make_node("Identity", ["zeros"], ["zeros_init"], name="zeros_init"),
    ]
    # The Constant and the Identity are written before their readers.
    nodes = nodes[-2:] + nodes[:-2]
    graph = h.make_graph(
        nodes, "sequence_ops",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4]),
         h.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8, 4]),
         h.make_tensor_value_info("n", TensorProto.INT64, []),
         h.make_tensor_value_info("s", TensorProto.FLOAT, [3, 2, 4])],
        initializer=[ints("zero", 0), ints("minus_one", -1), ints("one", [1]),
                     ints("one_scalar", 1), ints("zero_1d", [0]), ints("eight", [8]),
                     ints("split_sizes", [1, 2]), zeros])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(OPS, f"sequence_ops_opset{opset}.onnx")
    onnx.save(model, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    export_tensor_split()
    build_sequence_ops(17)
    build_sequence_ops(11)


if __name__ == "__main__":
    main()

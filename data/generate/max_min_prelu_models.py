"""Max, Min and PRelu in one graph with PyTorch's outputs and gradients, for
tests/runtime/max_min_prelu_training_test.cpp.

max_min_prelu.onnx (onnx.helper, opset 17): a = x + s (s a zero parameter of x's shape, so that
a's gradient is a parameter's), then
    y0 = Max(a, p, q) + Min(a, p) + Max(a) + Min(p, q, a) + PRelu(a, slope[C, 1, 1])
         + PRelu(a, k[1])
with p [1, C, 1, 1] and q [W] broadcast (Min(p, q, a): the first two broadcast to less than the
output). The input holds exact ties on purpose: elements equal
to p's channel value, to q's column value, to both, and zeros (PRelu's kink). PyTorch's
reference is torch.amax / amin over the broadcast inputs stacked (three inputs: ties share the
gradient evenly), torch.minimum (two inputs: ties halve it) and F.prelu (the slope's side at 0).

max_min_prelu.npz: the input x, PyTorch's output y0, an output gradient dy0 and the gradient of
Σ y0·dy0 of every parameter as grad/<initializer name>.

Run: /usr/bin/python3 data/generate/max_min_prelu_models.py (seconds)."""
import os

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "models", "ops")


def main():
    g = torch.Generator().manual_seed(7)
    n, c, h, w = 2, 3, 4, 5
    p = torch.randn(1, c, 1, 1, generator=g)
    q = torch.randn(w, generator=g)
    q[1] = p[0, 1, 0, 0]  # column 1 of channel 1 ties p and q wherever x takes that value
    x = torch.randn(n, c, h, w, generator=g)
    x[0, 0, 0, 0] = p[0, 0, 0, 0]  # ties p
    x[0, 2, 1, 3] = p[0, 2, 0, 0]
    x[1, 0, 2, 2] = q[2]  # ties q
    x[1, 1, 3, 1] = p[0, 1, 0, 0]  # ties p and q: a three-way tie
    x[0, 1, 2, 1] = p[0, 1, 0, 0]
    x[1, 2, 0, 4] = 0.0  # PRelu's kink
    x[0, 1, 1, 2] = 0.0
    slope = torch.rand(c, 1, 1, generator=g) * 0.5
    k = torch.tensor([0.2])

    s = torch.zeros(n, c, h, w, requires_grad=True)
    params = {"s": s, "p": p.requires_grad_(), "q": q.requires_grad_(),
              "slope": slope.requires_grad_(), "k": k.requires_grad_()}
    a = x + s
    stacked = torch.stack(torch.broadcast_tensors(a, p, q))
    y = (stacked.amax(0) + torch.minimum(a, p) + a +
         torch.stack(torch.broadcast_tensors(p, q, a)).amin(0) + F.prelu(a, slope.reshape(c)) +
         F.prelu(a, k))
    dy = torch.randn(y.shape, generator=g)
    (y * dy).sum().backward()

    nodes = [
        helper.make_node("Add", ["x", "s"], ["a"], name="shift"),
        helper.make_node("Max", ["a", "p", "q"], ["max3"], name="max3"),
        helper.make_node("Min", ["a", "p"], ["min2"], name="min2"),
        helper.make_node("Max", ["a"], ["max1"], name="max1"),
        helper.make_node("Min", ["p", "q", "a"], ["min3"], name="min3"),
        helper.make_node("PRelu", ["a", "slope"], ["prelu_channel"], name="prelu_channel"),
        helper.make_node("PRelu", ["a", "k"], ["prelu_scalar"], name="prelu_scalar"),
        helper.make_node("Add", ["max3", "min2"], ["sum1"], name="sum1"),
        helper.make_node("Add", ["sum1", "max1"], ["sum2"], name="sum2"),
        helper.make_node("Add", ["sum2", "prelu_channel"], ["sum3"], name="sum3"),
        helper.make_node("Add", ["sum3", "prelu_scalar"], ["sum4"], name="sum4"),
        helper.make_node("Add", ["sum4", "min3"], ["y0"], name="sum5"),
    ]
    inits = [numpy_helper.from_array(t.detach().numpy(), name) for name, t in params.items()]
    graph = helper.make_graph(
        nodes, "max_min_prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [n, c, h, w])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(OUT, exist_ok=True)
    onnx.save(model, os.path.join(OUT, "max_min_prelu.onnx"))
    arrays = {"x": x.numpy(), "y0": y.detach().numpy(), "dy0": dy.numpy()}
    for name, t in params.items():
        arrays["grad/" + name] = t.grad.numpy()
    np.savez(os.path.join(OUT, "max_min_prelu.npz"), **arrays)


if __name__ == "__main__":
    main()

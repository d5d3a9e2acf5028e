"""InstanceNormalization and GroupNormalization models with PyTorch's outputs and gradients, for
tests/runtime/norm_ops_test.cpp.

- instance_group_norm.onnx: Conv -> nn.GroupNorm(3, 6) -> nn.InstanceNorm2d(6, affine=True)
  -> Conv -> nn.InstanceNorm2d(4) (affine=False), exported by torch.onnx at opset 17. torch 1.13
  writes nn.GroupNorm as Reshape -> InstanceNormalization (scale 1, bias 0 per group) ->
  Reshape -> Mul -> Add, and the affine-free InstanceNorm2d with constant scale and bias.
  instance_group_norm_opset11.onnx: the same module exported at opset 11.
- group_norm_opset18.onnx, group_norm_opset21.onnx: one GroupNormalization node built with
  onnx.helper (torch 1.13 does not write the op), behind a Mul by a per-channel weight so that
  the input's gradient reaches a parameter: scale and bias per group (opset 18's form) or per
  channel (opset 21's). PyTorch's reference is F.group_norm on the same values, the per-group
  parameters repeated over each group's channels.

Each <name>.npz holds the input x, PyTorch's output y0, an output gradient dy0 and every
parameter's gradient of Σ y0·dy0 as grad/<initializer name>.

Run: /usr/bin/python3 data/generate/norm_models.py (seconds)."""
import os

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "models", "ops")


class NormChain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.group = torch.nn.GroupNorm(3, 6)
        self.instance = torch.nn.InstanceNorm2d(6, affine=True)
        self.conv2 = torch.nn.Conv2d(6, 4, 1)
        self.plain = torch.nn.InstanceNorm2d(4)

    def forward(self, x):
        y = self.instance(self.group(self.conv1(x)))
        return self.plain(self.conv2(torch.relu(y)))


def output_gradient(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def export_chain():
    torch.manual_seed(3)
    model = NormChain().eval()
    with torch.no_grad():  # affine parameters away from their 1 and 0 initial values
        for p in (model.group.weight, model.group.bias, model.instance.weight,
                  model.instance.bias):
            p.add_(torch.randn(p.shape) * 0.3)
    x = torch.randn(2, 3, 5, 7)
    for opset, name in ((17, "instance_group_norm"), (11, "instance_group_norm_opset11")):
        torch.onnx.export(model, (x,), os.path.join(OUT, name + ".onnx"), opset_version=opset,
                          input_names=["x"], output_names=["y0"], do_constant_folding=True)
    exported = onnx.load(os.path.join(OUT, "instance_group_norm.onnx")).graph
    shapes = {i.name: tuple(i.dims) for i in exported.initializer}
    # The export folds nn.GroupNorm's weight and bias into [C, 1, 1] initializers of its Mul and
    # Add under names of their own.
    onnx_name = {}
    for node in exported.node:
        if node.op_type in ("Mul", "Add") and node.input[1] in shapes:
            onnx_name["group.weight" if node.op_type == "Mul" else "group.bias"] = node.input[1]
    y = model(x)
    dy = output_gradient(y.shape, 4)
    model.zero_grad()
    (y * dy).sum().backward()
    arrays = {"x": x.numpy(), "y0": y.detach().numpy(), "dy0": dy.numpy()}
    for name, p in model.named_parameters():
        name = onnx_name.get(name, name)
        assert name in shapes, f"{name} is not an initializer of the export"
        arrays["grad/" + name] = p.grad.numpy().reshape(shapes[name])
    assert len(arrays) == 3 + len(shapes), "every initializer is a parameter with a gradient"
    np.savez(os.path.join(OUT, "instance_group_norm.npz"), **arrays)


def export_group_norm_node(opset, groups=3, channels=6):
    g = torch.Generator().manual_seed(opset)
    x = torch.randn(2, channels, 4, 5, generator=g)
    params = channels if opset >= 21 else groups
    w = (torch.rand(1, channels, 1, 1, generator=g) + 0.5).requires_grad_()
    scale = (torch.rand(params, generator=g) + 0.5).requires_grad_()
    bias = (torch.randn(params, generator=g) * 0.5).requires_grad_()
    epsilon = 1e-3
    repeat = channels // params
    y = F.group_norm(x * w, groups, scale.repeat_interleave(repeat),
                     bias.repeat_interleave(repeat), epsilon)
    dy = output_gradient(y.shape, 10 + opset)
    (y * dy).sum().backward()

    name = f"group_norm_opset{opset}"
    inits = [numpy_helper.from_array(t.detach().numpy(), n)
             for t, n in ((w, "w"), (scale, "scale"), (bias, "bias"))]
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"], name="weight"),
             helper.make_node("GroupNormalization", ["xw", "scale", "bias"], ["y0"],
                              name="group_norm", num_groups=groups, epsilon=epsilon)]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, list(y.shape))],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, os.path.join(OUT, name + ".onnx"))
    np.savez(os.path.join(OUT, name + ".npz"), x=x.numpy(), y0=y.detach().numpy(),
             dy0=dy.numpy(), **{"grad/w": w.grad.numpy(), "grad/scale": scale.grad.numpy(),
                                "grad/bias": bias.grad.numpy()})


def main():
    os.makedirs(OUT, exist_ok=True)
    export_chain()
    export_group_norm_node(18)
    export_group_norm_node(21)


if __name__ == "__main__":
    main()

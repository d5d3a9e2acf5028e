"""Small ONNX models for the end-to-end op tests (tests/runtime/decoder_ops_test.cpp): Split,
Resize, ConvTranspose, Exp, Log, Softplus, Max, Min, Greater, Less and PRelu as torch.onnx
exports them (opset 17), a convolution upsampled to its input's size (conv_resize_to_input,
also run at other batches by tests/tools/batch_cli_test.cpp), plus Resize forms torch does not write (paddle's, the other nearest
roundings) built with onnx.helper. The test runs each in qforge and in ONNX Runtime on the same
random input. Writes data/models/ops/<name>.onnx, and for decoder_chain.onnx (Split, Resize and
ConvTranspose in one graph) PyTorch's outputs and parameter gradients in decoder_chain.npz for
the training test.

Run: /usr/bin/python3 data/generate/op_models.py (seconds)."""
import os

import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "models", "ops")


class SplitHalves(torch.nn.Module):  # YOLOv8's C2f.forward_split: split((c, c), 1)
    def forward(self, x):
        a, b = x.split((3, 3), 1)
        return a * 2.0, b


class SplitSizes(torch.nn.Module):  # split with explicit uneven sizes on the last axis
    def forward(self, x):
        a, b, c = torch.split(x, [3, 1, 5], dim=3)
        return torch.cat([c, a], 3) + 1.0, b


class ExpLogSoftplus(torch.nn.Module):  # and Mish, x · tanh(softplus(x)), as YOLOv4 uses it
    def forward(self, x):
        return torch.exp(x * 0.5) + torch.log(x * x + 1.0), x * torch.tanh(F.softplus(x))


class MaxMinCompare(torch.nn.Module):
    def forward(self, x):
        y = torch.maximum(x, x * -0.5) + torch.minimum(x, 0.3 * x + 0.1)
        return y, torch.where(x > 0.2, x, x * 2.0) + torch.where(x < -0.4, x * 0.5, x)


class Interpolate(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return F.interpolate(x, **self.kwargs) * 1.0


class ConvResizeToInput(torch.nn.Module):
    """A segmentation head as torchvision writes it: features at stride 2 upsampled bilinearly to
    the input's size, F.interpolate(size=x.shape[-2:]), which torch.onnx exports as Resize sizes
    computed by Shape -> Slice -> Concat."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def torch_models():
    torch.manual_seed(0)
    return [
        ("split_halves", SplitHalves(), (2, 6, 5, 7)),
        ("split_sizes", SplitSizes(), (1, 3, 4, 9)),
        ("exp_log_softplus", ExpLogSoftplus(), (2, 3, 5, 7)),
        ("max_min_compare", MaxMinCompare(), (2, 3, 5, 7)),
        ("prelu", torch.nn.PReLU(3, init=0.1), (2, 3, 5, 7)),
        ("resize_nearest_scale2", Interpolate(scale_factor=2.0, mode="nearest"), (2, 3, 5, 7)),
        ("resize_nearest_sizes", Interpolate(size=(13, 11), mode="nearest"), (1, 3, 5, 7)),
        ("resize_bilinear_scale2", Interpolate(scale_factor=2.0, mode="bilinear",
                                               align_corners=False), (2, 3, 5, 7)),
        ("resize_bilinear_align_corners", Interpolate(size=(9, 13), mode="bilinear",
                                                      align_corners=True), (1, 2, 4, 6)),
        ("resize_bilinear_down", Interpolate(size=(3, 5), mode="bilinear",
                                             align_corners=False), (1, 2, 7, 11)),
        ("conv_transpose_k2s2", torch.nn.ConvTranspose2d(6, 4, 2, stride=2), (2, 6, 5, 7)),
        ("conv_transpose_k3s2_output_padding",
         torch.nn.ConvTranspose2d(5, 6, 3, stride=2, padding=1, output_padding=1), (1, 5, 6, 7)),
        ("conv_transpose_grouped_dilated",
         torch.nn.ConvTranspose2d(6, 9, 3, stride=(2, 3), padding=(2, 1), output_padding=(1, 2),
                                  groups=3, dilation=2), (1, 6, 5, 4)),
        ("conv_transpose_depthwise_k4s2",
         torch.nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=4, bias=False),
         (2, 4, 5, 5)),
        ("conv_resize_to_input", ConvResizeToInput(), (1, 3, 9, 13)),
    ]


def export_torch(name, module, shape):
    module.eval()
    x = torch.randn(*shape)
    path = os.path.join(OUT, name + ".onnx")
    with torch.no_grad():
        outputs = module(x)
    count = len(outputs) if isinstance(outputs, tuple) else 1
    torch.onnx.export(module, (x,), path, opset_version=17, input_names=["x"],
                      output_names=[f"y{i}" for i in range(count)], do_constant_folding=True)
    return path


def resize_model(name, shape, mode, coordinates, nearest=None, scales=None, sizes=None):
    """One Resize node with scales or sizes as initializers (roi empty)."""
    inputs = ["x", "", "", ""]
    inits = []
    if scales is not None:
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [4], scales))
        inputs[2] = "scales"
        out = [int(d * s) for d, s in zip(shape, scales)]
        inputs = inputs[:3]
    else:
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [4], sizes))
        inputs[3] = "sizes"
        out = list(sizes)
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates}
    if nearest:
        attrs["nearest_mode"] = nearest
    node = helper.make_node("Resize", inputs, ["y0"], name="resize", **attrs)
    graph = helper.make_graph(
        [node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, out)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(OUT, name + ".onnx")
    onnx.save(model, path)
    return path


def helper_models():
    return [
        ("resize_nearest_half_pixel_prefer_ceil", (1, 2, 5, 7), "nearest", "half_pixel",
         "round_prefer_ceil", [1, 1, 0.5, 0.6], None),
        ("resize_nearest_align_corners", (1, 2, 4, 5), "nearest", "align_corners",
         "round_prefer_floor", None, [1, 2, 7, 9]),
        ("resize_nearest_pytorch_half_pixel_ceil", (2, 1, 6, 3), "nearest", "pytorch_half_pixel",
         "ceil", None, [2, 1, 11, 1]),
        ("resize_linear_asymmetric", (1, 3, 5, 6), "linear", "asymmetric", None,
         [1, 1, 2, 1.5], None),
        ("resize_linear_pytorch_half_pixel", (1, 2, 5, 6), "linear", "pytorch_half_pixel", None,
         None, [1, 2, 1, 13]),
    ]


class DecoderChain(torch.nn.Module):
    """ConvTranspose -> bilinear and nearest upsampling -> Split, the decoder ops in one graph for
    the training test: PyTorch's gradients of every parameter are the golden."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.grouped = torch.nn.ConvTranspose2d(6, 6, 2, stride=2, groups=2)

    def forward(self, x):
        y = F.interpolate(self.up(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        a, b = y.split((2, 4), 1)
        b = F.interpolate(self.grouped(torch.cat([b, a], 1)), size=(13, 17), mode="nearest")
        return a, b


def export_chain_golden():
    """decoder_chain.onnx and .npz: input x, output gradients dy0 and dy1, the outputs y0, y1
    and every parameter's gradient of Σ y0·dy0 + y1·dy1, keyed by initializer name."""
    import numpy as np

    torch.manual_seed(1)
    model = DecoderChain().eval()
    x = torch.randn(2, 4, 3, 4)
    path = export_torch("decoder_chain", model, tuple(x.shape))
    onnx_model = onnx.load(path)
    names = {init.name for init in onnx_model.graph.initializer}
    y0, y1 = model(x)
    g = torch.Generator().manual_seed(2)
    dy0, dy1 = torch.randn(y0.shape, generator=g), torch.randn(y1.shape, generator=g)
    model.zero_grad()
    ((y0 * dy0).sum() + (y1 * dy1).sum()).backward()
    arrays = {"x": x.numpy(), "dy0": dy0.numpy(), "dy1": dy1.numpy(),
              "y0": y0.detach().numpy(), "y1": y1.detach().numpy()}
    for name, p in model.named_parameters():
        assert name in names, f"{name} is not an initializer of the export"
        arrays["grad/" + name] = p.grad.numpy()
    np.savez(os.path.join(OUT, "decoder_chain.npz"), **arrays)


def main():
    os.makedirs(OUT, exist_ok=True)
    export_chain_golden()
    for name, module, shape in torch_models():
        print(export_torch(name, module, shape))
    for name, shape, mode, coordinates, nearest, scales, sizes in helper_models():
        print(resize_model(name, shape, mode, coordinates, nearest, scales, sizes))


if __name__ == "__main__":
    main()

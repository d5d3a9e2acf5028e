#!/usr/bin/python3
"""PyTorch's gradients through fake quant for single fused modules, the reference of
tests/quant/fake_quant_module_golden_test.cpp.

Each module is a tiny float model exported to ONNX (BatchNormalization kept, as the bundled
`_bn` models are) and a fixed input. PyTorch then computes, on the same weights, what
quantization-aware training computes for it:
  * the module's input through torch.fake_quantize_per_tensor_affine at a given scale
    (scale = amax / 127 in float32, zero point 0, integers [-128, 127]);
  * the weight through torch.fake_quantize_per_channel_affine along its output channels, its
    scale max |w| / 127 per channel; with a BatchNorm the weight first folded with the running
    statistics, W·γ/sqrt(var + eps) (in float64, then rounded to float32), the convolution's
    output divided by that factor again (in float32), the conv bias added, and the BatchNorm
    applied in training mode (batch statistics), as PyTorch's fused ConvBn QAT modules do;
  * a fixed random output gradient, backpropagated.
Written to data/golden/fake_quant/<module>.onnx and <module>.npz: the input `x`, the output
gradient `dy`, the activation amax `amax`, the output `y`, and `grad/<initializer>` for every
parameter that gets a gradient, keyed by its ONNX initializer name.
"""
import os

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden", "fake_quant")
EPS = 1e-5


def act_scale(amax):
    return float(np.float32(amax) / np.float32(127.0))


def fq_tensor(x, amax):
    return torch.fake_quantize_per_tensor_affine(x, act_scale(amax), 0, -128, 127)


def fq_channels(w):
    amax = w.detach().abs().reshape(w.shape[0], -1).max(dim=1).values
    scale = (amax / torch.tensor(127.0, dtype=torch.float32)).to(torch.float32)
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)


class ConvBNReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 7, 3, stride=1, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(7, eps=EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))

    def qat(self, x, amax):
        """The simulated folding, on the module's own parameters."""
        w, g, var = self.conv.weight, self.bn.weight, self.bn.running_var
        factor64 = g.double() / torch.sqrt(var.double() + EPS)
        folded = (w.double() * factor64.reshape(-1, 1, 1, 1)).float()
        y = F.conv2d(fq_tensor(x, amax), fq_channels(folded), None, 1, 1)
        y = y / factor64.float().reshape(1, -1, 1, 1) + self.conv.bias.reshape(1, -1, 1, 1)
        y = F.batch_norm(y, self.bn.running_mean.clone(), self.bn.running_var.clone(),
                         self.bn.weight, self.bn.bias, True, 0.1, EPS)
        return F.relu(y)


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(11, 6)

    def forward(self, x):
        return self.fc(x)

    def qat(self, x, amax):
        return F.linear(fq_tensor(x, amax), fq_channels(self.fc.weight), self.fc.bias)


def initializer_names(path, module):
    """ONNX initializer name by parameter tensor (matched by value)."""
    model = onnx.load(path)
    names = {}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        for pname, p in module.named_parameters():
            if p.shape == a.shape and np.array_equal(p.detach().numpy(), a):
                names[pname] = t.name
    return names


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    cases = [("conv_bn_relu", ConvBNReLU(), (4, 5, 6, 6)), ("linear", Linear(), (8, 11))]
    for name, module, shape in cases:
        module.eval()
        if isinstance(module, ConvBNReLU):
            with torch.no_grad():
                module.bn.running_mean.uniform_(-0.3, 0.3)
                module.bn.running_var.uniform_(0.5, 2.0)
                module.bn.weight.uniform_(0.5, 1.5)
                module.bn.bias.uniform_(-0.2, 0.2)
        x = torch.randn(*shape)
        path = os.path.join(OUT, name + ".onnx")
        torch.onnx.export(module, x, path, input_names=["input"], output_names=["output"],
                          opset_version=17, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False)
        names = initializer_names(path, module)
        amax = float(np.float32(x.abs().max().item() * 0.8))  # some of the input clips
        module.train()
        y = module.qat(x, amax)
        dy = torch.randn_like(y)
        module.zero_grad()
        y.backward(dy)
        arrays = {"x": x.numpy(), "dy": dy.numpy(), "y": y.detach().numpy(),
                  "amax": np.array(amax, dtype=np.float32)}
        for pname, p in module.named_parameters():
            if p.grad is not None:
                arrays["grad/" + names[pname]] = p.grad.numpy()
        np.savez(os.path.join(OUT, name + ".npz"), **arrays)
        print(name, sorted(arrays))


if __name__ == "__main__":
    main()

"""Small ONNX models of assignments to slices, as torch.onnx writes them (opset 17): MViT's
relative positions add to a box of the attention scores (`attn[:, :, 1:, 1:] += rel`), a stepped
box is overwritten (`o[:, ::2] = ...`), and positions are assigned in another order
(`o[:, [3, 1]] = o[:, [5, 7]]`). Each is a ScatterND whose indices torch computes from aranges
expanded over the box; qforge runs the boxes as SliceUpdate (graph/slice_update.h) and the last
as a ScatterND. Tests: tests/runtime/slice_update_test.cpp.

Writes data/models/ops/:
- slice_assign_opset17.onnx: batch 1 fixed (torch writes the batch's arange as a constant), the
  three assignments;
- slice_assign_dynamic_opset17.onnx: a symbolic batch, the two boxes (torch's export of the
  reordered assignment fixes the batch);
- slice_assign.npz: the fixed model's input x, an output gradient dy0, PyTorch's output y0 and
  every parameter's gradient of sum(y0 * dy0), keyed grad/<initializer name>.

Run: /usr/bin/python3 data/generate/slice_assign_models.py (seconds)."""
import os

import numpy as np
import onnx
import onnx.numpy_helper
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "models", "ops")


class SliceAssign(torch.nn.Module):
    """A convolution's 4x4 map as 16 tokens behind a class token, one two-head attention whose
    scores get a relative-position term on the token box, then the two overwrites."""

    def __init__(self, reorder=True):
        super().__init__()
        self.reorder = reorder
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8) * 0.5)
        self.qkv = torch.nn.Linear(8, 24)
        self.rel = torch.nn.Parameter(torch.randn(2, 4, 16) * 0.3)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        b = x.shape[0]
        t = self.conv(x).relu().flatten(2).transpose(1, 2)  # [B, 16, 8]
        t = torch.cat([self.cls.expand(b, -1, -1), t], 1)  # [B, 17, 8]
        q, k, v = self.qkv(t).reshape(b, 17, 3, 2, 4).permute(2, 0, 3, 1, 4)
        attn = q @ k.transpose(-2, -1) * 0.5  # [B, 2, 17, 17]
        attn[:, :, 1:, 1:] += q[:, :, 1:] @ self.rel  # MViT's decomposed relative positions
        attn = attn.softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(b, 17, 8)
        o[:, ::2] = o[:, ::2] * 2.0  # a box of step 2
        if self.reorder:
            o[:, [3, 1]] = o[:, [5, 7]]  # no box: the positions run backwards
        return self.head(o.mean(1))


def export(model, name, x, dynamic):
    path = os.path.join(OUT, name)
    torch.onnx.export(model, x, path, opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "ScatterND" in ops, f"{name}: expected ScatterND nodes"
    return path


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = SliceAssign().eval()
    x = torch.randn(1, 3, 4, 4)
    path = export(model, "slice_assign_opset17.onnx", x, dynamic=False)
    dynamic = SliceAssign(reorder=False).eval()
    dynamic.load_state_dict(model.state_dict())
    print(export(dynamic, "slice_assign_dynamic_opset17.onnx", x, dynamic=True))

    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    y = model(x)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    model.zero_grad()
    (y * dy).sum().backward()
    arrays = {"x": x.numpy(), "dy0": dy.numpy(), "y0": y.detach().numpy()}
    for name, p in model.named_parameters():
        if name in inits:
            arrays["grad/" + name] = p.grad.numpy()
            continue
        # A Linear's weight on tokens is written transposed, for a MatMul: its gradient too.
        match = [n for n, v in inits.items() if np.array_equal(v, p.detach().numpy().T)]
        assert len(match) == 1, f"{name}: no initializer of the export holds it"
        arrays["grad/" + match[0]] = np.ascontiguousarray(p.grad.numpy().T)
    np.savez(os.path.join(OUT, "slice_assign.npz"), **arrays)
    print(path)


if __name__ == "__main__":
    main()

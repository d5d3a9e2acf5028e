"""Small ONNX models of the ops users' models brought (tests/runtime/user_ops_test.cpp):
Upsample as torch.onnx writes it at opset 9 (and at opsets 7 and 8, its scales an attribute),
Resize at opset 10, Tile, ArgMax, ReduceMax, ReduceSum (the axes
attribute and input forms) and Einsum equations (two terms of every kind of letter, three terms,
one term, '...', implicit outputs). The test runs each
in qforge and in ONNX Runtime on the same random input, and against the PyTorch outputs and
gradients written here:
  upsample9.npz      x, PyTorch's nearest output y0; y1 the bilinear output in ONNX's Upsample
                     semantics (asymmetric coordinates, computed here in float64): PyTorch's
                     own bilinear differs, as torch.onnx warns for opset 9
  reduce_chain.npz   x, dy0, dy1, the outputs and every parameter's gradient of
                     Σ y0·dy0 + y1·dy1 (Conv → Tile → ReduceMax with ties, ReduceSum)
  einsum.npz         a, b and PyTorch's output per equation
  einsum_net.npz     x, the outputs, dy<i> and every parameter's gradient of Σ y<i>·dy<i> of
                     einsum_net (exported at opsets 12 and 13)

Run: /usr/bin/python3 data/generate/user_op_models.py (seconds)."""
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from training_step import step_arrays

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "models", "ops")


def export(module, args, name, opset, input_names, output_names):
    path = os.path.join(OUT, name + ".onnx")
    torch.onnx.export(module, args, path, opset_version=opset, input_names=input_names,
                      output_names=output_names, do_constant_folding=True)
    return path


class Upsample9(torch.nn.Module):
    """Upsample between two ops, as a decoder has it: nearest by (2, 3), bilinear by 2."""

    def __init__(self):
        super().__init__()
        self.nearest = torch.nn.Upsample(scale_factor=(2.0, 3.0), mode="nearest")
        self.bilinear = torch.nn.Upsample(scale_factor=2.0, mode="bilinear")

    def forward(self, x):
        return self.nearest(x * 2.0) + 1.0, self.bilinear(x)


def upsample_asymmetric_linear(x, scale):
    """ONNX Upsample's linear mode: source coordinate = output / scale, clamped to the input."""
    n, c, h, w = x.shape
    oh, ow = int(h * scale), int(w * scale)
    y = np.zeros((n, c, oh, ow), np.float64)

    def taps(o, size):
        s = min(o / scale, size - 1)
        i0 = int(np.floor(s))
        i1 = min(i0 + 1, size - 1)
        return i0, i1, s - i0

    xd = x.astype(np.float64)
    for i in range(oh):
        h0, h1, lh = taps(i, h)
        for j in range(ow):
            w0, w1, lw = taps(j, w)
            y[:, :, i, j] = ((1 - lh) * ((1 - lw) * xd[:, :, h0, w0] + lw * xd[:, :, h0, w1]) +
                             lh * ((1 - lw) * xd[:, :, h1, w0] + lw * xd[:, :, h1, w1]))
    return y.astype(np.float32)


def upsample_models():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    model = Upsample9().eval()
    print(export(model, (x,), "upsample9", 9, ["x"], ["y0", "y1"]))
    with torch.no_grad():
        y0, _ = model(x)
    np.savez(os.path.join(OUT, "upsample9.npz"), x=x.numpy(), y0=y0.numpy(),
             y1=upsample_asymmetric_linear(x.numpy(), 2.0))


class ReduceChain(torch.nn.Module):
    """Conv → Tile (repeat) → ReduceMax over H, whose maxima are tied twice by the repeat, and
    ReduceSum over W and C: every backward of the new ops on PyTorch's gradients."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        t = self.conv(x).repeat(1, 2, 2, 3)
        return torch.amax(t, dim=2, keepdim=True) * 1.5, t.sum(dim=(1, 3))


def reduce_chain(opset):
    torch.manual_seed(1)
    model = ReduceChain().eval()
    x = torch.randn(2, 3, 5, 4)
    name = f"reduce_chain_opset{opset}"
    path = export(model, (x,), name, opset, ["x"], ["y0", "y1"])
    print(path)
    if opset != 17:
        return
    names = {init.name for init in onnx.load(path).graph.initializer}
    y0, y1 = model(x)
    g = torch.Generator().manual_seed(2)
    dy0, dy1 = torch.randn(y0.shape, generator=g), torch.randn(y1.shape, generator=g)
    model.zero_grad()
    ((y0 * dy0).sum() + (y1 * dy1).sum()).backward()
    arrays = {"x": x.numpy(), "dy0": dy0.numpy(), "dy1": dy1.numpy(),
              "y0": y0.detach().numpy(), "y1": y1.detach().numpy()}
    for pname, p in model.named_parameters():
        assert pname in names, f"{pname} is not an initializer of the export"
        arrays["grad/" + pname] = p.grad.numpy()
    np.savez(os.path.join(OUT, "reduce_chain.npz"), **arrays)


class ArgMaxes(torch.nn.Module):
    def forward(self, x):
        return torch.argmax(x, dim=1), torch.argmax(x, dim=-1, keepdim=True)


def save_helper_model(name, nodes, inputs, outputs, opset, inits=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset > 10 else 5 if opset > 8 else 4
    if opset <= 17:
        onnx.checker.check_model(model, full_check=True)
    path = os.path.join(OUT, name + ".onnx")
    onnx.save(model, path)
    print(path)


def helper_models():
    f = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", f, [2, 3, 4, 5])
    # ArgMax's select_last_index (torch writes 0 only), int64 outputs.
    save_helper_model(
        "argmax_select_last",
        [helper.make_node("ArgMax", ["x"], ["y0"], name="first", axis=2, keepdims=0),
         helper.make_node("ArgMax", ["x"], ["y1"], name="last", axis=-1, keepdims=1,
                          select_last_index=1)],
        [x], [helper.make_tensor_value_info("y0", TensorProto.INT64, [2, 3, 5]),
              helper.make_tensor_value_info("y1", TensorProto.INT64, [2, 3, 4, 1])], 13)
    # ReduceMax with its axes as an input (opset 18), noop_with_empty_axes, and ReduceSum with
    # no axes (all of them).
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, -1])
    none = helper.make_tensor("none", TensorProto.INT64, [0], [])
    save_helper_model(
        "reduce_opset18",
        [helper.make_node("ReduceMax", ["x", "axes"], ["y0"], name="max_axes", keepdims=0),
         helper.make_node("ReduceMax", ["x", "none"], ["y1"], name="max_noop",
                          noop_with_empty_axes=1),
         helper.make_node("ReduceSum", ["x"], ["y2"], name="sum_all", keepdims=1)],
        [x], [helper.make_tensor_value_info("y0", f, [2, 4]),
              helper.make_tensor_value_info("y1", f, [2, 3, 4, 5]),
              helper.make_tensor_value_info("y2", f, [1, 1, 1, 1])], 18, [axes, none])
    # Tile with repeats from an initializer, one of them 1.
    repeats = helper.make_tensor("repeats", TensorProto.INT64, [4], [1, 2, 1, 3])
    save_helper_model(
        "tile_repeats",
        [helper.make_node("Tile", ["x", "repeats"], ["y0"], name="tile")],
        [x], [helper.make_tensor_value_info("y0", f, [2, 6, 4, 15])], 13, [repeats])


def variadic_models():
    """The variadic Sum and Mean, which converters from other frameworks write: three inputs
    broadcast together and one alone, at opset 13; Mean of two at opset 8, which qforge converts
    to its own opset first."""
    f = TensorProto.FLOAT
    shapes = {"a": [2, 3, 4], "b": [3, 1], "c": [4]}
    save_helper_model(
        "sum_mean",
        [helper.make_node("Sum", ["a", "b", "c"], ["y0"], name="sum3"),
         helper.make_node("Mean", ["a", "b", "c"], ["y1"], name="mean3"),
         helper.make_node("Sum", ["b"], ["y2"], name="sum1"),
         helper.make_node("Mean", ["c"], ["y3"], name="mean1")],
        [helper.make_tensor_value_info(n, f, s) for n, s in shapes.items()],
        [helper.make_tensor_value_info("y0", f, [2, 3, 4]),
         helper.make_tensor_value_info("y1", f, [2, 3, 4]),
         helper.make_tensor_value_info("y2", f, [3, 1]),
         helper.make_tensor_value_info("y3", f, [4])], 13)
    save_helper_model(
        "mean_opset8",
        [helper.make_node("Mean", ["a", "b"], ["y0"], name="mean2")],
        [helper.make_tensor_value_info("a", f, [2, 3]),
         helper.make_tensor_value_info("b", f, [3])],
        [helper.make_tensor_value_info("y0", f, [2, 3])], 8)


def upsample_attribute_models():
    """Upsample at opsets 7 and 8, its scales an attribute (torch.onnx no longer writes these)."""
    f = TensorProto.FLOAT
    for opset in (7, 8):
        save_helper_model(
            f"upsample{opset}",
            [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Upsample", ["r"], ["y0"], name="up_nearest", mode="nearest",
                              scales=[1.0, 1.0, 2.0, 3.0]),
             helper.make_node("Upsample", ["r"], ["y1"], name="up_linear", mode="linear",
                              scales=[1.0, 1.0, 2.0, 2.0])],
            [helper.make_tensor_value_info("x", f, [2, 3, 5, 7])],
            [helper.make_tensor_value_info("y0", f, [2, 3, 10, 21]),
             helper.make_tensor_value_info("y1", f, [2, 3, 10, 14])], opset)


def resize10_models():
    """Resize at opset 10 (Upsample's semantics): nearest rounds down when upsampling and up when
    downsampling in ONNX Runtime; scales on both sides of 1 are refused by qforge."""
    f = TensorProto.FLOAT
    for name, mode, scales in [("resize10_nearest_down", "nearest", [1, 1, 0.5, 0.6]),
                               ("resize10_nearest_up", "nearest", [1, 1, 1.5, 2.5]),
                               ("resize10_linear", "linear", [1, 1, 1.7, 0.6]),
                               ("resize10_nearest_mixed", "nearest", [1, 1, 0.5, 2.0])]:
        out = [2, 3, int(7 * scales[2]), int(9 * scales[3])]
        save_helper_model(
            name, [helper.make_node("Resize", ["x", "scales"], ["y0"], name="resize", mode=mode)],
            [helper.make_tensor_value_info("x", f, [2, 3, 7, 9])],
            [helper.make_tensor_value_info("y0", f, out)], 10,
            [helper.make_tensor("scales", f, [4], scales)])


EINSUMS = [
    ("einsum_bmm", "bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    ("einsum_attention_scores", "bhqd,bhkd->bhqk", (2, 3, 5, 4), (2, 3, 6, 4)),
    ("einsum_ellipsis", "...ij,...jk->...ik", (2, 3, 4, 5), (2, 3, 5, 2)),
    ("einsum_transposed_output", "bik,bkj->bji", (2, 3, 4), (2, 4, 5)),
    ("einsum_weight", "bij,kj->bik", (2, 3, 4), (6, 4)),
    ("einsum_implicit", "ij,jk", (3, 4), (4, 5)),
    ("einsum_row_dot", "ij,ij->i", (3, 4), (3, 4)),
    ("einsum_dot", "ij,ij->", (3, 4), (3, 4)),
    ("einsum_outer", "bi,bj->bij", (2, 3), (2, 4)),
    ("einsum_two_contracted", "bijk,ljk->bil", (2, 3, 4, 5), (6, 4, 5)),
    ("einsum_own_batches", "bij,klj->bkil", (2, 3, 4), (5, 6, 4)),
    ("einsum_summed_alone", "bij,bk->bi", (2, 3, 4), (2, 5)),
    ("einsum_matrix_vector", "...j,j->...", (2, 3, 4), (4,)),
    ("einsum_ellipsis_dot", "...i,...i->...", (2, 3, 4), (2, 3, 4)),
]


class Einsum(torch.nn.Module):
    def __init__(self, equation):
        super().__init__()
        self.equation = equation

    def forward(self, a, b):
        return torch.einsum(self.equation, a, b)


class EinsumNet(torch.nn.Module):
    """Einsums of the input with parameters: three terms, a letter summed in one term alone, two
    contracted letters, '...', one term, an implicit output."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(6)
        for name, shape in [("w1", (4, 5)), ("w2", (5, 6)), ("w3", (3, 4)), ("w4", (4,)),
                            ("w5", (6, 3, 4))]:
            setattr(self, name, torch.nn.Parameter(torch.randn(*shape, generator=g)))

    def forward(self, x):
        return (torch.einsum("bij,jk,kl->bil", x, self.w1, self.w2),
                torch.einsum("bij,ij->bi", x, self.w3),
                torch.einsum("bij,lij->bl", x, self.w5),
                torch.einsum("...j,j->...", x, self.w4),
                torch.einsum("bij->jb", x * self.w3),
                torch.einsum("bij,jk,bil", x, self.w1, x @ self.w1 @ self.w2))


def einsum_net():
    """einsum_net_opset12/13.onnx; einsum_net.npz: x, the outputs, their gradients dy<i> and
    every parameter's gradient of the sum of y<i>·dy<i>."""
    torch.manual_seed(7)
    model = EinsumNet()
    x = torch.randn(2, 3, 4)
    for opset in (12, 13):
        export(model, (x,), f"einsum_net_opset{opset}", opset, ["x"],
               [f"y{i}" for i in range(6)])
        print(f"einsum_net_opset{opset}")
    arrays = step_arrays(model, x, 8)
    for pname, p in model.named_parameters():
        arrays["grad/" + pname] = p.grad.numpy()
    np.savez(os.path.join(OUT, "einsum_net.npz"), **arrays)


def einsum_models():
    torch.manual_seed(3)
    arrays = {}
    for name, equation, a_shape, b_shape in EINSUMS:
        a, b = torch.randn(*a_shape), torch.randn(*b_shape)
        export(Einsum(equation).eval(), (a, b), name, 12, ["a", "b"], ["y0"])
        print(name)
        arrays[name + "/a"] = a.numpy()
        arrays[name + "/b"] = b.numpy()
        arrays[name + "/y0"] = torch.einsum(equation, a, b).numpy()
    np.savez(os.path.join(OUT, "einsum.npz"), **arrays)
    # A diagonal (a letter twice in a term), refused naming the node.
    f = TensorProto.FLOAT
    save_helper_model(
        "einsum_diagonal",
        [helper.make_node("Einsum", ["a", "b"], ["y0"], name="diagonal", equation="ii,ij->j")],
        [helper.make_tensor_value_info("a", f, [4, 4]),
         helper.make_tensor_value_info("b", f, [4, 3])],
        [helper.make_tensor_value_info("y0", f, [3])], 12)


def main():
    os.makedirs(OUT, exist_ok=True)
    upsample_models()
    reduce_chain(17)
    reduce_chain(11)
    torch.manual_seed(4)
    export(ArgMaxes().eval(), (torch.randn(2, 3, 4, 5),), "argmax", 13, ["x"], ["y0", "y1"])
    helper_models()
    upsample_attribute_models()
    resize10_models()
    einsum_models()
    einsum_net()
    variadic_models()


if __name__ == "__main__":
    main()

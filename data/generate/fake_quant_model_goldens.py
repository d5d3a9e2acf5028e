#!/usr/bin/python3
"""PyTorch's whole-model gradients through fake quant, the reference of `qforge grad --fake-quant`
(tests/quant/fake_quant_model_golden_test.cpp).

For each bundled family, on the batch and labels of grad_goldens.py:
  * where the points are: qforge's own placement, read from the point table of
    `qforge calibrate <family>_bn.onnx --method max --report` (activation points by tensor name,
    weight points by module node, the number of attention softmax points) and its activation
    amax. Those are all this script takes from qforge: the forward and the backward are
    torch's own.
  * the model: data/models/<family>_bn.onnx run by a small interpreter written with torch ops,
    so torch autograd differentiates it and every initializer is a leaf keyed by its ONNX name
    (an Identity of an initializer is a leaf of its own, as qforge and grad_goldens.py count it).
    Before anything else, its float training-mode loss and gradients must match the PyTorch
    model's (data/golden/grad/<family>_bn_grads.npz), which proves the interpreter computes
    what models.py's module computes.
  * the activation ranges: max |x| at each point in an eval-mode float forward of the batch
    (BatchNorm on running statistics), what qforge's max calibration sees, must agree with the
    amax of qforge's report within 1e-5 relative; the fake-quant forward then uses the
    report's values, so that both sides quantize with the very same scales (a scale one float
    step apart already rounds a few values the other way, and one such value moves a deep
    quantized model's gradients by far more than float rounding does).
  * the fake-quant training forward: torch.fake_quantize_per_tensor_affine on every input that
    reads an activation point through its Q/DQ pair, the inputs of the modules that quantize
    it, while a skip connection into a plain Add reads the float tensor, as in qforge's graph
    (scale amax / 127 in float32, zero point 0, [-128, 127]), and after every attention
    Softmax (scale 1/127); torch.fake_quantize_per_channel_affine on every quantized weight
    along its output channels, scale max |w| / 127 per channel; a Conv that qforge folds into
    its BatchNormalization has the folding simulated as PyTorch's fused ConvBn QAT modules do
    (as fake_quant_goldens.py): the quantizer sees W·γ/sqrt(running var + eps), the output is
    divided by that factor again, the conv bias added, and the BatchNormalization follows in
    training mode (batch statistics). Then the mean cross-entropy against the labels and its
    backward.
Written to data/golden/fake_quant/<family>_bn_grads.npz: `loss`, the gradient of every
parameter under its ONNX initializer name (the keys of the float golden), and `amax/<tensor>`
for every activation point (by qforge's tensor name), the amax the golden was computed at.

With --diagnose nothing is written: `qforge grad --fake-quant --points` is compared with the
golden point by point (diagnose()).

Run: /usr/bin/python3 data/generate/fake_quant_model_goldens.py [--qforge build/tools/qforge]
     [--diagnose]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models  # noqa: E402
from train_export import GOLDEN_DIR, MODELS_DIR  # noqa: E402

OUT_DIR = os.path.join(GOLDEN_DIR, "fake_quant")
GRAD_DIR = os.path.join(GOLDEN_DIR, "grad")
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BN_MOMENTUM = 0.1
FLOAT_LOSS_TOLERANCE = 1e-5   # the interpreter against the PyTorch model, relative
FLOAT_GRAD_TOLERANCE = 1e-4   # relative L2, as training_golden_test.cpp
AMAX_TOLERANCE = 1e-5         # this script's max |x| against qforge's, relative
# A value this close to a .5 boundary (in steps of the scale) rounds either way in two correct
# implementations: the only integers the aligned golden takes from qforge.
ALIGN_DISTANCE = 1e-4

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.BOOL: torch.bool,
}


def attributes(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def quantizer_scale(amax):
    return float(np.float32(amax) / np.float32(127.0))


def fq_tensor(x, amax):
    return torch.fake_quantize_per_tensor_affine(x, quantizer_scale(amax), 0, -128, 127)


def qforge_dequantized(x, amax):
    """What qforge's quantizer gives x: ONNX QuantizeLinear's x / scale in float32, rounded half
    to even, clamped, times the scale. torch.fake_quantize_per_tensor_affine multiplies by the
    inverse scale instead, so a value within float noise of a .5 boundary now and then rounds
    the other way (x / scale exactly 11.5, x · (1 / scale) 11.499999)."""
    scale = torch.tensor(quantizer_scale(amax), dtype=torch.float32)
    return torch.clamp(torch.round(x.detach() / scale), -128, 127) * scale


def fq_as_qforge(x, amax):
    """fq_tensor's gradient with qforge's values."""
    out = fq_tensor(x, amax)
    return out + (qforge_dequantized(x, amax) - out).detach()


def fq_channels(w, axis):
    moved = w.movedim(axis, 0)
    amax = moved.detach().abs().reshape(moved.shape[0], -1).max(dim=1).values
    scale = (amax / torch.tensor(127.0, dtype=torch.float32)).to(torch.float32)
    zero = torch.zeros(moved.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, axis, -128, 127)


def as_ints(t):
    return [int(v) for v in t.reshape(-1).tolist()]


class Interpreter:
    """Runs an ONNX graph of the bundled families with torch ops (the ops they use, in the forms
    torch.onnx writes at opset 17)."""

    def __init__(self, path):
        self.model = onnx.load(path)
        g = self.model.graph
        self.initializers = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
                             for t in g.initializer}
        self.nodes = list(g.node)
        self.consumers = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.input_name = g.input[0].name
        self.output_name = g.output[0].name
        # --diagnose: qforge's values by tensor, put in place of this run's own at each
        # quantized read (their gradient passing straight through), and what differed.
        self.forced = None
        self.flips = {}
        self.pool_near_ties = 0
        self.pool_other_pick = False
        # The elements found different, with qforge's values there, by tensor; with inject,
        # only those elements take qforge's values in an otherwise unforced run.
        self.differing = {}
        self.inject = False

    def leaves(self):
        """Every float initializer, and every Identity alias of one, as a leaf tensor."""
        out = {}
        for name, t in self.initializers.items():
            if t.is_floating_point():
                out[name] = t.clone().requires_grad_(True)
        for node in self.nodes:
            if node.op_type == "Identity" and node.input[0] in out:
                out[node.output[0]] = out[node.input[0]].detach().clone().requires_grad_(True)
        return out

    def run(self, x, leaves, training, act_amax=None, weight_axes=None, folded=None,
            softmax_quant=False, observe=None):
        """act_amax: (node name, input index) -> amax of the fake quant on that input;
        weight_axes: node name -> output channel axis of its quantized weight; folded: the Conv
        nodes whose BN folding is simulated; observe: tensor names whose max |x| is recorded
        into a dict returned with the output."""
        act_amax = act_amax or {}
        weight_axes = weight_axes or {}
        folded = folded or set()
        env = dict(self.initializers)
        env.update(leaves)
        seen = {}

        def put(name, value):
            if observe is not None and name in observe:
                seen[name] = float(value.detach().abs().max())
            env[name] = value

        put(self.input_name, x)
        for node in self.nodes:
            if node.op_type == "Identity" and node.output[0] in leaves:
                continue
            ins = [env[n] if n else None for n in node.input]
            for i in range(len(ins)):
                if (node.name, i) in act_amax:
                    amax = act_amax[(node.name, i)]
                    if self.forced is not None:
                        ins[i] = fq_as_qforge(self.force(node.input[i], ins[i], amax), amax)
                    elif self.inject and node.input[i] in self.differing:
                        differ, theirs = self.differing[node.input[i]]
                        value = fq_tensor(ins[i], amax)
                        ins[i] = value + (torch.where(differ, theirs, value) - value).detach()
                    else:
                        ins[i] = fq_tensor(ins[i], amax)
            outs = self.op(node, ins, env, training, weight_axes, folded, softmax_quant)
            for name, value in zip(node.output, outs):
                if name:
                    put(name, value)
        return env[self.output_name], seen

    def force(self, name, value, amax):
        """qforge's value of tensor `name` in this run's layout, with this run's gradient; the
        integers both sides quantize it to (this run's value by torch's fake quant, qforge's by
        qforge's quantizer) are compared first."""
        mine = value.detach()
        theirs = qforge_layout(self.forced[name], mine)
        if name not in self.flips:
            scale = quantizer_scale(amax)
            ours = qforge_dequantized(theirs, amax)
            differ = torch.round(fq_tensor(mine, amax) / scale) != torch.round(ours / scale)
            q = (mine / scale)[differ]
            distance = float((q - torch.floor(q) - 0.5).abs().max()) if differ.any() else 0.0
            self.flips[name] = (int(differ.sum()), mine.numel(), distance)
            if differ.any():
                self.differing[name] = (differ, ours)
        # value - mine is exactly zero and carries this run's gradient.
        return value - mine + theirs

    def count_near_ties(self, x, kernel, strides, pads):
        """Max-pool windows whose two largest values are positive and within 1e-6 relative of
        each other without being equal: which one is the max is float rounding's choice."""
        x = F.pad(x.detach(), (pads[1], pads[1], pads[0], pads[0]), value=-float("inf"))
        windows = F.unfold(x, kernel, stride=strides)
        windows = windows.reshape(x.shape[0], x.shape[1], kernel[0] * kernel[1], -1)
        top = windows.topk(2, dim=2).values
        gap = top[:, :, 0] - top[:, :, 1]
        near = (gap > 0) & (gap <= 1e-6 * top[:, :, 0]) & (top[:, :, 0] > 0)
        self.pool_near_ties += int(near.sum())
        return near

    @staticmethod
    def pool_picking_the_other(x, near, kernel, strides, pads):
        """Max pooling where each window of `near` passes on (and sends its gradient to) its
        second largest value instead of its largest."""
        padded = F.pad(x, (pads[1], pads[1], pads[0], pads[0]), value=-float("inf"))
        windows = F.unfold(padded, kernel, stride=strides)
        windows = windows.reshape(x.shape[0], x.shape[1], kernel[0] * kernel[1], -1)
        order = windows.detach().topk(2, dim=2).indices
        pick = torch.where(near, order[:, :, 1], order[:, :, 0]).unsqueeze(2)
        out = windows.gather(2, pick).squeeze(2)
        height = (x.shape[2] + 2 * pads[0] - kernel[0]) // strides[0] + 1
        return out.reshape(x.shape[0], x.shape[1], height, -1)

    def weight(self, node, ins, weight_axes):
        w = ins[1]
        if node.name in weight_axes:
            w = fq_channels(w, weight_axes[node.name])
        return w

    def op(self, node, ins, env, training, weight_axes, folded, softmax_quant):
        a = attributes(node)
        t = node.op_type
        if t == "Identity" or t == "Dropout":
            return [ins[0]]
        if t == "Constant":
            return [torch.from_numpy(numpy_helper.to_array(a["value"]).copy())]
        if t == "Conv":
            return [self.conv(node, ins, a, env, weight_axes, folded)]
        if t == "BatchNormalization":
            x, g, b, mean, var = ins
            return [F.batch_norm(x, mean.detach().clone(), var.detach().clone(), g, b, training,
                                 1.0 - a.get("momentum", 0.9), a.get("epsilon", 1e-5))]
        if t == "Relu":
            return [F.relu(ins[0])]
        if t == "Sigmoid":
            return [torch.sigmoid(ins[0])]
        if t == "HardSwish":
            return [F.hardswish(ins[0])]
        if t == "HardSigmoid":
            return [torch.clamp(a.get("alpha", 0.2) * ins[0] + a.get("beta", 0.5), 0.0, 1.0)]
        if t == "Erf":
            return [torch.erf(ins[0])]
        if t == "MaxPool":
            p = a.get("pads", [0, 0, 0, 0])
            assert p[0] == p[2] and p[1] == p[3], node.name
            if self.forced is not None or self.inject:
                kernel, strides = a["kernel_shape"], a.get("strides", [1, 1])
                near = self.count_near_ties(ins[0], kernel, strides, p)
                if self.pool_other_pick:
                    return [self.pool_picking_the_other(ins[0], near, kernel, strides, p)]
            return [F.max_pool2d(ins[0], a["kernel_shape"], a.get("strides", 1), p[:2],
                                 a.get("dilations", 1), bool(a.get("ceil_mode", 0)))]
        if t == "GlobalAveragePool":
            return [ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)]
        if t == "Flatten":
            axis = a.get("axis", 1)
            return [ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)]
        if t == "Gemm":
            x, w = ins[0], self.weight(node, ins, weight_axes)
            x = x.t() if a.get("transA", 0) else x
            w = w.t() if a.get("transB", 0) else w
            y = a.get("alpha", 1.0) * (x @ w)
            if len(ins) > 2 and ins[2] is not None:
                y = y + a.get("beta", 1.0) * ins[2]
            return [y]
        if t == "MatMul":
            return [ins[0] @ self.weight(node, ins, weight_axes)]
        if t == "LayerNormalization":
            x = ins[0]
            axis = a.get("axis", -1) % x.dim()
            return [F.layer_norm(x, x.shape[axis:], ins[1], ins[2], a.get("epsilon", 1e-5))]
        if t == "Softmax":
            y = torch.softmax(ins[0], dim=a.get("axis", -1))
            if softmax_quant:
                y = torch.fake_quantize_per_tensor_affine(
                    y, float(np.float32(1.0) / np.float32(127.0)), 0, -128, 127)
            return [y]
        if t == "Add":
            return [ins[0] + ins[1]]
        if t == "Sub":
            return [ins[0] - ins[1]]
        if t == "Mul":
            return [ins[0] * ins[1]]
        if t == "Div":
            if ins[0].is_floating_point():
                return [ins[0] / ins[1]]
            return [torch.div(ins[0], ins[1], rounding_mode="trunc")]
        if t == "Pow":
            return [torch.pow(ins[0], ins[1])]
        if t == "Mod":
            if a.get("fmod", 0):
                return [torch.fmod(ins[0], ins[1])]
            return [torch.remainder(ins[0], ins[1])]
        if t == "Equal":
            return [ins[0] == ins[1]]
        if t == "Not":
            return [torch.logical_not(ins[0])]
        if t == "Where":
            return [torch.where(ins[0], ins[1], ins[2])]
        if t == "Transpose":
            return [ins[0].permute(*a["perm"])]
        if t == "Shape":
            return [torch.tensor(list(ins[0].shape), dtype=torch.int64)]
        if t == "Cast":
            return [ins[0].to(ONNX_DTYPES[a["to"]])]
        if t == "Unsqueeze":
            y = ins[0]
            axes = sorted(v % (y.dim() + len(as_ints(ins[1]))) for v in as_ints(ins[1]))
            for axis in axes:
                y = y.unsqueeze(axis)
            return [y]
        if t == "Concat":
            return [torch.cat(ins, dim=a["axis"])]
        if t == "Reshape":
            shape = as_ints(ins[1])
            if not a.get("allowzero", 0):
                shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return [ins[0].reshape(shape)]
        if t == "Gather":
            data, idx = ins
            axis = a.get("axis", 0) % data.dim()
            flat = torch.remainder(idx.reshape(-1).to(torch.int64), data.shape[axis])
            picked = data.index_select(axis, flat)
            return [picked.reshape(data.shape[:axis] + idx.shape + data.shape[axis + 1:])]
        if t == "ConstantOfShape":
            value = a.get("value")
            fill = (torch.from_numpy(numpy_helper.to_array(value).copy()) if value is not None
                    else torch.zeros(1, dtype=torch.float32))
            return [fill.reshape(-1)[0].expand(as_ints(ins[0])).clone()]
        if t == "Expand":
            shape = torch.broadcast_shapes(tuple(ins[0].shape), tuple(as_ints(ins[1])))
            return [ins[0].expand(shape)]
        if t == "Range":
            return [torch.arange(ins[0].item(), ins[1].item(), ins[2].item(),
                                 dtype=ins[0].dtype)]
        if t == "Slice":
            return [self.slice(ins)]
        if t == "ScatterND":
            data, idx, upd = ins
            out = data.clone()
            k = idx.shape[-1]
            flat_idx = idx.reshape(-1, k)
            flat_upd = upd.reshape((flat_idx.shape[0],) + tuple(data.shape[k:]))
            for i in range(flat_idx.shape[0]):
                out[tuple(as_ints(flat_idx[i]))] = flat_upd[i]
            return [out]
        if t == "Pad":
            return [self.pad(node, ins, a)]
        raise SystemExit("%s: op %s is not interpreted" % (node.name, t))

    def conv(self, node, ins, a, env, weight_axes, folded):
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        p = a.get("pads", [0] * (2 * (w.dim() - 2)))
        half = len(p) // 2
        assert p[:half] == p[half:], node.name
        args = dict(stride=a.get("strides", 1), padding=p[:half], dilation=a.get("dilations", 1),
                    groups=a.get("group", 1))
        if node.name not in folded:
            return F.conv2d(x, self.weight(node, ins, weight_axes), bias, **args)
        # The BN folding simulated: quantize W·γ/sqrt(var + eps) (factor in float64, the folded
        # weight rounded to float32), divide the output by the factor again, add the conv bias.
        (bn,) = self.consumers[node.output[0]]
        assert bn.op_type == "BatchNormalization", node.name
        eps = attributes(bn).get("epsilon", 1e-5)
        gamma = env[bn.input[1]]  # the leaf, so that γ's gradient runs through the fold too
        var = self.initializers[bn.input[4]]
        factor64 = gamma.double() / torch.sqrt(var.double() + eps)
        folded_w = (w.double() * factor64.reshape(-1, 1, 1, 1)).float()
        y = F.conv2d(x, fq_channels(folded_w, 0), None, **args)
        y = y / factor64.float().reshape(1, -1, 1, 1)
        if bias is not None:
            y = y + bias.reshape(1, -1, 1, 1)
        return y

    def slice(self, ins):
        data = ins[0]
        starts, ends = as_ints(ins[1]), as_ints(ins[2])
        axes = as_ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = as_ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        for s, e, axis, step in zip(starts, ends, axes, steps):
            axis %= data.dim()
            n = data.shape[axis]
            s = s + n if s < 0 else s
            e = e + n if e < 0 else e
            if step > 0:
                s, e = max(0, min(n, s)), max(0, min(n, e))
            else:
                s, e = max(0, min(n - 1, s)), max(-1, min(n - 1, e))
            picks = torch.arange(s, e, step, dtype=torch.int64)
            data = data.index_select(axis, picks)
        return data

    def pad(self, node, ins, a):
        assert a.get("mode", b"constant") in (b"constant", "constant"), node.name
        x = ins[0]
        pads = as_ints(ins[1])
        value = ins[2].item() if len(ins) > 2 and ins[2] is not None else 0.0
        axes = (as_ints(ins[3]) if len(ins) > 3 and ins[3] is not None
                else list(range(x.dim())))
        n = len(axes)
        spec = [0] * (2 * x.dim())
        for i, axis in enumerate(axes):
            axis %= x.dim()
            # F.pad lists (before, after) from the last axis backwards.
            spec[2 * (x.dim() - 1 - axis)] = pads[i]
            spec[2 * (x.dim() - 1 - axis) + 1] = pads[i + n]
        assert min(spec) >= 0, node.name
        return F.pad(x, spec, value=value)


def qforge_layout(values, like):
    """qforge's values of a tensor (a numpy array, in the fused graph's layout) in the layout of
    this run's tensor `like`: the same elements reshaped, or an attention's per-head
    [batch, heads, tokens, d] against torch.onnx's [tokens, batch, heads·d], or tokens
    batch-major against token-major. The first that agrees with `like` to 1e-3 of its range."""
    t = torch.from_numpy(values)
    candidates = []
    if t.numel() == like.numel():
        candidates.append(lambda: t.reshape(like.shape))
    if t.dim() == 4 and like.dim() == 3:
        candidates.append(lambda: t.permute(2, 0, 1, 3).reshape(like.shape))
    if t.dim() == 2 and like.dim() == 2:
        for batch in range(1, t.shape[0] + 1):
            if t.shape[0] % batch == 0 and batch > 1:
                candidates.append(lambda b=batch: t.reshape(b, t.shape[0] // b, -1)
                                  .permute(1, 0, 2).reshape(like.shape))
    if len(candidates) == 1 and tuple(t.shape) == tuple(like.shape):
        # Nothing to tell apart: the same shape is the same layout, even where a rounding tie
        # upstream moved the values by more than the bound below.
        return candidates[0]()
    bound = 1e-3 * max(float(like.abs().max()), 1e-30)
    for make in candidates:
        mapped = make()
        if float((mapped - like).abs().max()) <= bound:
            return mapped
    raise SystemExit("no layout of qforge's %s values matches this run's %s"
                     % (tuple(t.shape), tuple(like.shape)))


def qforge_plan(qforge, family, batch_path, batch):
    """The point table of `qforge calibrate --method max --report` on the batch."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        subprocess.run([qforge, "calibrate", os.path.join(MODELS_DIR, "%s_bn.onnx" % family),
                        "--data", batch_path, "--method", "max", "--batch", str(batch),
                        "--flip-injections", "0", "--threads", "1",
                        "-o", os.path.join(tmp, "model.qdq.onnx"), "--report", report],
                       check=True, stdout=subprocess.DEVNULL)
        with open(report) as f:
            return json.load(f)


def onnx_tensor(interp, fused_name, produced):
    """The ONNX tensor holding the values of a fused graph's point tensor: the same name; a
    Linear head's 4-D view of a tensor (`<tensor>_4d`); or the q, k and v an attention's
    packed input projection makes (`<MatMul>/MHAInProjection_{q,k,v}`): the three Slices of the
    projection's output after its bias Add, in graph order."""
    if fused_name in produced:
        return fused_name
    if fused_name.endswith("_4d") and fused_name[:-3] in produced:
        return fused_name[:-3]
    for which, part in enumerate(("_q", "_k", "_v")):
        suffix = "/MHAInProjection" + part
        if fused_name.endswith(suffix):
            matmul = fused_name[:-len(suffix)]
            (node,) = [n for n in interp.nodes if n.name == matmul]
            (add,) = interp.consumers[node.output[0]]
            slices = [n for n in interp.consumers[add.output[0]] if n.op_type == "Slice"]
            assert len(slices) == 3, matmul
            return slices[which].output[0]
    raise SystemExit("no ONNX tensor holds the point tensor %s" % fused_name)


def weight_node(interp, module_node):
    """The ONNX node of a weight point's module node (`<onnx node>/<Module>`; a Gemm that a
    transform made a 1x1 convolution is `<Gemm>_conv/<Module>`)."""
    names = {n.name: n for n in interp.nodes}
    base = module_node.rsplit("/", 1)[0]
    for name in (base, base[:-len("_conv")] if base.endswith("_conv") else None):
        if name in names:
            return names[name]
    raise SystemExit("no ONNX node for the weight point %s" % module_node)


def quantized_reads(interp, tensor, point):
    """The (ONNX node, input index) pairs that read `tensor` through the point's Q/DQ pair.
    qforge quantizes a tensor only where a module it feeds quantizes it (point["consumers"]);
    every other reader gets the float tensor. On the ONNX graph a module's quantized input is
    read by its first node, or by ops that only reshape or reorder values on the way there
    (Flatten, Transpose), so those readers take the fake-quantized tensor; Shape reads no
    values; an Add reads it quantized only when it is the residual input of a Conv → BN → Add
    module that qforge quantizes there (ConvBNAddAct's input 1), else it is a skip connection
    that stays float."""
    names = {n.name: n for n in interp.nodes}
    residual_adds = set()
    for c in point["consumers"]:
        if c["input"] == 0 or "Add" not in c["node"].rsplit("/", 1)[-1]:
            continue
        anchor = weight_node(interp, c["node"])
        frontier = [anchor]
        for _ in range(3):  # Conv → BatchNormalization → Add
            frontier = [n for f in frontier for o in f.output for n in interp.consumers.get(o, [])]
            residual_adds.update(n.name for n in frontier if n.op_type == "Add")
    reads = []
    for node in interp.consumers.get(tensor, []):
        if node.op_type == "Shape":
            continue
        if node.op_type == "Add" and node.name not in residual_adds:
            continue
        assert node.name in names
        reads.extend((node.name, i) for i, name in enumerate(node.input) if name == tensor)
    if not reads:
        raise SystemExit("no reader of %s takes it quantized" % tensor)
    return reads


def relative_l2(got, want):
    return float(np.linalg.norm((got - want).ravel()) / max(np.linalg.norm(want.ravel()), 1e-30))


def gradients_of(interp, x, y, keys, **kwargs):
    leaves = interp.leaves()
    logits, _ = interp.run(x, leaves, training=True, **kwargs)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {}
    for key in keys:
        if key not in leaves or leaves[key].grad is None:
            raise SystemExit("no gradient for %s" % key)
        grads[key] = leaves[key].grad.detach().numpy().astype(np.float32)
    return float(loss.item()), grads


def family_golden(family, qforge, x, y, batch_path):
    interp = Interpreter(os.path.join(MODELS_DIR, "%s_bn.onnx" % family))
    float_golden = dict(np.load(os.path.join(GRAD_DIR, "%s_bn_grads.npz" % family)))
    keys = sorted(k for k in float_golden if k != "loss")

    # The interpreter against PyTorch's model, in float.
    loss, grads = gradients_of(interp, x, y, keys)
    want = float(float_golden["loss"])
    if abs(loss - want) > FLOAT_LOSS_TOLERANCE * abs(want):
        raise SystemExit("%s: float loss %.7g against the PyTorch model's %.7g"
                         % (family, loss, want))
    total = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in float_golden.values()))
    float_worst = 0.0
    for key in keys:
        if np.linalg.norm(float_golden[key]) <= 1e-6 * total:
            continue  # zero by construction (see training_golden_test.cpp)
        err = relative_l2(grads[key], float_golden[key])
        float_worst = max(float_worst, err)
        if err > FLOAT_GRAD_TOLERANCE:
            raise SystemExit("%s: float gradient of %s is %.3g relative L2 from the PyTorch "
                             "model's" % (family, key, err))

    report = qforge_plan(qforge, family, batch_path, x.shape[0])
    produced = {o for n in interp.nodes for o in n.output} | {interp.input_name}
    points = {}
    for p in report["activation_points"]:
        if p.get("scale_group"):
            raise SystemExit("%s: %s: scale groups are not handled" % (family, p["tensor"]))
        points[onnx_tensor(interp, p["tensor"], produced)] = p
    weight_axes, folded = {}, set()
    for w in report["weight_points"]:
        node = weight_node(interp, w["node"])
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm":
            axis = 0 if attributes(node).get("transB", 0) else 1
        elif node.op_type == "MatMul":
            axis = interp.initializers[node.input[1]].dim() - 1
        else:
            raise SystemExit("%s: weight point on %s" % (family, node.op_type))
        weight_axes[node.name] = axis
        if w["folds_batch_norm"]:
            folded.add(node.name)
    softmax_nodes = sum(1 for n in interp.nodes if n.op_type == "Softmax")
    if softmax_nodes != report["softmax_points"]:
        raise SystemExit("%s: %d Softmax nodes, qforge quantizes %d"
                         % (family, softmax_nodes, report["softmax_points"]))

    # Max calibration: an eval-mode float forward, max |x| at each point.
    with torch.no_grad():
        _, amax = interp.run(x, interp.leaves(), training=False, observe=set(points))
    amax_worst = 0.0
    for tensor, p in points.items():
        err = abs(amax[tensor] - p["amax"]) / p["amax"]
        amax_worst = max(amax_worst, err)
        if err > AMAX_TOLERANCE:
            raise SystemExit("%s: amax at %s is %.7g here, %.7g in qforge"
                             % (family, p["tensor"], amax[tensor], p["amax"]))

    # qforge's amax, which agree with these to float rounding: one value that rounds the other
    # way at a .5 boundary moves these models' gradients by up to tens of percent (see the
    # README), so the golden is taken at exactly qforge's scales.
    scales = {tensor: float(np.float32(p["amax"])) for tensor, p in points.items()}
    reads = {}
    for tensor, p in points.items():
        for read in quantized_reads(interp, tensor, p):
            reads[read] = scales[tensor]
    loss, grads = gradients_of(interp, x, y, keys, act_amax=reads, weight_axes=weight_axes,
                               folded=folded, softmax_quant=True)
    out = {"loss": np.array(loss, dtype=np.float32)}
    out.update(grads)
    for tensor, p in points.items():
        out["amax/" + p["tensor"]] = np.array(scales[tensor], dtype=np.float32)
    print("%s: float check loss %.6f, worst gradient %.2g; %d activation points (amax within "
          "%.2g of qforge's), %d weight points (%d BN folds), %d softmax; fake-quant loss %.6f, "
          "%d gradients" % (family, want, float_worst, len(points), amax_worst,
                            len(weight_axes), len(folded), softmax_nodes, loss, len(grads)),
          flush=True)
    setup = dict(interp=interp, keys=keys, points=points, reads=reads, weight_axes=weight_axes,
                 folded=folded)
    return out, setup


def qforge_grad(family, qforge, batch_path, labels_path):
    """`qforge grad --fake-quant --points` on the batch: its gradients and what each of its
    activation quantizers read, as two dicts."""
    with tempfile.TemporaryDirectory() as tmp:
        grads_path, points_path = os.path.join(tmp, "g.npz"), os.path.join(tmp, "p.npz")
        subprocess.run([qforge, "grad", os.path.join(MODELS_DIR, "%s_bn.onnx" % family),
                        "--data", batch_path, "--labels", labels_path, "-o", grads_path,
                        "--fake-quant", "--points", points_path, "--threads", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        return dict(np.load(grads_path)), dict(np.load(points_path))


def worst_difference(loss, grads, want):
    """The loss's relative difference to want's, and the largest gradient relative L2 with its
    name (gradients zero by construction left out, as the tests do)."""
    keys = [k for k in want if k != "loss" and not k.startswith("amax/")]
    total = np.sqrt(sum(np.sum(want[k].astype(np.float64) ** 2) for k in keys))
    errors = [(relative_l2(grads[k], want[k]), k) for k in keys
              if np.linalg.norm(want[k]) > 1e-6 * total]
    return abs(loss / float(want["loss"]) - 1), max(errors)


def diagnose(family, qforge, x, y, batch_path, labels_path, golden, setup):
    """Where qforge's `grad --fake-quant` and this golden differ, point by point: qforge's
    values at every point (`--points`) replace this run's own where a quantizer reads them, and
    are quantized as qforge quantizes them, so each module gets identical inputs; the integers
    that differ (this run's value by torch's fake quant against qforge's) are printed with their
    distance from the .5 boundary, with the max-pool windows whose max float rounding picks, and
    the gradients of that run against qforge's."""
    theirs, at_points = qforge_grad(family, qforge, batch_path, labels_path)
    for key, value in golden.items():
        if key.startswith("amax/") and float(at_points[key]) != float(value):
            raise SystemExit("%s: qforge grad's %s is not the golden's" % (family, key))
    loss_error, (error, name) = worst_difference(float(theirs["loss"]), theirs, golden)
    print("%s: qforge against the golden: loss %.2g, largest gradient relative L2 %.2g (%s)"
          % (family, loss_error, error, name))
    interp = setup["interp"]
    interp.forced = {tensor: at_points[p["tensor"]] for tensor, p in setup["points"].items()}
    interp.flips, interp.pool_near_ties, interp.differing = {}, 0, {}
    loss, grads = gradients_of(interp, x, y, setup["keys"], act_amax=setup["reads"],
                               weight_axes=setup["weight_axes"], folded=setup["folded"],
                               softmax_quant=True)
    for tensor, (count, size, distance) in interp.flips.items():
        if count:
            print("  %s: %d of %d integers differ, the farthest %.2g of a step from .5"
                  % (tensor, count, size, distance))
    print("  %d max-pool windows whose max float rounding picks"
          % interp.pool_near_ties)
    forced = dict(grads, loss=np.array(loss, dtype=np.float32))
    loss_error, (error, name) = worst_difference(float(theirs["loss"]), theirs, forced)
    print("  with qforge's values at every point: loss %.2g, largest gradient relative L2 %.2g "
          "(%s)" % (loss_error, error, name), flush=True)
    if interp.pool_near_ties:
        interp.pool_other_pick = True
        loss, grads = gradients_of(interp, x, y, setup["keys"], act_amax=setup["reads"],
                                   weight_axes=setup["weight_axes"], folded=setup["folded"],
                                   softmax_quant=True)
        interp.pool_other_pick = False
        forced = dict(grads, loss=np.array(loss, dtype=np.float32))
        loss_error, (error, name) = worst_difference(float(theirs["loss"]), theirs, forced)
        print("  and those windows picking their other value: loss %.2g, largest gradient "
              "relative L2 %.2g (%s)" % (loss_error, error, name), flush=True)
    interp.forced = None
    if interp.differing:
        # The golden's own run with only the differing integers rounded qforge's way.
        interp.inject = True
        loss, grads = gradients_of(interp, x, y, setup["keys"], act_amax=setup["reads"],
                                   weight_axes=setup["weight_axes"], folded=setup["folded"],
                                   softmax_quant=True)
        interp.inject = False
        flipped = dict(grads, loss=np.array(loss, dtype=np.float32))
        loss_error, (error, name) = worst_difference(loss, flipped, golden)
        print("  the golden's run with just those integers rounded qforge's way moves by: loss "
              "%.2g, largest gradient relative L2 %.2g (%s)" % (loss_error, error, name),
              flush=True)


def aligned_golden(family, qforge, x, y, batch_path, labels_path, golden, setup):
    """The golden's own run with only its rounding-level ties settled as qforge settles them:
    integers that differ when each side quantizes the same values (qforge's, from `grad
    --points`) with its own arithmetic (torch's fake quant here, qforge's division by the scale
    there: qforge_dequantized), each checked to lie within ALIGN_DISTANCE of a step from the .5
    boundary, are rounded qforge's way, and the max-pool windows whose two largest values are within 1e-6
    relative pass on their other value. Everything else is PyTorch's. Returns the keys to add
    to the golden ("aligned/loss", "aligned/<parameter>", "aligned/flips",
    "aligned/pool_ties"), none when there is nothing to settle."""
    _, at_points = qforge_grad(family, qforge, batch_path, labels_path)
    interp = setup["interp"]
    run_args = dict(act_amax=setup["reads"], weight_axes=setup["weight_axes"],
                    folded=setup["folded"], softmax_quant=True)
    interp.forced = {tensor: at_points[p["tensor"]] for tensor, p in setup["points"].items()}
    interp.flips, interp.pool_near_ties, interp.differing = {}, 0, {}
    gradients_of(interp, x, y, setup["keys"], **run_args)
    interp.forced = None
    flips = 0
    for tensor, (count, size, distance) in interp.flips.items():
        if count and distance > ALIGN_DISTANCE:
            raise SystemExit("%s: at %s an integer %.3g of a step from .5 differs from qforge's: "
                             "not a rounding tie" % (family, tensor, distance))
        flips += count
    pool_ties = interp.pool_near_ties
    if not flips and not pool_ties:
        return {}
    interp.inject, interp.pool_other_pick, interp.pool_near_ties = True, bool(pool_ties), 0
    loss, grads = gradients_of(interp, x, y, setup["keys"], **run_args)
    interp.inject, interp.pool_other_pick = False, False
    out = {"aligned/loss": np.array(loss, dtype=np.float32),
           "aligned/flips": np.array(flips, dtype=np.int64),
           "aligned/pool_ties": np.array(pool_ties, dtype=np.int64)}
    for key, value in grads.items():
        out["aligned/" + key] = value
    moved_loss, (moved, name) = worst_difference(loss, grads, golden)
    print("%s: %d integers and %d max-pool windows settled qforge's way; that moves the golden "
          "by loss %.2g, gradients up to %.2g relative L2 (%s)"
          % (family, flips, pool_ties, moved_loss, moved, name), flush=True)
    return out


def add_variant(family, plain, aligned):
    """Adds this machine's reference (aligned, or plain when nothing was settled) to the written
    golden as the next variant<N>/, unless a reference there already has its loss."""
    path = os.path.join(OUT_DIR, "%s_bn_grads.npz" % family)
    golden = dict(np.load(path))
    prefix = "aligned/" if aligned else ""
    source = aligned if aligned else plain
    mine = {k[len(prefix):]: v for k, v in source.items()
            if k.startswith(prefix) and not k.startswith("amax/")
            and k not in ("aligned/flips", "aligned/pool_ties")}
    for key, value in plain.items():
        # The test holds qforge's amax to the written golden's within 1e-5 relative; this
        # machine's are qforge's own here, which may differ in the last bit.
        if key.startswith("amax/") and abs(float(golden[key]) - float(value)) > 1e-5 * float(value):
            raise SystemExit("%s: %s differs from the written golden's; regenerate it whole"
                             % (family, key))
    # A reference within 1e-4 of this one's loss already stands for it (the loss moves by 1e-3
    # and more where a tie settles the other way, see the README).
    losses = [float(v) for k, v in golden.items() if k == "loss" or k.endswith("/loss")]
    if any(abs(loss - float(mine["loss"])) <= 1e-4 * abs(loss) for loss in losses):
        print("%s: this machine's reference (loss %.7g) is already in the golden"
              % (family, float(mine["loss"])))
        return
    n = 1
    while "variant%d/loss" % n in golden:
        n += 1
    for key, value in mine.items():
        golden["variant%d/%s" % (n, key)] = value
    np.savez(path, **golden)
    print("%s: added variant%d (loss %.7g; the golden's own %.7g)"
          % (family, n, float(mine["loss"]), float(golden["loss"])))


def main():
    ap = argparse.ArgumentParser(description="PyTorch whole-model fake-quant gradient goldens")
    ap.add_argument("--family", action="append", choices=models.FAMILIES,
                    help="family (repeatable); all by default")
    ap.add_argument("--qforge", default=os.path.join(ROOT, "build", "tools", "qforge"),
                    help="the qforge binary whose placement is read")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QFORGE_THREADS", "2")))
    ap.add_argument("--diagnose", action="store_true",
                    help="write nothing; compare `qforge grad --fake-quant` with the golden point "
                         "by point (see diagnose())")
    ap.add_argument("--add-variant", action="store_true",
                    help="keep the written golden and add this machine's reference to it as "
                         "variant<N>/ (see above)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch_path = os.path.join(GRAD_DIR, "batch_input.npy")
    x = torch.from_numpy(np.load(batch_path))
    y = torch.from_numpy(np.load(os.path.join(GRAD_DIR, "batch_labels.npy")))
    os.makedirs(OUT_DIR, exist_ok=True)
    labels_path = os.path.join(GRAD_DIR, "batch_labels.npy")
    for family in args.family or models.FAMILIES:
        out, setup = family_golden(family, args.qforge, x, y, batch_path)
        if args.diagnose:
            diagnose(family, args.qforge, x, y, batch_path, labels_path, out, setup)
        elif args.add_variant:
            add_variant(family, out, aligned_golden(family, args.qforge, x, y, batch_path,
                                                    labels_path, out, setup))
        else:
            out.update(aligned_golden(family, args.qforge, x, y, batch_path, labels_path, out,
                                      setup))
            np.savez(os.path.join(OUT_DIR, "%s_bn_grads.npz" % family), **out)


if __name__ == "__main__":
    main()

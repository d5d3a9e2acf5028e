"""Small models at the opsets qforge imports, for tests/graph/onnx_opsets_test.cpp.

A CNN in the style of the bundled models (conv/BN/ReLU, residual add, padding, clip, pooling,
mean over the spatial axes, linear head) and a one-block pre-norm transformer (LayerNorm,
single-head attention with MatMul and Softmax, an MLP with GELU, mean over the tokens) are
exported by torch.onnx at opsets 9, 11, 13 and 17. Opsets 18 to 26 are beyond what
torch 1.13 writes, so those variants are the opset-17 export converted by hand: ReduceMean
takes its axes as an input (18), Pad takes an axes input (18), and the GELU subgraph becomes
one Gelu node (20), approximate "none", or "tanh" for a transformer built with the tanh GELU;
22, 23 and 26 keep those forms, and at 23 the transformer's attention also becomes one
Attention node (transformer_attention). The CNN with SiLU activations (cnn_silu) is exported at
17, where torch writes Sigmoid and Mul, and converted to 24, where each pair becomes a Swish node.
A CNN with dynamic height and width (opset 13) covers --input-shape.

Writes data/models/opset/<family>_opset<N>.onnx and data/golden/opset/<family>_input.npy,
<family>_output.npy (PyTorch's outputs, float32), and for seven models the mean cross-entropy
loss on labels.npy with the gradient of every initializer that is a PyTorch parameter (by name,
or by value transposed for MatMul weights), keyed by initializer: <model>_grads.npz. Seeded; run:
    /usr/bin/python3 data/generate/opset_models.py
"""
import os

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models", "opset")
GOLDEN = os.path.join(HERE, "..", "golden", "opset")
TORCH_OPSETS = [9, 11, 13, 17]
SAMPLES = 8


class SmallCnn(nn.Module):
    def __init__(self, act=F.relu):
        super().__init__()
        self.act = act
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=0)  # after an explicit F.pad
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.act(self.bn1(self.stem(x)))
        z = self.bn2(self.conv2(F.pad(y, (1, 1, 1, 1))))
        y = self.act(y + z)
        y = torch.clamp(self.down(y), 0.0, 6.0)
        y = self.pool(y)
        return self.fc(y.mean(dim=(2, 3)))


class TransformerBlock(nn.Module):
    def __init__(self, dim=16, hidden=32, approximate="none"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 10)
        self.scale = dim**-0.5

    def forward(self, x):
        h = self.norm1(x)
        attn = torch.softmax(torch.matmul(self.q(h), self.k(h).transpose(1, 2)) * self.scale, -1)
        x = x + self.proj(torch.matmul(attn, self.v(h)))
        x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return self.head(x.mean(dim=1))


def randomize_batch_norms(model, generator):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def export(model, x, path, opset, dynamic_axes):
    torch.onnx.export(model, x, path, opset_version=opset, input_names=["input"],
                      output_names=["output"], dynamic_axes=dynamic_axes,
                      training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(path))


def axes_as_inputs(model):
    """Opset 18: ReduceMean's axes attribute and Pad's implicit all-axes become inputs."""
    graph = model.graph
    for index, node in enumerate(graph.node):
        if node.op_type == "ReduceMean":
            axes = [a for a in node.attribute if a.name == "axes"][0]
            name = f"reduce_axes_{index}"
            graph.initializer.append(numpy_helper.from_array(np.array(axes.ints, np.int64), name))
            node.attribute.remove(axes)
            node.input.append(name)
        elif node.op_type == "Pad":
            # torch computes the pads at run time (constant-foldable); the SmallCnn pads H and W
            # by 1 on each side, given here for those two axes only.
            pads = f"pad_pads_{index}"
            graph.initializer.append(numpy_helper.from_array(np.ones(4, np.int64), pads))
            axes = f"pad_axes_{index}"
            graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), axes))
            while len(node.input) < 3:
                node.input.append("")
            node.input[1] = pads
            node.input.append(axes)
    remove_unused(graph)


def remove_unused(graph):
    """Nodes whose outputs nobody reads, and initializers nobody reads, repeatedly."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    read = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)


def gelu_as_one_node(model, approximate):
    """Opset 20: the nodes torch wrote for the GELU module (scope /act/) become one Gelu."""
    graph = model.graph
    inside = [n for n in graph.node if n.name.startswith("/act/")]
    assert inside, "no /act/ scope in the export"
    produced = {o for n in inside for o in n.output}
    inputs = {i for n in inside for i in n.input if i and i not in produced}
    inputs -= {t.name for t in graph.initializer}
    assert len(inputs) == 1, inputs
    read_outside = {i for n in graph.node if n not in inside for i in n.input}
    outputs = [o for o in produced if o in read_outside]
    assert len(outputs) == 1, outputs
    position = list(graph.node).index(inside[0])
    for n in inside:
        graph.node.remove(n)
    gelu = helper.make_node("Gelu", [inputs.pop()], outputs, name="/act/Gelu",
                            approximate=approximate)
    graph.node.insert(position, gelu)
    remove_unused(graph)


def silu_as_swish(model):
    """Opset 24: each Sigmoid and the Mul of its input by it (torch's SiLU) become one Swish."""
    graph = model.graph
    for sigmoid in [n for n in graph.node if n.op_type == "Sigmoid"]:
        x = sigmoid.input[0]
        mul = [n for n in graph.node if n.op_type == "Mul" and sorted(n.input) ==
               sorted([x, sigmoid.output[0]])]
        assert len(mul) == 1, sigmoid.name
        position = list(graph.node).index(mul[0])
        swish = helper.make_node("Swish", [x], list(mul[0].output),
                                 name=mul[0].name.replace("/Mul", "/Swish"))
        graph.node.remove(mul[0])
        graph.node.insert(position, swish)
        graph.node.remove(sigmoid)
    assert any(n.op_type == "Swish" for n in graph.node)


def attention_as_one_node(model):
    """Opset 23: the attention torch wrote (Transpose(k), MatMul, Mul by the scale, Softmax,
    MatMul by v) becomes one Attention node on the 3-D q, k and v, one head, its default scale
    1/sqrt(16) being the module's."""
    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    names = ["/Transpose", "/MatMul", "/Constant", "/Mul", "/Softmax", "/MatMul_1"]
    transpose, scores, _, scale, softmax, weighted = [by_name[n] for n in names]
    assert scores.input[1] == transpose.output[0] and scale.input[0] == scores.output[0]
    assert softmax.input[0] == scale.output[0] and weighted.input[0] == softmax.output[0]
    q, k, v = scores.input[0], transpose.input[0], weighted.input[1]
    position = list(graph.node).index(weighted)
    attention = helper.make_node("Attention", [q, k, v], list(weighted.output), name="/Attention",
                                 q_num_heads=1, kv_num_heads=1)
    graph.node.insert(position, attention)
    for n in [by_name[n] for n in names]:
        graph.node.remove(n)
    remove_unused(graph)


def with_opset(path, out_path, opset, edits):
    model = onnx.load(path)
    for edit in edits:
        edit(model)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", opset))
    model.ir_version = 8
    del model.graph.value_info[:]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx.save(model, out_path)


def save_gradients(module, x, labels, onnx_path, golden=GOLDEN):
    """PyTorch's mean cross-entropy and parameter gradients, keyed by the ONNX initializers, into
    <golden>/<model>_grads.npz; `x` is the input, or a tuple of the inputs. Returns how many
    gradients it wrote."""
    module.zero_grad()
    inputs = x if isinstance(x, tuple) else (x,)
    loss = F.cross_entropy(module(*inputs), labels)
    loss.backward()
    params = dict(module.named_parameters())
    grads = {"loss": np.float32(loss.item())}
    for init in onnx.load(onnx_path).graph.initializer:
        value = numpy_helper.to_array(init)
        if init.name in params:
            assert np.array_equal(value, params[init.name].detach().numpy()), init.name
            grads[init.name] = params[init.name].grad.numpy()
            continue
        for p in params.values():
            w = p.detach().numpy()
            if w.ndim == 2 and w.T.shape == value.shape and np.array_equal(w.T, value):
                grads[init.name] = p.grad.numpy().T
    name = os.path.basename(onnx_path).replace(".onnx", "_grads.npz")
    np.savez(os.path.join(golden, name), **{k: np.array(v, np.float32, order="C")
                                            for k, v in grads.items()})
    return len(grads) - 1


def save_npy(name, array):
    np.save(os.path.join(GOLDEN, name), np.ascontiguousarray(array, dtype=np.float32))


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(MODELS, exist_ok=True)
    os.makedirs(GOLDEN, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    batch_axis = {"input": {0: "batch"}, "output": {0: "batch"}}

    cnn = SmallCnn().eval()
    randomize_batch_norms(cnn, generator)
    x = torch.randn(SAMPLES, 3, 16, 16, generator=generator)
    with torch.no_grad():
        save_npy("cnn_input.npy", x.numpy())
        save_npy("cnn_output.npy", cnn(x).numpy())
        # Dynamic height and width: the same weights at another size.
        x_wide = torch.randn(SAMPLES, 3, 12, 20, generator=generator)
        save_npy("cnn_wide_input.npy", x_wide.numpy())
        save_npy("cnn_wide_output.npy", cnn(x_wide).numpy())
    for opset in TORCH_OPSETS:
        export(cnn, x, os.path.join(MODELS, f"cnn_opset{opset}.onnx"), opset, batch_axis)
    export(cnn, x, os.path.join(MODELS, "cnn_dynamic_hw_opset13.onnx"), 13,
           {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}})
    for opset in (18, 22, 26):  # the opset-18 forms, which 22 to 26 keep
        with_opset(os.path.join(MODELS, "cnn_opset17.onnx"),
                   os.path.join(MODELS, f"cnn_opset{opset}.onnx"), opset, [axes_as_inputs])
    labels = torch.arange(SAMPLES) % 10
    np.save(os.path.join(GOLDEN, "labels.npy"), labels.numpy().astype(np.int64))
    save_gradients(cnn, x, labels, os.path.join(MODELS, "cnn_opset9.onnx"))

    # The CNN with SiLU for its ReLUs: torch writes Sigmoid and Mul, opset 24 one Swish node.
    torch.manual_seed(3)
    silu_cnn = SmallCnn(act=F.silu).eval()
    randomize_batch_norms(silu_cnn, torch.Generator().manual_seed(4))
    with torch.no_grad():
        save_npy("cnn_silu_output.npy", silu_cnn(x).numpy())
    export(silu_cnn, x, os.path.join(MODELS, "cnn_silu_opset17.onnx"), 17, batch_axis)
    with_opset(os.path.join(MODELS, "cnn_silu_opset17.onnx"),
               os.path.join(MODELS, "cnn_silu_opset24.onnx"), 24, [axes_as_inputs, silu_as_swish])
    save_gradients(silu_cnn, x, labels, os.path.join(MODELS, "cnn_silu_opset24.onnx"))

    tokens = torch.randn(SAMPLES, 8, 16, generator=generator)
    save_npy("transformer_input.npy", tokens.numpy())
    for approximate, family in (("none", "transformer"), ("tanh", "transformer_tanh")):
        torch.manual_seed(2)
        block = TransformerBlock(approximate=approximate).eval()
        with torch.no_grad():
            save_npy(f"{family}_output.npy", block(tokens).numpy())
        opsets = TORCH_OPSETS if approximate == "none" else [17]
        for opset in opsets:
            export(block, tokens, os.path.join(MODELS, f"{family}_opset{opset}.onnx"), opset,
                   batch_axis)
        base = os.path.join(MODELS, f"{family}_opset17.onnx")
        gelu = lambda model, a=approximate: gelu_as_one_node(model, a)
        if approximate == "none":
            with_opset(base, os.path.join(MODELS, f"{family}_opset18.onnx"), 18, [axes_as_inputs])
            for opset in (21, 23, 26):
                with_opset(base, os.path.join(MODELS, f"{family}_opset{opset}.onnx"), opset,
                           [axes_as_inputs, gelu])
            with_opset(base, os.path.join(MODELS, "transformer_attention_opset23.onnx"), 23,
                       [axes_as_inputs, gelu, attention_as_one_node])
        with_opset(base, os.path.join(MODELS, f"{family}_opset20.onnx"), 20,
                   [axes_as_inputs, gelu])
        last = 21 if approximate == "none" else 20  # the Gelu node's two forms
        save_gradients(block, tokens, labels, os.path.join(MODELS, f"{family}_opset{last}.onnx"))
        # Before opset 17 torch writes LayerNorm as ReduceMean, Sub, Pow, …; the tanh GELU has a
        # Pow(x, 3) at every opset it is written out.
        first = 13 if approximate == "none" else 17
        save_gradients(block, tokens, labels, os.path.join(MODELS, f"{family}_opset{first}.onnx"))
        if approximate == "none":
            save_gradients(block, tokens, labels,
                           os.path.join(MODELS, "transformer_attention_opset23.onnx"))


if __name__ == "__main__":
    main()

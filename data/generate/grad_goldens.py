#!/usr/bin/python3
"""PyTorch's training-mode losses and gradients for the bundled models.

For each family the model is rebuilt from models.py and its weights are read
from data/models/<family>_bn.onnx (the file qforge trains), so the goldens do
not depend on re-running the training. Then, on one fixed batch of training
images with their labels:
  * one forward and backward in training mode (BatchNorm on batch statistics,
    biased variance), mean cross-entropy against the labels: the loss and the
    gradient of every parameter, keyed by its ONNX initializer name, go to
    data/golden/grad/<family>_bn_grads.npz (what `qforge grad` writes);
  * ten steps of SGD on that batch, starting from the same weights: the loss
    before each step, and every BatchNorm running mean and variance after the
    last step, go to data/golden/grad/<family>_bn_sgd.npz; where a ReLU input
    lies within KINK of 0 on the way (one value 8.4e-7 from it moves ResNet's
    gradients by up to 4% at step 3), also the same run with those inputs on
    the other side of the kink, under kink/.
Dropout and stochastic depth are identities, as in the exported graph (an
eval-mode export carries none of them). The batch and the labels go to
data/golden/grad/batch_input.npy and batch_labels.npy; the SGD settings to
data/golden/grad/sgd.json.

Before anything is written, the rebuilt model's eval-mode output on the
family's golden input must match data/golden/<family>_bn_output.npy, which
proves that every weight was read back where it belongs.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models  # noqa: E402
from train_export import GOLDEN_DIR, MODELS_DIR, Dataset  # noqa: E402

OUT_DIR = os.path.join(GOLDEN_DIR, "grad")
BATCH = 16          # training images: the k-th of class k % 10 for k < BATCH (files sorted)
SGD = dict(steps=10, lr=0.001, momentum=0.9, weight_decay=0.0, nesterov=False)
BN_MOMENTUM = 0.1   # PyTorch's default; ONNX's momentum attribute is 1 - this
EVAL_TOLERANCE = 1e-4
KINK = 1e-6         # a ReLU input this close to 0 may land on either side in float32


def read_initializers(path):
    """The file's initializers by name, in order of first use by a node, plus the names that
    Identity nodes give them (torch.onnx writes one initializer for parameters of equal value
    and aliases the others)."""
    m = onnx.load(path)
    arrays = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    ordered = {}
    for node in m.graph.node:
        for name in node.input:
            if name in arrays and name not in ordered:
                ordered[name] = arrays[name]
        if node.op_type == "Identity" and node.input[0] in arrays:
            ordered[node.output[0]] = arrays[node.input[0]]
    return ordered


def load_weights(model, path):
    """Reads every parameter and buffer back from the file. Most keep their PyTorch names.
    The export folds two kinds into unnamed initializers, which come in the order the graph
    first uses them, the order the model declares them: a Linear weight that a MatMul reads
    is stored transposed, and Swin's relative-position table is stored gathered as the bias
    (1, heads, N, N), from which the table is read back through the model's own index."""
    initializers = read_initializers(path)
    state = model.state_dict()
    unnamed = [k for k in initializers if k not in state]
    loaded = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            loaded[key] = torch.zeros_like(value)
        elif key in initializers:
            loaded[key] = torch.from_numpy(initializers[key].copy())
        elif key.endswith("relative_position_index"):
            loaded[key] = value
        elif key.endswith("relative_position_bias_table"):
            bias = initializers[next(k for k in unnamed if initializers[k].ndim == 4)]
            unnamed.remove(next(k for k in unnamed if initializers[k].ndim == 4))
            index = state[key.replace("bias_table", "index")].reshape(-1).numpy()
            table = np.zeros(tuple(value.shape), dtype=np.float32)
            table[index] = bias[0].reshape(bias.shape[1], -1).T
            loaded[key] = torch.from_numpy(table)
        elif value.ndim == 2 and unnamed and initializers[unnamed[0]].shape == value.T.shape:
            loaded[key] = torch.from_numpy(np.ascontiguousarray(initializers[unnamed.pop(0)].T))
        else:
            raise SystemExit("%s: no initializer holds %s %s" % (path, key, tuple(value.shape)))
        if tuple(loaded[key].shape) != tuple(value.shape):
            raise SystemExit("%s: initializer for %s has shape %s, the model %s"
                             % (path, key, tuple(loaded[key].shape), tuple(value.shape)))
    model.load_state_dict(loaded)


def disable_stochastic_layers(model):
    """Dropout and stochastic depth become identities; BatchNorm keeps its training mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif type(module).__name__ == "StochasticDepth":
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def check_eval_output(model, family, path):
    x = torch.from_numpy(np.load(os.path.join(GOLDEN_DIR, "%s_input.npy" % family)))
    want = np.load(os.path.join(GOLDEN_DIR, "%s_bn_output.npy" % family))
    model.eval()
    with torch.no_grad():
        got = model(x).numpy()
    diff = float(np.abs(got - want).max())
    bound = EVAL_TOLERANCE * max(1.0, float(np.abs(want).max()))
    if diff > bound:
        raise SystemExit("%s: weights read from %s give max |diff| %.3g against the golden "
                         "output (bound %.3g)" % (family, path, diff, bound))
    return diff


def build_from_onnx(family):
    path = os.path.join(MODELS_DIR, "%s_bn.onnx" % family)
    model = models.build(family)
    load_weights(model, path)
    disable_stochastic_layers(model)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = BN_MOMENTUM
    diff = check_eval_output(model, family, path)
    return model, diff


def capture_window_biases(model):
    """Swin's relative-position bias is a gather from a parameter table; the ONNX export folds
    that gather, so the file holds the gathered bias and qforge differentiates by it. Each
    window attention's gathered bias is kept here, with its gradient, under the table's name."""
    captured = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_relative_position_bias"):
            original = module.get_relative_position_bias

            def gathered(original=original, key=name + ".relative_position_bias_table"):
                bias = original()
                bias.retain_grad()
                captured[key] = bias
                return bias

            module.get_relative_position_bias = gathered
    return captured


def onnx_name_of(torch_name, value, initializers, taken):
    """The initializer that holds a PyTorch tensor: the same name (or an Identity alias of it),
    else the one initializer equal to it or, for a Linear weight that a MatMul reads, to its
    transpose. Returns (name, transposed)."""
    if torch_name in initializers:
        return torch_name, False
    found = []
    for name, array in initializers.items():
        if name in taken or array.size != value.size:
            continue
        if array.shape == value.shape and np.array_equal(array, value):
            found.append((name, False))
        elif value.ndim == 2 and array.shape == value.T.shape and np.array_equal(array, value.T):
            found.append((name, True))
    if len(found) != 1:
        raise SystemExit("%s: %d initializers hold its value" % (torch_name, len(found)))
    return found[0]


def gradients(family, x, y):
    model, diff = build_from_onnx(family)
    captured = capture_window_biases(model)
    model.train()
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    tensors = {name: p for name, p in model.named_parameters() if name not in captured}
    tensors.update(captured)
    initializers = read_initializers(os.path.join(MODELS_DIR, "%s_bn.onnx" % family))
    out = {"loss": np.array(loss.item(), dtype=np.float32)}
    names = {}
    for torch_name, tensor in tensors.items():
        value = tensor.detach().numpy()
        name, transposed = onnx_name_of(torch_name, value, initializers, names)
        grad = tensor.grad.detach().numpy()
        out[name] = np.ascontiguousarray(grad.T if transposed else grad, dtype=np.float32)
        names[name] = {"torch": torch_name, "transposed": transposed}
    return out, names, diff


def settle_kinks_the_other_way(model):
    """Pre-hooks on every ReLU that move each input within KINK of 0 to the other side of the
    kink (its value negated, its gradient passed as it was), so the mask of those elements
    flips: the run that a float32 implementation rounding them the other way computes. Returns
    a list that counts the elements moved."""
    moved = [0]

    def hook(module, inputs):
        v = inputs[0]
        near = v.abs() < KINK
        count = int(near.sum())
        if not count:
            return None
        moved[0] += count
        return (v + torch.where(near, -2 * v, torch.zeros_like(v)).detach(),)

    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.register_forward_pre_hook(hook)
    return moved


def sgd_run(family, x, y, kinks_other_way=False):
    model, _ = build_from_onnx(family)
    model.train()
    moved = settle_kinks_the_other_way(model) if kinks_other_way else [0]
    opt = torch.optim.SGD(model.parameters(), lr=SGD["lr"], momentum=SGD["momentum"],
                          weight_decay=SGD["weight_decay"], nesterov=SGD["nesterov"])
    losses = []
    for _ in range(SGD["steps"]):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
    out = {"loss": np.array(losses, dtype=np.float32)}
    for name, buf in model.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            out[name] = buf.detach().numpy().astype(np.float32)
    return out, moved[0]


def main():
    ap = argparse.ArgumentParser(description="PyTorch training-mode gradient goldens")
    ap.add_argument("--family", action="append", choices=models.FAMILIES,
                    help="family (repeatable); all by default")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QFORGE_THREADS", "2")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ds = Dataset()
    classes = ds.train_y.tolist()
    picks = [[i for i, c in enumerate(classes) if c == k % 10][k // 10] for k in range(BATCH)]
    x = ds.train_x[picks].clone()
    y = ds.train_y[picks].clone().to(torch.int64)
    os.makedirs(OUT_DIR, exist_ok=True)
    np.save(os.path.join(OUT_DIR, "batch_input.npy"), x.numpy())
    np.save(os.path.join(OUT_DIR, "batch_labels.npy"), y.numpy())
    with open(os.path.join(OUT_DIR, "sgd.json"), "w") as f:
        json.dump(dict(SGD, batch=BATCH, bn_momentum=BN_MOMENTUM,
                       loss="mean cross-entropy"), f, indent=2)
        f.write("\n")

    for family in args.family or models.FAMILIES:
        grads, names, diff = gradients(family, x, y)
        np.savez(os.path.join(OUT_DIR, "%s_bn_grads.npz" % family), **grads)
        with open(os.path.join(OUT_DIR, "%s_bn_names.json" % family), "w") as f:
            json.dump(names, f, indent=1, sort_keys=True)
            f.write("\n")
        sgd, _ = sgd_run(family, x, y)
        other, moved = sgd_run(family, x, y, kinks_other_way=True)
        if moved:
            # A ReLU input this close to its kink lands on either side in two correct float32
            # runs, and its mask moves the gradient by percents: the run with those elements on
            # the other side is a second reference.
            sgd.update({"kink/" + k: v for k, v in other.items()})
            sgd["kink/moved"] = np.array(moved, dtype=np.int64)
        np.savez(os.path.join(OUT_DIR, "%s_bn_sgd.npz" % family), **sgd)
        if moved:
            print("%s: %d ReLU inputs within %.0e of the kink over the SGD run; their other side "
                  "stored under kink/ (loss %.7g -> %.7g)"
                  % (family, moved, KINK, sgd["loss"][-1], other["loss"][-1]), flush=True)
        print("%s: eval check max |diff| %.2g, loss %.6f, %d gradients, SGD loss %.4f -> %.4f"
              % (family, diff, float(grads["loss"]), len(grads) - 1, sgd["loss"][0],
                 sgd["loss"][-1]), flush=True)


if __name__ == "__main__":
    main()

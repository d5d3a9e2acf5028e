#!/usr/bin/python3
"""Small recurrent models for tests/graph/rnn_import_test.cpp (graph/rnn_import.h unrolls RNN, GRU
and LSTM nodes):

  * data/models/ops/lstm_bidirectional.onnx: x [N, 7, 5] (batch first, dynamic batch) ->
    nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True) -> y [N, 7, 12], and its
    final states h, c [4, N, 6]. lstm_bidirectional.npz: x (N = 2), PyTorch's outputs y0, y1, y2,
    their gradients dy0, dy1, dy2 and every parameter's gradient of the sum of y<i>·dy<i>.
  * data/models/ops/gru_initial_state.onnx: x [7, N, 5] (steps first) -> nn.GRU(5, 6) from a
    learned initial state expanded over the batch -> y [7, N, 6]; nn.GRU is ONNX's GRU with
    linear_before_reset. gru_initial_state.npz as above.
  * data/models/ops/rnn_relu.onnx: x [N, 7, 5] -> nn.RNN(5, 4, nonlinearity="relu",
    bidirectional=True, batch_first=True) -> y [N, 7, 8]. rnn_relu.npz as above.
  * data/models/ops/crnn.onnx: a text-line recognizer as CRNNs are built: images [N, 1, 16, 32]
    -> Conv -> BN -> ReLU -> MaxPool 2 -> Conv -> BN -> ReLU -> MaxPool (2, 1) -> the columns as a
    sequence of 32 steps of 4·8 features -> bidirectional LSTM of 16 -> Linear to 11 classes ->
    log-softmax [32, N, 11] (steps first, as CTC takes them).
  * data/models/ops/recurrent_forms.onnx (opset 14, written node by node: forms no PyTorch
    export writes): an LSTM running in reverse from given initial states without a bias and a
    bidirectional GRU without linear_before_reset; inputs x [6, 2, 3], h0, c0 [1, 2, 4] and
    g [6, 2, 3]; outputs the LSTM's y, y_h, y_c and the GRU's y, y_h. Compared with ONNX Runtime.
  * data/models/ops/lstm_layout1.onnx: that LSTM batch first (layout 1), which ONNX Runtime does
    not run: x [2, 6, 3], h0, c0 [2, 1, 4]; compared with recurrent_forms.onnx transposed.

Seeded; run: /usr/bin/python3 data/generate/recurrent_models.py (seconds)
"""
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from training_step import step_arrays
from user_op_models import save_helper_model

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "models", "ops")


class Lstm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        return y, h, c


class Gru(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(5, 6)
        self.h0 = torch.nn.Parameter(torch.randn(1, 1, 6) * 0.5)

    def forward(self, x):
        y, _ = self.gru(x, self.h0.expand(1, x.shape[1], 6).contiguous())
        return (y,)


class Rnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.RNN(5, 4, nonlinearity="relu", bidirectional=True, batch_first=True)

    def forward(self, x):
        y, _ = self.rnn(x)
        return (y,)


class Crnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.MaxPool2d((2, 1)))
        self.lstm = torch.nn.LSTM(32, 16, bidirectional=True)
        self.classes = torch.nn.Linear(32, 11)

    def forward(self, x):
        f = self.features(x)  # [N, 8, 4, 16]
        n, c, h, w = f.shape
        seq = f.permute(3, 0, 1, 2).reshape(w, n, c * h)  # [16, N, 32]
        y, _ = self.lstm(seq)
        return torch.log_softmax(self.classes(y), dim=-1)


def randomize_batch_norms(model, generator):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


def export(model, x, name, output_names, dynamic_axis):
    path = os.path.join(OUT, name + ".onnx")
    axes = {"x": {dynamic_axis: "batch"}}
    for o in output_names:
        axes[o] = {}
    torch.onnx.export(model, (x,), path, opset_version=14, input_names=["x"],
                      output_names=output_names, dynamic_axes={"x": {dynamic_axis: "batch"}},
                      do_constant_folding=True)
    print(path)
    return path


def with_golden(model, x, name, dynamic_axis):
    outputs = [f"y{i}" for i in range(len(model(x)))]
    path = export(model, x, name, outputs, dynamic_axis)
    names = {init.name for init in onnx.load(path).graph.initializer}
    arrays = step_arrays(model, x, 11)
    grads = dict(model.named_parameters())
    used = set()
    # torch.onnx writes each layer of an nn.LSTM/GRU/RNN as one node whose W, R and B stack the
    # directions and put the gates in ONNX's order: their gradients, arranged the same way.
    recurrent = [n for n in onnx.load(path).graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    layers = [m for m in model.modules() if isinstance(m, torch.nn.RNNBase)]
    assert len(layers) == 1, "one nn.RNNBase per model"
    module = [k for k, m in model.named_modules() if m is layers[0]][0]
    for layer, node in enumerate(recurrent):
        order = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}[node.op_type]
        directions = ["", "_reverse"] if layers[0].bidirectional else [""]

        def arranged(kind, d):
            key = f"{module}.{kind}_l{layer}{directions[d]}"
            used.add(key)
            chunks = grads[key].grad.chunk(len(order))
            return torch.cat([chunks[i] for i in order])

        arrays["grad/" + node.input[1]] = torch.stack(
            [arranged("weight_ih", d) for d in range(len(directions))]).numpy()
        arrays["grad/" + node.input[2]] = torch.stack(
            [arranged("weight_hh", d) for d in range(len(directions))]).numpy()
        arrays["grad/" + node.input[3]] = torch.stack(
            [torch.cat([arranged("bias_ih", d), arranged("bias_hh", d)])
             for d in range(len(directions))]).numpy()
    for pname, p in grads.items():
        if pname in used:
            continue
        if pname not in names:
            raise SystemExit(f"{name}: {pname} is not an initializer of the export")
        arrays["grad/" + pname] = p.grad.numpy()
    np.savez(os.path.join(OUT, name + ".npz"), **arrays)


def recurrent_forms():
    f = TensorProto.FLOAT
    g = np.random.RandomState(12)
    hidden = 4
    inits = [
        numpy_helper.from_array((g.randn(1, 4 * hidden, 3) * 0.5).astype(np.float32), "lw"),
        numpy_helper.from_array((g.randn(1, 4 * hidden, hidden) * 0.5).astype(np.float32), "lr"),
        numpy_helper.from_array((g.randn(2, 3 * hidden, 3) * 0.5).astype(np.float32), "gw"),
        numpy_helper.from_array((g.randn(2, 3 * hidden, hidden) * 0.5).astype(np.float32), "gr"),
        numpy_helper.from_array((g.randn(2, 6 * hidden) * 0.5).astype(np.float32), "gb"),
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "lw", "lr", "", "", "h0", "c0"], ["ly", "ly_h", "ly_c"],
                         name="lstm_reverse", hidden_size=hidden, direction="reverse"),
        helper.make_node("GRU", ["g", "gw", "gr", "gb"], ["gy", "gy_h"], name="gru_reset_first",
                         hidden_size=hidden, direction="bidirectional", linear_before_reset=0),
    ]
    save_helper_model(
        "recurrent_forms", nodes,
        [helper.make_tensor_value_info("x", f, [6, 2, 3]),
         helper.make_tensor_value_info("h0", f, [1, 2, hidden]),
         helper.make_tensor_value_info("c0", f, [1, 2, hidden]),
         helper.make_tensor_value_info("g", f, [6, 2, 3])],
        [helper.make_tensor_value_info("ly", f, [6, 1, 2, hidden]),
         helper.make_tensor_value_info("ly_h", f, [1, 2, hidden]),
         helper.make_tensor_value_info("ly_c", f, [1, 2, hidden]),
         helper.make_tensor_value_info("gy", f, [6, 2, 2, hidden]),
         helper.make_tensor_value_info("gy_h", f, [2, 2, hidden])], 14, inits)
    # The same LSTM batch first (layout 1), which ONNX Runtime does not run: one node, its
    # outputs the layout-0 ones transposed.
    lstm = helper.make_node("LSTM", ["x", "lw", "lr", "", "", "h0", "c0"],
                            ["ly", "ly_h", "ly_c"], name="lstm_reverse", hidden_size=hidden,
                            direction="reverse", layout=1)
    save_helper_model(
        "lstm_layout1", [lstm],
        [helper.make_tensor_value_info("x", f, [2, 6, 3]),
         helper.make_tensor_value_info("h0", f, [2, 1, hidden]),
         helper.make_tensor_value_info("c0", f, [2, 1, hidden])],
        [helper.make_tensor_value_info("ly", f, [2, 6, 1, hidden]),
         helper.make_tensor_value_info("ly_h", f, [2, 1, hidden]),
         helper.make_tensor_value_info("ly_c", f, [2, 1, hidden])], 14, inits[:2])

def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(10)
    with_golden(Lstm().eval(), torch.randn(2, 7, 5), "lstm_bidirectional", 0)
    with_golden(Gru().eval(), torch.randn(7, 2, 5), "gru_initial_state", 1)
    with_golden(Rnn().eval(), torch.randn(2, 7, 5), "rnn_relu", 0)
    crnn = Crnn().eval()
    randomize_batch_norms(crnn, torch.Generator().manual_seed(13))
    with torch.no_grad():
        export(crnn, torch.randn(2, 1, 16, 32), "crnn", ["y0"], 0)
    recurrent_forms()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Forward time of recurrent models (LSTM, GRU, a CRNN text recognizer) in qforge, PyTorch and
ONNX Runtime.

Three models with random weights (seeded), exported at opset 14 with a dynamic batch:
`lstm` (nn.LSTM(256, 256, num_layers=2, bidirectional=True, batch_first=True) over 40 steps),
`gru` (nn.GRU(256, 512, batch_first=True) over 40 steps) and `crnn` (a text-line recognizer:
four Conv-BN-ReLU stages with max pools over images [N, 1, 32, 128] -> 32 steps of 256 features
-> a 2-layer bidirectional LSTM of 128 -> a Linear to 37 classes -> log-probabilities [32, N,
37]). Inputs are normal(0, 1), seeded. First qforge's outputs are checked against PyTorch's
(within 1e-4 of the largest), then the runtimes alternate for --rounds rounds, each keeping its
fastest: qforge `run` (forward time, compilation and warm-up excluded) of the model as exported
and transformed (`--transform`), PyTorch eager under torch.no_grad(), ONNX Runtime for Node with
every graph optimisation. With --write, the table replaces the recurrent section of
bench/RESULTS.md.

    bench/recurrent_compare.py [--qforge build/tools/qforge] [--batch 8] [--write]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import zoo  # noqa: E402

MODELS = ["lstm", "gru", "crnn"]
BEGIN = "<!-- recurrent_compare:begin (generated; replaced on each run) -->"
END = "<!-- recurrent_compare:end -->"


def build_model(name):
    """The model and the shape of one sample of its input."""
    import torch

    torch.manual_seed(zoo.WEIGHT_SEED)

    class Sequence(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)[0]

    class Crnn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layers, channels = [], 1
            for width, pool in [(32, (2, 2)), (64, (2, 2)), (128, (2, 1)), (128, (2, 1))]:
                layers += [torch.nn.Conv2d(channels, width, 3, padding=1),
                           torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                           torch.nn.MaxPool2d(pool)]
                channels = width
            self.features = torch.nn.Sequential(*layers)
            self.lstm = torch.nn.LSTM(256, 128, num_layers=2, bidirectional=True)
            self.classes = torch.nn.Linear(256, 37)

        def forward(self, x):
            f = self.features(x)  # [N, 128, 2, 32]
            n, c, h, w = f.shape
            y, _ = self.lstm(f.permute(3, 0, 1, 2).reshape(w, n, c * h))
            return torch.log_softmax(self.classes(y), dim=-1)

    if name == "lstm":
        return Sequence(torch.nn.LSTM(256, 256, num_layers=2, bidirectional=True,
                                      batch_first=True)).eval(), (40, 256)
    if name == "gru":
        return Sequence(torch.nn.GRU(256, 512, batch_first=True)).eval(), (40, 256)
    model = Crnn().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    return model, (1, 32, 128)


def paths(args, name):
    cache = os.path.join(zoo.BENCH_DIR, ".cache", "recurrent")
    os.makedirs(cache, exist_ok=True)
    return (os.path.join(cache, f"{name}.onnx"),
            os.path.join(cache, f"{name}_x_b{args.batch}.npy"),
            os.path.join(cache, f"{name}_b{args.batch}_outputs.npy"))


def prepare(args, name, log):
    """Exports the model and writes its inputs and PyTorch's outputs, unless they are there."""
    import numpy as np
    import torch

    model_path, data_path, reference = paths(args, name)
    if all(os.path.exists(p) for p in (model_path, data_path, reference)):
        return model_path, data_path, reference
    torch.set_num_threads(args.threads)
    model, sample = build_model(name)
    rng = np.random.default_rng(zoo.INPUT_SEED)
    rows = args.batch * (args.runs + args.warmup)
    np.save(data_path, rng.standard_normal((rows,) + sample).astype(np.float32))
    x = torch.from_numpy(np.load(data_path)[:args.batch])
    with torch.no_grad():
        np.save(reference, model(x).numpy())
    log(f"exporting {os.path.relpath(model_path, zoo.REPO_ROOT)}")
    torch.onnx.export(model, x, model_path, opset_version=14, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    return model_path, data_path, reference


def torch_time(args, name):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--model-name", name,
           "--threads", str(args.threads), "--batch", str(args.batch), "--runs", str(args.runs),
           "--warmup", str(args.warmup)]
    return compare.json_result(cmd, args.timeout)


def torch_worker(args):
    """Child process: times the PyTorch model on the first batch and prints one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    model, _ = build_model(args.model_name)
    _, data, _ = paths(args, args.model_name)
    x = torch.from_numpy(np.load(data)[:args.batch])
    print(compare.torch_call_timing(lambda: model(x), args))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    compare.add_model_timing_arguments(ap, batch=8)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--model-name", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    args.qforge = zoo.find_qforge(args.qforge)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    rows = []
    for name in args.models.split(","):
        model, data, reference = prepare(args, name, log)
        out = os.path.join(zoo.BENCH_DIR, ".cache", "recurrent", "qforge_outputs.npy")
        rows.append(compare.checked_model_row(args, name, model, data, reference, out,
                                              lambda: torch_time(args, name), log))
    load = os.getloadavg()
    version = next((r["torch"].get("version") for _, _, r in rows if "error" not in r["torch"]), "?")
    lines = [BEGIN, "", f"## Recurrent models, batch {args.batch}, {args.threads} threads", "",
             f"- Command: `bench/recurrent_compare.py {' '.join(sys.argv[1:])}` (from the "
             "repository root)",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- Machine: {zoo.machine_description()}; load average {load[0]:.2f} at the end",
             "- Models: `lstm` (2-layer bidirectional LSTM of 256 over 40 steps of 256), `gru` "
             "(GRU of 512 over 40 steps of 256), `crnn` (four Conv-BN-ReLU-MaxPool stages over "
             "[1, 32, 128] images, 32 steps of 256 features into a 2-layer bidirectional LSTM of "
             "128, a Linear to 37 classes); random weights (seeded), opset 14, dynamic batch; "
             "inputs normal(0, 1), seeded",
             f"- Timing: each runtime's mean over {args.runs} batches after {args.warmup} "
             f"warm-up, the fastest of {args.rounds} alternating rounds; PyTorch {version} eager "
             "under torch.no_grad(); ONNX Runtime for Node with every graph optimisation", ""]
    lines += compare.model_time_table("model", rows)
    lines += ["", "Ratios are time ratios (above 1: qforge is slower). qforge unrolls each "
              "recurrent node over its steps (graph/rnn_import.h): one MatMul of the whole "
              "sequence by the input weights per direction, then per step a MatMul by the "
              "recurrent weights (packed once for all steps) and the gates. Most of `crnn`'s time in "
              "qforge is its convolutions: dense 3x3 ones of fewer than 256 channels on planes "
              "under 28x28 that Winograd does not take run on OpenBLAS (kernels/conv_packed.cpp).",
              "", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        compare.write_results(text, compare.RESULTS, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

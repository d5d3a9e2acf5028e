#!/usr/bin/env python3
"""Forward time of a BERT-base-size text encoder in qforge, PyTorch and ONNX Runtime.

The encoder is written as Hugging Face's BERT modeling code writes it (token, position and
token-type embeddings; separate query, key and value Linears; scores divided by sqrt(d); the
padding mask made additive with float32's lowest value; GELU MLP; post-norm LayerNorms; a tanh
pooler and a classifier on the first token), with random weights, and exported at opset 14
(LayerNorm written out, as Hugging Face's exports of that opset have it) and 17 (one
LayerNormalization node), batch and sequence dynamic. The inputs are int64 token ids, an
attention mask (each sample 1/2 to all of --tokens tokens long, the rest padding) and token
types, in one .npz.

First qforge's logits are checked against PyTorch's (within 1e-4 of the largest), then the
runtimes alternate for --rounds rounds, each keeping its fastest: qforge `run` (its forward
time, compilation and warm-up excluded) of the model as exported and transformed (`--transform`,
as calibration runs it), PyTorch eager with torch.no_grad(), ONNX Runtime for Node with every
graph optimisation. With --write, the table replaces the section between the text markers of
bench/RESULTS.md.

    bench/text_compare.py [--qforge build/tools/qforge] [--batch 8] [--tokens 128] [--write]
"""
import argparse
import math
import os
import sys
import time

import compare
import zoo

BEGIN = "<!-- text_compare:begin (generated; replaced on each run) -->"
END = "<!-- text_compare:end -->"


def build_model(args):
    import torch
    from torch import nn
    from torch.nn import functional as F

    width, heads = args.width, args.heads

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
            self.output = nn.Linear(width, width)
            self.attention_norm = nn.LayerNorm(width, eps=1e-12)
            self.intermediate = nn.Linear(width, args.hidden)
            self.out = nn.Linear(args.hidden, width)
            self.output_norm = nn.LayerNorm(width, eps=1e-12)

        def split(self, x):
            b, t, _ = x.shape
            return x.view(b, t, heads, width // heads).permute(0, 2, 1, 3)

        def forward(self, x, mask):
            q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(width // heads)
            context = torch.matmul((scores + mask).softmax(-1), v).permute(0, 2, 1, 3).contiguous()
            context = context.view(context.size(0), context.size(1), width)
            x = self.attention_norm(x + self.output(context))
            return self.output_norm(x + self.out(F.gelu(self.intermediate(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Embedding(args.vocab, width)
            self.positions = nn.Embedding(512, width)
            self.token_types = nn.Embedding(2, width)
            self.norm = nn.LayerNorm(width, eps=1e-12)
            self.register_buffer("position_ids", torch.arange(512).expand(1, -1))
            self.layers = nn.ModuleList([Layer() for _ in range(args.layers)])
            self.pooler = nn.Linear(width, width)
            self.classifier = nn.Linear(width, 2)

        def forward(self, input_ids, attention_mask, token_type_ids):
            t = input_ids.shape[1]
            x = self.norm(self.tokens(input_ids) + self.positions(self.position_ids[:, :t]) +
                          self.token_types(token_type_ids))
            mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * \
                torch.finfo(torch.float32).min
            for layer in self.layers:
                x = layer(x, mask)
            return self.classifier(torch.tanh(self.pooler(x[:, 0])))

    torch.manual_seed(zoo.WEIGHT_SEED)
    model = Bert().eval()
    with torch.no_grad():  # BERT's initialisation: N(0, 0.02) weights
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return model


def stem(args):
    return f"bert_l{args.layers}_d{args.width}"


def paths(args):
    cache = os.path.join(zoo.BENCH_DIR, ".cache", "text")
    os.makedirs(cache, exist_ok=True)
    return {opset: os.path.join(cache, f"{stem(args)}_opset{opset}.onnx") for opset in (14, 17)}, \
        os.path.join(cache, f"inputs_b{args.batch}_t{args.tokens}.npz")


def prepare(args, log):
    """Exports the models and writes the inputs and PyTorch's logits, unless they are there."""
    import numpy as np
    import torch

    models, inputs = paths(args)
    reference = inputs.replace(".npz", f"_{stem(args)}_logits.npy")
    if all(os.path.exists(p) for p in [*models.values(), inputs, reference]):
        return models, inputs, reference
    torch.set_num_threads(args.threads)
    model = build_model(args)
    rng = np.random.default_rng(zoo.INPUT_SEED)
    rows = args.batch * (args.runs + args.warmup)
    lengths = rng.integers(args.tokens // 2, args.tokens + 1, size=rows)
    mask = (np.arange(args.tokens)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, args.vocab, size=(rows, args.tokens)).astype(np.int64) * mask
    types = (np.arange(args.tokens)[None, :] >= lengths[:, None] // 2).astype(np.int64) * mask
    np.savez(inputs, input_ids=ids, attention_mask=mask, token_type_ids=types)
    feed = tuple(torch.from_numpy(a[:args.batch]) for a in (ids, mask, types))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    for opset, path in models.items():
        log(f"exporting {os.path.relpath(path, zoo.REPO_ROOT)}")
        torch.onnx.export(model, feed, path, input_names=names, output_names=["logits"],
                          opset_version=opset,
                          dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                        "logits": {0: "batch"}})
    with torch.no_grad():
        np.save(reference, model(*(torch.from_numpy(a) for a in (ids, mask, types))).numpy())
    return models, inputs, reference


def torch_time(args):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker"] + worker_args(args)
    return compare.json_result(cmd, args.timeout)


def worker_args(args):
    return ["--threads", str(args.threads), "--batch", str(args.batch), "--tokens", str(args.tokens),
            "--runs", str(args.runs), "--warmup", str(args.warmup), "--layers", str(args.layers),
            "--width", str(args.width), "--heads", str(args.heads), "--hidden", str(args.hidden),
            "--vocab", str(args.vocab)]


def torch_worker(args):
    """Child process: times the PyTorch model on the first batch and prints one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    model = build_model(args)
    _, inputs = paths(args)
    arrays = np.load(inputs)
    feed = tuple(torch.from_numpy(arrays[n][:args.batch])
                 for n in ("input_ids", "attention_mask", "token_type_ids"))
    print(compare.torch_call_timing(lambda: model(*feed), args))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    compare.add_model_timing_arguments(ap, batch=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=30522)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    args.qforge = zoo.find_qforge(args.qforge)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    models, inputs, reference = prepare(args, log)
    rows = []
    for opset, model in models.items():
        out = os.path.join(zoo.BENCH_DIR, ".cache", "text", "qforge_logits.npy")
        error = compare.model_logits_error(args, model, inputs, reference, out)
        log(f"opset {opset}: qforge's logits within {error:.2e} of PyTorch's (of the largest)")
        if error > 1e-4:
            raise SystemExit(f"opset {opset}: qforge differs from PyTorch by {error:.2e}")
        runs = {"qforge": [], "transformed": [], "torch": [], "ort": []}
        for r in range(args.rounds):
            log(f"opset {opset}, round {r + 1} of {args.rounds}")
            runs["qforge"].append(compare.model_qforge_time(args, model, inputs, False))
            runs["transformed"].append(compare.model_qforge_time(args, model, inputs, True))
            if opset == 14:  # the same module: PyTorch is timed once
                runs["torch"].append(torch_time(args))
            runs["ort"].append(compare.model_ort_time(args, model, inputs))
        rows.append((opset, error, {k: compare.fastest(v) for k, v in runs.items() if v}))
    torch_row = rows[0][2]["torch"]
    base = (args.layers, args.width, args.heads, args.hidden) == (12, 768, 12, 3072)
    size = "BERT-base size" if base else f"{args.layers} layers of width {args.width}"
    load = os.getloadavg()
    lines = [BEGIN, "",
             f"## Text encoder ({size}), batch {args.batch}, {args.tokens} tokens, "
             f"{args.threads} threads", "",
             f"- Command: `bench/text_compare.py {' '.join(sys.argv[1:])}` (from the repository "
             "root)",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- Machine: {zoo.machine_description()}; load average {load[0]:.2f} at the end",
             f"- Model: {args.layers} layers, width {args.width}, {args.heads} heads, MLP "
             f"{args.hidden}, vocabulary {args.vocab}, random weights; int64 inputs of "
             f"{args.tokens} tokens (1/2 to all of them real, the rest padding)",
             f"- Timing: each runtime's mean over {args.runs} batches after {args.warmup} "
             f"warm-up, the fastest of {args.rounds} alternating rounds; PyTorch "
             f"{torch_row.get('version', '?')} eager under torch.no_grad(); ONNX Runtime for Node "
             "with every graph optimisation", ""]
    # PyTorch runs the module once for both exports: its row stands in each.
    lines += compare.model_time_table(
        "export", [(f"opset {opset}", error, {**r, "torch": torch_row}) for opset, error, r in rows])
    lines += ["", "Ratios are time ratios (above 1: qforge is slower). PyTorch runs the module "
              "itself, once for both exports.", "", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        compare.write_results(text, os.path.join(zoo.BENCH_DIR, "RESULTS.md"), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

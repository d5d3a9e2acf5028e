#!/usr/bin/python3
"""Forward+backward time in training mode: `qforge grad` against PyTorch's loss.backward() on the
same full-size models, in the same run.

Models (bench/zoo.py weights): resnet18 at batch 16 and vit_b_16 at batch 8, exported to
.cache/models/<name>_train.onnx with BatchNormalization kept (TrainingMode.PRESERVE) and a
dynamic batch. Both sides run BatchNorm on batch statistics and the mean cross-entropy against
fixed labels, on 2 threads by default; each reports the fastest of --runs passes after one
untimed pass. The gradients are compared too, both qforge's and PyTorch's float32 ones against
PyTorch's in float64 (relative L2 of the gradient vector), so the table times the same
computation and says how far float32 rounding alone moves it. Rewrites the training section of RESULTS.md unless
--no-write.
"""
import argparse
import datetime
import os
import re
import subprocess
import sys
import time

import compare  # noqa: E402
import zoo

CASES = [("resnet18", 16), ("vit_b_16", 8)]
SECTION_START = "<!-- training:start -->"
SECTION_END = "<!-- training:end -->"


def train_model_path(name):
    return os.path.join(zoo.MODEL_DIR, f"{name}_train.onnx")


def export(torch, name, log):
    path = train_model_path(name)
    if os.path.exists(path):
        return path
    model = zoo.build_model(name, freeze=False)
    model.eval()
    tmp = path + ".tmp"
    torch.onnx.export(model, torch.zeros((2,) + zoo.IMAGE_SHAPE), tmp, opset_version=zoo.OPSET,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    os.replace(tmp, path)
    log(f"  exported {os.path.relpath(path, zoo.REPO_ROOT)}")
    return path


def pytorch_time(torch, name, x, y, runs):
    import torch.nn.functional as F

    model = zoo.build_model(name, freeze=False)
    model.train()
    for m in model.modules():  # dropout off, as in the exported graph that qforge runs
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    best = float("inf")
    for i in range(runs + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ms = (time.perf_counter() - t0) * 1e3
        if i > 0:
            best = min(best, ms)
    grads = {n: p.grad.detach().numpy() for n, p in model.named_parameters()}
    return best, float(loss), grads


def qforge_time(exe, model_path, x_path, y_path, out_path, runs, threads):
    r = subprocess.run([exe, "grad", model_path, "--data", x_path, "--labels", y_path, "-o",
                        out_path, "--runs", str(runs + 1), "--threads", str(threads)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"qforge grad failed on {model_path}: {r.stderr.strip()}")
    ms = float(re.search(r"time\s+([0-9.]+) ms", r.stdout).group(1))
    loss = float(re.search(r"loss\s+([0-9.eE+-]+)", r.stdout).group(1))
    return ms, loss


def float64_gradients(torch, name, x, y):
    """PyTorch's gradients computed in float64: the reference both float32 results are
    measured against (a randomly initialised deep network amplifies float32 rounding, so the
    two float32 results can differ from each other by more than either differs from exact)."""
    import torch.nn.functional as F

    model = zoo.build_model(name, freeze=False).double()
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    F.cross_entropy(model(x.double()), y).backward()
    return {n: p.grad.detach().numpy() for n, p in model.named_parameters()}


def relative_l2(np, got, want):
    """Relative L2 of the gradient vector `got` to `want` over the parameters both hold with one
    name and shape (MatMul weights, which the export stores transposed under generated names, are
    left out; the count says how many were compared)."""
    diff = norm = 0.0
    matched = 0
    for name, g in want.items():
        if name not in got or got[name].shape != g.shape:
            continue
        diff += float(np.sum((got[name].astype(np.float64) - g) ** 2))
        norm += float(np.sum(g.astype(np.float64) ** 2))
        matched += 1
    return (diff ** 0.5) / max(norm ** 0.5, 1e-30), matched, len(want)


def write_section(table_lines):
    compare.write_results(SECTION_START + "\n" + "\n".join(table_lines) + "\n" + SECTION_END + "\n",
                          compare.RESULTS, SECTION_START, SECTION_END)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qforge", help="qforge binary or build directory (default: build/)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="timed passes each (after one untimed)")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    args = ap.parse_args()
    exe = zoo.find_qforge(args.qforge)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(zoo.MODEL_DIR, exist_ok=True)
    os.makedirs(zoo.INPUT_DIR, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    load_before = zoo.load_average()
    rows = []
    for name, batch in CASES:
        path = export(torch, name, log)
        x = zoo.make_timing_inputs(batch)
        y = (np.arange(batch) * 7 % 1000).astype(np.int64)
        x_path = os.path.join(zoo.INPUT_DIR, f"train_b{batch}.npy")
        y_path = os.path.join(zoo.INPUT_DIR, f"train_labels_b{batch}.npy")
        np.save(x_path, x)
        np.save(y_path, y)
        out = os.path.join(zoo.CACHE_DIR, f"{name}_grads.npz")
        q_ms, q_loss = qforge_time(exe, path, x_path, y_path, out, args.runs, args.threads)
        t_ms, t_loss, grads = pytorch_time(torch, name, torch.from_numpy(x), torch.from_numpy(y), args.runs)
        exact = float64_gradients(torch, name, torch.from_numpy(x), torch.from_numpy(y))
        q = dict(np.load(out))
        q_rel, matched, total = relative_l2(np, q, exact)
        t_rel, _, _ = relative_l2(np, grads, exact)
        log(f"{name} b{batch}: qforge {q_ms:.0f} ms, PyTorch {t_ms:.0f} ms, ratio {q_ms / t_ms:.2f}; "
            f"loss {q_loss:.6g} / {t_loss:.6g}; gradients against float64: qforge {q_rel:.1e}, "
            f"PyTorch float32 {t_rel:.1e} over {matched}/{total}")
        rows.append((name, batch, q_ms, t_ms, q_loss, t_loss, q_rel, t_rel, matched, total))
    load_after = zoo.load_average()

    lines = [
        "## Training: forward and backward",
        "",
        f"`/usr/bin/python3 bench/training.py` at {compare.git_revision()}, {datetime.date.today().isoformat()}, "
        f"{zoo.machine_description()}, {args.threads} threads, torch {torch.__version__}; fastest of "
        f"{args.runs} passes after one untimed; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after.",
        "",
        "| model | batch | qforge grad | PyTorch loss.backward() | ratio | loss qforge / PyTorch | gradients vs float64: qforge / PyTorch float32 (params compared) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, batch, q_ms, t_ms, q_loss, t_loss, q_rel, t_rel, matched, total in rows:
        lines.append(f"| {name} | {batch} | {q_ms:.0f} ms | {t_ms:.0f} ms | {q_ms / t_ms:.2f} | "
                     f"{q_loss:.6g} / {t_loss:.6g} | {q_rel:.1e} / {t_rel:.1e} ({matched}/{total}) |")
    lines += [
        "",
        "Both time one forward and backward in training mode (BatchNorm on batch statistics) with "
        "the mean cross-entropy; qforge's figure is the `time` line of `qforge grad --runs`, "
        "PyTorch's wraps `model(x)`, the loss and `loss.backward()`.",
    ]
    if not args.no_write:
        write_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

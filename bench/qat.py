#!/usr/bin/python3
"""One quantization-aware training step: qforge against PyTorch 1.13 QAT (`prepare_qat_fx`,
SGD) and PyTorch float training, on the same full-size models, input and thread count, in the
same run.

Models (bench/zoo.py weights): resnet18 at batch 16 and mobilenet_v3_small at batch 32, 224x224,
exported as bench/training.py does (.cache/models/<name>_train.onnx, BatchNormalization kept).
A step is the forward, the mean cross-entropy against fixed labels, the backward and an SGD step
(lr 1e-4, momentum 0.9), on 2 threads by default. Each side runs in a process of its own, which
reports the median of each part over --runs steps after --warmup untimed ones, and its own peak
resident set size (getrusage ru_maxrss: model construction, QAT preparation or qforge's
calibration included).

- qforge: build/bench/qforge_qat_step (bench/qat_step.cpp): the model transformed, its Q/DQ
  points placed and activations calibrated with max on the batch, then trained through fake quant
  (quant::max_calibrated_fake_quant_training, as `qforge grad --fake-quant`), quant::Sgd.
- PyTorch QAT: prepare_qat_fx(model, get_default_qat_qconfig_mapping("fbgemm"), example) in
  train mode (conv+BN fused into the QAT modules, BN folding simulated; fake quant with moving-
  average observers on activations, per-channel weights), torch.optim.SGD.
- PyTorch float: the model itself in train mode, torch.optim.SGD.

Rewrites the QAT section of RESULTS.md unless --no-write.
"""
import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import compare
import compare  # noqa: E402
import zoo

CASES = [("resnet18", 16), ("mobilenet_v3_small", 32)]
SECTION_START = "<!-- qat:start -->"
SECTION_END = "<!-- qat:end -->"
LR = 1e-4
MOMENTUM = 0.9
TIME_TARGET = 0.65
MEMORY_TARGET = 0.5


def input_paths(batch):
    return (os.path.join(zoo.INPUT_DIR, f"train_b{batch}.npy"),
            os.path.join(zoo.INPUT_DIR, f"train_labels_b{batch}.npy"))


def make_inputs(np, batch):
    x = zoo.make_timing_inputs(batch)
    y = (np.arange(batch) * 7 % 1000).astype(np.int64)
    x_path, y_path = input_paths(batch)
    np.save(x_path, x)
    np.save(y_path, y)
    return x_path, y_path


def pytorch_child(args):
    """Runs in its own process: times PyTorch steps and prints one JSON line."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    x_path, y_path = input_paths(args.batch)
    x = torch.from_numpy(np.load(x_path))
    y = torch.from_numpy(np.load(y_path))
    model = zoo.build_model(args.model, freeze=False)
    model.train()
    for m in model.modules():  # dropout off, as in the exported graph that qforge runs
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if args.child == "torch-qat":
        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        model = prepare_qat_fx(model, get_default_qat_qconfig_mapping("fbgemm"), (x,))
        model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    forward, backward, step, total = [], [], [], []
    loss = None
    for i in range(args.warmup + args.runs):
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        if i >= args.warmup:
            forward.append((t1 - t0) * 1e3)
            backward.append((t2 - t1) * 1e3)
            step.append((t3 - t2) * 1e3)
            total.append((t3 - t0) * 1e3)
    print(json.dumps({
        "forward_ms": statistics.median(forward), "backward_ms": statistics.median(backward),
        "optimizer_ms": statistics.median(step), "step_ms": statistics.median(total),
        "min_step_ms": min(total), "loss": float(loss),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))
    return 0


def last_json(stdout, what):
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"{what}: no result line in its output:\n{stdout}")


def run_pytorch(kind, name, batch, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--model", name, "--batch",
           str(batch), "--threads", str(args.threads), "--warmup", str(args.warmup), "--runs",
           str(args.runs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{kind} on {name} failed:\n{r.stderr.strip()}")
    return last_json(r.stdout, kind)


def run_qforge(exe, model_path, x_path, y_path, args):
    cmd = [exe, model_path, x_path, y_path, "--threads", str(args.threads), "--warmup",
           str(args.warmup), "--runs", str(args.runs), "--lr", str(LR)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"qforge_qat_step on {model_path} failed: {r.stderr.strip()}")
    return last_json(r.stdout, "qforge_qat_step"), " ".join(
        os.path.relpath(c, zoo.REPO_ROOT) if os.path.isabs(c) else c for c in cmd)


def find_step_binary(path):
    candidates = [path] if path else [os.path.join(zoo.REPO_ROOT, "build", "bench", "qforge_qat_step")]
    if path and os.path.isdir(path):
        candidates = [os.path.join(path, "bench", "qforge_qat_step"), os.path.join(path, "qforge_qat_step")]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    sys.exit(f"no qforge_qat_step at {', '.join(candidates)}; build with scripts/build "
             "(QFORGE_BUILD_BENCH=ON)")


def write_section(lines):
    compare.write_results(SECTION_START + "\n" + "\n".join(lines) + "\n" + SECTION_END + "\n",
                          compare.RESULTS, SECTION_START, SECTION_END)


def mib(n):
    return n / (1 << 20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qforge", help="qforge_qat_step binary or build directory (default: build/)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--runs", type=int, default=3, help="timed steps (the median is reported)")
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(n for n, _ in CASES))
    ap.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    compare.add_quiet_machine_arguments(ap)
    ap.set_defaults(wait=120, retries=2)
    ap.add_argument("--child", choices=["torch-qat", "torch-float"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return pytorch_child(args)
    exe = find_step_binary(args.qforge)

    import numpy as np
    import torch

    import training

    os.makedirs(zoo.MODEL_DIR, exist_ok=True)
    os.makedirs(zoo.INPUT_DIR, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    cases = CASES
    if args.models:
        wanted = args.models.split(",")
        cases = [c for c in CASES if c[0] in wanted]
    load_before = zoo.load_average()
    rows = []
    for name, batch in cases:
        path = training.export(torch, name, log)
        x_path, y_path = make_inputs(np, batch)
        q_cmd = []

        def qforge_run():
            res, cmd = run_qforge(exe, path, x_path, y_path, args)
            q_cmd.append(cmd)
            return res

        q = compare.measure(qforge_run, f"qforge {name}", args, log)
        t_qat = compare.measure(lambda: run_pytorch("torch-qat", name, batch, args),
                                f"PyTorch QAT {name}", args, log)
        t_float = compare.measure(lambda: run_pytorch("torch-float", name, batch, args),
                                  f"PyTorch float {name}", args, log)
        q_cmd = q_cmd[-1]
        log(f"{name} b{batch}: qforge QAT {q['step_ms']:.0f} ms ({mib(q['peak_rss_bytes']):.0f} MiB), "
            f"PyTorch QAT {t_qat['step_ms']:.0f} ms ({mib(t_qat['peak_rss_bytes']):.0f} MiB), "
            f"PyTorch float {t_float['step_ms']:.0f} ms ({mib(t_float['peak_rss_bytes']):.0f} MiB); "
            f"time ratio {q['step_ms'] / t_qat['step_ms']:.2f}, memory ratio "
            f"{q['peak_rss_bytes'] / t_qat['peak_rss_bytes']:.2f}")
        rows.append((name, batch, q, t_qat, t_float, q_cmd))
    load_after = zoo.load_average()

    lines = [
        "## Quantization-aware training: one step",
        "",
        f"`/usr/bin/python3 bench/qat.py` at {compare.git_revision()}, {datetime.date.today().isoformat()}, "
        f"{zoo.machine_description()}, {args.threads} threads, torch {torch.__version__}; median of "
        f"{args.runs} steps after {args.warmup} untimed; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after. qforge: `{rows[0][5] if rows else ''}` (and likewise per model).",
        "",
        "| model | batch | side | forward + loss | backward | optimizer | step | step / PyTorch QAT | peak RSS | RSS / PyTorch QAT | loss | CPU used by others |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, batch, q, t_qat, t_float, _ in rows:
        for side, r in (("qforge QAT", q), ("PyTorch QAT", t_qat), ("PyTorch float", t_float)):
            lines.append(
                f"| {name} | {batch} | {side} | {r['forward_ms']:.0f} ms | {r['backward_ms']:.0f} ms | "
                f"{r['optimizer_ms']:.1f} ms | {r['step_ms']:.0f} ms | {r['step_ms'] / t_qat['step_ms']:.2f} | "
                f"{mib(r['peak_rss_bytes']):.0f} MiB | {r['peak_rss_bytes'] / t_qat['peak_rss_bytes']:.2f} | "
                f"{r['loss']:.5g} | {100 * r['others']:.0f}%{' (disturbed)' if r.get('disturbed') else ''} |")
        time_ratio = q["step_ms"] / t_qat["step_ms"]
        memory_ratio = q["peak_rss_bytes"] / t_qat["peak_rss_bytes"]
        verdicts.append(
            f"- {name}: step {time_ratio:.2f}x PyTorch QAT's (target <= {TIME_TARGET}: "
            f"{'met' if time_ratio <= TIME_TARGET else 'not met'}), peak RSS {memory_ratio:.2f}x "
            f"(target <= {MEMORY_TARGET}: {'met' if memory_ratio <= MEMORY_TARGET else 'not met'}); "
            f"qforge's arena {mib(q['arena_bytes']):.0f} MiB (its buffers unshared: "
            f"{mib(q['unshared_bytes']):.0f} MiB), setup (load, transform, calibrate, compile) "
            f"{q['setup_s']:.1f} s.")
    lines += [""] + verdicts + [
        "",
        "A step is the forward with the mean cross-entropy, the backward and an SGD step (lr 1e-4, "
        "momentum 0.9), BatchNorm on batch statistics, dropout off. qforge trains through fake quant "
        "with activation ranges calibrated once (max, on the batch) and weight scales from the "
        "current weights each step; PyTorch QAT (`prepare_qat_fx`, default fbgemm QAT qconfig) "
        "also updates its moving-average activation observers every step. PyTorch's optimizer "
        "column includes nothing of `zero_grad` (set_to_none, outside the timing). Peak RSS is "
        "each process's own ru_maxrss (setup included).",
    ]
    if not args.no_write:
        write_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

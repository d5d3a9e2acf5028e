#!/usr/bin/python3
"""Forward-time benchmark of qforge against PyTorch and ONNX Runtime (Node) on the exported
models (export_models.py), at batch 8 with 2 threads by default.

  qforge   `qforge run <name>_b8.onnx --batch 8 --threads 2 --warmup 2` over N batches of
           random images; its mean forward ms/batch (compilation and warm-up excluded)
  fused    the same with --transform: the graph after conversions and fusions into modules
  PyTorch  the same torchvision model and seeded weights, torch.set_num_threads(2),
           torch.no_grad(); 2 warm-up batches, then the mean of N timed batches
  ORT      bench/ort_time.js on the same .onnx file (intra-op 2 threads, inter-op 1,
           all graph optimisations, sequential); 2 warm-up runs, then the mean of N runs

GFLOP/s = 2 * MACs per image (`qforge inspect` of the b1 model) * batch / qforge time.
Peak memory is each process's own peak resident set (VmHWM, as each reports it: qforge's
`memory` line, the PyTorch worker and ort_time.js from /proc/self/status): the runtime, its
weights, activations and inputs, as a user sees it.
A `qforge run --profile` of one model (resnet50) gives the time per op kind, and the bundled
models (data/models) are timed plain and transformed on the digits training images.

Each runtime runs in its own process, one after another, and the four alternate for --rounds
rounds per model (default 2), each keeping its fastest round. Before each model the script
samples the machine's CPU use for a second while it is idle itself, waits (up to --wait s)
while others use more than --max-busy of it, and reports what it saw.

Writes the section between the compare.py markers of bench/RESULTS.md (creating the file
or appending the section when missing) unless --no-write.
"""
import argparse
import datetime
import glob
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402

RESULTS = os.path.join(zoo.BENCH_DIR, "RESULTS.md")
BEGIN = "<!-- compare.py:begin (generated; replaced on each run) -->"
END = "<!-- compare.py:end -->"
DEFAULT_MODELS = ["resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0",
                  "convnext_tiny", "vit_b_16", "swin_t"]
# Timed batches per model (the slow ones get fewer).
DEFAULT_RUNS = {"resnet18": 5, "resnet50": 5, "mobilenet_v3_small": 5, "efficientnet_b0": 5,
                "convnext_tiny": 3, "vit_b_16": 3, "swin_t": 3}
PROFILE_MODEL = "resnet50"
BUNDLED_IMAGES = 1432  # of the 1437 digits training images: 179 batches of 8
BUNDLED_REPEATS = 5

INTRO = """# qforge end-to-end benchmarks

Forward time of full-size torchvision models (random weights) in qforge, PyTorch and
ONNX Runtime on the same machine and thread count. Reproduce from the repository root with

    bench/run

which installs what is missing, builds qforge (Release), exports the models
(`bench/export_models.py`), checks qforge's outputs against PyTorch's
(`bench/check_models.py`) and times the three runtimes (`bench/compare.py`, which rewrites
the section below). See bench/README.md for the scripts' options.

"""


# ----------------------------------------------------------------------------- helpers

def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (from /proc/stat), while this script sleeps."""
    def read():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return float("nan")
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_busy, wait, log):
    """Samples background CPU use; waits while it is above max_busy, up to `wait` seconds.
    Returns the last sample."""
    deadline = time.time() + wait
    busy = cpu_busy()
    while busy > max_busy and time.time() < deadline:
        log(f"    machine busy ({100 * busy:.0f}% CPU used by others, load {zoo.load_average()[0]:.2f}); waiting")
        time.sleep(10)
        busy = cpu_busy()
    return busy


def cpu_snapshot():
    """(busy CPU seconds of the whole machine, all CPU seconds, CPU seconds of this
    script's finished children) for others_share()."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (total - idle) / tick, total / tick, ru.ru_utime + ru.ru_stime


def others_share(s0, s1):
    """Fraction of the machine's CPU time between two snapshots used by processes other than
    this script's children (the runtime being measured)."""
    busy, total, ours = (b - a for a, b in zip(s0, s1))
    return max(0.0, busy - ours) / total if total > 0 else 0.0


def add_quiet_machine_arguments(ap):
    """The options measure() reads: --max-busy, --wait and --retries."""
    ap.add_argument("--max-busy", type=float, default=0.25,
                    help="wait while other processes use more than this fraction of the CPUs (default 0.25)")
    ap.add_argument("--wait", type=int, default=300, help="longest wait for a quiet machine, s (default 300)")
    ap.add_argument("--retries", type=int, default=3,
                    help="repeat a measurement disturbed by other processes up to this many times (default 3)")


def measure(fn, what, args, log):
    """Runs fn() (one runtime on one model) on a quiet machine: waits for one first, and
    repeats the measurement (up to --retries times) when other processes used more than
    --max-busy of the CPUs while it ran. Adds "others" (that fraction) to the result."""
    for attempt in range(args.retries + 1):
        wait_quiet(args.max_busy, args.wait, log)
        s0 = cpu_snapshot()
        res = fn()
        res["others"] = others_share(s0, cpu_snapshot())
        if "error" in res or res["others"] <= args.max_busy:
            return res
        if attempt < args.retries:
            log(f"    {what}: other processes used {100 * res['others']:.0f}% CPU meanwhile; measuring again")
    res["disturbed"] = True
    return res


def error_lines(text, limit=3):
    lines = [l.strip() for l in text.replace("\r", "\n").splitlines() if l.strip()]
    lines = [l for l in lines if not l.startswith("run ")] or lines
    return lines[-limit:]


def run_cmd(cmd, timeout):
    env = dict(os.environ, QFORGE_NO_PROGRESS="1")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout} s")


def qforge_macs(qforge, name, timeout):
    proc = run_cmd([qforge, "inspect", zoo.model_path(name, 1)], timeout)
    m = re.search(r"^MACs\s+(\d+) per image", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        return None, error_lines(proc.stdout + "\n" + proc.stderr)
    return int(m.group(1)), []


THROUGHPUT_RE = re.compile(
    r"^throughput\s+([\d.]+) images/s \(forward ([\d.]+) s, ([\d.]+) ms/batch; wall ([\d.]+) s\)", re.M)
MEMORY_RE = re.compile(r"^memory\s+peak resident ([\d.]+) MiB", re.M)
PROFILE_RE = re.compile(r"^\s+(\S+)\s+([\d.]+) ms\s+([\d.]+)%\s+\((\d+) nodes\)\s*$", re.M)


def qforge_time(qforge, name, data, images, args, profile=False, transform=False, model=None):
    cmd = [qforge, "run", model or zoo.model_path(name, args.batch), "--data", data, "--limit", str(images),
           "--batch", str(args.batch), "--threads", str(args.threads), "--warmup", str(args.warmup)]
    if profile:
        cmd.append("--profile")
    if transform:
        cmd.append("--transform")
    proc = run_cmd(cmd, args.timeout)
    m = THROUGHPUT_RE.search(proc.stdout)
    if proc.returncode != 0 or not m:
        return {"error": error_lines(proc.stdout + "\n" + proc.stderr) or [f"exit {proc.returncode}"],
                "cmd": cmd}
    res = {"images_s": float(m.group(1)), "forward_s": float(m.group(2)),
           "ms": float(m.group(3)), "cmd": cmd}
    peak = MEMORY_RE.search(proc.stdout)
    if peak:
        res["peak_mib"] = float(peak.group(1))
    if profile:
        res["profile"] = [(op, float(ms), float(pct), int(nodes))
                          for op, ms, pct, nodes in PROFILE_RE.findall(proc.stdout)]
    return res


def json_result(cmd, timeout):
    """Runs a worker that prints its result as one JSON line last: that result, or the error lines
    of its output (its exit code where it printed none)."""
    proc = run_cmd(cmd, timeout)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": error_lines(proc.stdout + "\n" + proc.stderr) or [f"exit {proc.returncode}"]}


def torch_time(name, runs, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", name, "--runs", str(runs),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--batch", str(args.batch)]
    return json_result(cmd, args.timeout)


def ort_time(name, runs, args):
    script = os.path.join(zoo.BENCH_DIR, "ort_time.js")
    cmd = ["node", script, "--model", zoo.model_path(name, args.batch), "--input",
           zoo.input_path(args.batch), "--batch", str(args.batch), "--warmup", str(args.warmup),
           "--runs", str(runs), "--threads", str(args.threads)]
    return json_result(cmd, args.timeout)


def add_model_timing_arguments(ap, batch):
    """The options the text and video scripts share (their model options apart)."""
    ap.add_argument("--qforge", default=None, help="qforge binary (default build/tools/qforge)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--runs", type=int, default=3, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the fastest kept")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--write", action="store_true", help="replace the section in bench/RESULTS.md")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)


def model_logits_error(args, model, data, reference, out, limit=None):
    """qforge's logits of one model file (`run -o out`, the first `limit` rows of `data` when
    given) against PyTorch's in `reference`: the largest difference over the largest |logit|."""
    import numpy as np

    cmd = [args.qforge, "run", model, "--data", data, "--batch", str(args.batch), "--threads",
           str(args.threads), "-o", out]
    if limit:
        cmd += ["--limit", str(limit)]
    proc = run_cmd(cmd, args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"qforge run failed: {proc.stderr.strip()}")
    got, want = np.load(out), np.load(reference)
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def model_time_table(first_column, rows):
    """The table of the text and video scripts: per row (label, max diff to PyTorch, the fastest
    result of each runtime by key qforge, transformed, torch, ort), the times, their ratios and
    each process's peak memory."""
    def ms(r):
        return r.get("mean_ms") if "error" not in r else None

    cell = lambda v: f"{v:.1f}" if v else "error"
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
    lines = [f"| {first_column} | qforge ms/batch | transformed ms/batch | PyTorch ms | ORT ms | "
             "qforge/PyTorch | qforge/ORT | transformed/ORT | peak MiB qforge / PyTorch / ORT | "
             "max diff to PyTorch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for label, error, r in rows:
        q, t, p, o = ms(r["qforge"]), ms(r["transformed"]), ms(r["torch"]), ms(r["ort"])
        peak = " / ".join(f"{x.get('peak_mib') or 0:.0f}" for x in (r["qforge"], r["torch"], r["ort"]))
        lines.append(f"| {label} | {cell(q)} | {cell(t)} | {cell(p)} | {cell(o)} | "
                     f"{ratio(q, p)} | {ratio(q, o)} | {ratio(t, o)} | {peak} | {error:.1e} |")
    return lines


def model_qforge_time(args, model, data, transform):
    """qforge `run` of one model file over --runs batches after --warmup (the text and video
    scripts): its mean forward ms/batch and peak resident memory."""
    cmd = [args.qforge, "run", model, "--data", data, "--batch", str(args.batch),
           "--limit", str(args.batch * (args.runs + args.warmup)), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    if transform:
        cmd.append("--transform")
    proc = run_cmd(cmd, args.timeout)
    m = THROUGHPUT_RE.search(proc.stdout)
    if proc.returncode != 0 or not m:
        return {"error": error_lines(proc.stdout + "\n" + proc.stderr)}
    peak = MEMORY_RE.search(proc.stdout)
    return {"mean_ms": float(m.group(3)), "peak_mib": float(peak.group(1)) if peak else None}


def model_ort_time(args, model, data):
    """ort_time.js on one model file (the text and video scripts)."""
    cmd = ["node", os.path.join(zoo.BENCH_DIR, "ort_time.js"), "--model", model, "--input", data,
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--runs", str(args.runs),
           "--threads", str(args.threads)]
    return json_result(cmd, args.timeout)


def torch_call_timing(call, args):
    """In a PyTorch worker process: `call()` timed --runs times after --warmup under
    torch.no_grad(), as the JSON line the parent reads."""
    import torch

    ms = []
    with torch.no_grad():
        for _ in range(args.warmup):
            call()
        for _ in range(args.runs):
            t0 = time.perf_counter()
            call()
            ms.append(1e3 * (time.perf_counter() - t0))
    with open("/proc/self/status") as status:
        m = re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.M)
    return json.dumps({"version": torch.__version__, "ms": ms, "mean_ms": statistics.mean(ms),
                       "peak_mib": int(m.group(1)) / 1024 if m else None})


def checked_model_row(args, label, model, data, reference, out, torch_time, log):
    """One row of the video and recurrent tables: qforge's outputs (`run -o out`) checked against
    PyTorch's in `reference` (within 1e-4 of the largest, else the script stops), then qforge
    plain and transformed, PyTorch (`torch_time()`) and ONNX Runtime alternating for --rounds
    rounds, each runtime's fastest kept: (label, error, results by runtime)."""
    error = model_logits_error(args, model, data, reference, out, limit=args.batch)
    log(f"{label}: qforge's outputs within {error:.2e} of PyTorch's (of the largest)")
    if error > 1e-4:
        raise SystemExit(f"{label}: qforge differs from PyTorch by {error:.2e}")
    runs = {"qforge": [], "transformed": [], "torch": [], "ort": []}
    for r in range(args.rounds):
        log(f"{label}, round {r + 1} of {args.rounds}")
        runs["qforge"].append(model_qforge_time(args, model, data, False))
        runs["transformed"].append(model_qforge_time(args, model, data, True))
        runs["torch"].append(torch_time())
        runs["ort"].append(model_ort_time(args, model, data))
    return label, error, {k: fastest(v) for k, v in runs.items()}


def fastest(results):
    """The fastest of a runtime's rounds (the last error when every round failed)."""
    good = [r for r in results if "error" not in r]
    return min(good, key=lambda r: r["mean_ms"]) if good else results[-1]


def torch_worker(args):
    """Child process: times the PyTorch model and prints one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    model = zoo.build_model(args.torch_worker)
    x = torch.from_numpy(np.load(zoo.input_path(args.batch)))
    ms = []
    with torch.no_grad():
        for _ in range(args.warmup):
            model(x)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            model(x)
            ms.append(1e3 * (time.perf_counter() - t0))
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    version = torch.__version__
    try:
        deb = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-torch"],
                             capture_output=True, text=True, check=True).stdout.strip()
        if deb and torch.__file__.startswith("/usr/lib/python3/"):
            version += f" (Debian python3-torch {deb})"
    except (OSError, subprocess.CalledProcessError):
        pass
    version += f", BLAS {blas.group(1) if blas else '?'}, oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}"
    with open("/proc/self/status") as status:
        m = re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.M)
        peak = int(m.group(1)) / 1024 if m else None
    print(json.dumps({"version": version, "threads": torch.get_num_threads(), "ms": ms,
                      "mean_ms": statistics.mean(ms), "median_ms": statistics.median(ms),
                      "peak_mib": peak}))
    return 0


def rel(arg):
    """An absolute path inside the repository, relative to its root (for printed commands)."""
    if os.path.isabs(arg) and arg.startswith(zoo.REPO_ROOT + os.sep):
        return os.path.relpath(arg, zoo.REPO_ROOT)
    return arg


def git_revision():
    try:
        rev = subprocess.run(["git", "-C", zoo.REPO_ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        # RESULTS.md itself is rewritten by the benchmarks: its changes do not make the build dirty.
        dirty = subprocess.run(["git", "-C", zoo.REPO_ROOT, "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":!bench/RESULTS.md"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------- report

def f1(x):
    return f"{x:.1f}"


def star(res):
    return "\\*" if res.get("disturbed") else ""


def render(rows, profile, meta, bundled=()):
    out = [BEGIN, "", f"## Forward time, batch {meta['batch']}, {meta['threads']} threads", ""]
    out += [
        f"- Command: `{meta['command']}` (from the repository root)",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Threads: qforge `--threads {meta['threads']}`; PyTorch `torch.set_num_threads({meta['threads']})`; "
        f"ORT `intraOpNumThreads: {meta['threads']}, interOpNumThreads: 1, graphOptimizationLevel: 'all', "
        f"executionMode: 'sequential'`",
        f"- Versions: qforge {meta['qforge_rev']}; PyTorch {meta['torch']}; onnxruntime-node {meta['ort']}",
        f"- Timing: batch {meta['batch']}, {meta['warmup']} warm-up batches, then the mean over the timed "
        f"batches (count per model below); qforge's time is its forward time (compilation and warm-up excluded); "
        f"the four runtimes alternate for {meta['rounds']} round(s) per model, each keeping its fastest round",
        f"- Machine load: {meta['load']}",
        "",
        "| model | qforge ms/batch | transformed ms/batch | images/s | GFLOP/s | PyTorch ms | ORT ms | "
        "qforge/PyTorch | qforge/ORT | transformed/ORT | transformed/plain | timed batches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        q, qt, t, o = r["qforge"], r["fused"], r["torch"], r["ort"]
        qms = q.get("ms")
        fms = qt.get("ms")
        gflops = (2 * r["macs"] * meta["batch"] / (qms / 1e3) / 1e9) if (qms and r["macs"]) else None
        cells = [
            r["model"],
            (f1(qms) + star(q)) if qms else "error",
            (f1(fms) + star(qt)) if fms else "error",
            f1(q["images_s"]) if qms else "-",
            f1(gflops) if gflops else "-",
            (f1(t["mean_ms"]) + star(t)) if "mean_ms" in t else "error",
            (f1(o["mean_ms"]) + star(o)) if "mean_ms" in o else "error",
            f"{qms / t['mean_ms']:.2f}" if qms and "mean_ms" in t else "-",
            f"{qms / o['mean_ms']:.2f}" if qms and "mean_ms" in o else "-",
            f"{fms / o['mean_ms']:.2f}" if fms and "mean_ms" in o else "-",
            f"{fms / qms:.2f}" if fms and qms else "-",
            str(r["runs"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
        for label, res in (("qforge", q), ("qforge --transform", qt), ("PyTorch", t), ("ORT", o)):
            if "error" in res:
                notes.append(f"- {r['model']}, {label}: `" + " / ".join(res["error"]).replace("`", "'") + "`")
        if r["macs"] is None and r.get("macs_error"):
            notes.append(f"- {r['model']}, qforge inspect: `" + " / ".join(r["macs_error"]) + "`")
    out.append("")
    out.append("Ratios are time ratios (above 1: qforge is slower). \"transformed\" runs the graph "
               "after conversions and fusions into modules (`qforge run --transform`), as calibration "
               "and QAT run it. GFLOP/s counts 2 FLOPs per MAC of `qforge inspect`, at qforge's "
               "(untransformed) time.")

    def mib(res):
        return f"{res['peak_mib']:.0f}" if res.get("peak_mib") else "-"

    def ratio(a, b):
        return f"{a['peak_mib'] / b['peak_mib']:.2f}" if a.get("peak_mib") and b.get("peak_mib") else "-"

    out += ["", "Peak resident memory of each process, MiB, in the round kept (qforge's includes the "
            "timing images it reads, PyTorch's the Python interpreter and torch, ORT's Node.js):", "",
            "| model | qforge | transformed | PyTorch | ORT | qforge/PyTorch | qforge/ORT |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        q, qt, t, o = r["qforge"], r["fused"], r["torch"], r["ort"]
        out.append(f"| {r['model']} | {mib(q)} | {mib(qt)} | {mib(t)} | {mib(o)} | {ratio(q, t)} | "
                   f"{ratio(q, o)} |")
    if any(r[k].get("disturbed") for r in rows for k in ("qforge", "fused", "torch", "ort")):
        out.append("\\* other processes used more than the allowed share of the CPUs during every "
                   "attempt at this measurement; take it with caution.")

    def pct(res):
        return f"{100 * res['others']:.0f}" if "others" in res else "-"

    out += ["", "Share of the CPUs used by other processes during each measurement (qforge / transformed / "
            "PyTorch / ORT): "
            + ", ".join(f"{r['model']} {pct(r['qforge'])}/{pct(r['fused'])}/{pct(r['torch'])}/{pct(r['ort'])}%"
                        for r in rows)
            + (f"; profile run {pct(profile)}%." if profile is not None else ".")]
    if notes:
        out += ["", "Failures:", ""] + notes
    if profile is not None:
        out += ["", f"### Where qforge's time goes: {PROFILE_MODEL}, batch {meta['batch']}", "",
                f"`{profile.get('command', '')}`" + (f" ({profile['batches']} timed batches, profiling on)"
                                                      if "batches" in profile else ""), ""]
        if "error" in profile:
            out.append("Failed: `" + " / ".join(profile["error"]) + "`")
        else:
            out += ["| op kind | ms/batch | share | nodes |", "|---|---:|---:|---:|"]
            for op, ms, pct, nodes in profile["profile"]:
                out.append(f"| {op} | {ms / profile['batches']:.2f} | {pct:.1f}% | {nodes} |")
            total = sum(p[1] for p in profile["profile"]) / profile["batches"]
            out.append(f"| total (profiled ops) | {total:.2f} | 100% | |")
    if bundled:
        out += ["", f"### Bundled models, plain and transformed, batch {meta['batch']}", "",
                f"`qforge run data/models/<model>.onnx --data data/datasets/digits/train --limit {BUNDLED_IMAGES} "
                f"--batch {meta['batch']} --threads {meta['threads']} --warmup {meta['warmup']} [--transform]`, "
                f"the two forms alternating {BUNDLED_REPEATS} times, each keeping its fastest run", "",
                "| model | plain ms/batch | transformed ms/batch | transformed/plain |", "|---|---:|---:|---:|"]
        for r in bundled:
            p, f = r["qforge"].get("ms"), r["fused"].get("ms")
            out.append(f"| {r['model']} | {f'{p:.3f}' + star(r['qforge']) if p else 'error'} | "
                       f"{f'{f:.3f}' + star(r['fused']) if f else 'error'} | {f'{f / p:.2f}' if p and f else '-'} |")
    out += ["", END]
    return "\n".join(out) + "\n"


def write_results(section, path, begin=BEGIN, end=END):
    """Replaces the section between the markers `begin` and `end` of `path` (creating the file
    or appending the section when missing)."""
    text = open(path).read() if os.path.exists(path) else INTRO
    b, e = text.find(begin), text.find(end)
    if b >= 0 and e > b:
        rest = text[e + len(end):].lstrip("\n")
        text = text[:b] + section + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qforge", help="qforge binary (default: build/tools/qforge under the repo root)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated subset (default: all seven)")
    ap.add_argument("--runs", type=int, help="timed batches per model (default: 5, 3 for the slow models)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up batches (default 2)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds per model: the runtimes alternate, each keeping its fastest (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every runtime (default 2)")
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)  # only b8 files are timed
    ap.add_argument("--no-profile", action="store_true", help=f"skip the --profile run of {PROFILE_MODEL}")
    ap.add_argument("--no-bundled", action="store_true",
                    help="skip the plain/transformed timing of the bundled models (data/models)")
    add_quiet_machine_arguments(ap)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per runtime and model (default 1800)")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        args.runs = args.runs or 5
        return torch_worker(args)
    if args.batch not in zoo.BATCHES:
        sys.exit(f"--batch: only {zoo.BATCHES} are exported")

    def log(msg):
        print(msg, flush=True)

    qforge = zoo.find_qforge(args.qforge)
    models = zoo.parse_models(args.models)
    missing = [zoo.model_path(m, b) for m in models for b in (1, args.batch) if not os.path.exists(zoo.model_path(m, b))]
    if missing:
        sys.exit("missing exported models (run bench/export_models.py): " + ", ".join(missing))
    runs = {m: args.runs or DEFAULT_RUNS.get(m, 3) for m in models}
    images = args.batch * max(runs.values())
    data = os.path.join(zoo.INPUT_DIR, f"timing_{images}.npy")
    if not os.path.exists(data):
        import numpy as np

        np.save(data + ".tmp.npy", zoo.make_timing_inputs(images))
        os.replace(data + ".tmp.npy", data)

    load_start = zoo.load_average()
    log(f"compare: {len(models)} model(s), batch {args.batch}, {args.threads} threads; "
        f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    rows = []
    torch_version = ort_version = "unknown"

    def show(label, res, text):
        flag = " (disturbed)" if res.get("disturbed") else ""
        others = f"; others {100 * res['others']:.0f}% CPU" if "others" in res else ""
        log(f"    {label:<8}: " + (text + others + flag if "error" not in res
                                   else "error: " + " / ".join(res["error"])))

    def faster(best, res, key):
        """The run with the lower time (an error only when every round failed)."""
        if best is None or "error" in best:
            return res
        return res if "error" not in res and res[key] < best[key] else best

    for name in models:
        macs, macs_err = qforge_macs(qforge, name, args.timeout)
        log(f"  {name}: {runs[name]} timed batches, {args.rounds} round(s)")
        q = qt = t = o = None
        # The four runtimes alternate round after round, each keeping its fastest round, so that
        # a slow spell of the machine does not decide one runtime's figure alone.
        for _ in range(args.rounds):
            r = measure(lambda: qforge_time(qforge, name, data, args.batch * runs[name], args),
                        "qforge", args, log)
            show("qforge", r, f"{r.get('ms', 0):.1f} ms/batch")
            q = faster(q, r, "ms")
            r = measure(lambda: qforge_time(qforge, name, data, args.batch * runs[name], args,
                                            transform=True), "qforge --transform", args, log)
            show("fused", r, f"{r.get('ms', 0):.1f} ms/batch")
            qt = faster(qt, r, "ms")
            r = measure(lambda: torch_time(name, runs[name], args), "PyTorch", args, log)
            torch_version = r.get("version", torch_version)
            show("PyTorch", r, f"{r.get('mean_ms', 0):.1f} ms (median {r.get('median_ms', 0):.1f})")
            t = faster(t, r, "mean_ms")
            r = measure(lambda: ort_time(name, runs[name], args), "ORT", args, log)
            ort_version = r.get("version", ort_version)
            show("ORT", r, f"{r.get('mean_ms', 0):.1f} ms (median {r.get('median_ms', 0):.1f})")
            o = faster(o, r, "mean_ms")
        rows.append({"model": name, "macs": macs, "macs_error": macs_err, "qforge": q, "fused": qt, "torch": t,
                     "ort": o, "runs": runs[name]})

    profile = None
    if not args.no_profile:
        pruns = DEFAULT_RUNS[PROFILE_MODEL] if args.runs is None else args.runs
        p = measure(lambda: qforge_time(qforge, PROFILE_MODEL, data, args.batch * pruns, args, profile=True),
                    "profile", args, log)
        p["command"] = shlex.join(["qforge"] + [rel(c) for c in p["cmd"][1:]])
        if "error" not in p:
            p["batches"] = pruns
            log(f"  {PROFILE_MODEL} profile: {len(p['profile'])} op kinds, {p['ms']:.1f} ms/batch with profiling")
        else:
            log(f"  {PROFILE_MODEL} profile: error: " + " / ".join(p["error"]))
        profile = p

    bundled = []
    if not args.no_bundled:
        val = os.path.join(zoo.REPO_ROOT, "data", "datasets", "digits", "train")
        for path in sorted(glob.glob(os.path.join(zoo.REPO_ROOT, "data", "models", "*.onnx"))):
            name = os.path.splitext(os.path.basename(path))[0]
            # Runs of a few milliseconds: the two forms alternate BUNDLED_REPEATS times and each
            # keeps its fastest run, so that a stray scheduling delay does not decide the ratio.
            plain = fused = None
            for _ in range(BUNDLED_REPEATS):
                p = measure(lambda: qforge_time(qforge, name, val, BUNDLED_IMAGES, args, model=path),
                            "qforge", args, log)
                f = measure(lambda: qforge_time(qforge, name, val, BUNDLED_IMAGES, args, transform=True,
                                                model=path), "qforge --transform", args, log)
                plain = p if plain is None or "error" in p or p.get("ms", 1e30) < plain.get("ms", 1e30) else plain
                fused = f if fused is None or "error" in f or f.get("ms", 1e30) < fused.get("ms", 1e30) else fused
            log(f"  bundled {name}: {plain.get('ms', 0):.2f} ms/batch, transformed {fused.get('ms', 0):.2f}")
            bundled.append({"model": name, "qforge": plain, "fused": fused})

    load_end = zoo.load_average()
    shares = [r[k]["others"] for r in rows for k in ("qforge", "fused", "torch", "ort") if "others" in r[k]]
    shares += [r[k]["others"] for r in bundled for k in ("qforge", "fused") if "others" in r[k]]
    if profile is not None and "others" in profile:
        shares.append(profile["others"])
    meta = {
        "command": shlex.join(["bench/compare.py"] + [rel(a) for a in sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": zoo.machine_description(),
        "threads": args.threads,
        "batch": args.batch,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "qforge_rev": git_revision(),
        "torch": torch_version,
        "ort": ort_version,
        "load": (f"1/5/15-min load average {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f} at the start, "
                 f"{load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f} at the end (the benchmark's own threads "
                 f"count); other processes used at most {100 * max(shares, default=0):.0f}% of the CPUs during "
                 f"any measurement (per measurement below; measurements above {100 * args.max_busy:.0f}% were "
                 f"repeated up to {args.retries} times)"),
    }
    section = render(rows, profile, meta, bundled)
    if args.no_write:
        print(section)
    else:
        write_results(section, RESULTS)
        log(f"wrote {os.path.relpath(RESULTS, zoo.REPO_ROOT)}")
        print(section)
    failed = any("error" in r[k] for r in rows for k in ("qforge", "fused", "torch", "ort"))
    failed |= any("error" in r[k] for r in bundled for k in ("qforge", "fused"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

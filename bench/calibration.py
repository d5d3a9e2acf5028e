#!/usr/bin/python3
"""Calibration cost of qforge against PyTorch FX post-training calibration, on resnet50 (the
exported model, random weights) at batch 8 with 2 threads by default.

  forward  `qforge run resnet50_b8.onnx` over the same samples: mean forward ms/batch
           (compilation and one warm-up batch excluded), the baseline calibration is held to
  qforge   `qforge calibrate resnet50_b8.onnx --batch 8 --threads 2` over N seeded random
           samples: a max-and-histogram observer on every activation Q/DQ point, one pass.
           From its report: time over the data (all passes; the first batch also builds the
           execution plan), time of all four calibrators on every point, and peak resident
           memory when calibration ends (before the Q/DQ model is evaluated)
  PyTorch  the same torchvision model and seeded weights; torch.ao.quantization.quantize_fx
           prepare_fx with get_default_qconfig_mapping("fbgemm") (HistogramObserver on
           activations, per-channel min/max on weights), torch.set_num_threads(2),
           torch.no_grad(), the same N samples in batches of 8: time of the calibration loop,
           then calculate_qparams() of every observer; peak resident memory of its process

Every figure comes from one run of each process, one after another, each on a quiet machine
(see compare.py: the script waits while other processes use the CPUs, and repeats a disturbed
measurement). Writes the section between the calibration.py markers of bench/RESULTS.md
unless --no-write.
"""
import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import zoo  # noqa: E402

BEGIN = "<!-- calibration.py:begin (generated; replaced on each run) -->"
END = "<!-- calibration.py:end -->"
MODEL = "resnet50"


def run_measured(cmd, timeout):
    """Runs cmd; returns (CompletedProcess-like tuple, peak RSS of that process in bytes)."""
    env = dict(os.environ, QFORGE_NO_PROGRESS="1")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = time.time() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                return 124, "", f"timed out after {timeout} s", 0
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        return code, out.read().decode(), err.read().decode(), usage.ru_maxrss * 1024


def qforge_forward(qforge, data, args):
    cmd = [qforge, "run", zoo.model_path(MODEL, args.batch), "--data", data, "--batch",
           str(args.batch), "--threads", str(args.threads), "--warmup", "1"]
    code, out, err, _ = run_measured(cmd, args.timeout)
    m = compare.THROUGHPUT_RE.search(out)
    if code != 0 or not m:
        return {"error": compare.error_lines(out + "\n" + err) or [f"exit {code}"], "cmd": cmd}
    return {"ms": float(m.group(3)), "cmd": cmd}


def qforge_calibrate(qforge, data, args):
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [qforge, "calibrate", zoo.model_path(MODEL, args.batch), "--data", data, "--batch",
               str(args.batch), "--threads", str(args.threads), "-o",
               os.path.join(tmp, f"{MODEL}.qdq.onnx"), "--report", report]
        code, out, err, peak = run_measured(cmd, args.timeout)
        if code != 0 or not os.path.exists(report):
            return {"error": compare.error_lines(out + "\n" + err) or [f"exit {code}"], "cmd": cmd}
        with open(report) as f:
            r = json.load(f)
    t = r["timing"]
    return {"cmd": cmd, "points": len(r["activation_points"]), "batches": r["calibration"]["batches"],
            "seconds": t["calibration_s"] + t["smoothquant_s"], "ms_per_batch": t["ms_per_batch"],
            "first_batch_ms": t["first_batch_ms"], "ms_per_later_batch": t["ms_per_later_batch"],
            "calibrators_s": t["calibrators_s"],
            "peak_bytes": t["peak_rss_bytes_after_calibration"], "process_peak_bytes": peak}


def torch_calibrate(data, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--data", data,
           "--threads", str(args.threads), "--batch", str(args.batch)]
    code, out, err, peak = run_measured(cmd, args.timeout)
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": compare.error_lines(out + "\n" + err) or [f"exit {code}"]}
    res["process_peak_bytes"] = peak
    return res


def torch_worker(args):
    """Child process: PyTorch FX calibration; prints one JSON line."""
    import numpy as np
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.observer import ObserverBase
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.set_num_threads(args.threads)
    # Batches are read from the file one at a time, as qforge does, so that memory holds one
    # batch of data (a memory map would keep every page it touched resident).
    f = open(args.data, "rb")
    version = np.lib.format.read_magic(f)
    shape, fortran, dtype = np.lib.format._read_array_header(f, version)
    if fortran or dtype != np.float32:
        sys.exit(f"{args.data}: expected a C-order float32 array")
    row = int(np.prod(shape[1:]))

    def read_batch(begin, count):
        f.seek(data_offset + 4 * row * begin)
        return torch.from_numpy(np.fromfile(f, np.float32, count * row).reshape((count,) + tuple(shape[1:])))

    data_offset = f.tell()
    model = zoo.build_model(MODEL)
    prepared = prepare_fx(model, get_default_qconfig_mapping("fbgemm"), (read_batch(0, args.batch),))
    batches = []
    with torch.no_grad():
        start = time.perf_counter()
        for b in range(0, shape[0], args.batch):
            t0 = time.perf_counter()
            prepared(read_batch(b, min(args.batch, shape[0] - b)))
            batches.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - start
    observers = [m for m in prepared.modules() if isinstance(m, ObserverBase)]
    t0 = time.perf_counter()
    for m in observers:
        m.calculate_qparams()
    qparams_s = time.perf_counter() - t0
    print(json.dumps({"version": torch.__version__, "threads": torch.get_num_threads(),
                      "batches": len(batches), "seconds": seconds,
                      "ms_per_batch": 1e3 * seconds / len(batches), "first_batch_ms": 1e3 * batches[0],
                      "observers": len(observers), "qparams_s": qparams_s,
                      "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    return 0


def mib(b):
    return f"{b / 2**20:.0f} MiB"


def render(q, t, f, meta):
    out = [BEGIN, "", f"## Calibration cost, {MODEL}, batch {meta['batch']}, {meta['threads']} threads", ""]
    out += [
        f"- Command: `{meta['command']}` (from the repository root)",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Versions: qforge {meta['qforge_rev']}; PyTorch {t.get('version', '?')}",
        f"- Data: {meta['samples']} seeded random samples (`{meta['data']}`), batches of {meta['batch']}",
        f"- qforge: `{meta['calibrate_cmd']}`; forward baseline `{meta['forward_cmd']}`",
        "- PyTorch: `prepare_fx(model, get_default_qconfig_mapping(\"fbgemm\"), example)` "
        "(HistogramObserver on activations), the same batches under `torch.no_grad()`, then "
        "`calculate_qparams()` on every observer",
        f"- Machine load: other processes used at most {meta['others']:.0f}% of the CPUs during any measurement",
        "",
    ]
    if any("error" in r for r in (q, t, f)):
        for label, r in (("qforge calibrate", q), ("PyTorch", t), ("qforge run", f)):
            if "error" in r:
                out.append(f"- {label} failed: `" + " / ".join(r["error"]).replace("`", "'") + "`")
        return "\n".join(out + ["", END]) + "\n"
    ratio_fwd = q["ms_per_batch"] / f["ms"]
    ratio_later = q["ms_per_later_batch"] / f["ms"]
    out += [
        "| figure | qforge | PyTorch FX | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| calibration over the data, all passes | {q['seconds']:.2f} s | {t['seconds']:.2f} s | "
        f"{q['seconds'] / t['seconds']:.3f} | ≤ 0.5 |",
        f"| per batch, all batches counted | {q['ms_per_batch']:.1f} ms | {t['ms_per_batch']:.1f} ms | | |",
        f"| first batch (qforge: also builds the execution plan) | {q['first_batch_ms']:.1f} ms | "
        f"{t['first_batch_ms']:.1f} ms | | |",
        f"| per batch after the first | {q['ms_per_later_batch']:.1f} ms | | | |",
        f"| plain qforge forward per batch (`qforge run`) | {f['ms']:.1f} ms | | | |",
        f"| calibration per batch / plain forward, all batches | | | {ratio_fwd:.3f} | ≤ 1.15 |",
        f"| calibration per batch / plain forward, after the first | | | {ratio_later:.3f} | |",
        f"| peak resident memory at the end of calibration | {mib(q['peak_bytes'])} | "
        f"{mib(t['peak_bytes'])} | {q['peak_bytes'] / t['peak_bytes']:.3f} | ≤ 0.4 |",
        f"| peak resident memory of the whole process (qforge: with the export and the "
        f"evaluation of the Q/DQ model) | {mib(q['process_peak_bytes'])} | "
        f"{mib(t['process_peak_bytes'])} | "
        f"{q['process_peak_bytes'] / t['process_peak_bytes']:.3f} | ≤ 0.4 |",
        f"| amax of every point by all four calibrators (qforge); calculate_qparams of every "
        f"observer (PyTorch) | {1e3 * q['calibrators_s']:.0f} ms, {q['points']} points | "
        f"{1e3 * t['qparams_s']:.0f} ms, {t['observers']} observers | | < 1 s (qforge) |",
        "",
        "Ratios are qforge / PyTorch, or qforge calibration / qforge forward.",
        "",
        END,
    ]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qforge", help="qforge binary (default: build/tools/qforge under the repo root)")
    ap.add_argument("--samples", type=int, default=256, help="calibration samples (default 256)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both tools (default 2)")
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)  # only b8 files exist
    compare.add_quiet_machine_arguments(ap)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per process (default 3600)")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    if args.batch not in zoo.BATCHES:
        sys.exit(f"--batch: only {zoo.BATCHES} are exported")
    if args.samples < 2 * args.batch:
        sys.exit(f"--samples: at least two batches ({2 * args.batch}) are needed")

    def log(msg):
        print(msg, flush=True)

    qforge = zoo.find_qforge(args.qforge)
    if not os.path.exists(zoo.model_path(MODEL, args.batch)):
        sys.exit("missing exported model (run bench/export_models.py): " + zoo.model_path(MODEL, args.batch))
    data = os.path.join(zoo.INPUT_DIR, f"timing_{args.samples}.npy")
    if not os.path.exists(data):
        import numpy as np

        np.save(data + ".tmp.npy", zoo.make_timing_inputs(args.samples))
        os.replace(data + ".tmp.npy", data)

    log(f"calibration: {MODEL}, {args.samples} samples, batch {args.batch}, {args.threads} threads")
    f = compare.measure(lambda: qforge_forward(qforge, data, args), "qforge run", args, log)
    log(f"  qforge run:       {f.get('ms', 0):.1f} ms/batch" if "error" not in f else f"  qforge run: {f['error']}")
    q = compare.measure(lambda: qforge_calibrate(qforge, data, args), "qforge calibrate", args, log)
    log(f"  qforge calibrate: {q.get('seconds', 0):.2f} s, {q.get('ms_per_batch', 0):.1f} ms/batch, "
        f"peak {mib(q.get('peak_bytes', 0))}" if "error" not in q else f"  qforge calibrate: {q['error']}")
    t = compare.measure(lambda: torch_calibrate(data, args), "PyTorch", args, log)
    log(f"  PyTorch FX:       {t.get('seconds', 0):.2f} s, {t.get('ms_per_batch', 0):.1f} ms/batch, "
        f"peak {mib(t.get('peak_bytes', 0))}" if "error" not in t else f"  PyTorch FX: {t['error']}")

    meta = {
        "command": shlex.join(["bench/calibration.py"] + [compare.rel(a) for a in sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": zoo.machine_description(),
        "threads": args.threads,
        "batch": args.batch,
        "samples": args.samples,
        "data": compare.rel(data),
        "qforge_rev": compare.git_revision(),
        "calibrate_cmd": shlex.join(["qforge"] + [compare.rel(c) for c in q.get("cmd", ["?"])[1:]]),
        "forward_cmd": shlex.join(["qforge"] + [compare.rel(c) for c in f.get("cmd", ["?"])[1:]]),
        "others": 100 * max(r.get("others", 0) for r in (q, t, f)),
    }
    # Temporary paths of the calibrate command say nothing; name them.
    meta["calibrate_cmd"] = meta["calibrate_cmd"].replace(os.path.dirname(q["cmd"][-1]) + "/", "") \
        if "cmd" in q else meta["calibrate_cmd"]
    section = render(q, t, f, meta)
    if args.no_write:
        print(section)
    else:
        compare.write_results(section, compare.RESULTS, BEGIN, END)
        log(f"wrote {os.path.relpath(compare.RESULTS, zoo.REPO_ROOT)}")
        print(section)
    return 1 if any("error" in r for r in (q, t, f)) else 0


if __name__ == "__main__":
    sys.exit(main())

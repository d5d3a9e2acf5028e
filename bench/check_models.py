#!/usr/bin/python3
"""Runs every exported model through `qforge run` on its fixed input and compares with
PyTorch's output (from export_models.py). A (model, batch) pair passes when

    max|qforge - pytorch| <= 1e-4 * max(1, max|pytorch|)

With --opset20 each model is also checked in a hand-converted opset-20 form (bench/opset20.py:
ReduceMean's axes as an input, each Erf-form GELU as one Gelu node), against the same reference.

Prints a table and exits non-zero when any pair fails or cannot run.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402

REL_TOL = 1e-4


def error_lines(text, limit=4):
    """The last few non-empty lines of a failed run's output (progress lines dropped)."""
    lines = [l.strip() for l in text.replace("\r", "\n").splitlines() if l.strip()]
    lines = [l for l in lines if not l.startswith("run ")] or lines
    return lines[-limit:]


def compare(out, ref):
    """Returns (max|delta|, tolerance, ok, note) for an output against its reference."""
    import numpy as np

    tol = REL_TOL * max(1.0, float(np.abs(ref).max()))
    if out.shape != ref.shape:
        return float("nan"), tol, False, f"shape {list(out.shape)}, expected {list(ref.shape)}"
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        return float("nan"), tol, False, f"{bad} non-finite values"
    diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max())
    return diff, tol, diff <= tol, ""


def opset20_copy(model, tmpdir):
    """The model converted to opset 20 in tmpdir; returns (path, Gelu nodes made)."""
    import onnx
    import opset20

    proto = onnx.load(model)
    gelus = opset20.to_opset20(proto)
    path = os.path.join(tmpdir, os.path.basename(model).replace(".onnx", "_opset20.onnx"))
    onnx.save(proto, path)
    return path, gelus


def check_one(qforge, name, batch, tmpdir, threads, timeout, opset=17):
    """Runs one pair; returns a result row dict."""
    import numpy as np

    label = name if opset == 17 else f"{name}@{opset}"
    row = {"model": label, "batch": batch, "diff": None, "tol": None, "ok": False, "note": "", "secs": 0.0}
    model = zoo.model_path(name, batch)
    ref_file = zoo.ref_path(name, batch)
    if not (os.path.exists(model) and os.path.exists(ref_file)):
        row["note"] = "not exported (run bench/export_models.py)"
        return row
    gelus = None
    if opset == 20:
        model, gelus = opset20_copy(model, tmpdir)
    out_file = os.path.join(tmpdir, f"{name}_b{batch}_opset{opset}.npy")
    cmd = [qforge, "run", model, "--data", zoo.input_path(batch), "--batch", str(batch),
           "-o", out_file, "--threads", str(threads)]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        row["note"] = f"timed out after {timeout} s"
        return row
    row["secs"] = time.time() - t0
    if proc.returncode != 0:
        row["note"] = f"qforge exit {proc.returncode}"
        row["errors"] = error_lines(proc.stdout + "\n" + proc.stderr)
        return row
    ref = np.load(ref_file)
    out = np.load(out_file)
    row["diff"], row["tol"], row["ok"], row["note"] = compare(out, ref)
    if gelus is not None:
        row["note"] = (row["note"] + "; " if row["note"] else "") + f"{gelus} Gelu nodes"
    return row


def fmt(x):
    return "-" if x is None else f"{x:.3g}" if x == x else "nan"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qforge", help="qforge binary (default: build/tools/qforge under the repo root)")
    ap.add_argument("--models", default="all", help="comma-separated subset (default: all)")
    ap.add_argument("--batches", default="1,8", help="batch sizes (default: 1,8)")
    ap.add_argument("--threads", type=int, default=2, help="qforge --threads (default 2)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per qforge run (default 1800)")
    ap.add_argument("--opset20", action="store_true",
                    help="also check each model converted by hand to opset 20 (Gelu nodes)")
    args = ap.parse_args()
    qforge = zoo.find_qforge(args.qforge)
    models = zoo.parse_models(args.models)
    batches = zoo.parse_batches(args.batches)

    rows = []
    header = f"{'model':<20} {'batch':>5} {'max|Δ|':>10} {'tolerance':>10} {'result':>6}  {'time':>7}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="qforge-check-") as tmpdir:
        opsets = [17, 20] if args.opset20 else [17]
        for name in models:
            for b, opset in [(b, o) for o in opsets for b in batches]:
                r = check_one(qforge, name, b, tmpdir, args.threads, args.timeout, opset)
                rows.append(r)
                result = "pass" if r["ok"] else "FAIL"
                line = (f"{r['model']:<20} {b:>5} {fmt(r['diff']):>10} {fmt(r['tol']):>10} {result:>6}"
                        f"  {r['secs']:>6.1f}s")
                if r["note"]:
                    line += f"  {r['note']}"
                print(line, flush=True)
                for e in r.get("errors", []):
                    print(f"{'':<8}| {e}", flush=True)
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} passed (tolerance {REL_TOL:g}·max(1, max|ref|))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

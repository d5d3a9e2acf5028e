#!/usr/bin/python3
"""Forward time of two qforge builds on the same models, in one run: a baseline binary and the
current one, the plain and the transformed graph (`qforge run [--transform]`, batch 8), run
alternately (baseline, current, baseline, ...) so that both see the same machine, each keeping
its fastest of `--rounds` runs. It answers "is this build slower than that one", which the
three-runtime table of compare.py cannot across machines.

    bench/forward_ab.py --baseline /path/to/old/qforge [--baseline-label REV] [--rounds 3]

Needs the exported models (bench/export_models.py). Rewrites the forward_ab section of
bench/RESULTS.md (or prints it with --no-write).
"""
import argparse
import datetime
import os
import re
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402

THROUGHPUT_RE = re.compile(r"^throughput\s+[\d.]+ images/s \(forward [\d.]+ s, ([\d.]+) ms/batch", re.M)
BEGIN = "<!-- forward_ab:begin (generated; replaced on each run) -->"
END = "<!-- forward_ab:end -->"


def revision():
    try:
        return subprocess.run(["git", "-C", zoo.REPO_ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def time_once(qforge, model, data, images, args, transform):
    cmd = [qforge, "run", model, "--data", data, "--limit", str(images), "--batch", "8",
           "--threads", str(args.threads), "--warmup", "2"]
    if transform:
        cmd.append("--transform")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    m = THROUGHPUT_RE.search(proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit("forward_ab: %s failed:\n%s%s" % (" ".join(cmd), proc.stdout, proc.stderr))
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the qforge binary to compare against")
    ap.add_argument("--baseline-label", default=None, help="its revision, for the table")
    ap.add_argument("--qforge", default=zoo.DEFAULT_QFORGE, help="the current binary")
    ap.add_argument("--models", default=",".join(zoo.MODELS), help="comma-separated subset")
    ap.add_argument("--rounds", type=int, default=3, help="runs per binary and form (default 3)")
    ap.add_argument("--batches", type=int, default=5, help="timed batches per run (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    ap.add_argument("--no-write", action="store_true", help="print the section only")
    args = ap.parse_args()
    for binary in (args.baseline, args.qforge):
        if not os.access(binary, os.X_OK):
            raise SystemExit("forward_ab: no executable at %s" % binary)
    images = 8 * (args.batches + 2)
    data = os.path.join(zoo.INPUT_DIR, "timing_%d.npy" % images)
    if not os.path.exists(data):
        os.makedirs(zoo.INPUT_DIR, exist_ok=True)
        np.save(data + ".tmp.npy", zoo.make_timing_inputs(images))
        os.replace(data + ".tmp.npy", data)
    load_before = zoo.load_average()
    start = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for name in args.models.split(","):
        model = zoo.model_path(name, 8)
        if not os.path.exists(model):
            raise SystemExit("forward_ab: %s is missing: run bench/export_models.py" % model)
        row = [name]
        for transform in (False, True):
            best = {args.baseline: float("inf"), args.qforge: float("inf")}
            for _ in range(args.rounds):
                for binary in (args.baseline, args.qforge):
                    best[binary] = min(best[binary], time_once(binary, model, data, images, args,
                                                               transform))
            row += [best[args.baseline], best[args.qforge]]
            print("%-20s %-10s baseline %8.1f ms  current %8.1f ms  ratio %.3f"
                  % (name, "transform" if transform else "plain", best[args.baseline],
                     best[args.qforge], best[args.qforge] / best[args.baseline]), flush=True)
        rows.append(row)
    load_after = zoo.load_average()
    label = args.baseline_label or args.baseline
    lines = [BEGIN, "", "## Forward time against an earlier build, batch 8, %d threads" % args.threads, "",
             "`bench/forward_ab.py --baseline <qforge of %s> --rounds %d` at %s, %s, %s; the two "
             "binaries alternate, each keeping its fastest of %d runs of %d timed batches after "
             "2 warm-up batches; load average %.1f before, %.1f after."
             % (label, args.rounds, revision(),
                start.strftime("%Y-%m-%d %H:%M UTC"), zoo.machine_description(), args.rounds,
                args.batches, load_before[0], load_after[0]),
             "",
             "| model | %s ms/batch | current ms/batch | current/%s | transformed: %s | transformed: current | current/%s |"
             % (label, label, label, label),
             "|---|---:|---:|---:|---:|---:|---:|"]
    worst = 0.0
    for name, base, cur, tbase, tcur in rows:
        worst = max(worst, cur / base, tcur / tbase)
        lines.append("| %s | %.1f | %.1f | %.3f | %.1f | %.1f | %.3f |"
                     % (name, base, cur, cur / base, tbase, tcur, tcur / tbase))
    lines += ["", "Largest ratio (current over %s): %.3f." % (label, worst), "", END]
    section = "\n".join(lines)
    print(section)
    if args.no_write:
        return 0
    path = os.path.join(zoo.BENCH_DIR, "RESULTS.md")
    text = open(path).read()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

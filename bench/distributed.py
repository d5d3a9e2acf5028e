#!/usr/bin/python3
"""Data-parallel runs on this machine: 1 rank x 2 threads against 2 ranks x 1 thread (mpirun).

- Calibration of resnet50 (bench/zoo.py weights, exported at batch 8 by export_models.py) on
  seeded random samples (.cache/inputs/timing_<N>.npy), batches of 8: `qforge calibrate` as one
  process with --threads 2, and under `mpirun -np 2` with --threads 1. From each report: the
  time of the calibration pass over the data (rank 0's: its share, the wait for the other rank
  and the exchange of statistics), the wait, the exchange and its bytes. The two written models
  must be byte-identical (the script stops otherwise).
- A QAT step of resnet18 at a global batch of 16 (.cache/models/resnet18_train.onnx and the
  inputs of bench/qat.py). qforge's QAT does not run data-parallel yet, so the 2-rank step is
  measured in its parts: the compute of one rank's half (bench/qat_step.cpp at batch 8 with one
  thread, both halves running at once under mpirun, as two ranks would), and the gradient
  exchange (bench/gradient_exchange.cpp: resnet18's 11.7 M gradients gathered to every rank
  through runtime::Communicator and summed in rank order) on 2 ranks; the 1-rank step is
  qat_step at batch 16 with two threads.

Prints the figures as a Markdown section and writes it between the distributed markers of
bench/RESULTS.md unless --no-write.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402

BEGIN = "<!-- distributed:start -->"
END = "<!-- distributed:end -->"
RESNET18_PARAMETERS = 11_689_512


def mpirun(ranks):
    cmd = ["mpirun", "--oversubscribe", "-np", str(ranks)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def run(cmd, what):
    env = dict(os.environ, QFORGE_NO_PROGRESS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{what} failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.strip()}")
    return r


def last_json(text):
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def calibrate(build, data, ranks, threads, out_dir):
    model = zoo.model_path("resnet50", 8)
    out = os.path.join(out_dir, f"r{ranks}.onnx")
    report = os.path.join(out_dir, f"r{ranks}.json")
    cmd = [os.path.join(build, "tools", "qforge"), "calibrate", model, "--data", data, "--batch",
           "8", "--threads", str(threads), "--flip-injections", "0", "-o", out, "--report",
           report]
    if ranks > 1:
        cmd = mpirun(ranks) + cmd
    run(cmd, f"calibrate on {ranks} rank(s)")
    with open(report) as f:
        j = json.load(f)
    with open(out, "rb") as f:
        j["written"] = f.read()
    j["command"] = " ".join(cmd)
    return j


def qat_step(build, batch, threads, ranks, runs):
    x = os.path.join(zoo.INPUT_DIR, f"train_b{batch}.npy")
    y = os.path.join(zoo.INPUT_DIR, f"train_labels_b{batch}.npy")
    cmd = [os.path.join(build, "bench", "qforge_qat_step"),
           os.path.join(zoo.MODEL_DIR, "resnet18_train.onnx"), x, y, "--threads", str(threads),
           "--warmup", "1", "--runs", str(runs)]
    if ranks > 1:
        cmd = mpirun(ranks) + cmd
    r = run(cmd, f"qat_step batch {batch} on {ranks} rank(s)")
    steps = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return steps, " ".join(cmd)


def exchange(build, ranks, runs):
    cmd = mpirun(ranks) + [os.path.join(build, "bench", "qforge_gradient_exchange"), "--floats",
                           str(RESNET18_PARAMETERS), "--runs", str(runs)]
    return last_json(run(cmd, "gradient exchange").stdout), " ".join(cmd)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(zoo.REPO_ROOT, "build"))
    ap.add_argument("--samples", type=int, default=64, help="calibration samples (default 64)")
    ap.add_argument("--runs", type=int, default=3, help="timed QAT steps and exchanges")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import numpy as np

    data = os.path.join(zoo.INPUT_DIR, f"timing_{args.samples}.npy")
    if not os.path.exists(data):
        os.makedirs(zoo.INPUT_DIR, exist_ok=True)
        np.save(data, zoo.make_timing_inputs(args.samples))
    if not os.path.exists(zoo.model_path("resnet50", 8)):
        run([sys.executable, os.path.join(zoo.BENCH_DIR, "export_models.py"), "--models",
             "resnet50", "--batches", "8"], "export of resnet50")
    for batch in (8, 16):
        if not os.path.exists(os.path.join(zoo.INPUT_DIR, f"train_b{batch}.npy")):
            np.save(os.path.join(zoo.INPUT_DIR, f"train_b{batch}.npy"),
                    zoo.make_timing_inputs(batch))
            np.save(os.path.join(zoo.INPUT_DIR, f"train_labels_b{batch}.npy"),
                    (np.arange(batch) * 7 % 1000).astype(np.int64))
    if not os.path.exists(os.path.join(zoo.MODEL_DIR, "resnet18_train.onnx")):
        run([sys.executable, os.path.join(zoo.BENCH_DIR, "training.py"), "--models", "resnet18",
             "--no-write"], "export of resnet18 for training")

    load_before = zoo.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        one = calibrate(args.build, data, 1, 2, tmp)
        two = calibrate(args.build, data, 2, 1, tmp)
    if one["written"] != two["written"]:
        sys.exit("the 2-rank calibration wrote another model than the 1-rank one")

    step_one, step_one_cmd = qat_step(args.build, 16, 2, 1, args.runs)
    step_half, step_half_cmd = qat_step(args.build, 8, 1, 2, args.runs)
    ex, ex_cmd = exchange(args.build, 2, max(args.runs, 5))
    load_after = zoo.load_average()

    def t(j, key):
        return j["timing"][key]

    one_step = step_one[0]["step_ms"]
    half_compute = max(s["step_ms"] for s in step_half)  # the slower rank sets the pace
    exchange_ms = 1e3 * ex["exchange_s"]
    sum_ms = 1e3 * ex["sum_s"]
    two_step = half_compute + exchange_ms + sum_ms
    rev = subprocess.run(["git", "-C", zoo.REPO_ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    lines = [
        BEGIN,
        "## Data-parallel runs: 1 rank x 2 threads against 2 ranks x 1 thread",
        "",
        f"`/usr/bin/python3 bench/distributed.py` at {rev}, "
        f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {zoo.machine_description()}, "
        f"Open MPI under `mpirun --oversubscribe -np 2` (shared memory between the ranks); "
        f"load average {'/'.join(map(str, load_before))} before, "
        f"{'/'.join(map(str, load_after))} after. docs/DISTRIBUTED.md models "
        "how these figures grow with ranks and machines.",
        "",
        f"### Calibration, resnet50, {one['calibration']['samples']} samples, batch 8",
        "",
        f"- 1 rank: `{one['command']}`",
        f"- 2 ranks: `{two['command']}`",
        "- the two written models are byte-identical (checked by the script)",
        "",
        "| figure | 1 rank x 2 threads | 2 ranks x 1 thread |",
        "|---|---:|---:|",
        f"| calibration pass over the data (rank 0) | {t(one, 'calibration_s'):.2f} s "
        f"| {t(two, 'calibration_s'):.2f} s |",
        f"| per batch ({one['calibration']['batches']} batches) "
        f"| {1e3 * t(one, 'calibration_s') / one['calibration']['batches']:.0f} ms "
        f"| {1e3 * t(two, 'calibration_s') / two['calibration']['batches']:.0f} ms |",
        f"| rank 0 waiting for the other rank at the end of the pass | - "
        f"| {1e3 * t(two, 'rank0_waiting_s'):.1f} ms |",
        f"| statistics exchanged and merged (once per pass) | - "
        f"| {1e3 * t(two, 'communication_s'):.1f} ms |",
        f"| bytes each rank sends | - | {t(two, 'communicated_bytes') / 1024:.0f} KiB |",
        f"| amax by the four calibrators | {1e3 * t(one, 'calibrators_s'):.0f} ms "
        f"| {1e3 * t(two, 'calibrators_s'):.0f} ms |",
        "",
        "### QAT step, resnet18, global batch 16",
        "",
        f"- 1 rank: `{step_one_cmd}`",
        f"- each rank's half: `{step_half_cmd}` (both halves at once)",
        f"- gradient exchange: `{ex_cmd}`",
        "",
        "| figure | 1 rank x 2 threads (measured) | 2 ranks x 1 thread (parts measured, "
        "data-parallel QAT not implemented) |",
        "|---|---:|---:|",
        f"| forward + backward + SGD | {one_step:.0f} ms (batch 16) "
        f"| {half_compute:.0f} ms (batch 8 per rank, slower rank) |",
        f"| gradient exchange ({ex['bytes_sent_per_rank'] / 1e6:.1f} MB sent, "
        f"{ex['bytes_received_per_rank'] / 1e6:.1f} MB received per rank) | - "
        f"| {exchange_ms:.1f} ms ({ex['received_gb_per_s']:.2f} GB/s received) |",
        f"| ordered sum of the gathered gradients | - | {sum_ms:.1f} ms |",
        f"| step | {one_step:.0f} ms | {two_step:.0f} ms (sum of the parts; "
        f"{100 * exchange_ms / two_step:.1f}% communication) |",
        "",
        END,
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        path = os.path.join(zoo.BENCH_DIR, "RESULTS.md")
        with open(path) as f:
            old = f.read()
        if BEGIN in old:
            old = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            old = old.rstrip("\n") + "\n\n" + text + "\n"
        with open(path, "w") as f:
            f.write(old)


if __name__ == "__main__":
    main()

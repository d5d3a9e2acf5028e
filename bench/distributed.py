#!/usr/bin/python3
"""Data-parallel runs on this machine: 1 rank x 2 threads against 2 ranks x 1 thread (mpirun).

- Calibration of resnet50 (bench/zoo.py weights, exported at batch 8 by export_models.py) on
  seeded random samples (.cache/inputs/timing_<N>.npy), batches of 8: `qforge calibrate` as one
  process with --threads 2, and under `mpirun -np 2` with --threads 1. From each report: the
  time of the calibration pass over the data (rank 0's: its share, the wait for the other rank
  and the exchange of statistics), the wait, the exchange and its bytes. The two written models
  must be byte-identical (the script stops otherwise).
- A QAT step of resnet18 at a global batch of 16 (.cache/models/resnet18_train.onnx and the
  inputs of bench/qat.py), bench/qat_step.cpp: as one process with 2 threads on the whole batch
  (1 shard) and on 2 shards of 8 (the bits a 2-rank run gives), and under `mpirun -np 2` with
  one thread per rank, each rank computing its shard, BN synchronised and the gradients (11.7 M
  floats) exchanged and summed in shard order. qat_step prints the exchange time (waiting for
  the other rank included) and the fold of the shards' gradients apart.

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


def qat_step(build, threads, ranks, shards, runs):
    x = os.path.join(zoo.INPUT_DIR, "train_b16.npy")
    y = os.path.join(zoo.INPUT_DIR, "train_labels_b16.npy")
    cmd = [os.path.join(build, "bench", "qforge_qat_step"),
           os.path.join(zoo.MODEL_DIR, "resnet18_train.onnx"), x, y, "--threads", str(threads),
           "--warmup", "1", "--runs", str(runs), "--shards", str(shards)]
    if ranks > 1:
        cmd = mpirun(ranks) + cmd
    r = run(cmd, f"qat_step on {ranks} rank(s), {shards} shard(s)")
    return last_json(r.stdout), " ".join(cmd)


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
    for batch in (16,):
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

    step_one, step_one_cmd = qat_step(args.build, 2, 1, 1, args.runs)
    step_sharded, step_sharded_cmd = qat_step(args.build, 2, 1, 2, args.runs)
    step_two, step_two_cmd = qat_step(args.build, 1, 2, 2, args.runs)
    ex, ex_cmd = exchange(args.build, 2, max(args.runs, 5))
    load_after = zoo.load_average()

    def t(j, key):
        return j["timing"][key]

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
        f"- 1 rank, 1 shard: `{step_one_cmd}`",
        f"- 1 rank, 2 shards: `{step_sharded_cmd}`",
        f"- 2 ranks: `{step_two_cmd}`",
        "",
        "Medians over the timed steps (rank 0's). The 2-shard runs compute the same bits on 1 or "
        "2 ranks (tests/tools/distributed_cli_test.cpp checks it through `qforge qat`).",
        "",
        "| figure | 1 rank x 2 threads, 1 shard | 1 rank x 2 threads, 2 shards of 8 "
        "| 2 ranks x 1 thread, a shard of 8 each |",
        "|---|---:|---:|---:|",
    ]
    for label, key in (("forward (with BN's exchanges)", "forward_ms"),
                       ("backward (with the gradient exchange and fold)", "backward_ms"),
                       ("SGD", "optimizer_ms"), ("step", "step_ms"),
                       ("of it: exchanges with the other rank, waiting included", "exchange_ms"),
                       ("of it: adding the shards' gradients", "fold_ms")):
        lines.append(f"| {label} | {step_one[key]:.1f} ms | {step_sharded[key]:.1f} ms "
                     f"| {step_two[key]:.1f} ms |")
    lines += [
        f"| peak resident memory (rank 0) | {step_one['peak_rss_bytes'] / 2**20:.0f} MiB "
        f"| {step_sharded['peak_rss_bytes'] / 2**20:.0f} MiB "
        f"| {step_two['peak_rss_bytes'] / 2**20:.0f} MiB |",
        "",
        f"The exchange alone (`{ex_cmd}`: {ex['bytes_sent_per_rank'] / 1e6:.1f} MB from each "
        f"rank gathered to every rank, no compute around it) takes "
        f"{1e3 * ex['exchange_s']:.1f} ms, {ex['received_gb_per_s']:.2f} GB/s received, and the "
        f"ordered sum of the two {1e3 * ex['sum_s']:.1f} ms.",
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

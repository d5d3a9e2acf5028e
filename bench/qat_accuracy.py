#!/usr/bin/python3
"""Accuracy of post-training quantization against quantization-aware training on the bundled
digits models (data/models/<family>_bn.onnx, dwsep_bn.onnx included), per-channel and per-tensor
weights.

For each family and weight granularity, on the 360 validation images
(data/datasets/digits/val):
  float     the float model
  best PTQ  `qforge calibrate` with each of the four calibrators (max, percentile, entropy,
            mse) on CALIB_LIMIT training images; the best is chosen on the held-out fifth of
            the training images (below), calibrating on the other four fifths: the highest
            top-1 there, ties broken by the lower KL to float, then by the calibrator order
            above. The validation images play no part in the choice (choosing on them would
            report the luckiest of four draws); every calibrator's validation figures are
            printed as well
  QAT CE    `qforge qat` calibrated with that best calibrator, then fine-tuned on the training
            images with the cross-entropy against their labels, smoothed as the float model's
            training smoothed them (--label-smoothing: LABEL_SMOOTHING below)
  QAT CE+KD the same loss mixed with distillation from the float model: `--distill 4
            --distill-weight 0.9`, 0.1·CE + 0.9·KL at temperature 4
  QAT KD    `--distill 4 --distill-weight 1`: the KL to the float model's outputs at
            temperature 4 alone, the labels unused
Each row reports top-1, the mean cross-entropy against the labels and the mean
KL(softmax(float) ‖ softmax(model)) in nats, as `qforge qat --report` writes them. The
training settings are one set for every family (TRAINING, MIX_TRAINING, DISTILL_TRAINING
below), but for distillation where PTQ collapses on held-out training images
(DISTILL_TRAINING_COLLAPSED).
Prints a Markdown table (and, with --json FILE, writes every figure).

  bench/qat_accuracy.py [--qforge build/tools/qforge] [--families resnet,vit] [--threads 2]

The training settings were selected with --holdout: every figure is then measured with the
training images split in two, the 4/5 that train (and calibrate) and the held-out 1/5 (the
5th, 10th, ... file of each class by name) that evaluates, so the validation images play no
part in the choice.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The six bundled families, then the harder task data/generate/depthwise_task.py writes: a
# depthwise-separable CNN whose per-tensor PTQ collapses (dead channels, see that script).
FAMILIES = ["resnet", "mobilenet_v3", "efficientnet", "convnext", "vit", "swin", "dwsep"]
METHODS = ["max", "percentile", "entropy", "mse"]
TRAIN = os.path.join(ROOT, "data/datasets/digits/train")
VAL = os.path.join(ROOT, "data/datasets/digits/val")
CALIB_LIMIT = 512
BATCH = 32
# Label runs, the same for every family: 3 epochs of SGD (momentum 0.9) at 1e-3, cosine to 0, BN
# on batch statistics for two epochs and frozen for the last, the data order of seed 0; the
# cross-entropy's label smoothing is the float model's own ("{label_smoothing}").
# Distillation runs: 10 epochs of the same SGD at temperature 4, with BN on its running
# statistics from the first step (the float model's, which the teacher uses too), except where
# PTQ collapses (its top-1 on the held-out fifth of the training images is 3 points or more
# below float's: dwsep per tensor only), where 3 epochs train with BN on batch statistics during
# the first epoch, re-estimating its statistics. All chosen on the held-out fifth of the training
# images (--holdout), not on the validation images; the README gives the comparison. "{epoch}"
# and "{two_epochs}" stand for the steps of one and two epochs of the training images used,
# "{label_smoothing}" for the family's LABEL_SMOOTHING. The
# README also shows AdamW at 1e-4 (measured first, with that string as --training,
# --distill-training and --distill-training-collapsed, at temperature 1:
# "--epochs 3 --optimizer adamw --lr 1e-4 --schedule cosine --freeze-bn-after 88 --seed 0"),
# whose fixed-size steps recover the collapsed per-tensor dwsep model far less.
SGD = ["--optimizer", "sgd", "--lr", "1e-3", "--schedule", "cosine", "--seed", "0"]
COMMON = ["--epochs", "3"] + SGD
TRAINING = COMMON + ["--freeze-bn-after", "{two_epochs}",
                     "--label-smoothing", "{label_smoothing}"]
DISTILL_TRAINING = ["--epochs", "10"] + SGD + ["--freeze-bn-after", "0"]
# Labels and distillation mixed: the distillation runs' 10 epochs with BN on running statistics,
# the labels' cross-entropy (smoothed as above) weighted 0.1 and the KL at temperature 4 0.9
# (0.5 was measured too: the label term then moves the model further from float than PTQ did).
MIX_TRAINING = DISTILL_TRAINING + ["--label-smoothing", "{label_smoothing}", "--distill", "4",
                                   "--distill-weight", "0.9"]
DISTILL_TRAINING_COLLAPSED = COMMON + ["--freeze-bn-after", "{epoch}"]
DISTILL_TEMPERATURE = "4"
COLLAPSE_POINTS = 0.03
# The label smoothing each float model was trained with: data/generate/train_export.py trains the
# six families with F.cross_entropy(..., label_smoothing=0.1), data/generate/depthwise_task.py
# trains dwsep without.
LABEL_SMOOTHING = {"dwsep": 0.0}
DEFAULT_LABEL_SMOOTHING = 0.1


def run(cmd):
    env = dict(os.environ, QFORGE_NO_PROGRESS="1")
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return time.time() - start


def holdout_split(tmp):
    """Links the training images into tmp/fit and tmp/holdout (every 5th of each class)."""
    for i_class in sorted(os.listdir(TRAIN)):
        files = sorted(os.listdir(os.path.join(TRAIN, i_class)))
        for i, name in enumerate(files):
            part = "holdout" if i % 5 == 4 else "fit"
            os.makedirs(os.path.join(tmp, part, i_class), exist_ok=True)
            os.symlink(os.path.join(TRAIN, i_class, name), os.path.join(tmp, part, i_class, name))
    return os.path.join(tmp, "fit"), os.path.join(tmp, "holdout")


def calibrate(qforge, model, method, per_tensor, threads, tmp, train, val):
    report = os.path.join(tmp, "calibrate.json")
    cmd = [qforge, "calibrate", model, "--data", train, "--limit", str(CALIB_LIMIT), "--batch",
           str(BATCH), "--val", val, "--method", method, "--flip-injections", "0", "--threads",
           str(threads), "-o", os.path.join(tmp, "ptq.onnx"), "--report", report]
    if per_tensor:
        cmd.append("--per-tensor-weights")
    run(cmd)
    e = json.load(open(report))["evaluation"]
    return {"method": method, "top1": e["int8_top1"], "cross_entropy": e["int8_cross_entropy"],
            "kl_to_float": e["kl_to_float"], "sqnr_db": e["sqnr_db"],
            "float_top1": e["float_top1"], "float_cross_entropy": e["float_cross_entropy"]}


def qat(qforge, model, method, per_tensor, distill_only, threads, tmp, training, train, val):
    """`training` holds the run's options, --distill T (and its weight) included where the run
    distils; `distill_only` adds --distill-weight 1."""
    report = os.path.join(tmp, "qat.json")
    cmd = [qforge, "qat", model, "--data", train, "--val", val, "--method", method,
           "--calib-limit", str(CALIB_LIMIT), "--batch", str(BATCH), "--threads", str(threads),
           *training, "-o", os.path.join(tmp, "qat.onnx"), "--report", report]
    if per_tensor:
        cmd.append("--per-tensor-weights")
    if distill_only:
        cmd += ["--distill-weight", "1"]
    seconds = run(cmd)
    j = json.load(open(report))
    j["wall_s"] = seconds
    return j


def cell(top1, ce, kl):
    return f"{100 * top1:.2f} / {ce:.4f} / {kl:.5f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qforge", default=os.path.join(ROOT, "build/tools/qforge"))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--granularity", default="per-channel,per-tensor")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--training", default=" ".join(TRAINING),
                    help="qforge qat training options of the label runs (default: %(default)s)")
    ap.add_argument("--mix-training", default=" ".join(MIX_TRAINING),
                    help="those of the runs mixing labels and distillation, --distill and "
                         "--distill-weight included (default: %(default)s)")
    ap.add_argument("--distill-training", default=" ".join(DISTILL_TRAINING),
                    help="those of the distillation runs (default: %(default)s)")
    ap.add_argument("--distill-training-collapsed", default=" ".join(DISTILL_TRAINING_COLLAPSED),
                    help="those of the distillation runs where PTQ collapses on the held-out "
                         "training images (default: %(default)s)")
    ap.add_argument("--distill-temperature", default=DISTILL_TEMPERATURE,
                    help="the distillation runs' --distill temperature (default: %(default)s)")
    ap.add_argument("--losses", default="labels,mix,distill",
                    help="the QAT runs to make, of labels, mix and distill (default: %(default)s)")
    ap.add_argument("--holdout", action="store_true",
                    help="train and calibrate on 4/5 of the training images and evaluate on the "
                         "other 1/5 (every 5th file of each class), not on the validation images: "
                         "how the training settings were selected")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--from-json", nargs="+", metavar="FILE",
                    help="print the table of earlier --json files instead of measuring")
    args = ap.parse_args()
    losses = args.losses.split(",")
    results = []
    if args.from_json:
        for path in args.from_json:
            results += json.load(open(path))
        print_table(results)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fit, holdout = holdout_split(tmp)
        train, val = (fit, holdout) if args.holdout else (TRAIN, VAL)
        epoch = sum(len(os.listdir(os.path.join(train, c))) for c in os.listdir(train)) // BATCH

        for family in args.families.split(","):
            smoothing = LABEL_SMOOTHING.get(family, DEFAULT_LABEL_SMOOTHING)

            def options(text):
                return [t.format(epoch=epoch, two_epochs=2 * epoch, label_smoothing=smoothing)
                        for t in text.split()]

            model = os.path.join(ROOT, "data/models", f"{family}_bn.onnx")
            for granularity in args.granularity.split(","):
                per_tensor = granularity == "per-tensor"
                # The calibrator is chosen on the held-out training images, calibrated on the
                # other four fifths: highest top-1, then lowest KL, then the METHODS order
                # (max() keeps the first).
                selection = [calibrate(args.qforge, model, m, per_tensor, args.threads, tmp, fit,
                                       holdout) for m in METHODS]
                held_out = max(selection, key=lambda p: (p["top1"], -p["kl_to_float"]))
                ptq = selection if args.holdout else [
                    calibrate(args.qforge, model, m, per_tensor, args.threads, tmp, train, val)
                    for m in METHODS]
                best = next(p for p in ptq if p["method"] == held_out["method"])
                # Whether PTQ collapses, judged on the held-out training images.
                collapsed = held_out["float_top1"] - held_out["top1"] >= COLLAPSE_POINTS
                settings = {"qat_labels": options(args.training),
                            "qat_mix": options(args.mix_training),
                            "qat_distill": options(args.distill_training_collapsed if collapsed
                                                   else args.distill_training) +
                            ["--distill", args.distill_temperature]}
                result = {"family": family, "granularity": granularity, "ptq": ptq,
                          "best": best["method"], "holdout": args.holdout,
                          "ptq_selection": selection, "ptq_collapsed": collapsed}
                line = (f"{family} {granularity}: float {100 * best['float_top1']:.2f}, PTQ "
                        f"({best['method']}) {100 * best['top1']:.2f} KL "
                        f"{best['kl_to_float']:.5f}")
                for key, loss in (("qat_labels", "labels"), ("qat_mix", "mix"),
                                  ("qat_distill", "distill")):
                    if loss not in losses:
                        continue
                    q = qat(args.qforge, model, best["method"], per_tensor, loss == "distill",
                            args.threads, tmp, settings[key], train, val)
                    # qat's own PTQ model is calibrate's with the same calibrator.
                    if abs(q["evaluation"]["ptq"]["top1"] - best["top1"]) > 1e-9:
                        print(f"warning: {family} {granularity}: qat's PTQ top-1 "
                              f"{q['evaluation']['ptq']['top1']} differs from calibrate's "
                              f"{best['top1']}", file=sys.stderr)
                    result[key] = q
                    result["training_" + loss] = settings[key]
                    e = q["evaluation"]["qat"]
                    line += (f", QAT {loss} {100 * e['top1']:.2f} KL {e['kl_to_float']:.5f} "
                             f"({q['wall_s']:.0f} s)")
                results.append(result)
                print(line, file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print_table(results)


def print_table(results):
    first = results[0] if results else {}
    where = ("the held-out fifth of the training images" if first.get("holdout")
             else "the digits validation set (360 images)")
    print(f"qforge qat accuracy on {where}, {datetime.date.today().isoformat()}; top-1 in %, "
          f"CE and KL to float in nats.")
    for loss in ("labels", "mix", "distill"):
        seen = []
        for r in results:
            t = r.get("training_" + loss)
            if t and t not in seen:
                seen.append(t)
                rows = [f"{x['family']} {x['granularity']}" for x in results
                        if x.get("training_" + loss) == t]
                where = "" if len(rows) == len(results) else " (" + ", ".join(rows) + ")"
                print(f"Training ({loss}){where}: {' '.join(t)}, batch {BATCH}.")
    print(f"Calibration on {CALIB_LIMIT} training images; best PTQ = highest top-1 of "
          f"max/percentile/entropy/mse on the held-out fifth of the training images.")
    print()
    print("Each cell: top-1 % / CE / KL to float.")
    print()
    print("| family | weights | float | best PTQ | QAT, labels | QAT, labels + distillation "
          "| QAT, distillation only |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def qat_cell(r, key):
        if key not in r:
            return "—"
        e = r[key]["evaluation"]["qat"]
        return cell(e["top1"], e["cross_entropy"], e["kl_to_float"])

    for r in results:
        best = next(p for p in r["ptq"] if p["method"] == r["best"])
        cells = [f"{100 * best['float_top1']:.2f} / {best['float_cross_entropy']:.4f} / —",
                 f"{cell(best['top1'], best['cross_entropy'], best['kl_to_float'])} "
                 f"({r['best']})",
                 qat_cell(r, "qat_labels"), qat_cell(r, "qat_mix"), qat_cell(r, "qat_distill")]
        print(f"| {r['family']} | {r['granularity']} | " + " | ".join(cells) + " |")
    print()
    print("Every calibrator, top-1 % / KL to float (* the one chosen):")
    print()
    print("| family | weights | " + " | ".join(METHODS) + " |")
    print("| --- | --- |" + " --- |" * len(METHODS))
    for r in results:
        cells = [f"{100 * p['top1']:.2f} / {p['kl_to_float']:.5f}" +
                 (" *" if p["method"] == r["best"] else "") for p in r["ptq"]]
        print(f"| {r['family']} | {r['granularity']} | " + " | ".join(cells) + " |")
    print()
    # The acceptance checks, stated rather than assumed.
    for r in results:
        best = next(p for p in r["ptq"] if p["method"] == r["best"])
        loss = best["float_top1"] - best["top1"]
        for key, name in (("qat_labels", "labels"), ("qat_mix", "labels + distillation"),
                          ("qat_distill", "distillation only")):
            if key not in r:
                continue
            q = r[key]["evaluation"]["qat"]
            notes = []
            if q["top1"] < best["top1"]:
                notes.append(f"top-1 below PTQ by {100 * (best['top1'] - q['top1']):.2f} points")
            if q["kl_to_float"] >= best["kl_to_float"]:
                notes.append("KL to float not lowered")
            if loss >= 0.03:
                recovered = (q["top1"] - best["top1"]) / loss
                notes.append(f"PTQ loses {100 * loss:.2f} points; QAT recovers "
                             f"{100 * recovered:.0f}% of it")
            if notes:
                print(f"- {r['family']} {r['granularity']}, QAT {name}: " + "; ".join(notes))

if __name__ == "__main__":
    main()

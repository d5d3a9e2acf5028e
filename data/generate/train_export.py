#!/usr/bin/python3
"""Train the bundled models on the digits dataset, export them to ONNX and
write the golden files.

For each family (all by default, or --family NAME, repeatable):
  * train on data/datasets/digits/train (PNG files) until done, fail if the
    validation accuracy is below 95%;
  * export data/models/<family>_bn.onnx (BatchNorm kept) and
    data/models/<family>_folded.onnx (eval-mode export, BatchNorm folded),
    opset 17, input "input" / output "output", only the batch dim dynamic,
    with qforge.* preprocessing metadata;
  * write data/golden/<family>_input.npy, <family>_{bn,folded}_output.npy and
    update data/golden/accuracy.json;
  * check every exported file with ONNX Runtime (verify_ort.js) at batch 1
    and batch 5 against PyTorch.
Finally data/README.md is regenerated from the files present.
"""
import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
import time

# Passive OpenMP waiting: on a machine shared with other jobs, spinning
# worker threads slow training down by an order of magnitude.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models  # noqa: E402

DATA = os.path.dirname(HERE)
DIGITS = os.path.join(DATA, "datasets", "digits")
MODELS_DIR = os.path.join(DATA, "models")
GOLDEN_DIR = os.path.join(DATA, "golden")
ACCURACY_JSON = os.path.join(GOLDEN_DIR, "accuracy.json")
VERIFY_JS = os.path.join(HERE, "verify_ort.js")
ORT_NODE = os.environ.get(
    "QFORGE_ORT_NODE",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".deps", "ort",
                 "node_modules", "onnxruntime-node"))

OPSET = 17
PIXEL_SCALE = 255
MIN_VAL_ACCURACY = 0.95
MAX_ONNX_BYTES = 2 * 1024 * 1024

# Golden / verification batches: first validation file (sorted by name) of
# each listed class.
GOLDEN_CLASSES = [0, 3, 5, 8]
VERIFY_B1_CLASSES = [7]
VERIFY_B5_CLASSES = [1, 2, 4, 6, 9]

# Training recipe per family: epochs, peak learning rate, weight decay.
RECIPES = {
    "resnet": dict(epochs=20, lr=2e-3, wd=0.05),
    "mobilenet_v3": dict(epochs=30, lr=3e-3, wd=0.02),
    "efficientnet": dict(epochs=30, lr=3e-3, wd=0.02),
    "convnext": dict(epochs=20, lr=1e-3, wd=0.05),
    "vit": dict(epochs=40, lr=1e-3, wd=0.05),
    "swin": dict(epochs=30, lr=1e-3, wd=0.05),
}
# The dense-prediction models of detection_models.py, listed in the README when present.
DENSE_MODELS = [
    ("yolo", "YOLO-style detector (C2f with Split, SPPF, nearest Resize, Concat, SiLU, DFL "
             "head); output N x 14 x 64: box distances and class scores per cell of an 8x8 grid"),
    ("unet", "UNet (ConvTranspose-BN-ReLU, bilinear Resize, Concat skips); output N x 11 x 32 "
             "x 32: background and digit logits per pixel"),
]
BATCH_SIZE = 64
WARMUP_EPOCHS = 2
MAX_SHIFT = 2  # random translation augmentation, in pixels


# ---------------------------------------------------------------- data

def list_split(split):
    """[(path, label)] sorted by class folder name, then by file name."""
    root = os.path.join(DIGITS, split)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    items = []
    for cls in classes:
        for name in sorted(os.listdir(os.path.join(root, cls))):
            if name.endswith(".png"):
                items.append((os.path.join(root, cls, name), int(cls)))
    return items


def load_pixels(items):
    """Decode PNGs into an N x H x W x 3 uint8 array."""
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p, _ in items])


def channel_stats(pixels):
    """Per-channel mean/std of pixel/255 over a split, rounded to 4 decimals."""
    x = pixels.astype(np.float64) / PIXEL_SCALE
    mean = [round(float(v), 4) for v in x.mean(axis=(0, 1, 2))]
    std = [round(float(v), 4) for v in x.std(axis=(0, 1, 2))]
    return mean, std


def preprocess(pixels, mean, std):
    """uint8 NHWC RGB -> float32 NCHW: (pixel / scale - mean[c]) / std[c].

    Every step is a float32 operation, matching a float implementation.
    """
    x = pixels.astype(np.float32) / np.float32(PIXEL_SCALE)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


class Dataset:
    def __init__(self):
        self.train_items = list_split("train")
        self.val_items = list_split("val")
        self.train_pixels = load_pixels(self.train_items)
        self.val_pixels = load_pixels(self.val_items)
        self.mean, self.std = channel_stats(self.train_pixels)
        self.train_x = torch.from_numpy(preprocess(self.train_pixels, self.mean, self.std))
        self.train_y = torch.tensor([c for _, c in self.train_items])
        self.val_x = torch.from_numpy(preprocess(self.val_pixels, self.mean, self.std))
        self.val_y = torch.tensor([c for _, c in self.val_items])

    def first_val_of(self, classes):
        """Preprocessed batch of the first val image of each class, and names."""
        idx = [next(i for i, (_, c) in enumerate(self.val_items) if c == k) for k in classes]
        names = [os.path.relpath(self.val_items[i][0], DATA) for i in idx]
        return self.val_x[idx].clone(), names


# ---------------------------------------------------------------- training

def augment(x, gen):
    """Random per-sample translation by up to MAX_SHIFT pixels (edge replicate)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (MAX_SHIFT,) * 4, mode="replicate")
    offs = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
    return out


def evaluate(model, x, y, batch=256):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct


def train(family, ds, log):
    recipe = RECIPES[family]
    torch.manual_seed(1000 + models.FAMILIES.index(family))
    model = models.build(family)
    gen = torch.Generator().manual_seed(2000 + models.FAMILIES.index(family))

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("class_token", "pos_embedding",
                                                  "relative_position_bias_table", "layer_scale"))
         else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["wd"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"])
    n = len(ds.train_x)
    steps_per_epoch = math.ceil(n / BATCH_SIZE)
    total = recipe["epochs"] * steps_per_epoch
    warm = WARMUP_EPOCHS * steps_per_epoch

    def lr_at(step):
        if step < warm:
            return recipe["lr"] * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return recipe["lr"] * 0.5 * (1.0 + math.cos(math.pi * t))

    step = 0
    t0 = time.time()
    for epoch in range(recipe["epochs"]):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            xb = augment(ds.train_x[idx], gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), ds.train_y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss) * len(idx)
            step += 1
        if epoch % 5 == 4 or epoch == recipe["epochs"] - 1:
            acc = evaluate(model, ds.val_x, ds.val_y) / len(ds.val_y)
            log("  epoch %2d  loss %.4f  val %.4f  (%.0fs)" % (epoch + 1, loss_sum / n, acc, time.time() - t0))
    model.eval()
    return model


# ---------------------------------------------------------------- export

def export(model, family, form, ds, path):
    model.eval()
    dummy = ds.val_x[:2].clone()
    kwargs = dict(opset_version=OPSET, input_names=["input"], output_names=["output"],
                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    if form == "bn":
        # PRESERVE skips the eval-mode peephole pass that folds BatchNorm into
        # Conv; constant folding does not touch BatchNormalization nodes.
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    else:
        kwargs.update(training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True)
    # Gradients stay enabled while tracing so that nn.MultiheadAttention takes
    # its decomposed (exportable) path rather than the fused inference kernel.
    torch.onnx.export(model, dummy, path, **kwargs)

    m = onnx.load(path)
    meta = collections.OrderedDict([
        ("qforge.input_shape", ",".join(str(d) for d in models.INPUT_SHAPE)),
        ("qforge.layout", "NCHW"),
        ("qforge.channel_order", "RGB"),
        ("qforge.pixel_scale", str(PIXEL_SCALE)),
        ("qforge.mean", ",".join(repr(v) for v in ds.mean)),
        ("qforge.std", ",".join(repr(v) for v in ds.std)),
        ("qforge.family", family),
        ("qforge.form", form),
    ])
    keep = [p for p in m.metadata_props if p.key not in meta]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, path)
    size = os.path.getsize(path)
    if size > MAX_ONNX_BYTES:
        raise SystemExit("%s is %d bytes, over the %d limit" % (path, size, MAX_ONNX_BYTES))
    return m


def op_histogram(m):
    return collections.Counter(n.op_type for n in m.graph.node)


def check_structure(family, form, m):
    ops = op_histogram(m)
    if family in models.CNN_WITH_BN:
        has_bn = ops.get("BatchNormalization", 0) > 0
        if form == "bn" and not has_bn:
            raise SystemExit("%s_bn has no BatchNormalization node" % family)
        if form == "folded" and has_bn:
            raise SystemExit("%s_folded still has BatchNormalization nodes" % family)
    if family == "swin":
        if not ops.get("Pad"):
            raise SystemExit("swin export has no Pad node")
        # torch.roll exports as a pair of Slices joined by a Concat per axis.
        if not (ops.get("Slice") and ops.get("Concat")):
            raise SystemExit("swin export lacks the roll Slice/Concat pattern")
    inp = m.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    if inp.name != "input" or dims[1:] != list(models.INPUT_SHAPE) or not isinstance(dims[0], str):
        raise SystemExit("unexpected input signature %s %s" % (inp.name, dims))
    if m.graph.output[0].name != "output":
        raise SystemExit("unexpected output name %s" % m.graph.output[0].name)


# ---------------------------------------------------------------- ORT check

def save_npy(path, array):
    np.save(path, np.ascontiguousarray(array, dtype="<f4"), allow_pickle=False)


def verify_ort(items, log):
    """items: [(onnx_path, input_array, reference_array)].  Returns True when
    all pass, None when ONNX Runtime is unavailable."""
    if not os.path.isdir(ORT_NODE):
        log("WARNING: %s not found; skipping the ONNX Runtime check" % ORT_NODE)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        manifest = []
        for i, (path, x, _) in enumerate(items):
            ip, op = os.path.join(tmp, "in%d.npy" % i), os.path.join(tmp, "out%d.npy" % i)
            save_npy(ip, x)
            manifest.append({"model": path, "input": ip, "output": op})
        mpath = os.path.join(tmp, "manifest.json")
        with open(mpath, "w") as f:
            json.dump(manifest, f)
        r = subprocess.run(["node", VERIFY_JS, mpath], capture_output=True, text=True)
        if r.returncode == 2:
            log("WARNING: onnxruntime-node could not be loaded; skipping the check\n" + r.stderr)
            return None
        if r.returncode != 0:
            raise SystemExit("verify_ort.js failed:\n" + r.stdout + r.stderr)
        ok = True
        for (path, x, ref), entry in zip(items, manifest):
            got = np.load(entry["output"])
            tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
            diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
            good = diff <= tol
            ok &= good
            log("  ORT %-28s batch %d  max|diff| %.3g  tol %.3g  %s"
                % (os.path.basename(path), x.shape[0], diff, tol, "ok" if good else "FAIL"))
        return ok


# ---------------------------------------------------------------- main

def run_family(family, ds, log):
    log("== %s (%d params)" % (family, models.param_count(models.build(family))))
    model = train(family, ds, log)
    correct = evaluate(model, ds.val_x, ds.val_y)
    count = len(ds.val_y)
    acc = correct / count
    log("  val accuracy %d/%d = %.4f" % (correct, count, acc))
    if acc < MIN_VAL_ACCURACY:
        raise SystemExit("%s: validation accuracy %.4f below %.2f" % (family, acc, MIN_VAL_ACCURACY))

    os.makedirs(MODELS_DIR, exist_ok=True)
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    golden_x, _ = ds.first_val_of(GOLDEN_CLASSES)
    b1, _ = ds.first_val_of(VERIFY_B1_CLASSES)
    b5, _ = ds.first_val_of(VERIFY_B5_CLASSES)
    with torch.no_grad():
        golden_y = model(golden_x).numpy()
        ref1 = model(b1).numpy()
        ref5 = model(b5).numpy()
    save_npy(os.path.join(GOLDEN_DIR, "%s_input.npy" % family), golden_x.numpy())

    checks = []
    for form in ("bn", "folded"):
        path = os.path.join(MODELS_DIR, "%s_%s.onnx" % (family, form))
        m = export(model, family, form, ds, path)
        check_structure(family, form, m)
        ops = op_histogram(m)
        log("  %s: %d nodes, %d bytes, ops %s" % (os.path.basename(path), len(m.graph.node),
                                                  os.path.getsize(path), dict(sorted(ops.items()))))
        save_npy(os.path.join(GOLDEN_DIR, "%s_%s_output.npy" % (family, form)), golden_y)
        checks += [(path, b1.numpy(), ref1), (path, b5.numpy(), ref5),
                   (path, golden_x.numpy(), golden_y)]
    if verify_ort(checks, log) is False:
        raise SystemExit("%s: ONNX Runtime output differs from PyTorch" % family)

    # Accuracy from the PNG files exactly as a consumer would compute it.
    val_items = list_split("val")
    x = torch.from_numpy(preprocess(load_pixels(val_items), ds.mean, ds.std))
    y = torch.tensor([c for _, c in val_items])
    correct = evaluate(model, x, y)
    result = {"val_top1": correct / len(y), "val_correct": correct, "val_count": len(y)}
    accuracy = {}
    if os.path.exists(ACCURACY_JSON):
        with open(ACCURACY_JSON) as f:
            accuracy = json.load(f)
    accuracy[family] = result
    ordered = {k: accuracy[k] for k in models.FAMILIES if k in accuracy}
    with open(ACCURACY_JSON, "w") as f:
        json.dump(ordered, f, indent=2)
        f.write("\n")


def human_size(n):
    return "%.0f KiB" % (n / 1024.0) if n < 1024 * 1024 else "%.2f MiB" % (n / 1048576.0)


def write_readme(ds):
    accuracy = {}
    if os.path.exists(ACCURACY_JSON):
        with open(ACCURACY_JSON) as f:
            accuracy = json.load(f)
    golden_names = ds.first_val_of(GOLDEN_CLASSES)[1]
    ntrain, nval = len(ds.train_items), len(ds.val_items)
    lines = [
        "# Bundled data",
        "",
        "Generated by the scripts in `generate/` (see `generate/README.md`); do not edit by hand.",
        "",
        "## Dataset: `datasets/digits/`",
        "",
        "scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes), bilinearly",
        "upsampled to 32x32 and rendered as tinted 8-bit RGB PNGs, ImageFolder layout",
        "`{train,val}/<class>/<index>.png` (`<index>` = 5-digit index into `load_digits`).",
        "Stratified split with seed 0: %d train, %d val images." % (ntrain, nval),
        "",
        "## Models: `models/<family>_{bn,folded}.onnx`",
        "",
        "Opset 17, input `input` (N x 3 x 32 x 32, float32, only N dynamic), output `output`",
        "(N x 10 logits). `_bn` keeps BatchNormalization nodes (exported with",
        "`TrainingMode.PRESERVE` from an eval-mode model); `_folded` is the default eval export",
        "with BatchNorm folded into the convolutions. Both forms share the same trained weights.",
        "",
        "Preprocessing (also in each file's `metadata_props`, keys `qforge.*`): RGB, NCHW, no",
        "resize, `x = (pixel / 255 - mean[c]) / std[c]` in float32 with",
        "mean = `%s`, std = `%s` (train-split statistics)." % (
            ",".join(repr(v) for v in ds.mean), ",".join(repr(v) for v in ds.std)),
        "",
        "| family | params | val top-1 | `_bn.onnx` | `_folded.onnx` |",
        "|---|---:|---:|---:|---:|",
    ]
    for fam in models.FAMILIES:
        sizes = []
        for form in ("bn", "folded"):
            p = os.path.join(MODELS_DIR, "%s_%s.onnx" % (fam, form))
            if os.path.exists(p):
                n_nodes = len(onnx.load(p).graph.node)
                sizes.append("%s (%d nodes)" % (human_size(os.path.getsize(p)), n_nodes))
            else:
                sizes.append("-")
        a = accuracy.get(fam)
        acc = "%.2f%% (%d/%d)" % (100 * a["val_top1"], a["val_correct"], a["val_count"]) if a else "-"
        lines.append("| %s | %d | %s | %s | %s |" % (
            fam, models.param_count(models.build(fam)), acc, sizes[0], sizes[1]))
    lines += [
        "",
        "Swin config: `%s`." % json.dumps(models.SWIN_CONFIG),
        "",
    ]
    dense = [(fam, what) for fam, what in DENSE_MODELS
             if os.path.exists(os.path.join(MODELS_DIR, "%s_bn.onnx" % fam))]
    if dense:
        lines += [
            "## Dense-prediction models: `models/{yolo,unet}_bn.onnx`",
            "",
            "Made by `generate/detection_models.py` on the same dataset and preprocessing, opset",
            "17, BatchNormalization kept, output `output`; `golden/<family>_input.npy` as above and",
            "`golden/<family>_bn_output.npy` PyTorch's output on it.",
            "",
            "| family | model | file |",
            "|---|---|---:|",
        ]
        for fam, what in dense:
            p = os.path.join(MODELS_DIR, "%s_bn.onnx" % fam)
            lines.append("| %s | %s | %s (%d nodes) |" % (
                fam, what, human_size(os.path.getsize(p)), len(onnx.load(p).graph.node)))
        lines.append("")
    lines += [
        "## Goldens: `golden/`",
        "",
        "- `<family>_input.npy`: float32 (`<f4`, C order) 4 x 3 x 32 x 32 preprocessed batch of",
        "  " + ", ".join("`%s`" % n for n in golden_names) + ".",
        "- `<family>_bn_output.npy`, `<family>_folded_output.npy`: PyTorch float32 logits (4 x 10)",
        "  of the eval-mode model on that batch (the two files hold the same PyTorch output).",
        "- `accuracy.json`: PyTorch validation top-1 per family, computed from the PNG files in",
        "  `datasets/digits/val` with the preprocessing above (classes by folder name, files by name).",
        "",
    ]
    with open(os.path.join(DATA, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description="train, export and write goldens")
    ap.add_argument("--family", action="append", choices=models.FAMILIES,
                    help="family to build (repeatable); all by default")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QFORGE_THREADS", "2")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, flush=True)

    ds = Dataset()
    log("dataset: %d train, %d val; mean %s std %s" % (len(ds.train_x), len(ds.val_x), ds.mean, ds.std))
    t0 = time.time()
    for family in args.family or models.FAMILIES:
        t = time.time()
        run_family(family, ds, log)
        log("  %s done in %.0fs" % (family, time.time() - t))
    write_readme(ds)
    log("all done in %.0fs" % (time.time() - t0))


if __name__ == "__main__":
    main()

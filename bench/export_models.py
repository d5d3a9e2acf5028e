#!/usr/bin/python3
"""Exports the benchmark models to ONNX with seeded random weights, plus fixed random inputs
and PyTorch's outputs on them, into bench/.cache/:

  models/<name>_b<batch>.onnx   opset 17, static input 'input' [batch, 3, 224, 224], output 'output'
  inputs/b<batch>.npy           float32 normal(0, 1), seeded (b1 is the first image of b8)
  ref/<name>_b<batch>.npy       PyTorch's output for that input
  ref/<name>_b<batch>_f64.npy   the same computed in float64 (check_models.py's second opinion)

The segmentation models (zoo.SEGMENTATION_MODELS) take [batch, 3, 232, 232], read from
inputs/b<batch>_232x232.npy, and output their 'out' map [batch, 21, 232, 232]. `--models extra`
exports the further classifiers of zoo.EXTRA_MODELS instead (inception_v3 at 299x299, from
inputs/b<batch>_299x299.npy).

Files already present are kept (--force redoes them). Run with Debian's /usr/bin/python3.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402


def save_npy_atomic(path, array):
    import numpy as np

    tmp = path + ".tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def register_missing_symbolics(torch):
    """torch.onnx 1.13 has no export for Tensor.zero_ (aten::zero), which torchvision's Swin V2
    applies to a clone of its in-projection bias; it is x * 0 (later exporters write the same
    constant). Harmless for every other model."""

    def zero(g, self):
        return g.op("Mul", self, g.op("Constant", value_t=torch.tensor(0.0)))

    torch.onnx.register_custom_op_symbolic("aten::zero", zero, zoo.OPSET)


def export_one(torch, model, name, batch, force, log):
    """Exports one (model, batch) pair and its reference output; returns what was done."""
    import numpy as np

    onnx_file = zoo.model_path(name, batch)
    ref_file = zoo.ref_path(name, batch)
    in_file = zoo.input_path(batch, zoo.image_shape(name))
    done = []
    exported = False
    if force or not os.path.exists(onnx_file):
        x = torch.zeros((batch,) + zoo.image_shape(name))
        tmp = onnx_file + ".tmp"
        t0 = time.time()
        torch.onnx.export(
            model,
            x,
            tmp,
            opset_version=zoo.OPSET,
            input_names=["input"],
            output_names=["output"],
            do_constant_folding=True,
        )
        os.replace(tmp, onnx_file)
        exported = True
        size_mb = os.path.getsize(onnx_file) / 2**20
        done.append(f"onnx {size_mb:.1f} MB in {time.time() - t0:.1f} s")
    stale = os.path.exists(ref_file) and os.path.getmtime(ref_file) < os.path.getmtime(in_file)
    if force or exported or stale or not os.path.exists(ref_file):
        x = torch.from_numpy(np.load(in_file))
        t0 = time.time()
        with torch.no_grad():
            y = model(x)
        y = y.detach().numpy().astype(np.float32)
        if not np.all(np.isfinite(y)) or float(np.ptp(y)) == 0.0:
            raise RuntimeError(f"{name} b{batch}: degenerate reference output (constant or non-finite)")
        save_npy_atomic(ref_file, y)
        done.append(f"ref {list(y.shape)} max|y| {np.abs(y).max():.3g} std {y.std():.3g} "
                    f"in {time.time() - t0:.1f} s")
    ref64_file = zoo.ref64_path(name, batch)
    stale = os.path.exists(ref64_file) and os.path.getmtime(ref64_file) < os.path.getmtime(in_file)
    if force or exported or stale or not os.path.exists(ref64_file):
        import copy

        x = torch.from_numpy(np.load(in_file)).double()
        t0 = time.time()
        with torch.no_grad():
            y = copy.deepcopy(model).double()(x)
        save_npy_atomic(ref64_file, y.detach().numpy())
        done.append(f"float64 ref in {time.time() - t0:.1f} s")
    log(f"  {name} b{batch}: " + ("; ".join(done) if done else "present, skipped"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all",
                    help="comma-separated names, 'all' (default: the classifiers and segmentation "
                         "models) or 'extra' (zoo.EXTRA_MODELS)")
    ap.add_argument("--batches", default="1,8", help="batch sizes to export (default: 1,8)")
    ap.add_argument("--force", action="store_true", help="re-export files already present")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    args = ap.parse_args()
    models = zoo.parse_models(args.models, zoo.ALL_MODELS)
    batches = zoo.parse_batches(args.batches)

    def log(msg):
        print(msg, flush=True)

    for d in (zoo.MODEL_DIR, zoo.INPUT_DIR, zoo.REF_DIR):
        os.makedirs(d, exist_ok=True)
    for shape in sorted({zoo.image_shape(m) for m in models}):
        for b in batches:
            path = zoo.input_path(b, shape)
            if args.force or not os.path.exists(path):
                save_npy_atomic(path, zoo.make_inputs(b, shape))
                log(f"input b{b}: wrote {os.path.relpath(path, zoo.REPO_ROOT)}")

    def needed(name):
        return args.force or any(
            not os.path.exists(p)
            or (p.endswith(".npy")
                and os.path.getmtime(p) < os.path.getmtime(zoo.input_path(b, zoo.image_shape(name))))
            for b in batches
            for p in (zoo.model_path(name, b), zoo.ref_path(name, b), zoo.ref64_path(name, b))
        )

    todo = [m for m in models if needed(m)]
    for m in models:
        if m not in todo:
            log(f"{m}: all files present, skipped")
    if not todo:
        return 0

    import torch

    torch.set_num_threads(args.threads)
    register_missing_symbolics(torch)
    log(f"torch {torch.__version__}, {args.threads} threads; exporting {len(todo)} model(s)")
    failures = []
    for i, name in enumerate(todo, 1):
        t0 = time.time()
        log(f"[{i}/{len(todo)}] {name}: building (seeded random weights)")
        try:
            model = zoo.build_model(name, freeze=False)
            for b in batches:
                export_one(torch, model, name, b, args.force, log)
        except Exception as e:  # keep going with the other models
            failures.append(name)
            log(f"  {name}: FAILED: {type(e).__name__}: {e}")
        finally:
            model = None
        log(f"[{i}/{len(todo)}] {name}: {time.time() - t0:.1f} s")
    if failures:
        log(f"export failed for: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

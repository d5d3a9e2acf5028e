#!/usr/bin/env python3
"""Forward time of torchvision's video classifiers (3-D convolutions) in qforge, PyTorch and
ONNX Runtime.

r3d_18 and r2plus1d_18 (or --models, say mvit_v2_s) with random weights (seeded), exported at
opset 17 with a fixed batch, on clips of --frames frames at --size x --size (normal(0, 1),
seeded). MViT's `torch.tensor_split` of the class token is exported as the two slices it takes
(torch 1.13 writes it as a Loop of sequence ops, which qforge reads, but its export of that form
ran out of 24 GB for mvit_v2_s); PyTorch runs the model as it is. First qforge's logits are
checked against PyTorch's (within 1e-4 of the largest), then the runtimes alternate for --rounds
rounds, each keeping its fastest: qforge `run` (its forward time, compilation and warm-up
excluded) of the model as exported and transformed (`--transform`, as calibration runs it),
PyTorch eager under torch.no_grad(), ONNX Runtime for Node with every graph optimisation. With
--write, the table replaces the section between the markers of --section (default video) in
bench/RESULTS.md.

    bench/video_compare.py [--qforge build/tools/qforge] [--batch 2] [--frames 8] [--write]
    bench/video_compare.py --models mvit_v2_s --batch 1 --frames 16 --size 224 --runs 3 \
        --section mvit --write
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import zoo  # noqa: E402

MODELS = ["r3d_18", "r2plus1d_18"]


def markers(section):
    """The lines that delimit the section of bench/RESULTS.md a --write replaces."""
    return (f"<!-- {section}_compare:begin (generated; replaced on each run) -->",
            f"<!-- {section}_compare:end -->")


def exportable(model):
    """The model as torch.onnx can write it in bounded memory: MViT's class-token split as two
    narrows (the same values; see the module docstring)."""
    import torch
    import torchvision.models.video.mvit as mvit

    class TwoSlices:
        @staticmethod
        def tensor_split(x, indices, dim=0):
            (i,) = indices
            return x.narrow(dim, 0, i), x.narrow(dim, i, x.shape[dim] - i)

        def __getattr__(self, name):
            return getattr(torch, name)

    mvit.torch = TwoSlices()
    return model


def build_model(name):
    import torch
    import torchvision

    torch.manual_seed(zoo.WEIGHT_SEED)
    return getattr(torchvision.models.video, name)().eval()


def paths(args, name):
    cache = os.path.join(zoo.BENCH_DIR, ".cache", "video")
    os.makedirs(cache, exist_ok=True)
    shape = f"b{args.batch}_f{args.frames}_{args.size}"
    return (os.path.join(cache, f"{name}_{shape}.onnx"),
            os.path.join(cache, f"clips_{shape}.npy"),
            os.path.join(cache, f"{name}_{shape}_logits.npy"))


def prepare(args, name, log):
    """Exports the model and writes the clips and PyTorch's logits, unless they are there."""
    import numpy as np
    import torch

    model_path, clips_path, reference = paths(args, name)
    if all(os.path.exists(p) for p in (model_path, clips_path, reference)):
        return model_path, clips_path, reference
    torch.set_num_threads(args.threads)
    model = build_model(name)
    if not os.path.exists(clips_path):
        rng = np.random.default_rng(zoo.INPUT_SEED)
        rows = args.batch * (args.runs + args.warmup)
        np.save(clips_path, rng.standard_normal(
            (rows, 3, args.frames, args.size, args.size)).astype(np.float32))
    clips = np.load(clips_path)
    log(f"exporting {os.path.relpath(model_path, zoo.REPO_ROOT)}")
    with torch.no_grad():
        np.save(reference, model(torch.from_numpy(clips[:args.batch])).numpy())
    torch.onnx.export(exportable(model), torch.from_numpy(clips[:args.batch]), model_path,
                      opset_version=17, input_names=["clips"], output_names=["logits"])
    return model_path, clips_path, reference


def worker_args(args, name):
    return ["--model-name", name, "--threads", str(args.threads), "--batch", str(args.batch),
            "--frames", str(args.frames), "--size", str(args.size), "--runs", str(args.runs),
            "--warmup", str(args.warmup)]


def torch_time(args, name):
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker"] + worker_args(args, name)
    return compare.json_result(cmd, args.timeout)


def torch_worker(args):
    """Child process: times the PyTorch model on the first batch and prints one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    model = build_model(args.model_name)
    _, clips, _ = paths(args, args.model_name)
    x = torch.from_numpy(np.load(clips)[:args.batch])
    print(compare.torch_call_timing(lambda: model(x), args))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    compare.add_model_timing_arguments(ap, batch=2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--section", default="video",
                    help="the section of bench/RESULTS.md --write replaces (default video)")
    ap.add_argument("--model-name", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    args.qforge = zoo.find_qforge(args.qforge)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    rows = []
    for name in args.models.split(","):
        model, clips, reference = prepare(args, name, log)
        out = os.path.join(zoo.BENCH_DIR, ".cache", "video", "qforge_logits.npy")
        rows.append(compare.checked_model_row(args, name, model, clips, reference, out,
                                              lambda: torch_time(args, name), log))
    load = os.getloadavg()
    version = next((r["torch"].get("version") for _, _, r in rows if "error" not in r["torch"]), "?")
    begin, end = markers(args.section)
    lines = [begin, "",
             f"## Video classifiers, batch {args.batch}, {args.frames} frames "
             f"at {args.size}x{args.size}, {args.threads} threads", "",
             f"- Command: `bench/video_compare.py {' '.join(sys.argv[1:])}` (from the repository "
             "root)",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- Machine: {zoo.machine_description()}; load average {load[0]:.2f} at the end",
             f"- Models: torchvision's {', '.join(args.models.split(','))}, random weights "
             "(seeded), opset 17, fixed batch; clips normal(0, 1), seeded",
             f"- Timing: each runtime's mean over {args.runs} batches after {args.warmup} "
             f"warm-up, the fastest of {args.rounds} alternating rounds; PyTorch {version} eager "
             "under torch.no_grad(); ONNX Runtime for Node with every graph optimisation", ""]
    lines += compare.model_time_table("model", rows)
    lines += ["", "Ratios are time ratios (above 1: qforge is slower). A 3-D convolution runs on "
              "the 2-D kernels over stacks of its depth taps (kernels/conv_depth.h), a depthwise "
              "one (MViT's pooling) on the depthwise kernel's paths; MViT's "
              "assignments to slices run as SliceUpdate (graph/slice_update.h).", "", end]
    text = "\n".join(lines)
    print(text)
    if args.write:
        compare.write_results(text, compare.RESULTS, begin, end)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Transforms the full-size benchmark models with `qforge transform` and checks each is
equivalent to the original (max |d| <= 1e-5 * max(1, max |ref|) on the fixed benchmark input),
printing the module counts. Expected counts for the attention models are checked:
vit_b_16 has 12 encoder layers (12 MHAInProjection, 12 SDPA); swin_t has depths 2+2+6+2 = 12
window-attention blocks, each SwinWindowPartition -> MHAInProjection -> SwinAttention -> Linear ->
SwinWindowReverse (12 of each window module).

    bench/transform_models.py [--qforge build/tools/qforge] [--models resnet50,vit_b_16]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "bench", ".cache")
MODELS = ["resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16", "swin_t"]
EXPECTED = {
    "vit_b_16": {"MHAInProjection": 12, "SDPA": 12},
    "swin_t": {"SwinWindowPartition": 12, "MHAInProjection": 12, "SwinAttention": 12,
               "SwinWindowReverse": 12},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qforge", default=os.path.join(ROOT, "build", "tools", "qforge"))
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    failures = 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = os.path.join(CACHE, "models", f"{name}_b1.onnx")
            data = os.path.join(CACHE, "inputs", "b1.npy")
            if not os.path.exists(model):
                print(f"{name}: {model} missing; run bench/export_models.py first", file=sys.stderr)
                failures += 1
                continue
            report_path = os.path.join(tmp, f"{name}.json")
            cmd = [args.qforge, "transform", model, "-o", os.path.join(tmp, f"{name}.onnx"),
                   "--report", report_path, "--data", data]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}: FAILED: {proc.stderr.strip() or proc.stdout.strip()}")
                failures += 1
                continue
            report = json.load(open(report_path))
            eq = report["equivalence"]
            modules = report["modules"]
            missing = {k: v for k, v in EXPECTED.get(name, {}).items() if modules.get(k) != v}
            ok = eq["equivalent"] and not missing
            failures += not ok
            rows.append((name, eq["relative_max_abs_diff"], modules, "pass" if ok else
                         f"FAIL (expected {missing})"))
    print("| model | rel. max abs diff | modules | result |")
    print("|---|---:|---|---|")
    for name, rel, modules, verdict in rows:
        listed = ", ".join(f"{k} {v}" for k, v in sorted(modules.items()))
        print(f"| {name} | {rel:.3g} | {listed} | {verdict} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

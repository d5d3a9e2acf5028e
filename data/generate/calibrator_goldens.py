#!/usr/bin/env python3
"""Golden amax values for qforge's histogram calibrators (quant/calibrators.h).

An independent numpy implementation of each calibrator's definition, run on a few fixed-seed
histograms of |x| with 2048 bins. Writes, under data/golden/calibration/:
  hist_<name>.npy   float64 counts
  hist_<name>.json  {"bins": 2048, "range": R}   (bin j holds |x| in [R*j/2048, R*(j+1)/2048))
  expected.json     chosen edge index and amax per calibrator per histogram

Definitions (edge(k) = R * k / bins; counts are whole numbers):
  max         edge(top + 1), top = highest non-empty bin.
  percentile  edge(j + 1) for the smallest j with cumsum(counts)[j] >= (p / 100) * total.
  entropy     b = counts with b[0] := b[1]; T = sum(b). Candidate i in [128, bins]:
              P = b[:i] / T with sum(b[i:]) / T added to its last entry;
              bin j < i belongs to level floor(128 * j / i); Q puts (level mass / non-empty bins
              of the level) / sum(b[:i]) on each non-empty bin of b[:i], 0 on empty ones;
              KL = sum_{P>0} P log(P / Q), inf if Q = 0 where P > 0. The smallest KL wins, the
              largest i among equal ones; amax = edge(i).
  mse         candidate k in [128, bins], s = edge(k) / 127, centres c_j = R * (j + 0.5) / bins,
              u = c / s, E = s^2 * sum(counts * (rint(min(u, 127)) - u)^2); first minimum wins,
              amax = edge(k).
Run with Debian's /usr/bin/python3 (numpy). Deterministic: rerunning rewrites identical files.
"""
import json
import os

import numpy as np

BINS = 2048
PERCENTILE = 99.99
START_BIN = 128
LEVELS = 128
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "calibration")


def edge(rng_max, k):
    return rng_max * k / BINS


def histogram_of(samples):
    """|x| histogram with the observer's rule: range = smallest power of two above max |x|."""
    a = np.abs(samples.astype(np.float32)).astype(np.float64)
    _, e = np.frexp(a.max())
    rng_max = float(np.ldexp(1.0, int(e)))
    idx = np.floor(a * (BINS / rng_max)).astype(np.int64)
    return np.bincount(idx, minlength=BINS).astype(np.float64), rng_max


def calib_max(counts, r):
    k = int(np.flatnonzero(counts > 0)[-1]) + 1
    return k


def calib_percentile(counts, r, p):
    target = (p / 100.0) * counts.sum()
    return int(np.argmax(np.cumsum(counts) >= target)) + 1


def calib_entropy(counts, r):
    b = counts.copy()
    b[0] = b[1]
    total = b.sum()
    kls = []
    for i in range(START_BIN, BINS + 1):
        kept = b[:i]
        p = kept / total
        p[-1] = (kept[-1] + b[i:].sum()) / total
        level = (LEVELS * np.arange(i)) // i
        filled = kept > 0
        level_mass = np.bincount(level, weights=kept, minlength=LEVELS)
        level_fill = np.bincount(level, weights=filled.astype(np.float64), minlength=LEVELS)
        per_bin = np.divide(level_mass, level_fill, out=np.zeros(LEVELS), where=level_fill > 0)
        with np.errstate(invalid="ignore", divide="ignore"):  # no kept mass: Q is all zero
            q = np.where(filled, per_bin[level] / kept.sum(), 0.0)
        support = p > 0
        if np.any(q[support] == 0):
            kls.append(np.inf)
            continue
        ps, qs = p[support], q[support]
        kls.append(float(np.sum(ps * np.log(ps / qs))))
    kls = np.array(kls)
    return int(np.flatnonzero(kls == kls.min())[-1]) + START_BIN


def calib_mse(counts, r):
    centres = r * (np.arange(BINS) + 0.5) / BINS
    errors = []
    for k in range(START_BIN, BINS + 1):
        s = edge(r, k) / 127.0
        u = centres / s
        d = np.rint(np.minimum(u, 127.0)) - u
        errors.append(float(np.sum(counts * d * d)) * (s * s))
    return int(np.argmin(errors)) + START_BIN


def make_histograms():
    hists = {}
    rng = np.random.default_rng(20240611)
    hists["gaussian"] = histogram_of(rng.normal(0.0, 1.0, 200_000))
    hists["laplace"] = histogram_of(rng.laplace(0.0, 0.5, 200_000))
    hists["uniform"] = histogram_of(rng.uniform(-3.0, 3.0, 100_000))
    outliers = np.concatenate([rng.normal(0.0, 1.0, 100_000), rng.uniform(40.0, 60.0, 20) *
                               rng.choice([-1.0, 1.0], 20)])
    hists["outliers"] = histogram_of(outliers)
    relu = np.maximum(rng.normal(0.0, 1.5, 150_000), 0.0)
    hists["relu"] = histogram_of(relu)
    sparse = np.zeros(BINS)
    chosen = np.unique(np.minimum((rng.exponential(250.0, 160)).astype(np.int64), BINS - 1))
    sparse[chosen] = rng.integers(1, 1000, chosen.size)
    hists["sparse"] = (sparse, 4.0)
    one = np.zeros(BINS)
    one[700] = 5000.0
    hists["one_bin"] = (one, 2.0)
    return hists


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"bins": BINS, "percentile": PERCENTILE, "start_bin": START_BIN,
                "levels": LEVELS, "histograms": {}}
    for name, (counts, r) in make_histograms().items():
        np.save(os.path.join(OUT, f"hist_{name}.npy"), counts.astype(np.float64))
        with open(os.path.join(OUT, f"hist_{name}.json"), "w") as f:
            json.dump({"bins": BINS, "range": r}, f)
            f.write("\n")
        picks = {
            "max": calib_max(counts, r),
            "percentile": calib_percentile(counts, r, PERCENTILE),
            "entropy": calib_entropy(counts, r),
            "mse": calib_mse(counts, r),
        }
        expected["histograms"][name] = {
            method: {"edge": k, "amax": edge(r, k)} for method, k in picks.items()}
        print(name, r, {m: v for m, v in picks.items()})
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()

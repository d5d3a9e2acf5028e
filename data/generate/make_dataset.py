#!/usr/bin/python3
"""Build the bundled digits image dataset.

Source: scikit-learn's bundled handwritten digits (load_digits: 1,797 images,
8x8 pixels with intensities 0..16, 10 classes).  Each image is upsampled to
32x32 with bilinear interpolation (half-pixel centres, edge clamping), scaled
to 0..1, and rendered as 8-bit RGB with a slightly tinted ink/paper colour so
that the three channels carry different statistics.

Output layout (ImageFolder):
    data/datasets/digits/{train,val}/<class>/<index>.png
where <class> is 0..9 and <index> is the 5-digit index into load_digits.
The split is stratified, 80% train / 20% val, random_state=0.
"""
import argparse
import os
import shutil

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)
OUT_DIR = os.path.join(DATA, "datasets", "digits")

SIZE = 32
# RGB colour of the paper (intensity 0) and of the ink (intensity 1).
PAPER = np.array([0.0, 10.0, 24.0])
INK = np.array([255.0, 240.0, 216.0])


def bilinear_weights(n_in, n_out):
    """Return (i0, i1, w1) so that out[j] = in[i0]*(1-w1) + in[i1]*w1.

    Uses half-pixel centres (align_corners=False) with clamping at the edges.
    """
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, w1


def upsample(img8):
    """Bilinear 8x8 -> SIZE x SIZE upsampling in float64."""
    i0, i1, w = bilinear_weights(img8.shape[0], SIZE)
    rows = img8[i0, :] * (1.0 - w)[:, None] + img8[i1, :] * w[:, None]
    j0, j1, v = bilinear_weights(img8.shape[1], SIZE)
    return rows[:, j0] * (1.0 - v)[None, :] + rows[:, j1] * v[None, :]


def render(img8):
    """8x8 array of 0..16 -> SIZE x SIZE x 3 uint8 RGB image."""
    t = upsample(img8.astype(np.float64) / 16.0)
    rgb = PAPER[None, None, :] + t[:, :, None] * (INK - PAPER)[None, None, :]
    return np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def split_indices(labels):
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        idx, test_size=0.2, stratify=labels, random_state=0, shuffle=True)
    return np.sort(train_idx), np.sort(val_idx)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=OUT_DIR)
    args = ap.parse_args()

    digits = load_digits()
    images, labels = digits.images, digits.target
    train_idx, val_idx = split_indices(labels)

    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    counts = {}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        for i in idx:
            cls = int(labels[i])
            d = os.path.join(args.out, split, str(cls))
            os.makedirs(d, exist_ok=True)
            Image.fromarray(render(images[i]), mode="RGB").save(
                os.path.join(d, "%05d.png" % i), format="PNG")
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
    for split in ("train", "val"):
        per = [counts.get((split, c), 0) for c in range(10)]
        print("%-5s %4d images, per class %s" % (split, sum(per), per))


if __name__ == "__main__":
    main()

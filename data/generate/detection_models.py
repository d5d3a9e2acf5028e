#!/usr/bin/python3
"""Train and export the bundled dense-prediction models: a small YOLO-style detector and a
small UNet, built from torch layers, trained briefly on the digits dataset.

  * yolo: a YOLOv8-style network. Conv-BN-SiLU layers, C2f blocks (a 1x1 conv whose output is
    split in two, bottlenecks on the second half, everything concatenated), an SPPF block (three
    chained 5x5 max pools, concatenated), a nearest x2 upsampling and a Concat in the neck, and a
    decoupled head on the 8x8 grid of stride 4: box distances as a DFL distribution (softmax
    over 8 bins, then the expectation by a fixed 1x1 conv) and class scores through a sigmoid.
    Output [N, 4 + 10, 64]: left, top, right, bottom distances in pixels and class scores per
    cell. Target: the bounding box of the digit's ink and its class, on the cells inside it.
  * unet: a UNet with Conv-BN-ReLU encoder stages, max pooling, one ConvTranspose-BN-ReLU
    upsampling and one bilinear upsampling, Concat skips and a 1x1 classifier. Output
    [N, 11, 32, 32]: per-pixel logits of background and the ten digits. Target: the digit's ink
    (gray level > 96) labelled with its class.

Each is exported with BatchNormalization kept at opset 17 (input "input", output "output",
dynamic batch, qforge.* preprocessing metadata) to data/models/<family>_bn.onnx, with
data/golden/<family>_input.npy (the first validation image of classes 0, 3, 5 and 8) and
data/golden/<family>_bn_output.npy (PyTorch's output), and checked with ONNX Runtime against
PyTorch when it is available. The same trained weights are also exported at opset 11 to
data/models/<family>_bn_opset11.onnx (Resize with roi and scales inputs, Split and Unsqueeze with
attributes, Softmax on the flattened 2-D view), which qforge converts to opset 13 on import.

Run: /usr/bin/python3 data/generate/detection_models.py (about a minute on 2 threads).
"""
import collections
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import onnx
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_export as te  # noqa: E402

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
BINS = 8        # DFL bins: distances 0 .. 7 cells
STRIDE = 4      # the head's grid: 8x8 cells of 4x4 pixels
INK = 96        # gray level above which a pixel is ink
MAX_BYTES = 300 * 1024


# ---------------------------------------------------------------- models

class ConvBnAct(nn.Sequential):
    def __init__(self, cin, cout, k=3, s=1, act=nn.SiLU):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout),
                         act())


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1 = ConvBnAct(c, c)
        self.cv2 = ConvBnAct(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f as its forward_split runs it: split((c, c), 1), not chunk."""

    def __init__(self, cin, cout, n=1):
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBnAct(cin, 2 * self.c, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = ConvBnAct((2 + n) * self.c, cout, 1)

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1 = ConvBnAct(c, c // 2, 1)
        self.cv2 = ConvBnAct(c // 2 * 4, c, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Expected distance of each side from its distribution over BINS bins: a fixed 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(BINS, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(BINS, dtype=torch.float).view(1, BINS, 1, 1)

    def forward(self, x):
        b, _, a = x.shape  # [N, 4·BINS, cells]
        return self.conv(x.view(b, 4, BINS, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class SmallYolo(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBnAct(3, 16, 3, 2)                                   # 16x16
        self.stage2 = nn.Sequential(ConvBnAct(16, 24, 3, 2), C2f(24, 24))    # 8x8, P3
        self.stage3 = nn.Sequential(ConvBnAct(24, 32, 3, 2), C2f(32, 32))    # 4x4, P4
        self.sppf = SPPF(32)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = C2f(32 + 24, 32)
        self.box = nn.Sequential(ConvBnAct(32, 32), nn.Conv2d(32, 4 * BINS, 1))
        self.cls = nn.Sequential(ConvBnAct(32, 32), nn.Conv2d(32, NUM_CLASSES, 1))
        self.dfl = DFL()

    def raw(self, x):
        p3 = self.stage2(self.stem(x))
        p4 = self.sppf(self.stage3(p3))
        f = self.neck(torch.cat([self.up(p4), p3], 1))
        b = f.shape[0]
        return self.box(f).view(b, 4 * BINS, -1), self.cls(f).view(b, NUM_CLASSES, -1)

    def forward(self, x):
        box, cls = self.raw(x)
        return torch.cat([self.dfl(box) * STRIDE, cls.sigmoid()], 1)


class SmallUNet(nn.Module):
    def __init__(self):
        super().__init__()
        relu = nn.ReLU
        self.enc1 = nn.Sequential(ConvBnAct(3, 12, act=relu), ConvBnAct(12, 12, act=relu))
        self.enc2 = nn.Sequential(ConvBnAct(12, 24, act=relu), ConvBnAct(24, 24, act=relu))
        self.mid = nn.Sequential(ConvBnAct(24, 48, act=relu), ConvBnAct(48, 48, act=relu))
        self.pool = nn.MaxPool2d(2)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(48, 24, 2, stride=2, bias=False),
                                 nn.BatchNorm2d(24), relu())
        self.dec1 = ConvBnAct(48, 24, act=relu)
        self.up2 = ConvBnAct(24, 12, act=relu)
        self.dec2 = ConvBnAct(24, 12, act=relu)
        self.head = nn.Conv2d(12, NUM_CLASSES + 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)                          # 32x32
        e2 = self.enc2(self.pool(e1))              # 16x16
        m = self.mid(self.pool(e2))                # 8x8
        d1 = self.dec1(torch.cat([self.up1(m), e2], 1))
        u2 = F.interpolate(d1, scale_factor=2.0, mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([self.up2(u2), e1], 1))
        return self.head(d2)


# ---------------------------------------------------------------- targets

def ink_masks(pixels):
    """[N, 32, 32] bool: the digit's ink."""
    return torch.from_numpy(pixels.mean(axis=3) > INK)


def detection_targets(masks, labels):
    """Per cell of the 8x8 grid: whether it lies inside the ink's bounding box, the class, and
    the distances (in cells) from its centre to the box's left, top, right and bottom."""
    n = masks.shape[0]
    grid = INPUT_SHAPE[1] // STRIDE
    centre = (torch.arange(grid, dtype=torch.float) + 0.5) * STRIDE
    cy, cx = torch.meshgrid(centre, centre, indexing="ij")
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    pos = torch.zeros(n, grid * grid, dtype=torch.bool)
    dist = torch.zeros(n, 4, grid * grid)
    for i in range(n):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        x1, y1 = float(xs.min()), float(ys.min())
        x2, y2 = float(xs.max()) + 1, float(ys.max()) + 1
        d = torch.stack([cx - x1, cy - y1, x2 - cx, y2 - cy]) / STRIDE
        pos[i] = (d > 0).all(0)
        dist[i] = d.clamp(0, BINS - 1.01)
    cls = F.one_hot(labels, NUM_CLASSES).float()[:, :, None] * pos[:, None, :].float()
    return pos, cls, dist


def segmentation_targets(masks, labels):
    return torch.where(masks, labels[:, None, None] + 1, torch.zeros_like(labels)[:, None, None])


# ---------------------------------------------------------------- training

def yolo_loss(model, x, target):
    pos, cls, dist = target
    box, logits = model.raw(x)
    b = box.shape[0]
    probs = box.view(b, 4, BINS, -1).softmax(2)
    expected = (probs * torch.arange(BINS, dtype=torch.float).view(1, 1, BINS, 1)).sum(2)
    weight = pos[:, None, :].float()
    box_loss = ((expected - dist).abs() * weight).sum() / weight.sum().clamp(min=1) / 4
    return F.binary_cross_entropy_with_logits(logits, cls) + box_loss


def unet_loss(model, x, target):
    return F.cross_entropy(model(x), target)


def train(model, loss_fn, x, target, epochs, lr, log):
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(x)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total, t0 = 0.0, time.time()
        for i in range(0, n, 64):
            idx = order[i:i + 64]
            loss = loss_fn(model, x[idx], [t[idx] for t in target] if isinstance(target, tuple)
                           else target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        log("  epoch %d  loss %.4f  (%.0fs)" % (epoch + 1, total / n, time.time() - t0))
    model.eval()
    return model


# ---------------------------------------------------------------- export

def export(model, family, ds, path, opset=17):
    torch.onnx.export(model, ds.val_x[:2].clone(), path, opset_version=opset,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    m = onnx.load(path)
    meta = collections.OrderedDict([
        ("qforge.input_shape", ",".join(str(d) for d in INPUT_SHAPE)),
        ("qforge.layout", "NCHW"),
        ("qforge.channel_order", "RGB"),
        ("qforge.pixel_scale", str(te.PIXEL_SCALE)),
        ("qforge.mean", ",".join(repr(v) for v in ds.mean)),
        ("qforge.std", ",".join(repr(v) for v in ds.std)),
        ("qforge.family", family),
        ("qforge.form", "bn"),
    ])
    del m.metadata_props[:]
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, path)
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise SystemExit("%s is %d bytes, over the %d limit" % (path, size, MAX_BYTES))
    return m


def run(family, model, loss_fn, target_fn, epochs, lr, ds, log):
    log("== %s (%d params)" % (family, sum(p.numel() for p in model.parameters())))
    labels = ds.train_y
    target = target_fn(ink_masks(ds.train_pixels), labels)
    train(model, loss_fn, ds.train_x, target, epochs, lr, log)
    with torch.no_grad():
        val_target = target_fn(ink_masks(ds.val_pixels), ds.val_y)
        log("  val loss %.4f" % float(loss_fn(model, ds.val_x, val_target)))
    path = os.path.join(te.MODELS_DIR, "%s_bn.onnx" % family)
    m = export(model, family, ds, path)
    path11 = os.path.join(te.MODELS_DIR, "%s_bn_opset11.onnx" % family)
    export(model, family, ds, path11, opset=11)
    log("  %s: %d nodes, %d bytes, ops %s" % (os.path.basename(path), len(m.graph.node),
                                              os.path.getsize(path),
                                              dict(sorted(te.op_histogram(m).items()))))
    golden_x, _ = ds.first_val_of(te.GOLDEN_CLASSES)
    b5, _ = ds.first_val_of(te.VERIFY_B5_CLASSES)
    with torch.no_grad():
        golden_y = model(golden_x).numpy()
        ref5 = model(b5).numpy()
    te.save_npy(os.path.join(te.GOLDEN_DIR, "%s_input.npy" % family), golden_x.numpy())
    te.save_npy(os.path.join(te.GOLDEN_DIR, "%s_bn_output.npy" % family), golden_y)
    checks = [(p, x, y) for p in (path, path11)
              for x, y in ((golden_x.numpy(), golden_y), (b5.numpy(), ref5))]
    if te.verify_ort(checks, log) is False:
        raise SystemExit("%s: ONNX Runtime output differs from PyTorch" % family)


def main():
    torch.set_num_threads(int(os.environ.get("QFORGE_THREADS", "2")))
    ds = te.Dataset()

    def log(msg):
        print(msg, flush=True)

    torch.manual_seed(2000)
    run("yolo", SmallYolo(), yolo_loss, detection_targets, 6, 3e-3, ds, log)
    torch.manual_seed(2001)
    run("unet", SmallUNet(), unet_loss, segmentation_targets, 8, 3e-3, ds, log)
    te.write_readme(ds)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""A harder quantization task on the same digits: a MobileNetV1-style depthwise-separable CNN
(3x3 stem, then depthwise 3x3 + pointwise 1x1 blocks, each conv followed by BatchNorm and
ReLU6) trained with a high learning rate and no weight decay.

Such training leaves some channels dead: a pointwise channel whose ReLU6 input stays negative
feeds the next depthwise channel zeros, its BatchNorm running variance falls to ~0, and once
BN is folded that depthwise channel's weight is hundreds of times larger than the others'.
Per-channel weight scales do not mind; one scale per tensor rounds every other channel of the
layer to zero or one step (Krishnamoorthi 2018, section 3.1, on MobileNetV1). The script prints
the float accuracy, the same weights fake-quantized per channel and per tensor (folded BN,
symmetric int8, amax = max |w|), and each conv's largest/median folded channel amax.

Writes data/models/dwsep_bn.onnx (BatchNorm kept, qforge.* preprocessing metadata, as
train_export.py writes the other families) and its val accuracy to
data/golden/dwsep_accuracy.json. Seeded, 1 thread: about 2 minutes on one core.

  /usr/bin/python3 data/generate/depthwise_task.py
"""
import copy
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_export as te  # noqa: E402

FAMILY = "dwsep"
WIDTHS = (16, 32, 64, 128)
EPOCHS = 20
LR = 3e-2  # high on purpose: it is what kills channels
BATCH = 64
SEED = 7


def separable(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class DepthwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False), nn.BatchNorm2d(WIDTHS[0]),
                  nn.ReLU6()]
        c = WIDTHS[0]
        for w in WIDTHS[1:]:
            layers += [separable(c, w, 2), separable(w, w, 1)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def conv_bn_pairs(model):
    mods = list(model.modules())
    return [(m, mods[i + 1]) for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]


def folded_weight(conv, bn):
    return conv.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)


def fake_quant(w, per_channel):
    if per_channel:
        amax = w.abs().flatten(1).max(1)[0].view(-1, *[1] * (w.ndim - 1))
    else:
        amax = w.abs().max()
    scale = amax.clamp_min(1e-12) / 127
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


def weight_quantized_accuracy(model, ds, per_channel):
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for conv, bn in conv_bn_pairs(m):
            factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
            conv.weight.copy_(fake_quant(folded_weight(conv, bn), per_channel) / factor)
        m.head.weight.copy_(fake_quant(m.head.weight, per_channel))
    return te.evaluate(m, ds.val_x, ds.val_y) / len(ds.val_y)


def main():
    torch.set_num_threads(1)
    ds = te.Dataset()
    torch.manual_seed(SEED)
    model = DepthwiseNet()
    gen = torch.Generator().manual_seed(SEED + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    n = len(ds.train_x)
    steps_per_epoch = math.ceil(n / BATCH)
    total = EPOCHS * steps_per_epoch
    step = 0
    start = time.time()
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            for g in opt.param_groups:
                g["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(te.augment(ds.train_x[idx], gen)), ds.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    correct = te.evaluate(model, ds.val_x, ds.val_y)
    top1 = correct / len(ds.val_y)
    print("%s: trained %d epochs in %.0f s; val top-1 %.4f" % (FAMILY, EPOCHS,
                                                             time.time() - start, top1))
    if top1 < te.MIN_VAL_ACCURACY:
        raise SystemExit("%s: validation accuracy %.4f below %.2f" % (FAMILY, top1,
                                                                      te.MIN_VAL_ACCURACY))
    print("  weights fake-quantized per channel %.4f, per tensor %.4f" % (
        weight_quantized_accuracy(model, ds, True), weight_quantized_accuracy(model, ds, False)))
    spread = []
    with torch.no_grad():
        for conv, bn in conv_bn_pairs(model):
            amax = folded_weight(conv, bn).abs().flatten(1).max(1)[0]
            spread.append("%s%.0f" % ("dw " if conv.groups > 1 else "", amax.max() / amax.median()))
    print("  folded channel amax, largest/median per conv: " + ", ".join(spread))

    path = os.path.join(te.MODELS_DIR, "%s_bn.onnx" % FAMILY)
    te.export(model, FAMILY, "bn", ds, path)
    print("  wrote %s (%d bytes)" % (os.path.relpath(path, te.DATA), os.path.getsize(path)))
    with open(os.path.join(te.GOLDEN_DIR, "%s_accuracy.json" % FAMILY), "w") as f:
        json.dump({FAMILY: {"val_top1": top1, "val_correct": correct,
                            "val_count": len(ds.val_y)}}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

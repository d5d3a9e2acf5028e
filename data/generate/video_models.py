#!/usr/bin/python3
"""Small models of 3-D layers for tests/tools/video_cli_test.cpp (3-D convolutions, transposed
convolutions and pools: kernels/conv_depth.h, runtime/ops/conv_ops.cpp and pool_ops.cpp):

  * data/models/ops/tiny_video_opset17.onnx: clips [N, 3, 8, 32, 32] (dynamic batch) ->
    logits [N, 5]. A stem Conv3d 3x3x3 stride (1, 2, 2) -> BatchNorm3d -> ReLU, MaxPool3d
    (1, 3, 3) stride (1, 2, 2); a (2+1)-D residual block (Conv3d 1x3x3 -> BN -> ReLU -> Conv3d
    3x1x1 -> BN, + the block's input, ReLU); a strided Conv3d 3x3x3 -> BN -> ReLU, AvgPool3d 2x2x2
    with its pads counted, then AdaptiveAvgPool3d(1), Flatten and Linear. Random weights and BN
    statistics, seeded.
  * data/models/ops/tiny_x3d_opset17.onnx: channel-separated blocks as X3D's and CSN's are
    built: clips [N, 3, 8, 32, 32] (dynamic batch) -> logits [N, 4]. A stem Conv3d 1x3x3 stride
    (1, 2, 2) -> BN -> ReLU; a block of a 1x1x1 expansion -> BN -> ReLU, a depthwise Conv3d
    3x3x3 stride (1, 2, 2) -> BN -> SiLU and a 1x1x1 projection -> BN; a residual block of the
    same with a depthwise Conv3d 3x3x3 stride 1 (its projection's BN added to the block's input,
    ReLU); a depthwise Conv3d 5x3x3 stride (2, 1, 1) with a bias; AdaptiveAvgPool3d(1), Flatten
    and Linear. Random weights and BN statistics, seeded.
  * data/models/ops/tiny_unet3d_opset17.onnx: a volume segmenter as 3-D UNets are built:
    volumes [N, 1, 8, 16, 16] (dynamic batch) -> per-voxel scores [N, 3, 8, 16, 16]. Conv3d ->
    BN -> ReLU, MaxPool3d 2, Conv3d -> BN -> ReLU, then two upsamplings of that, a
    ConvTranspose3d 2x2x2 stride 2 -> BN -> ReLU and a 1x1x1 Conv3d -> trilinear Upsample x2,
    concatenated with the first stage, and a 1x1x1 Conv3d. Random weights and BN statistics,
    seeded.

Seeded; run: /usr/bin/python3 data/generate/video_models.py
"""
import os

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = os.path.join(HERE, "..", "models", "ops")


def conv_bn(cin, cout, kernel, stride=1, padding=0):
    return [nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm3d(cout)]


class TinyVideo(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 3, (1, 2, 2), 1), nn.ReLU(),
                                  nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        self.spatial = nn.Sequential(*conv_bn(8, 8, (1, 3, 3), 1, (0, 1, 1)), nn.ReLU())
        self.temporal = nn.Sequential(*conv_bn(8, 8, (3, 1, 1), 1, (1, 0, 0)))
        self.down = nn.Sequential(*conv_bn(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.AvgPool3d(2, 2, 1, count_include_pad=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.temporal(self.spatial(x)) + x)
        return self.head(self.down(x))


class ChannelSeparated(nn.Module):
    """1x1x1 expansion, depthwise 3x3x3, 1x1x1 projection; + the input where `residual`."""

    def __init__(self, channels, expanded, stride, residual):
        super().__init__()
        self.residual = residual
        self.body = nn.Sequential(
            *conv_bn(channels, expanded, 1), nn.ReLU(),
            nn.Conv3d(expanded, expanded, 3, stride, 1, groups=expanded, bias=False),
            nn.BatchNorm3d(expanded), nn.SiLU(), *conv_bn(expanded, channels, 1))

    def forward(self, x):
        y = self.body(x)
        return torch.relu(y + x) if self.residual else y


class TinyX3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, (1, 3, 3), (1, 2, 2), (0, 1, 1)), nn.ReLU())
        self.blocks = nn.Sequential(ChannelSeparated(8, 20, (1, 2, 2), False),
                                    ChannelSeparated(8, 20, 1, True))
        self.temporal = nn.Conv3d(8, 8, (5, 3, 3), (2, 1, 1), (2, 1, 1), groups=8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.temporal(self.blocks(self.stem(x))))


class TinyUnet3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(*conv_bn(1, 4, 3, 1, 1), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool3d(2), *conv_bn(4, 8, 3, 1, 1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose3d(8, 4, 2, 2, bias=False), nn.BatchNorm3d(4),
                                nn.ReLU())
        self.trilinear = nn.Sequential(nn.Conv3d(8, 4, 1),
                                       nn.Upsample(scale_factor=2, mode="trilinear"))
        self.head = nn.Conv3d(12, 3, 1)

    def forward(self, x):
        skip = self.enc(x)
        down = self.down(skip)
        return self.head(torch.cat([self.up(down), self.trilinear(down), skip], 1))


def randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def main():
    torch.manual_seed(0)
    model = randomize_bn(TinyVideo())
    clips = np.random.RandomState(0).randn(2, 3, 8, 32, 32).astype(np.float32)
    path = os.path.join(OPS, "tiny_video_opset17.onnx")
    torch.onnx.export(model, torch.from_numpy(clips[:2]), path, opset_version=17,
                      input_names=["clips"], output_names=["logits"],
                      dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")

    torch.manual_seed(2)
    x3d = randomize_bn(TinyX3d())
    path = os.path.join(OPS, "tiny_x3d_opset17.onnx")
    torch.onnx.export(x3d, torch.from_numpy(clips[:2]), path, opset_version=17,
                      input_names=["clips"], output_names=["logits"],
                      dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")

    torch.manual_seed(1)
    unet = randomize_bn(TinyUnet3d())
    volumes = np.random.RandomState(1).randn(2, 1, 8, 16, 16).astype(np.float32)
    path = os.path.join(OPS, "tiny_unet3d_opset17.onnx")
    torch.onnx.export(unet, torch.from_numpy(volumes), path, opset_version=17,
                      input_names=["volumes"], output_names=["scores"],
                      dynamic_axes={"volumes": {0: "batch"}, "scores": {0: "batch"}})
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()

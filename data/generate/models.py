"""Small 3x32x32 -> 10-class models built from torchvision's own classes.

Each builder returns a freshly initialised torch.nn.Module.  The structures
are the torchvision implementations with reduced widths/depths so that the
exported ONNX graphs contain the real operator patterns of each family while
staying small enough to bundle.
"""
from functools import partial

import torch
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.efficientnet import EfficientNet, MBConvConfig
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

NUM_CLASSES = 10
INPUT_SHAPE = (3, 32, 32)

FAMILIES = ["resnet", "mobilenet_v3", "efficientnet", "convnext", "vit", "swin"]
CNN_WITH_BN = {"resnet", "mobilenet_v3", "efficientnet"}


class SmallResNet(ResNet):
    """torchvision ResNet with narrow stages.

    Reuses ResNet._make_layer and ResNet.forward unchanged; only the widths of
    the stem and the four stages are configurable (torchvision hard-codes
    64/128/256/512).  Stem: conv 7x7/2 + BN + ReLU + maxpool 3x3/2.
    """

    def __init__(self, block, layers, widths, num_classes=NUM_CLASSES):
        nn.Module.__init__(self)
        norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_resnet():
    # Feature maps: stem 16x16 -> maxpool 8x8 -> 8, 4, 2, 1.
    # layer1's first block has no downsample branch; layer2..4 have one.
    return SmallResNet(BasicBlock, [2, 1, 1, 1], [16, 32, 64, 128])


def build_mobilenet_v3():
    # MobileNetV3-small layout with fewer and narrower blocks.
    # (input, kernel, expanded, out, use_se, activation, stride, dilation)
    conf = partial(InvertedResidualConfig, width_mult=1.0)
    setting = [
        conf(16, 3, 16, 16, True, "RE", 2, 1),   # 16x16 -> 8x8, SE, no expand conv
        conf(16, 3, 48, 24, False, "RE", 2, 1),  # -> 4x4
        conf(24, 3, 64, 24, False, "RE", 1, 1),  # residual
        conf(24, 5, 72, 40, True, "HS", 2, 1),   # -> 2x2
        conf(40, 5, 120, 40, True, "HS", 1, 1),  # residual
        conf(40, 5, 120, 48, True, "HS", 1, 1),
    ]
    # torchvision's BatchNorm eps (0.001) with the usual momentum (torchvision
    # uses 0.01, which makes the running statistics lag on a short schedule).
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
    return MobileNetV3(setting, last_channel=128, num_classes=NUM_CLASSES, dropout=0.2,
                       norm_layer=norm_layer)


def build_efficientnet():
    # EfficientNet-B0 layout with fewer and narrower stages.
    # (expand_ratio, kernel, stride, input_channels, out_channels, num_layers)
    setting = [
        MBConvConfig(1, 3, 1, 16, 16, 1),   # 16x16, no expand conv
        MBConvConfig(4, 3, 2, 16, 24, 2),   # -> 8x8, second block residual
        MBConvConfig(4, 5, 2, 24, 40, 2),   # -> 4x4
        MBConvConfig(4, 3, 2, 40, 64, 1),   # -> 2x2
    ]
    return EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.2,
                        num_classes=NUM_CLASSES, last_channel=192)


def build_convnext():
    # Stem 4x4/4 -> 8x8, then 8, 4, 2.
    setting = [
        CNBlockConfig(32, 64, 1),
        CNBlockConfig(64, 128, 2),
        CNBlockConfig(128, None, 1),
    ]
    return ConvNeXt(setting, stochastic_depth_prob=0.1, layer_scale=0.1,
                    num_classes=NUM_CLASSES)


def build_vit():
    # 4x4 patches -> 8x8 = 64 tokens + class token.
    return VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4,
                             hidden_dim=64, mlp_dim=128, dropout=0.0,
                             attention_dropout=0.0, num_classes=NUM_CLASSES)


SWIN_CONFIG = dict(patch_size=[4, 4], embed_dim=24, depths=[2, 2, 2], num_heads=[2, 4, 8],
                   window_size=[3, 3], mlp_ratio=2.0, stochastic_depth_prob=0.1)


def build_swin():
    # Stage feature maps 8x8, 4x4, 2x2 with 3x3 windows:
    #   stage 1: 8x8 padded to 9x9, shifted blocks use shift 1
    #   stage 2: 4x4 padded to 6x6, shifted blocks use shift 1
    #   stage 3: 2x2 padded to 3x3, window covers the map so the shift is zeroed
    return SwinTransformer(num_classes=NUM_CLASSES, **SWIN_CONFIG)


BUILDERS = {
    "resnet": build_resnet,
    "mobilenet_v3": build_mobilenet_v3,
    "efficientnet": build_efficientnet,
    "convnext": build_convnext,
    "vit": build_vit,
    "swin": build_swin,
}


def build(family):
    return BUILDERS[family]()


def param_count(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    x = torch.zeros(2, *INPUT_SHAPE)
    for f in FAMILIES:
        m = build(f).eval()
        print("%-13s params %8d  out %s" % (f, param_count(m), tuple(m(x).shape)))

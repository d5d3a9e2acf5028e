"""Shared definitions of the end-to-end benchmarks: the model lists, how each model is built
(torchvision architecture, seeded random weights) and where the cached files live.

Imported by the benchmark scripts; not a script itself.
"""
import os
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
CACHE_DIR = os.path.join(BENCH_DIR, ".cache")
MODEL_DIR = os.path.join(CACHE_DIR, "models")
INPUT_DIR = os.path.join(CACHE_DIR, "inputs")
REF_DIR = os.path.join(CACHE_DIR, "ref")

# The classifiers, in the order tables list them: every script's default set.
MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
]
# The semantic segmentation models (exported with their 'out' tensor as the output, no auxiliary
# head), checked by export_models.py and check_models.py only: their input is larger and their
# output is a per-pixel map, which the timing and calibration-cost scripts do not handle.
SEGMENTATION_MODELS = [
    "lraspp_mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50",
]
ALL_MODELS = MODELS + SEGMENTATION_MODELS
# More torchvision classifiers, exported and checked on request only (`--models extra`, or by
# name, in export_models.py and check_models.py): architectures whose ops and module patterns
# the sets above lack: dense concatenation (DenseNet), inception branches and their Concat scale
# groups (GoogLeNet, Inception v3 at 299x299), channel shuffle (ShuffleNet), fire modules
# (SqueezeNet), plain VGG and AlexNet stacks, grouped bottlenecks (ResNeXt, RegNet), RegNet's
# squeeze-excitation, MobileNetV2 and V3-large, MnasNet, EfficientNetV2's fused MBConv, a
# larger ConvNeXt, ViT-B/32 and MaxViT's block and grid attention with relative position
# bias. (swin_v2_t does not export from PyTorch 1.13: aten::zero at opset 17.)
EXTRA_MODELS = [
    "alexnet",
    "vgg11_bn",
    "squeezenet1_1",
    "googlenet",
    "inception_v3",
    "densenet121",
    "shufflenet_v2_x1_0",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mnasnet0_5",
    "resnext50_32x4d",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "efficientnet_v2_s",
    "convnext_small",
    "vit_b_32",
    "maxvit_t",
    "swin_v2_t",
]
# Input shapes other than IMAGE_SHAPE, by model (each at the size of its torchvision recipe).
_IMAGE_SHAPES = {"inception_v3": (3, 299, 299), "swin_v2_t": (3, 256, 256)}
BATCHES = [1, 8]
OPSET = 17
IMAGE_SHAPE = (3, 224, 224)
# 232 = 8 x 29: the stride-8 feature maps are 29x29 and the stride-16 ones 15x15, so the bilinear
# upsamplings to a computed size have non-integer ratios (15 -> 29, 15 -> 232), as at the 520x520
# of torchvision's segmentation references (520 / 16 = 32.5), for about 7% more work than 224.
SEGMENTATION_IMAGE_SHAPE = (3, 232, 232)
WEIGHT_SEED = 0  # torch seed of the random weights (same for every model)
INPUT_SEED = 1234  # numpy seed of the fixed random inputs
CALIB_SEED = 99  # torch seed of the batch that sets BatchNorm running statistics

DEFAULT_QFORGE = os.path.join(REPO_ROOT, "build", "tools", "qforge")


def model_path(name, batch):
    return os.path.join(MODEL_DIR, f"{name}_b{batch}.onnx")


def image_shape(name):
    """The [C, H, W] of one input image of model `name`."""
    if name in SEGMENTATION_MODELS:
        return SEGMENTATION_IMAGE_SHAPE
    return _IMAGE_SHAPES.get(name, IMAGE_SHAPE)


def input_path(batch, shape=IMAGE_SHAPE):
    """The fixed input of a batch size; inputs of another image shape than the classifiers' carry
    it in the name (b8_232x232.npy)."""
    if tuple(shape) == IMAGE_SHAPE:
        return os.path.join(INPUT_DIR, f"b{batch}.npy")
    return os.path.join(INPUT_DIR, f"b{batch}_{shape[1]}x{shape[2]}.npy")


def ref_path(name, batch):
    return os.path.join(REF_DIR, f"{name}_b{batch}.npy")


def ref64_path(name, batch):
    """PyTorch's output for the same input computed in float64 (the model converted with
    .double()): how far float32 itself is from the exact result, for models where rounding
    grows through the layers."""
    return os.path.join(REF_DIR, f"{name}_b{batch}_f64.npy")


def parse_models(arg, known=None):
    """Parses a --models value ("a,b", "all" or "extra") into a list of names: "all" is
    `known` (default: the classifiers, MODELS), "extra" is EXTRA_MODELS; names come from either."""
    known = list(MODELS if known is None else known)
    if not arg or arg == "all":
        return known
    if arg == "extra":
        return list(EXTRA_MODELS)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in known and n not in EXTRA_MODELS]
    if unknown:
        sys.exit(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(known + EXTRA_MODELS)}")
    return names


def parse_batches(arg):
    try:
        batches = [int(b) for b in arg.split(",") if b.strip()]
    except ValueError:
        sys.exit(f"--batches: expected a comma-separated list of integers, got '{arg}'")
    bad = [b for b in batches if b not in BATCHES]
    if bad:
        sys.exit(f"--batches: only {BATCHES} are exported, got {bad}")
    return batches


def find_qforge(path):
    """Returns the qforge binary to use: `path` as given, else the default build location."""
    exe = path or os.environ.get("QFORGE") or DEFAULT_QFORGE
    if os.path.isdir(exe):  # a build directory, or its tools/ folder
        for cand in (os.path.join(exe, "tools", "qforge"), os.path.join(exe, "qforge")):
            if os.path.isfile(cand):
                exe = cand
                break
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        sys.exit(f"qforge binary not found at '{exe}' (build it with scripts/build, or pass --qforge)")
    return exe


def make_inputs(batch, shape=IMAGE_SHAPE):
    """The fixed random input of a batch size: rows of one seeded normal(0, 1) draw, so b1 is
    the first image of b8."""
    import numpy as np

    rng = np.random.default_rng(INPUT_SEED)
    full = rng.standard_normal((max(BATCHES),) + tuple(shape), dtype=np.float32)
    return np.ascontiguousarray(full[:batch])


def make_timing_inputs(images):
    """A larger seeded random input for timing runs (content does not matter, only shape)."""
    import numpy as np

    rng = np.random.default_rng(INPUT_SEED + 1)
    return rng.standard_normal((images,) + IMAGE_SHAPE, dtype=np.float32)


def _make_weights_realistic(model, torch, shape=IMAGE_SHAPE):
    """Moves a freshly initialised network towards the values a trained one has, so that the
    equivalence checks exercise every path: parameters initialised to zero (biases, ViT's
    class token and classifier head) get small random values; BatchNorm running statistics
    are measured on a seeded random batch (train-mode pass, cumulative average); the scales
    and shifts of BatchNorm and LayerNorm and ConvNeXt's layer scales are redrawn away from
    their initial 1/0/1e-6. Deterministic for a given seed."""
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)
    gen = torch.Generator().manual_seed(WEIGHT_SEED + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norm_types):
                continue  # redrawn below
            for pname, p in m.named_parameters(recurse=False):
                if p.any():
                    continue
                if pname == "weight" and p.dim() >= 2:  # zero-initialised layer: fan-in scaling
                    p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
        torch.manual_seed(CALIB_SEED)
        calib = torch.randn((8,) + tuple(shape))
        model.train()
        with torch.no_grad():
            model(calib)
        for m, mom in zip(bns, momenta):
            m.momentum = mom

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norm_types):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(0.75 + 0.5 * torch.rand(m.weight.shape, generator=gen))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            if hasattr(m, "layer_scale") and isinstance(m.layer_scale, torch.nn.Parameter):
                m.layer_scale.copy_(0.1 + 0.4 * torch.rand(m.layer_scale.shape, generator=gen))
    model.eval()


def build_model(name, freeze=True):
    """The torchvision model `name` with seeded random weights, in eval mode. With `freeze`
    the parameters need no gradients; ONNX export wants them unfrozen, since frozen
    attention layers take PyTorch's fused inference path, which has no ONNX export.

    A segmentation model is built without pretrained backbone weights or auxiliary head and
    wrapped so that it returns the 'out' tensor of its output dict."""
    import torch
    import torchvision

    if name not in ALL_MODELS and name not in EXTRA_MODELS:
        raise ValueError(f"unknown model {name}")
    torch.manual_seed(WEIGHT_SEED)
    if name in SEGMENTATION_MODELS:
        kwargs = {"weights": None, "weights_backbone": None}
        if name != "lraspp_mobilenet_v3_large":  # LR-ASPP has no auxiliary head
            kwargs["aux_loss"] = False

        class SegmentationOutput(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)["out"]

        model = SegmentationOutput(getattr(torchvision.models.segmentation, name)(**kwargs))
    elif name in ("googlenet", "inception_v3"):
        # Without the auxiliary classifiers, which eval mode does not run.
        model = getattr(torchvision.models, name)(weights=None, aux_logits=False, init_weights=True)
    else:
        model = getattr(torchvision.models, name)(weights=None)
    _make_weights_realistic(model, torch, image_shape(name))
    for p in model.parameters():
        p.requires_grad_(not freeze)
    return model


def machine_description():
    """CPU model name, physical cores and nproc, from lscpu and nproc."""
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    model = info.get("Model name", "unknown CPU")
    try:
        cores = int(info.get("Core(s) per socket", "0")) * int(info.get("Socket(s)", "0"))
    except ValueError:
        cores = 0
    nproc = os.cpu_count()
    try:
        nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    threads_per_core = info.get("Thread(s) per core", "?")
    return f"{model}, {cores or '?'} cores ({threads_per_core} thread(s) per core), nproc {nproc}"


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return tuple(float(x) for x in f.read().split()[:3])
    except OSError:
        return (float("nan"),) * 3

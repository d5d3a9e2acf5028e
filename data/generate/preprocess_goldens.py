#!/usr/bin/python3
"""Small images in the formats and color modes users' folders hold, and the pixels torchvision's
ImageFolder pipeline makes of them: the reference of tests/tools/io_preprocess_golden_test.cpp.

Each image is opened with PIL and put through
    convert("RGB") -> Resize(RESIZE) -> CenterCrop(CROP) -> ToTensor()
(no normalisation), as torchvision's default loader and a classification transform do. Written
to data/golden/preprocess/: the image files, <image>.npy (float32, 3 x CROP_H x CROP_W) for
each, and two headers that claim far more pixels than any decoder should allocate
(bomb.png: 100000 x 100000, bomb.jpg: 65000 x 65000, the JPEG maximum being 65535).
"""
import os
import struct
import zlib

import numpy as np
import torchvision.transforms as T
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "golden", "preprocess")
RESIZE = 20
CROP = (15, 17)  # (height, width): odd margins exercise CenterCrop's rounding of the offset


def pattern(width, height, channels, seed):
    """Smooth gradients plus a little noise: JPEG's chroma subsampling and the resampling
    filter both see structure, and every channel differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(channels):
        base = 128 + 100 * np.sin((x * (c + 1) + y * (3 - c)) / 5.0 + c)
        planes.append(base + rng.normal(0, 12, size=(height, width)))
    return np.clip(np.stack(planes, axis=-1), 0, 255).round().astype(np.uint8)


def images():
    """(file name, PIL image, save options) for every committed test image."""
    rgb = lambda w, h, s: Image.fromarray(pattern(w, h, 3, s), "RGB")
    gray = pattern(25, 19, 1, 4)[:, :, 0]
    gray16 = (pattern(21, 27, 1, 5)[:, :, 0].astype(np.uint16) * 3).astype(np.uint16)
    palette = rgb(33, 22, 6).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    palette.info["transparency"] = 3
    rgba = np.concatenate([pattern(29, 33, 3, 7), pattern(29, 33, 1, 8)], axis=-1)
    la = np.concatenate([pattern(19, 24, 1, 9), pattern(19, 24, 1, 10)], axis=-1)
    cmyk = Image.fromarray(pattern(26, 21, 4, 11), "CMYK")
    return [
        ("rgb420_37x23.jpg", rgb(37, 23, 1), dict(quality=90, subsampling=2)),
        ("rgb444_23x37.jpg", rgb(23, 37, 2), dict(quality=90, subsampling=0)),
        ("rgb422_progressive_41x30.jpg", rgb(41, 30, 3),
         dict(quality=85, subsampling=1, progressive=True)),
        ("gray_31x29.jpg", Image.fromarray(pattern(31, 29, 1, 12)[:, :, 0], "L"), dict(quality=90)),
        ("cmyk_26x21.jpg", cmyk, dict(quality=90)),
        ("rgb_37x23.png", rgb(37, 23, 13), {}),
        ("upscale_13x9.png", rgb(13, 9, 14), {}),
        ("rgba_29x33.png", Image.fromarray(rgba, "RGBA"), {}),
        ("la_19x24.png", Image.fromarray(la, "LA"), {}),
        ("gray_25x19.png", Image.fromarray(gray, "L"), {}),
        # 16-bit gray opens as mode "I"; convert("RGB") clips values above 255.
        ("gray16_21x27.png", Image.fromarray(gray16, "I;16"), {}),
        ("palette_33x22.png", palette, dict(transparency=3)),
        # Shrunk about ten times: 21 and 23 taps per output pixel (a photo's 2000 x 1500 to
        # 256 is about six).
        ("rgb420_311x205.jpg", rgb(311, 205, 15), dict(quality=90, subsampling=2)),
        ("gray_227x251.png", Image.fromarray(pattern(227, 251, 1, 16)[:, :, 0], "L"), {}),
    ]


def png_bomb():
    """A PNG whose header claims 100000 x 100000 RGB pixels, with one tiny IDAT."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 301)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bomb(small_jpeg):
    """A valid small baseline JPEG whose SOF0 frame header is rewritten to 65000 x 65000."""
    data = bytearray(small_jpeg)
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    struct.pack_into(">HH", data, sof + 5, 65000, 65000)
    return bytes(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    transform = T.Compose([T.Resize(RESIZE), T.CenterCrop(CROP), T.ToTensor()])
    for name, image, options in images():
        path = os.path.join(OUT, name)
        image.save(path, **options)
        with Image.open(path) as reopened:
            tensor = transform(reopened.convert("RGB"))
        assert tuple(tensor.shape) == (3,) + CROP, (name, tensor.shape)
        np.save(os.path.join(OUT, name + ".npy"), tensor.numpy().astype(np.float32))
    with open(os.path.join(OUT, "bomb.png"), "wb") as f:
        f.write(png_bomb())
    with open(os.path.join(OUT, "rgb420_37x23.jpg"), "rb") as f:
        small = f.read()
    with open(os.path.join(OUT, "bomb.jpg"), "wb") as f:
        f.write(jpeg_bomb(small))
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()

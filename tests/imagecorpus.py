"""Real photographs, and odd image files made from them, for tests of what users' images are: three photographs
that ship with matplotlib and scikit-learn, cut small, and a corpus of the files careful loaders must get right (CMYK,
16-bit, 32-bit and float samples, palette and alpha transparency, EXIF orientations, animation). tests/data/
test_images.py decodes each against a reference; tests/layouts.py puts one of each among a publisher's files."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageOps

W, H = 48, 40  # not square: a quarter turn shows
ORIENTATION = 0x0112


@functools.cache
def photos() -> dict[str, np.ndarray]:
    """Three real photographs that ship with matplotlib and scikit-learn, cut to W x H RGB."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        hopper = ImageOps.fit(im.convert("RGB"), (W, H))
    out = {"hopper": np.asarray(hopper)}
    for name in ("china", "flower"):
        out[name] = np.asarray(ImageOps.fit(Image.fromarray(load_sample_image(f"{name}.jpg")), (W, H)))
    return out


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def sixteen_bit() -> np.ndarray:
    """Hopper as 16-bit grey across the whole 0..65535 range, its low byte noisy (so scaling by 257 and keeping the
    high byte disagree), with 0 and 65535 both present."""
    g = luminance(photos()["hopper"])
    v = (g - g.min()) / (g.max() - g.min()) * 65535 + np.random.default_rng(0).integers(-300, 300, g.shape)
    v = np.clip(v, 0, 65535).astype(np.uint16)
    v[0, 0], v[0, 1] = 0, 65535
    return v


def alpha_ramp() -> np.ndarray:
    """Partial alpha: 0 on the left, 255 on the right, every level between."""
    a = np.linspace(0, 255, W).round().astype(np.uint8)
    return np.broadcast_to(a, (H, W)).copy()


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def with_orientation(image: Image.Image, k: int, fmt: str = "JPEG", **kw) -> bytes:
    exif = image.getexif()
    exif[ORIENTATION] = k
    return encode(image, fmt, exif=exif, **kw)


def _palette_with_transparent_index() -> bytes:
    p = Image.fromarray(photos()["china"]).quantize(32)
    common = int(np.bincount(np.asarray(p).ravel()).argmax())  # a colour many pixels have goes transparent
    return encode(p, "PNG", transparency=common)


def _animated_gif() -> bytes:
    first, second = (Image.fromarray(photos()[n]).quantize(64) for n in ("china", "flower"))
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


BUILDERS = {
    "cmyk-jpeg": (lambda: encode(Image.fromarray(photos()["hopper"]).convert("CMYK"), "JPEG", quality=95), ".jpg"),
    "gray16-png": (lambda: encode(Image.fromarray(sixteen_bit()), "PNG"), ".png"),
    "gray16-png-transparent-value": (lambda: encode(Image.fromarray(sixteen_bit()), "PNG",
                                                    transparency=int(sixteen_bit()[H // 2, W // 2])), ".png"),
    "int32-tiff": (lambda: encode(Image.fromarray((sixteen_bit().astype(np.int64) * 32768 + np.random.default_rng(1)
                                                   .integers(0, 32768, (H, W))).astype(np.int32)), "TIFF"), ".tif"),
    "int32-tiff-16-bit-values": (lambda: encode(Image.fromarray(sixteen_bit().astype(np.int32)), "TIFF"), ".tif"),
    "float-tiff-0-to-1": (lambda: encode(Image.fromarray((sixteen_bit() / 65535).astype(np.float32)), "TIFF"), ".tif"),
    "float-tiff-levels-clipped": (lambda: encode(Image.fromarray((luminance(photos()["flower"]) * 1.6 - 60)
                                                                 .astype(np.float32)), "TIFF"), ".tif"),
    "palette-png-transparent-index": (_palette_with_transparent_index, ".png"),
    "la-png": (lambda: encode(Image.fromarray(np.dstack([luminance(photos()["flower"]).round().astype(np.uint8),
                                                         alpha_ramp()]), "LA"), "PNG"), ".png"),
    "rgba-png": (lambda: encode(Image.fromarray(np.dstack([photos()["china"], alpha_ramp()]), "RGBA"), "PNG"), ".png"),
    "1-bit-png": (lambda: encode(Image.fromarray(photos()["hopper"]).convert("1"), "PNG"), ".png"),
    "gray-jpeg": (lambda: encode(Image.fromarray(photos()["hopper"]).convert("L"), "JPEG", quality=95), ".jpg"),
    "ycbcr-tiff": (lambda: encode(Image.fromarray(photos()["flower"]).convert("YCbCr"), "TIFF"), ".tif"),
    **{f"jpeg-orientation-{k}": (functools.partial(lambda k: with_orientation(Image.fromarray(photos()["hopper"]), k,
                                                                             quality=95), k), ".jpg")
       for k in range(2, 9)},
    "animated-gif": (_animated_gif, ".gif"),
    "multipage-tiff": (lambda: encode(Image.fromarray(photos()["flower"]), "TIFF", save_all=True,
                                      append_images=[Image.fromarray(photos()["china"])]), ".tif"),
}
KINDS = tuple(BUILDERS)


@functools.cache
def corpus(kind: str) -> tuple[bytes, str]:
    build, suffix = BUILDERS[kind]
    return build(), suffix


def photo(i: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """The i-th of many distinct real-looking photographs: a crop of one of the three, flipped or not, resized."""
    import numpy as np

    source = Image.fromarray(full_photos()[i % 3])
    rng = np.random.default_rng(i)
    w, h = source.size
    cw, ch = int(w * rng.uniform(0.4, 0.9)), int(h * rng.uniform(0.4, 0.9))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = source.crop((x, y, x + cw, y + ch)).resize(size)
    return ImageOps.mirror(out) if i % 2 else out


@functools.cache
def full_photos() -> tuple[np.ndarray, ...]:
    from matplotlib import cbook
    from sklearn.datasets import load_sample_image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        hopper = np.asarray(im.convert("RGB"))
    return (hopper, load_sample_image("china.jpg"), load_sample_image("flower.jpg"))

"""An opened image as the 8-bit RGB image a model should see, whatever the file held.

PIL's own `convert("RGB")` is not that: it clips 16- and 32-bit samples to 255 (a 16-bit PNG turns white),
ignores the EXIF orientation (a portrait phone photo trains sideways) and drops alpha, leaving whatever colour
the transparent pixels happen to hold. `to_rgb` decodes as a careful loader does:

- the first frame of a multi-frame image (GIF, TIFF pages);
- EXIF orientation applied (`ImageOps.exif_transpose`, as Hugging Face `datasets` does when it decodes an
  `Image()` column; the tag is removed then, so an image rotated there is not rotated twice);
- I;16, I;16B, I;16L, I;16N: 0..65535 scaled to 0..255, rounded (v * 255 / 65535: the PNG specification's
  exact sample-depth scaling; the high byte alone, v >> 8, is one level off for some values);
- I (32-bit signed): PIL opens 16-bit PNG, PGM and TIFF samples into it, so values within 0..65535 are scaled
  as 16-bit; an image with a larger value holds real 32-bit samples and is scaled by 0..2**31-1. Negative
  values are 0 (no image format stores negative light; a signed TIFF that does is clipped);
- F (32-bit float): a float image has no range in the file. If every finite value lies in [0, 1] (the
  convention of float image arrays: numpy/scikit-image, torchvision, normalised depth or HDR maps) it is
  scaled by 255; otherwise its values are taken as 0..255 levels (PIL's own convention: `convert("F")` of an
  8-bit image keeps 0..255) and clipped. An image of 0..255 levels that stays within [0, 1] is black either
  way, so the two readings never disagree on a visible image. NaN is 0, +inf 255;
- transparency (RGBA, LA, PA, RGBa, P or L or RGB with a transparent colour, a 16-bit grey PNG's transparent
  value) composited onto white: what transformers' `convert_to_rgb` does (image_transforms.py: "compositing
  any transparency onto a white background"), so a model sees what its own processor would give it; rounded
  exactly with integer arithmetic;
- CMYK, grayscale L, 1-bit, YCbCr, P, HSV, LAB, RGBX: PIL's conversion (CMYK by (255-c)(255-k)/255, with no
  colour management: an embedded ICC profile is not applied; YCbCr by the JPEG/JFIF matrix).

16-bit colour PNGs PIL reduces to 8 bits itself when it opens them (keeping each sample's high byte). A mode
PIL cannot convert raises its own error (ValueError, OSError); `rgb_of` turns that into a DataError naming the
record.

numpy and PIL only: bench/data stays free of torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
ORIENTATION = 0x0112  # EXIF tag
_SWAPS_SIDES = (5, 6, 7, 8)  # orientations that turn the image a quarter: width and height trade places
FIX = "re-save it as an 8-bit PNG or JPEG, or remove the record"


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image: `image`'s first frame, turned upright, at 8 bits, with transparency on white."""
    if image.tell():  # a multi-frame image moved past its first frame
        image.seek(0)
    image.load()
    opened = image
    if _orientation(image) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT or image.mode in ("I", "F"):
        grey = _high_depth_to_8_bits(image)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if _has_alpha(image):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        return Image.fromarray(_on_white(rgba[..., :3], rgba[..., 3:]), "RGB")
    if image.mode == "RGB" and image is not opened:
        return image  # turned: a new image already
    return image.convert("RGB")  # a copy when it is RGB already: the caller's file can be closed


def seen_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as `to_rgb` will give it, from the header alone: swapped for EXIF orientations 5 to 8.
    A PNG whose EXIF chunk comes after its pixels (rare) is taken as upright here, since finding that chunk
    would decode the pixels."""
    width, height = image.size
    # Image.getexif, not PngImageFile.getexif: that one decodes the pixels to look for an eXIf chunk behind them
    orientation = Image.Image.getexif(image).get(ORIENTATION, 1)
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


# how a whole file of a format ends: a file cut short (an interrupted copy or download, the most common broken image)
# lacks it, and is found when validation reads its header and tail rather than when a batch decodes it. JPEG's EOI
# marker cannot occur inside its entropy-coded data (0xFF is stuffed there), and may be followed by a little data
# (some cameras write it); PNG's IEND chunk, its CRC constant, is its last 12 bytes; GIF's trailer is its last byte
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b";"}
TAIL_BYTES = 1024


def ends_whole(fmt: str | None, tail: bytes) -> bool:
    """Whether a file of PIL format `fmt` whose last TAIL_BYTES are `tail` ends as a whole file of its format does;
    True for formats without such a marker."""
    marker = END_MARKERS.get(fmt or "")
    if marker is None:
        return True
    if fmt == "JPEG":
        return marker in tail
    return tail.rstrip(b"\x00").endswith(marker)  # zero padding after the end is harmless


def rgb_of(image: Image.Image, *, file: str, where: str, fix: str = FIX) -> Image.Image:
    """`to_rgb` of an image already in memory (a Hugging Face `datasets` column), its failure an UnreadableImage (a
    DataError: bench/data/problems.py counts the record as one)."""
    from bench.data.problems import UnreadableImage

    try:
        return to_rgb(image)
    except Exception as e:  # PIL raises ValueError (no conversion for a mode) or OSError (a truncated file)
        raise UnreadableImage(f"image (PIL mode {getattr(image, 'mode', '?')!r}) cannot be read as RGB: "
                              f"{type(e).__name__}: {e}", file=file, where=where, fix=fix) from None


def _orientation(image: Image.Image) -> int:
    value = image.getexif().get(ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def _has_alpha(image: Image.Image) -> bool:
    if {"A", "a"} & set(image.getbands()) or image.info.get("transparency") is not None:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """round((c * a + 255 * (255 - a)) / 255) for uint32 arrays: 255 is odd, so a quotient is never exactly half."""
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _high_depth_to_8_bits(image: Image.Image) -> np.ndarray:
    """The 0..255 grey levels of an I;16*, I or F image (the rules in the module's docstring)."""
    raw = np.asarray(image)
    if image.mode == "F":
        values = raw.astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and 0.0 <= finite.min() and finite.max() <= 1.0:
            values = values * 255.0
        return np.nan_to_num(np.clip(np.rint(values), 0, 255), nan=0.0).astype(np.uint8)
    values = np.maximum(raw.astype(np.int64), 0)
    top = 2**31 - 1 if image.mode == "I" and values.size and values.max() > 65535 else 65535
    grey = ((values * 255 + top // 2) // top).astype(np.uint8)  # round(v * 255 / top): `top` is odd, no ties
    transparent = image.info.get("transparency")  # a 16-bit grey PNG's tRNS: one sample value
    if isinstance(transparent, int) and not isinstance(transparent, bool):
        grey[raw == transparent] = 255  # onto white, as the alpha above
    return grey

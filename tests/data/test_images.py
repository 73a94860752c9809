"""Images decode as a careful loader would (bench/data/images.py): a corpus of odd files made from real photographs,
each compared pixel for pixel with a reference decode written here in numpy, along the three paths a user's images
take: a file on disk, encoded bytes (as Hugging Face datasets hold them) and a PIL image as `datasets.Image()` decodes
it. The reference reads the stored samples with PIL (`np.asarray` of the opened file, in its own mode) and does
everything else itself: 16/32-bit and float scaling, palette lookup, alpha over white, CMYK, orientation."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from conftest import HAS_DATASETS, raises_at
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from imagecorpus import KINDS, ORIENTATION, H, W, alpha_ramp, corpus, photos, sixteen_bit, with_orientation
from PIL import Image, ImageOps

from bench.data import formats
from bench.data.formats import Record
from bench.data.sample import ImageFile, Sample

WHERE = "record 0, field 'image'"
PATHS = ("file", "bytes", "memory")


# PIL's YCbCr -> RGB is fixed-point: up to one level from the exact JFIF matrix the reference uses
TOLERANCE = {"ycbcr-tiff": 1}
# kinds PIL's plain convert("RGB") already decodes right; every other kind is one it gets wrong
PLAIN_IS_RIGHT = {"cmyk-jpeg", "1-bit-png", "gray-jpeg", "ycbcr-tiff", "animated-gif", "multipage-tiff"}


# ---------------------------------------------------------------- the reference decode, numpy


def oriented(a: np.ndarray, k: int) -> np.ndarray:
    """The EXIF orientation `k` undone: TIFF 6.0's eight orientations as numpy flips and turns."""
    return {1: lambda: a, 2: lambda: a[:, ::-1], 3: lambda: a[::-1, ::-1], 4: lambda: a[::-1],
            5: lambda: a.swapaxes(0, 1), 6: lambda: np.rot90(a, -1), 7: lambda: np.rot90(a, 2).swapaxes(0, 1),
            8: lambda: np.rot90(a, 1)}[k]()


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255.0 * (1 - a))


def grey(levels: np.ndarray) -> np.ndarray:
    return np.repeat(levels[..., None], 3, axis=2)


def reference(data: bytes) -> np.ndarray:
    """The 8-bit RGB pixels a model should see, from the samples PIL reads for the file's first frame."""
    with Image.open(io.BytesIO(data)) as im:
        mode, info, raw = im.mode, dict(im.info), np.asarray(im)
        orientation = im.getexif().get(ORIENTATION, 1)
        palette = np.array(im.getpalette("RGB"), np.float64).reshape(-1, 3) if mode in ("P", "PA") else None
    t = info.get("transparency")
    if mode == "RGB":
        out = raw.astype(np.float64)
    elif mode == "L":
        out = grey(raw.astype(np.float64))
    elif mode == "1":
        out = grey(raw.astype(np.float64) * 255)
    elif mode == "CMYK":
        c = raw.astype(np.float64)
        out = np.rint((255 - c[..., :3]) * (255 - c[..., 3:]) / 255)
    elif mode == "YCbCr":
        y, cb, cr = (raw[..., i].astype(np.float64) for i in range(3))
        out = np.clip(np.rint(np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                                        y + 1.772 * (cb - 128)], axis=-1)), 0, 255)
    elif mode.startswith("I;16"):
        levels = np.rint(raw.astype(np.float64) / 257)  # 65535 / 255 = 257
        if t is not None:
            levels[raw == t] = 255
        out = grey(levels)
    elif mode == "I":
        v = np.maximum(raw.astype(np.float64), 0)
        out = grey(np.rint(v * 255 / (2**31 - 1)) if v.max() > 65535 else np.rint(v / 257))
    elif mode == "F":
        v = raw.astype(np.float64)
        if 0 <= v.min() and v.max() <= 1:
            v = v * 255
        out = grey(np.clip(np.rint(v), 0, 255))
    elif mode == "P":
        out = palette[raw]
        if isinstance(t, int):
            out = on_white(out, np.where(raw == t, 0, 255))
        elif isinstance(t, bytes):
            alpha = np.frombuffer(t, np.uint8)
            out = on_white(out, np.concatenate([alpha, np.full(256 - len(alpha), 255, np.uint8)])[raw])
    elif mode == "PA":
        out = on_white(palette[raw[..., 0]], raw[..., 1])
    elif mode == "LA":
        out = on_white(grey(raw[..., 0].astype(np.float64)), raw[..., 1])
    elif mode == "RGBA":
        out = on_white(raw[..., :3].astype(np.float64), raw[..., 3])
    else:
        raise AssertionError(f"no reference decode for mode {mode}")
    return oriented(out.astype(np.uint8), orientation)


# ---------------------------------------------------------------- the three paths


def decode(data: bytes, suffix: str, path: str, folder) -> Image.Image:
    """The image a Sample gives a batch: from a file on disk, from encoded bytes, or from an in-memory PIL image as a
    Hugging Face `datasets.Image()` column decodes it (through formats.image_of, as read_hf's records go)."""
    if path == "file":
        file = folder / f"image{suffix}"
        file.write_bytes(data)
        return Sample(ImageFile(str(file), "data.json", WHERE)).decoded().image
    if path == "bytes":
        return Sample(ImageFile(data, "data.json", WHERE)).decoded().image
    if not HAS_DATASETS:
        pytest.skip("`datasets` is not installed")
    import datasets

    return formats.image_of(Record("data.json", "record 0", datasets.Image().decode_example({"path": None, "bytes": data})))


def assert_same(got: Image.Image, expected: np.ndarray, tolerance: int = 0):
    assert got.mode == "RGB"
    assert got.size == (expected.shape[1], expected.shape[0])
    np.testing.assert_allclose(np.asarray(got, np.int64), expected.astype(np.int64), rtol=0, atol=tolerance)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_odd_file_decodes_as_the_reference_along_every_path(kind, path, tmp_path):
    data, suffix = corpus(kind)
    assert_same(decode(data, suffix, path, tmp_path), reference(data), TOLERANCE.get(kind, 0))


@pytest.mark.parametrize("kind", KINDS)
def test_the_corpus_is_odd_where_it_should_be(kind):
    """Each kind but the few PIL gets right on its own is one plain convert("RGB") decodes wrong: white 16-bit,
    sideways photos, hidden colours under transparency."""
    data, _ = corpus(kind)
    with Image.open(io.BytesIO(data)) as im:
        plain = np.asarray(im.convert("RGB"))
    expected = reference(data)
    same = plain.shape == expected.shape and np.abs(plain.astype(int) - expected).max() <= TOLERANCE.get(kind, 0)
    assert same == (kind in PLAIN_IS_RIGHT)


def test_the_corpus_uses_what_it_claims():
    """The odd files are what their names say once PIL opens them (a silent fallback would hide a case)."""
    modes = {kind: Image.open(io.BytesIO(corpus(kind)[0])).mode for kind in KINDS}
    assert modes["cmyk-jpeg"] == "CMYK" and modes["gray16-png"] == "I;16" and modes["int32-tiff"] == "I"
    assert modes["float-tiff-0-to-1"] == modes["float-tiff-levels-clipped"] == "F" and modes["ycbcr-tiff"] == "YCbCr"
    assert modes["palette-png-transparent-index"] == "P" and modes["la-png"] == "LA" and modes["rgba-png"] == "RGBA"
    assert modes["1-bit-png"] == "1" and modes["gray-jpeg"] == "L"
    values = sixteen_bit()
    assert values.min() == 0 and values.max() == 65535 and (values > 255).mean() > 0.9
    assert np.asarray(Image.open(io.BytesIO(corpus("int32-tiff")[0]))).max() > 2**30
    levels = np.asarray(Image.open(io.BytesIO(corpus("float-tiff-levels-clipped")[0])))
    assert levels.min() < 0 and levels.max() > 255
    alpha = alpha_ramp()
    assert alpha.min() == 0 and alpha.max() == 255 and len(np.unique(alpha)) > 40
    for kind in ("animated-gif", "multipage-tiff"):
        with Image.open(io.BytesIO(corpus(kind)[0])) as im:
            first = np.asarray(im.convert("RGB"))
            im.seek(1)
            assert im.n_frames == 2 and not np.array_equal(first, np.asarray(im.convert("RGB")))
    for k in range(2, 9):
        with Image.open(io.BytesIO(corpus(f"jpeg-orientation-{k}")[0])) as im:
            assert im.getexif()[ORIENTATION] == k


@pytest.mark.parametrize("k", range(1, 9))
def test_the_references_orientations_are_pils_exif_transpose(k):
    data = with_orientation(Image.fromarray(photos()["hopper"]), k, quality=95)
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im)), oriented(np.asarray(im), k))


@pytest.mark.parametrize("kind", KINDS)
def test_header_size_is_the_size_the_model_sees(kind, tmp_path):
    data, suffix = corpus(kind)
    (tmp_path / f"image{suffix}").write_bytes(data)
    for image in (ImageFile(data, "data.json", WHERE), ImageFile(str(tmp_path / f"image{suffix}"), "data.json", WHERE)):
        turned = kind in {f"jpeg-orientation-{k}" for k in (5, 6, 7, 8)}
        assert image.header_size() == image.open().size == ((H, W) if turned else (W, H))


@pytest.mark.parametrize("path", ("bytes", "memory"))
@settings(max_examples=25, deadline=None)
@given(values=hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=7)),
       orientation=st.integers(1, 8))
def test_any_16_bit_image_in_any_orientation_decodes_as_the_reference(path, values, orientation):
    data = with_orientation(Image.fromarray(values), orientation, "PNG")
    got = decode(data, ".png", path, None)
    expected = oriented(grey(np.rint(values / 257.0).astype(np.uint8)), orientation)
    assert_same(got, expected)
    np.testing.assert_array_equal(reference(data), expected)  # the corpus's reference agrees on these too


@pytest.mark.parametrize(("mode", "values", "levels"), [
    # 16-bit: round(v / 257), so 128 -> 0 but 129 -> 1, 32767 -> 127 but 32768 -> 128
    ("I;16", [0, 128, 129, 257, 32767, 32768, 65535], [0, 0, 1, 1, 127, 128, 255]),
    ("I", [-5, 0, 129, 65535], [0, 0, 1, 255]),  # values within 0..65535: 16-bit samples; negative is 0
    ("I", [-5, 65536, 2**30, 2**31 - 1], [0, 0, 128, 255]),  # a value past 65535: 32-bit samples
    ("F", [0.0, 0.2, 0.5, 1.0, float("nan"), float("inf")], [0, 51, 128, 255, 0, 255]),  # within [0, 1]: x 255
    ("F", [-3.0, 0.0, 2.0, 127.4, 254.6, 300.0, float("nan")], [0, 0, 2, 127, 255, 255, 0]),  # 0..255 levels, clipped
])
def test_the_documented_rules_for_high_depth_images(mode, values, levels):
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(np.array([values], dtype=dtype))
    assert image.mode == mode
    got = formats.image_of(Record("data.json", "record 0", image))
    np.testing.assert_array_equal(np.asarray(got), grey(np.array([levels], np.uint8)))


def test_in_memory_images_with_alpha_a_later_frame_or_a_turn_decode_as_the_reference():
    """Modes no file format in the corpus stores (PA, premultiplied RGBa), a GIF and a TIFF moved to their second frame, and an
    image whose orientation tag `datasets` did not apply (an older `datasets`, or a PIL image made by hand)."""
    p = Image.fromarray(photos()["china"]).quantize(32)
    pa = p.convert("PA")
    pa.putalpha(Image.fromarray(alpha_ramp()))
    pal = np.array(pa.getpalette("RGB"), np.float64).reshape(-1, 3)
    raw = np.asarray(pa)
    assert_same(formats.image_of(Record("d", "r", pa)), on_white(pal[raw[..., 0]], raw[..., 1]).astype(np.uint8))

    rgba = Image.fromarray(np.dstack([photos()["flower"], np.full((H, W), 255, np.uint8)]), "RGBA")
    assert_same(formats.image_of(Record("d", "r", rgba.convert("RGBa"))), photos()["flower"])

    for kind in ("animated-gif", "multipage-tiff"):
        frames = Image.open(io.BytesIO(corpus(kind)[0]))
        frames.seek(1)
        assert_same(formats.image_of(Record("d", "r", frames)), reference(corpus(kind)[0]))

    turned = Image.open(io.BytesIO(corpus("jpeg-orientation-6")[0]))
    assert_same(formats.image_of(Record("d", "r", turned)), reference(corpus("jpeg-orientation-6")[0]))


def test_an_image_pil_cannot_convert_names_the_record():
    la = Image.new("La", (4, 3))  # premultiplied grey + alpha: PIL has no conversion to RGB for it
    error = raises_at(lambda: formats.image_of(Record("data.json", "record 7", la)), "data.json", "record 7", "field 'image'",
                      "'La'")
    assert "PNG or JPEG" in error.fix
    raises_at(lambda: ImageFile(corpus("gray16-png")[0][:200], "data.json", WHERE).open(), "data.json", WHERE)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", ["gray16-png", "jpeg-orientation-6"])
def test_the_models_processor_sees_the_reference_image(kind):
    """The tiny LLaVA preset's own processor makes the same pixel_values from a Sample's image as from the reference
    decode, and different ones from PIL's plain convert("RGB")."""
    import torch

    data, _ = corpus(kind)
    processor = tiny_llava_processor()
    text = ["USER: <image>\nwhat is in the picture? ASSISTANT:"]

    def pixels(image):
        return processor(images=[image], text=text, return_tensors="pt")["pixel_values"]

    seen = pixels(Sample(ImageFile(data, "data.json", WHERE)).decoded().image)
    assert torch.equal(seen, pixels(Image.fromarray(reference(data))))
    with Image.open(io.BytesIO(data)) as im:
        assert not torch.equal(seen, pixels(im.convert("RGB")))


@functools.cache
def tiny_llava_processor():
    """What bench builds for the tiny LLaVA preset (bench/models/llava.py's Arch.tiny_processor), without the model."""
    from bench.models import llava

    vision = llava.PRESETS["tiny"]["vision_config"]
    return llava.tiny_processor(vision["image_size"], vision["patch_size"])


@pytest.mark.parametrize("kind", ["gray-jpeg", "rgba-png", "animated-gif", "jpeg-orientation-6"])
@pytest.mark.parametrize("path", ["file", "bytes"])
def test_a_file_cut_short_is_found_by_its_header_and_tail_and_a_whole_one_is_not(kind, path, tmp_path):
    """Validation reads a header and the file's last bytes: an interrupted copy (no JPEG EOI, PNG IEND or GIF
    trailer) is an unreadable image before anything trains; a whole file, even with bytes after its end marker
    (some cameras write them), is not."""
    data, suffix = corpus(kind)

    def image(content: bytes) -> ImageFile:
        if path == "bytes":
            return ImageFile(content, "data.json", WHERE)
        file = tmp_path / f"{len(content)}{suffix}"
        file.write_bytes(content)
        return ImageFile(str(file), "data.json", WHERE)

    assert image(data).header_size()[0] > 0
    if suffix == ".jpg":
        assert image(data + b"\0" * 100).header_size()[0] > 0
    for cut in (len(data) // 2, len(data) - 3):
        error = raises_at(lambda c=cut: image(data[:c]).header_size(), "data.json", WHERE)
        assert "cut short" in error.message or "truncated" in error.message
        assert "whole copy" in error.fix

"""The one shape every dataset format is loaded into, whatever its file layout.

A sample's image is either a decoded PIL image (the generated datasets, a few hundred small images)
or an `ImageFile`: where to read it, opened only when a batch needs it (in a DataLoader worker,
bench/data/stream.py), so a dataset of 100k images costs its records' text, not its pixels.

A task (classification, caption, vqa, preference) reads only the fields it needs:
- classification: image, label (index into DatasetSplits.classnames)
- caption: image, captions (one or more references; training uses the first)
- vqa: image, turns ((user, assistant) pairs, trained with the user side masked),
       question and answers (the evaluation prompt and its reference answers)
- preference: image, question (the prompt), answers = (chosen,) and rejected: a preferred and a dispreferred
       answer to the same prompt (turns = ((prompt, chosen),), so the chosen answer also trains as plain SFT)
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field

from bench.data.problems import UnreadableImage
from bench.errors import DataError

TASKS = ("classification", "caption", "vqa", "preference")


UNREADABLE_FIX = ('replace the file with a whole copy (it is cut short or corrupt), or remove the record, or set '
                  'on_bad_sample = "skip" to leave it out')


@dataclass(frozen=True, slots=True)  # slots: 100k of them are held by the runner, the cell and each worker
class ImageFile:
    """An image not read yet: a path (a str: a Path object costs ~0.5 kB more) or encoded bytes, and where the data
    file names it, for error messages."""

    source: str | bytes
    file: str  # the data file (or folder) that names the image
    where: str  # e.g. "record 3, field 'image'"

    def open(self):
        """The image as 8-bit RGB PIL, fully decoded as a model should see it (upright, 16-bit scaled, transparency on
        white: bench/data/images.py); a DataError naming the data file, record and image if it cannot be."""
        from bench.data.images import to_rgb

        return self._read(to_rgb, fix=UNREADABLE_FIX)

    def header_size(self) -> tuple[int, int]:
        """(width, height) as the model will see it (turned by the EXIF orientation), from the header, as validation
        checks it, with the file's last bytes: a JPEG, PNG or GIF cut short is unreadable too. The pixels are not
        decoded (an image corrupt inside a whole file is found when a batch decodes it)."""
        from bench.data.images import TAIL_BYTES, ends_whole, seen_size

        def whole(im):
            size = seen_size(im)
            if not ends_whole(im.format, self._tail(TAIL_BYTES)):
                raise OSError(f"the {im.format} file is cut short: it does not end with its format's end marker")
            return size

        return self._read(whole, fix=UNREADABLE_FIX)

    def _tail(self, n: int) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[-n:]
        with open(self.source, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - n))
            return f.read()

    def _read(self, use, *, fix: str):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source) as im:
                return use(im)
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError or DecompressionBombError
            name = f" {self.source!r}" if isinstance(self.source, str) else ""
            raise UnreadableImage(f"image{name} cannot be read: {type(e).__name__}: {e}", file=self.file,
                                  where=self.where, fix=fix) from None


@dataclass(frozen=True, slots=True)
class Sample:
    image: object  # an RGB PIL image, or an ImageFile read when needed (see `decoded`)
    label: int | None = None
    captions: tuple[str, ...] = ()
    question: str | None = None
    answers: tuple[str, ...] = ()
    turns: tuple[tuple[str, str], ...] = ()
    rejected: str | None = None  # preference: the dispreferred answer to `question` (answers[0] is the chosen one)

    def decoded(self) -> Sample:
        """This sample with its image as PIL (read now if it is an ImageFile)."""
        return dataclasses.replace(self, image=self.image.open()) if isinstance(self.image, ImageFile) else self


def readable(samples, n: int, *, skip: bool) -> list[Sample]:
    """The first `n` samples with their images read (`Sample.decoded`), for work outside the batch stream (serving's
    requests): with `skip`, a sample whose image cannot be read is passed over, as the stream leaves it out; else its
    DataError is raised."""
    out = []
    for sample in samples:
        if len(out) == n:
            break
        try:
            out.append(sample.decoded())
        except DataError:
            if not skip:
                raise
    return out


def held_bytes(samples) -> int:
    """Bytes of image data a list of samples holds in memory: decoded pixels, or an image file's encoded bytes (a path
    holds none). Their text is left out: a few dozen bytes a sample."""
    return sum(image_bytes(s.image) for s in samples)


def image_bytes(image) -> int:
    """Bytes one image holds in memory: a PIL image's decoded pixels, an image file's encoded bytes (a path: none)."""
    if isinstance(image, ImageFile):
        return len(image.source) if isinstance(image.source, bytes) else 0
    if hasattr(image, "size") and hasattr(image, "getbands"):  # PIL
        return image.size[0] * image.size[1] * len(image.getbands())
    return 0


@dataclass(frozen=True)
class DatasetSplits:
    task: str  # one of TASKS
    train: list[Sample]
    eval: list[Sample]
    classnames: tuple[str, ...] = ()
    fingerprint: str = ""  # content hash of the loaded data, stored in records for provenance
    info: dict = field(default_factory=dict)  # free-form provenance (source, sizes, split names)
    # the metric the data's own benchmark scores answers with, e.g. "relaxed_accuracy" for ChartQA-style data;
    # "" = the task's default
    answer_metric: str = ""

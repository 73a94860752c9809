"""From records to what a cell reads: each record's image as a Sample holds it (read when a batch needs it), the image
headers checked, class names sorted, and the loaded dataset's content fingerprint."""

from __future__ import annotations

import hashlib
import json
import os

from bench.data.formats.common import Record, fail
from bench.data.problems import Problems, UnreadableImage


def image_of(record: Record):
    """What a Sample holds for the record's image: a PIL image as the model will see it (bench/data/images.py), a path
    or bytes as an ImageFile read later."""
    from bench.data.sample import ImageFile

    where = f"{record.where}, field '{record.image_field}'"
    if hasattr(record.image, "convert"):
        from bench.data.images import rgb_of

        return rgb_of(record.image, file=record.file, where=where)
    source = record.image if isinstance(record.image, bytes) else str(record.image)
    return ImageFile(source, record.file, where)


def check_images(records: list[Record], problems: Problems | None = None) -> list[Record]:
    """The records whose image header is readable as an image (its format and size); the others are `problems`
    (raised at once without). The pixels are decoded only when a batch needs them, so a file that is cut short or
    corrupt past its header is found then (bench/data/stream.py)."""
    problems = problems or Problems(strict=True)
    readable = []
    for record in records:
        with problems.record():
            image = image_of(record)
            if not hasattr(image, "convert"):
                width, height = image.header_size()
                if not width or not height:
                    fail(f"image {str(image.source)!r} has no pixels ({width}×{height})", file=record.file,
                         where=image.where, fix="re-save it, or remove the record", kind=UnreadableImage)
            readable.append(record)
    return readable


def to_samples(records: list[Record], classnames: tuple[str, ...] = ()):
    from bench.data.sample import Sample

    index = {name: i for i, name in enumerate(classnames)}
    return [
        Sample(
            image=image_of(r),
            label=index[r.label] if r.label is not None else None,
            captions=r.captions,
            question=r.question,
            answers=r.answers,
            turns=r.turns,
            rejected=r.rejected,
        )
        for r in records
    ]


def sorted_classnames(labels) -> tuple[str, ...]:
    """Sorted class names; all-numeric names sort as numbers ("2" before "10")."""
    names = set(labels)
    if all(n.isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def fingerprint(task: str, train, eval, classnames=()) -> str:
    """A hash of a loaded dataset, stored in records for provenance: every sample's labels and texts, and its image —
    the pixels of an in-memory image, the bytes of an encoded one, and for an image file its path, size and
    modification time (not its content: hashing 100k images on every run would cost minutes)."""
    from bench.data.sample import ImageFile

    h = hashlib.sha256(json.dumps([task, list(classnames)]).encode())
    for part, samples in (("train", train), ("eval", eval)):
        h.update(f"|{part}:{len(samples)}|".encode())
        for s in samples:
            image = s.image
            if isinstance(image, ImageFile) and isinstance(image.source, bytes):
                h.update(image.source)
            elif isinstance(image, ImageFile):
                # the path's own bytes: a name that is not UTF-8 (lone surrogates in the str) hashes as it is on disk
                try:
                    where = os.fsencode(image.source)
                except UnicodeEncodeError:  # a lone surrogate no file system name has (from a data file's text)
                    where = str(image.source).encode("utf-8", "surrogatepass")
                try:
                    st = os.stat(image.source)
                    h.update(where + f"|{st.st_size}|{st.st_mtime_ns}".encode())
                except (OSError, ValueError):
                    h.update(where + b"|missing")
            else:
                h.update(f"{image.mode}{image.size}".encode())
                h.update(image.tobytes())
            texts = [s.label, s.captions, s.question, s.answers, s.turns]
            # a rejected answer is hashed only where there is one: the fingerprints of other data stay as they were
            h.update(json.dumps(texts if s.rejected is None else texts + [s.rejected]).encode())
    return h.hexdigest()[:16]


def dataset_splits(task: str, train, evals, classnames, info: dict, answer_metric: str = ""):
    """The loaded DatasetSplits: its content fingerprint computed, the split sizes appended to `info`."""
    from bench.data.sample import DatasetSplits

    return DatasetSplits(
        task=task,
        train=train,
        eval=evals,
        classnames=classnames,
        fingerprint=fingerprint(task, train, evals, classnames),
        info={**info, "n_train": len(train), "n_eval": len(evals)},
        answer_metric=answer_metric,
    )

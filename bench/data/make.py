"""Datasets of any size on disk, made from the bundled scenes, in each on-disk format bench reads.

`bench data make scenes --n 50000 --format coco_captions --out DIR` renders N scenes (the same
generator as the in-memory `scenes` format, so the same questions, captions and labels) to image
files and writes the data file beside them. Rendering and encoding run in a process pool; nothing
is kept in memory but the current chunk. Only DIR is written, and DIR must be new or empty.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from pathlib import Path

from bench.errors import BenchError, OutputError
from bench.keyspec import SEED_MAX
from bench.paths import remove_written

# format -> (the task view it holds, its data file in DIR; None for an image folder)
MAKE_FORMATS = {
    "coco_captions": ("caption", "captions.json"),
    "llava": ("vqa", "llava.json"),
    "vqa_jsonl": ("vqa", "vqa.jsonl"),
    "csv": ("classification", "labels.csv"),
    "image_folder": ("classification", None),
}
IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG"}
_CHUNK = 256  # scenes per task handed to a pool worker
MAX_PROCESSES = 1024


def make_scenes(out: str | Path, *, n: int, fmt: str, image_size: int = 224, split: str = "target", seed: int = 0,
                image_format: str = "jpg", processes: int | None = None, on_progress=None) -> Path:
    """Write n scenes to `out` in `fmt`; returns the path a suite's `path` key names (the data file, or the folder)."""
    from bench.data.scenes import SPLITS, generate_scenes

    if fmt not in MAKE_FORMATS:
        raise BenchError(f"unknown format {fmt!r}", where="--format", fix=f"use one of {', '.join(MAKE_FORMATS)}")
    if image_format not in IMAGE_FORMATS:
        raise BenchError(f"unknown image format {image_format!r}", where="--image-format", fix="use jpg or png")
    if split not in SPLITS:
        raise BenchError(f"unknown split {split!r}", where="--split", fix=f"use one of {', '.join(SPLITS)}")
    if not 1 <= n <= 10**7 or not 8 <= image_size <= 1024:
        raise BenchError(f"--n {n} / --image-size {image_size} out of range", fix="1 ≤ n ≤ 10,000,000 and 8 ≤ image size ≤ 1,024")
    for flag, value, most in (("--seed", seed, SEED_MAX), ("--processes", processes, MAX_PROCESSES)):
        least = 0 if flag == "--seed" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most):
            raise BenchError(f"{flag} {value} is out of range", where=flag, fix=f"give a whole number from {least} to {most:,}"
                             + (" (or leave it out: the usable cores)" if flag == "--processes" else ""))
    out = Path(out)
    made = not out.exists() and not out.is_symlink()
    out = _empty_folder(out)
    task, data_file = MAKE_FORMATS[fmt]
    scenes = generate_scenes(n, split=split, seed=seed, part="train")
    jobs = [(start, scenes[start:start + _CHUNK], fmt, image_size, image_format, str(out))
            for start in range(0, n, _CHUNK)]
    rows: list[dict] = []
    import multiprocessing

    processes = processes or len(os.sched_getaffinity(0))
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for chunk_rows in pool.imap(_render_chunk, jobs):
                rows += chunk_rows
                if on_progress:
                    on_progress(len(rows), n)
        if data_file is None:
            return out
        target = out / data_file
        _write_data_file(target, fmt, rows)
    except OSError as exc:  # a full disk, a folder gone read-only: nothing half-made is left behind
        remove_written(out, made)
        done = f"after {len(rows):,} of {n:,} images; what was written is removed"
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"the disk holding --out {out} is full (ENOSPC) {done}", where="--out",
                              fix="free space or choose a folder on another disk (a smaller --n or --image-size needs "
                                  "less)") from None
        raise OutputError(f"writing into --out {out} failed ({exc.strerror or exc}) {done}", where="--out",
                          fix="choose a folder you can write") from None
    return target


def _empty_folder(out: Path) -> Path:
    """--out as a new or empty folder, made: never through a link, never under a file (exit 2 naming --out)."""
    fix = "name a new folder; bench data make never writes over files"
    if out.is_symlink():
        raise BenchError(f"{out} is a symbolic link; bench data make writes through no link", where="--out", fix=fix)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BenchError(f"{out} exists and is not an empty folder", where="--out", fix=fix)
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        above = next((p for p in out.absolute().parents if p.exists() or p.is_symlink()), None)
        why = (f"it lies under {above}, which is not a folder" if above is not None and not above.is_dir()
               else f"it cannot be made ({exc.strerror or exc})")
        raise BenchError(f"--out {out}: {why}", where="--out", fix="name a new folder in a folder you can write") from None
    return out


def _render_chunk(job) -> list[dict]:
    """Render and save one chunk of scenes; the rows the data file needs, in order."""
    from bench.data.scenes import captions, question_answers, render

    start, scenes, fmt, image_size, image_format, out = job
    rows = []
    for offset, scene in enumerate(scenes):
        i = start + offset
        folder = scene.shape if fmt == "image_folder" else "images"
        name = f"{folder}/{i:07d}.{image_format}"
        path = Path(out) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        render(scene, image_size).save(buffer, IMAGE_FORMATS[image_format], **({"quality": 90} if image_format == "jpg" else {}))
        _save_image(path, buffer.getvalue())
        question, answers = question_answers(scene)
        rows.append({"id": i, "image": name, "label": scene.shape, "captions": list(captions(scene)),
                     "question": question, "answers": list(answers)})
    return rows


def _save_image(path: Path, data: bytes) -> None:
    """One encoded image written (a pool worker's only write; its OSError reaches make_scenes)."""
    path.write_bytes(data)


def _write_data_file(target: Path, fmt: str, rows: list[dict]) -> None:
    tmp = target.with_name(target.name + ".partial")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if fmt == "coco_captions":
            json.dump({"images": [{"id": r["id"], "file_name": r["image"]} for r in rows],
                       "annotations": [{"id": r["id"] * 10 + k, "image_id": r["id"], "caption": c}
                                       for r in rows for k, c in enumerate(r["captions"])]}, f)
        elif fmt == "llava":
            json.dump([{"id": r["id"], "image": r["image"], "conversations": [
                {"from": "human", "value": f"<image>\n{r['question']}"},
                {"from": "gpt", "value": r["answers"][0]}]} for r in rows], f)
        elif fmt == "vqa_jsonl":
            for r in rows:
                f.write(json.dumps({"image": r["image"], "question": r["question"], "answers": r["answers"]}) + "\n")
        else:  # csv
            writer = csv.writer(f)
            writer.writerow(["image", "label"])
            writer.writerows([r["image"], r["label"]] for r in rows)
    tmp.replace(target)

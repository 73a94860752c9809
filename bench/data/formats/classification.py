"""Classification data: an image folder (root/<class>/<image>) and a CSV of image,label rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from bench.data.formats.common import IMAGE_EXTENSIONS, Record, fail, inside_root, located, read_text, resolve_image
from bench.data.problems import Problems


def read_image_folder(root: str | Path) -> list[Record]:
    """root/<class>/<image>.png|jpg -> classification records, classes and files in sorted order."""
    root = Path(root)
    file = str(root)
    if not root.is_dir():
        fail("folder does not exist" if not root.exists() else "is a file, not a folder", file=file,
              fix="point `path` at a folder laid out as <class>/<image>.png")

    def shown_name(name: str) -> str:  # a name that is not UTF-8 (lone surrogates, as os.fsdecode keeps it): \xNN
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    # a name that is not valid UTF-8 (its bytes kept by Python as lone surrogates) is shown, labelled and recorded with
    # those bytes escaped (the folder b"cat\xff" is the class cat\xff): a lone surrogate cannot be hashed, written to
    # JSON as UTF-8 or printed
    names = {d: shown_name(d.name) for d in classes}
    for d in classes:
        if not inside_root(d, root):
            fail("class folder is a symbolic link that leads outside the dataset folder", file=file,
                 where=f"class '{names[d]}'", fix="copy the images into the dataset folder")
    if not classes:
        fail("has no class folders", file=file, fix="lay images out as path/<class name>/<image>.png")
    seen: dict[str, Path] = {}
    for d in classes:
        if names[d] in seen:  # b"cat\xff" (an undecodable byte) and a folder typed as cat\xff read as one class
            fail(f"class folders '{shown_name(seen[names[d]].name)}' and '{names[d]}' have the same name once bytes that "
                 "are not UTF-8 are escaped", file=file, where=f"class '{names[d]}'",
                 fix="rename one of them (class names are best plain UTF-8 text)")
        seen[names[d]] = d
    records = []
    for d in classes:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            fail(f"class folder has no images ({', '.join(IMAGE_EXTENSIONS)})", file=file, where=f"class '{names[d]}'",
                  fix="add images or remove the folder")
        for f in files:
            where = f"record {len(records)} ({names[d]}/{shown_name(f.name)})"
            if not inside_root(f, root):
                fail("image is a symbolic link that leads outside the dataset folder", file=file, where=where,
                      fix="copy the image into the dataset folder")
            records.append(Record(file, where, f, label=names[d]))
    return records


def read_csv(path: str | Path, image_root: str | Path | None = None, problems: Problems | None = None) -> list[Record]:
    """A CSV with columns image,label (others ignored); images relative to image_root or the CSV's folder."""
    path, root, file = located(path, image_root)
    try:
        return _csv_records(read_text(path), root=root, file=file, problems=problems or Problems(strict=True))
    except csv.Error as e:  # a field over the csv module's limit, a NUL byte, an unterminated quote
        fail(f"is not a readable CSV ({e})", file=file, fix="write one '<image path>,<class name>' row per line")


def _csv_records(text: str, *, root: Path, file: str, problems: Problems) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "image" not in header or "label" not in header:
        # the line itself is not echoed: the file may not be a CSV at all, and its first line may be a secret
        fail(f"the first line ({len(header)} comma-separated field(s)) does not name the columns 'image' and 'label'",
              file=file, where="header (line 1)", fix="make the first line 'image,label' and each row '<image path>,<class name>'")
    reader.fieldnames = header
    records = []
    rows = 0
    for i, row in enumerate(reader):
        rows += 1
        where = f"record {i} (line {reader.line_num})"
        with problems.record():
            if None in row:
                fail(f"the row has {len(header) + len(row[None])} fields but the header has {len(header)}", file=file,
                      where=where, fix="quote values that contain commas")
            label = (row.get("label") or "").strip()
            if not label:
                fail("empty label", file=file, where=f"{where}, field 'label'", fix="give every row a class name")
            image = resolve_image((row.get("image") or "").strip() or None, root=root, file=file, where=where)
            records.append(Record(file, where, image, label=label))
    if not rows:
        fail("the CSV has a header but no rows", file=file, fix="add rows '<image path>,<class name>'")
    return records

"""The same data through every path users have: in memory (the bundled generators), image files on disk beside a data
file, and Hugging Face image bytes (a `save_to_disk` folder, and the Hub's parquet layout). Tests that must hold on
every data path build their dataset tables here, so a feature cannot be tested on the bundled data alone.

Each writer takes in-memory `DatasetSplits` and writes its train and eval splits as they are (PNG: lossless, order
kept, `shuffle = false`), so the three paths load the same samples and a cell trained on any of them gives the same
numbers."""

from __future__ import annotations

import io
import json
from pathlib import Path

SOURCES = ("memory", "files", "hf_bytes", "parquet")  # parquet: the Hub's data/<split>-*.parquet files


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def _rows(samples: list, task: str) -> list[dict]:
    rows = []
    for s in samples:
        if task == "vqa":
            rows.append({"question": s.question, "answers": list(s.answers)})
        elif task == "preference":
            rows.append({"prompt": s.question, "chosen": s.answers[0], "rejected": s.rejected})
        elif task == "caption":
            rows.append({"captions": list(s.captions)})
        else:
            raise ValueError(f"no writer for task {task}")
    return rows


def write_files(splits, folder: Path) -> dict:
    """`splits` as image files + a JSONL data file per split (vqa_jsonl / preference) or COCO captions JSON; the
    dataset table that reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, samples in (("train", splits.train), ("eval", splits.eval)):
        rows = _rows(samples, splits.task)
        for i, (row, sample) in enumerate(zip(rows, samples)):
            name = f"images/{part}-{i:05d}.png"
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_bytes(png_bytes(sample.image))
            row["image"] = name
        if splits.task == "caption":
            data = {"images": [{"id": i, "file_name": r["image"]} for i, r in enumerate(rows)],
                    "annotations": [{"id": 100 * i + k, "image_id": i, "caption": c}
                                    for i, r in enumerate(rows) for k, c in enumerate(r["captions"])]}
            path = folder / f"captions_{part}.json"
            path.write_text(json.dumps(data))
        else:
            path = folder / f"{part}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[part] = path
    fmt = {"vqa": "vqa_jsonl", "preference": "preference", "caption": "coco_captions"}[splits.task]
    return {"format": fmt, "path": str(paths["train"]), "eval_path": str(paths["eval"]), "shuffle": False}


def hf_dataset_dict(splits):
    """`splits` as a datasets.DatasetDict of train/test with the images as PNG bytes (datasets' Image feature)."""
    import datasets

    parts = {}
    for part, samples in (("train", splits.train), ("test", splits.eval)):
        rows = _rows(samples, splits.task)
        if splits.task == "caption":
            rows = [{"caption": r["captions"]} for r in rows]
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        columns["image"] = [{"bytes": png_bytes(s.image), "path": None} for s in samples]
        features = datasets.Features({**{k: _feature(v[0]) for k, v in columns.items() if k != "image"},
                                      "image": datasets.Image()})
        parts[part] = datasets.Dataset.from_dict(columns, features=features)
    return datasets.DatasetDict(parts)


def _feature(value):
    import datasets

    return datasets.Sequence(datasets.Value("string")) if isinstance(value, list) else datasets.Value("string")


def write_hf(splits, folder: Path, *, layout: str = "save_to_disk") -> dict:
    """`splits` as Hugging Face image bytes: a save_to_disk folder, or the Hub's parquet layout
    (data/<split>-00000-of-00001.parquet); the dataset table that reads them."""
    ds = hf_dataset_dict(splits)
    if layout == "save_to_disk":
        ds.save_to_disk(str(folder))
    else:
        (folder / "data").mkdir(parents=True)
        for part, d in ds.items():
            d.to_parquet(str(folder / "data" / f"{part}-00000-of-00001.parquet"))
    table = {"path": str(folder), "hf_split": "train", "hf_eval_split": "test", "shuffle": False}
    if splits.task == "preference":
        return {"format": "preference", **table}
    columns = {"caption": {"caption": "caption"}}.get(splits.task, {})
    return {"format": "hf", "task": splits.task, **table, **({"columns": columns} if columns else {})}


def table_for(source: str, generated: dict, folder: Path) -> dict:
    """The dataset table that reads the bundled `generated` table's data (e.g. {"format": "scenes", "task": "vqa",
    ...}) through `source`."""
    if source == "memory":
        return dict(generated)
    from bench.data.loader import load_dataset

    splits = load_dataset(generated, base_dir=folder, seed=generated.get("seed", 0))
    if source == "files":
        return write_files(splits, folder)
    return write_hf(splits, folder, layout="parquet" if source == "parquet" else "save_to_disk")


def toml_table(name: str, table: dict) -> str:
    """A [datasets.NAME] table as TOML."""
    lines = [f"[datasets.{name}]"]
    for key, value in table.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


LLAVA_SUITE = """
[suite]
name = "{name}"
isolate = false
threads = 1

[defaults]
steps = 2
batch_size = 4
max_seq_len = 32
eval_batch_size = 8
max_new_tokens = 2
timing_warmup_steps = 0
serve_batch_size = 2
serve_rounds = 2
save = false
on_bad_sample = "{policy}"

[models.llava]
family = "llava"
preset = "tiny"
weights = "random"

[methods.lora]
kind = "lora"
r = 4

[[grid]]
models = ["llava"]
datasets = {datasets}
methods = ["lora"]

"""


def tiny_llava_suite(folder: Path, name: str, tables: dict, policy: str = "error") -> Path:
    """A suite file in `folder`: LoRA on the tiny LLaVA (random weights, a few steps, serving measured) over the dataset
    `tables` ({name: table}), with on_bad_sample = `policy`."""
    path = folder / f"{name}.toml"
    path.write_text(LLAVA_SUITE.format(name=name, policy=policy, datasets=json.dumps(list(tables)))
                    + "".join(toml_table(n, t) for n, t in tables.items()))
    return path

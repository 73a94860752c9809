"""`bench export`: what a finished cell kept (bench/run/artifacts.py), written out ready to load — its adapter as PEFT
saved it, or (--merged) the adapter merged into its base (`merge_and_unload`) as a plain transformers model with its
processor. A QLoRA adapter merges into the de-quantised base (the base built in full precision), the usual way to
ship one. Writes into --out only, which must be new or empty."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.errors import BenchError
from bench.models.catalog import METHOD_KINDS


def find_record(records: list[dict], cell_id: str, repeat: int) -> dict:
    """The latest ok record of (cell_id, repeat) that kept an artifact, or an error saying what is missing."""
    runs = [r for r in records if r["cell_id"] == cell_id]
    if not runs:
        known = sorted({r["cell_id"] for r in records})
        raise BenchError(f"no record of cell {cell_id!r}", where="CELL_ID",
                         fix=f"use a cell id of these records ({', '.join(known[:8])}{', ...' if len(known) > 8 else ''})")
    this = [r for r in runs if r["repeat"] == repeat]
    if not this:
        raise BenchError(f"cell {cell_id} has no record of repeat {repeat}", where="--repeat",
                         fix=f"use one of: {', '.join(str(r['repeat']) for r in runs)}")
    record = this[-1]
    artifact = record.get("artifact")
    if record["status"] != "ok" or not isinstance(artifact, dict) or not Path(str(artifact.get("path"))).is_dir():
        why = (f"its status is {record['status']}" if record["status"] != "ok" else
               "it kept nothing (a full fine-tune without save_full, or save = false)" if not isinstance(artifact, dict)
               else f"its artifact folder {artifact.get('path')} is gone")
        raise BenchError(f"cell {cell_id} (repeat {repeat}) has nothing to export: {why}",
                         fix="run it with save = true (adapters keep theirs by default; full fine-tunes need save_full)")
    return record


def export(record: dict, out: Path, *, merged: bool) -> Path:
    """Write the record's artifact to `out`; the folder written."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"--out {out} exists and is not an empty folder", where="--out", fix="name a new or empty folder")
    source = Path(record["artifact"]["path"])
    kind = record["method"].get("kind")
    if merged and kind in METHOD_KINDS and not METHOD_KINDS[kind].mergeable:
        raise BenchError(f"cell {record['cell_id']} is {kind}, which has no merged form (an X-LoRA fusion weighs its experts "
                         "per token; prompt tuning adds tokens, not weight updates)", where="--merged",
                         fix="export it without --merged")
    if not merged or record["artifact"]["kind"] == "full":
        shutil.copytree(source, out, dirs_exist_ok=True)
        return out
    model, processor = merged_model(record, source)
    model.save_pretrained(out, safe_serialization=True)
    if processor is not None and hasattr(processor, "save_pretrained"):
        processor.save_pretrained(out)
    return out


def merged_model(record: dict, adapter: Path):
    """The cell's base built as its record says (in full precision), the adapter loaded onto it and merged into it."""
    from peft import PeftModel

    from bench.run.cell import build_base
    from bench.suite import zoo

    cfg = record["model"]
    zoo_path = str(zoo.zoo_path(cfg["family"])) if cfg["weights"] == "zoo" else None
    loaded = build_base(cfg, record["train"].get("precision", "fp32"), device="cpu", zoo_path=zoo_path,
                        seed=record["seed"])
    model = PeftModel.from_pretrained(loaded.model, str(adapter)).merge_and_unload()
    return model, loaded.processor

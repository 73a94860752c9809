"""`bench export`: what a finished cell kept (bench/run/artifacts.py), written out ready to load — its adapter as PEFT
saved it, or (--merged) the adapter merged into its base (`merge_and_unload`) as a plain transformers model with its
processor. A QLoRA adapter merges into the de-quantised base (the base built in full precision), the usual way to
ship one. Writes into --out only, which must be new or empty.

A results file is data: its record's `artifact.path` decides nothing on its own. The folder it names must lie inside the
artifacts folder `bench run` keeps them in (`<results file's folder>/artifacts`, or the `--artifacts-dir` given to both),
reached without a symbolic link, and hold only regular files of the names PEFT and bench write there (ARTIFACT_FILES);
anything else is refused before a byte is copied or a model is loaded, and each file is copied without following a
link (O_NOFOLLOW) into a file created new (O_EXCL)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

from bench.errors import BenchError, OutputError
from bench.models.catalog import METHOD_KINDS
from bench.paths import remove_written

# the names PEFT's and transformers' save_pretrained and bench/run/artifacts.py write into a kept folder: an adapter
# (adapter_config.json, adapter_model.safetensors, PEFT's README.md model card), a full fine-tune (config.json,
# generation_config.json, model.safetensors or its shards and their index; open_clip: model.safetensors), an X-LoRA
# fusion (xlora_config.json, xlora_weights.safetensors, and each expert's adapter folder under experts/<n>/)
ARTIFACT_FILES = re.compile(r"adapter_config\.json|adapter_model\.safetensors|README\.md|config\.json"
                            r"|generation_config\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json"
                            r"|xlora_config\.json|xlora_weights\.safetensors")
EXPERT_FILES = re.compile(r"adapter_config\.json|adapter_model\.safetensors|README\.md")
EXPERTS = "experts"
MAX_JSON_BYTES = 64 << 20  # a config or a safetensors header larger than this is not one bench wrote


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
               else f"its artifact folder {shown(artifact.get('path'))} is gone")
        raise BenchError(f"cell {cell_id} (repeat {repeat}) has nothing to export: {why}",
                         fix="run it with save = true (adapters keep theirs by default; full fine-tunes need save_full)")
    return record


def export(record: dict, out: Path, *, merged: bool, artifacts_root: Path, results: str | None = None,
           trust_remote_code: bool = False) -> Path:
    """Write the record's artifact to `out`; the folder written. `artifacts_root`: the folder the record's artifact must
    lie in; `results`: the results file (named in messages)."""
    kind = record["method"].get("kind")
    if merged and kind in METHOD_KINDS and not METHOD_KINDS[kind].mergeable:
        raise BenchError(f"cell {record['cell_id']} is {kind}, which has no merged form (an X-LoRA fusion weighs its experts "
                         "per token; prompt tuning adds tokens, not weight updates)", where="--merged",
                         fix="export it without --merged")
    check_out(out)
    source, files = artifact_files(record, artifacts_root, results=results)
    full = record["artifact"].get("kind") == "full"
    if merged and not full and (record.get("model") or {}).get("trust_remote_code") and not trust_remote_code:
        raise BenchError(f"cell {record['cell_id']}'s model was built with trust_remote_code: merging loads it again, "
                         "running the checkpoint's own code, and a results file alone does not vouch for that",
                         file=results, where="model.trust_remote_code",
                         fix="pass --trust-remote-code if you trust that checkpoint, or export the adapter without --merged")
    model, processor = merged_model(record, source) if merged and not full else (None, None)
    made = not out.exists()
    make_out(out)
    try:
        if model is None:
            copy_files(source, files, out)
            return out
        try:
            model.save_pretrained(out, safe_serialization=True)
            if processor is not None and hasattr(processor, "save_pretrained"):
                processor.save_pretrained(out)
        except OSError as exc:
            raise write_error(out, exc) from None
    except BenchError:  # out was new or empty: what this export wrote there goes, not half an adapter
        remove_written(out, made)
        raise
    return out


def merged_model(record: dict, adapter: Path):
    """The cell's base built as its record says (in full precision), the adapter loaded onto it and merged into it."""
    from peft import PeftModel
    from safetensors import SafetensorError

    from bench.run.cell import build_base
    from bench.suite import zoo

    cfg = record["model"]
    zoo_path = str(zoo.zoo_path(cfg["family"])) if cfg["weights"] == "zoo" else None
    loaded = build_base(cfg, record["train"].get("precision", "fp32"), device="cpu", zoo_path=zoo_path,
                        seed=record["seed"])
    try:
        model = PeftModel.from_pretrained(loaded.model, str(adapter))
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
        # files that parse (checked in artifact_files) but are not an adapter of this base: another model's, edited
        line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise BenchError(f"the kept adapter in {shown(adapter)} does not load onto the cell's base model "
                         f"({type(exc).__name__}: {line})", where="--merged",
                         fix="export it without --merged, or re-run the cell (`bench run --retry`) to keep a fresh one") from None
    return model.merge_and_unload(), loaded.processor


# ---------------------------------------------------------------- what may be read, and where it may go


def shown(value) -> str:
    """A path or name as a message shows it: undecodable bytes escaped (\\xff), never a lone surrogate."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def artifact_files(record: dict, root: Path, *, results: str | None = None) -> tuple[Path, list[str]]:
    """The record's artifact folder and the files to copy from it (relative, POSIX), checked: the folder lies inside
    `root` with no symbolic link on the way, and holds only regular files PEFT and bench write (no link at any depth,
    nothing else), whose JSON and safetensors headers parse. Raises BenchError (exit 2) naming the field and the fix."""
    cell = f"record of cell {record['cell_id']} (repeat {record['repeat']})"
    field = f"{cell}, field artifact.path"
    value = record["artifact"].get("path")
    if not isinstance(value, str) or not value or "\0" in value:
        raise BenchError("artifact.path is not a folder path", file=results, where=field,
                         fix="export a record `bench run` wrote, as it wrote it")
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"the artifacts folder {shown(root)} does not exist: export reads a cell's adapter only from "
                         "the folder `bench run` kept it in", where="--artifacts-dir",
                         fix="pass --artifacts-dir with the folder given to `bench run --artifacts-dir` (default: "
                             "artifacts/ beside the results file)")
    folder = Path(value)  # absolute, as `bench run` records it (a relative one is read from here, as find_record did)
    fix = (f"export only what `bench run` kept under {shown(root)}: restore artifact.path as the run wrote it, or pass "
           "the --artifacts-dir the run was given")
    try:
        real_root, target = root.resolve(), folder.resolve()
        lexical_root = Path(os.path.normpath(root.absolute()))
        step = Path(os.path.normpath(folder.absolute()))
        while step != lexical_root and step.parent != step and step.resolve() != real_root:
            # no link on the way down from the artifacts folder to the cell's folder, the folder itself included
            if step.is_symlink():
                raise BenchError(f"artifact.path {shown(value)} goes through a symbolic link ({shown(step)}); export "
                                 "follows no links", file=results, where=field,
                                 fix="replace the link by the folder it points to, or restore artifact.path as the run "
                                     "wrote it")
            step = step.parent
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        raise BenchError(f"artifact.path {shown(value)} cannot be resolved (a symbolic link loop?)", file=results,
                         where=field, fix=fix) from None
    if target == real_root or not target.is_relative_to(real_root):
        raise BenchError(f"artifact.path {shown(value)} is not inside the artifacts folder {shown(root)}; export copies "
                         "nothing from elsewhere", file=results, where=field, fix=fix)
    if not target.is_dir():
        raise BenchError(f"artifact.path {shown(value)} is not a folder", file=results, where=field, fix=fix)
    files = _walk(target, "", results=results, field=field)
    if not files:
        raise BenchError(f"the artifact folder {shown(target)} holds no file bench wrote", file=results, where=field,
                         fix="re-run the cell (`bench run --retry`) to keep its adapter again")
    for name in files:
        if name.endswith((".json", ".safetensors")):
            _check_content(target / name, name, where=cell)
    return target, files


def _walk(folder: Path, prefix: str, *, results: str | None, field: str) -> list[str]:
    files = []
    fix = "remove it from the artifact folder (export copies only the files PEFT and bench write), or copy by hand"
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = prefix + entry.name
            if entry.is_symlink():
                raise BenchError(f"{shown(name)} in the artifact folder {shown(folder)} is a symbolic link; export "
                                 "copies only regular files and follows no links", file=results, where=field,
                                 fix="replace the link by the file itself, or remove it")
            if entry.is_dir(follow_symlinks=False):
                expert = prefix == f"{EXPERTS}/" and entry.name.isdigit()
                if (prefix == "" and entry.name == EXPERTS) or expert:
                    files += _walk(Path(entry.path), f"{name}/", results=results, field=field)
                    continue
                raise BenchError(f"the artifact folder holds a folder {shown(name)} that bench does not write",
                                 file=results, where=field, fix=fix)
            allowed = ARTIFACT_FILES if prefix == "" else EXPERT_FILES if prefix.startswith(f"{EXPERTS}/") else None
            if not entry.is_file(follow_symlinks=False):
                raise BenchError(f"{shown(name)} in the artifact folder is not a regular file", file=results,
                                 where=field, fix=fix)
            if allowed is None or not allowed.fullmatch(entry.name):
                raise BenchError(f"the artifact folder holds {shown(name)}, not a file PEFT or bench writes there",
                                 file=results, where=field, fix=fix)
            files.append(name)
    return files


def _check_content(path: Path, name: str, *, where: str) -> None:
    """A kept JSON file parses as an object, a safetensors file has a header that parses: a damaged or foreign file is
    named before anything is written or loaded (its content never echoed)."""
    fix = "re-run the cell (`bench run --retry`) to keep its adapter again; the file is damaged or not bench's"
    try:
        with open(path, "rb") as f:
            if name.endswith(".json"):
                data = f.read(MAX_JSON_BYTES + 1)
                ok = len(data) <= MAX_JSON_BYTES and isinstance(json.loads(data), dict)
                what = "is not a JSON object"
            else:  # safetensors: an 8-byte little-endian header length, then that many bytes of JSON
                head = f.read(8)
                size = int.from_bytes(head, "little") if len(head) == 8 else -1
                ok = 2 <= size <= min(MAX_JSON_BYTES, os.fstat(f.fileno()).st_size - 8)
                ok = ok and isinstance(json.loads(f.read(size)), dict)
                what = "is not a safetensors file (its header does not parse)"
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        ok, what = False, "is not a JSON object" if name.endswith(".json") else "is not a safetensors file"
    except OSError as exc:
        ok, what = False, f"cannot be read ({exc.strerror or exc})"
    if not ok:
        raise BenchError(f"the kept file {shown(name)} {what}", file=shown(path), where=where, fix=fix)


def check_out(out: Path) -> None:
    """--out is a new or empty folder that can be made: not a link, not a file, not under a file."""
    fix = "name a new or empty folder (in a folder you can write)"
    if out.is_symlink():
        raise BenchError(f"--out {shown(out)} is a symbolic link; export writes through no link", where="--out", fix=fix)
    try:
        if out.exists():
            if not out.is_dir() or any(out.iterdir()):
                raise BenchError(f"--out {shown(out)} exists and is not an empty folder", where="--out", fix=fix)
            return
        above = next(p for p in out.absolute().parents if p.exists() or p.is_symlink())
    except OSError as exc:
        raise BenchError(f"--out {shown(out)} cannot be read ({exc.strerror or exc})", where="--out", fix=fix) from None
    if not above.is_dir():
        raise BenchError(f"--out {shown(out)} lies under {shown(above)}, which is not a folder", where="--out", fix=fix)


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {shown(out)} cannot be made ({exc.strerror or exc})", where="--out",
                         fix="name a new or empty folder in a folder you can write") from None


def copy_files(source: Path, files: list[str], out: Path) -> None:
    """Copy each file without following a link at its place (O_NOFOLLOW, and checked regular on the open descriptor)
    into a file created new (O_EXCL: never through a link in --out)."""
    for name in files:
        src, dst = source / name, out / name
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(out, exc) from None
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            why = ("is a symbolic link; export follows no links" if exc.errno == errno.ELOOP  # became one since checked
                   else f"cannot be read ({exc.strerror or exc})")
            raise BenchError(f"{shown(src)} {why}", file=shown(src),
                             fix="keep only the regular files bench wrote in the artifact folder, and export again") from None
        with os.fdopen(fd, "rb") as fin:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                raise BenchError(f"{shown(src)} is not a regular file", file=shown(src), fix="remove it")
            try:
                with open(dst, "xb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            except OSError as exc:
                raise write_error(out, exc) from None


def write_error(out: Path, exc: OSError) -> OutputError:
    """Exit 1: the export was under way when a write failed; a full disk is named as such."""
    if exc.errno == errno.ENOSPC:
        return OutputError(f"the disk holding --out {shown(out)} is full (ENOSPC); what the export wrote there is removed",
                           where="--out", fix="free space (or choose a folder on another disk), and export again")
    return OutputError(f"writing into --out {shown(out)} failed ({exc.strerror or exc}); what the export wrote there is "
                       "removed", where="--out", fix="fix the folder (permissions, space), and export again")

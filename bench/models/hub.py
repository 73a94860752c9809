"""Is a named checkpoint loadable here? Checked before any model is built, without importing torch.

A checkpoint is a local directory or a Hugging Face id. It is usable when the directory holds the
config file, when the id's config is already in the local Hugging Face cache, or when the hub
answers for it. Everything else becomes a CheckpointError that says how to get the weights here
(the GPU machines and CI have no network, so "download at run time" is not a plan).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.errors import CheckpointError

HUB_TIMEOUT_S = 3.0  # a reachable hub answers a HEAD in well under a second; an unreachable one should not stall `bench run`
_TRUTHY = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    return any(os.environ.get(k, "").strip().lower() in _TRUTHY for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(checkpoint: str) -> bool:
    """A string meant as a directory rather than an `org/name` hub id."""
    return (
        checkpoint.startswith(("/", "./", "../", "~", "."))
        or checkpoint.count("/") > 1
        or os.sep != "/" and os.sep in checkpoint
        or Path(checkpoint).expanduser().exists()
    )


def local_config(checkpoint: str, *, revision: str | None = None, config_name: str = "config.json") -> dict | None:
    """The checkpoint's config read from a local directory or the HF cache only (never the network)."""
    path = _local_config_path(checkpoint, revision=revision, config_name=config_name)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:  # never echo the file: it is not what it should be
        reason = exc.strerror if isinstance(exc, OSError) else "it is not a JSON object"
        raise CheckpointError(f"{config_name} of checkpoint {checkpoint!r} cannot be read ({reason})", file=str(path),
                              fix="point `checkpoint` at a directory saved with save_pretrained") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_name} of checkpoint {checkpoint!r} is not a JSON object", file=str(path),
                              fix="point `checkpoint` at a directory saved with save_pretrained")
    from bench.models.config_size import size_problem

    too_large = size_problem(raw)  # before anything is built from it, even on the meta device
    if too_large:
        raise CheckpointError(f"{config_name} of checkpoint {checkpoint!r} is refused: {too_large}", file=str(path),
                              fix="point `checkpoint` at a real model's directory (its config.json as save_pretrained "
                                  "wrote it)")
    return raw


def _local_config_path(checkpoint: str, *, revision: str | None, config_name: str) -> Path | None:
    directory = Path(checkpoint).expanduser()
    if directory.is_dir():
        candidate = directory / config_name
        return candidate if candidate.is_file() else None
    if looks_like_path(checkpoint):
        return None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(checkpoint, config_name, revision=revision)
    except HFValidationError:
        return None
    return Path(cached) if isinstance(cached, str) else None  # a sentinel object means "known to be missing"


def _valid_repo_id(checkpoint: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(checkpoint)
    except HFValidationError:
        return False
    return True


def checkpoint_error(
    checkpoint: str, reason: str, *, where: str, file: str | None = None, config_name: str = "config.json"
) -> CheckpointError:
    """The one message every family raises when a checkpoint cannot be loaded here."""
    if looks_like_path(checkpoint) or not _valid_repo_id(checkpoint):
        fix = (
            f"point `checkpoint` at an existing directory saved with save_pretrained (it needs {config_name}), "
            "or set weights = \"random\" to measure cost only"
        )
    else:
        fix = (
            f"on a connected machine run `hf download {checkpoint}` (older clients: `huggingface-cli download "
            f"{checkpoint}`) and copy the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME/hub) to this "
            f"machine; or point `checkpoint` at a local directory holding the model; or set weights = \"random\" "
            f"to measure cost only"
        )
    return CheckpointError(f"checkpoint {checkpoint!r}: {reason}", file=file, where=where, fix=fix)


def preflight_checkpoint(
    checkpoint: str,
    *,
    revision: str | None = None,
    where: str,
    file: str | None,
    config_name: str = "config.json",
) -> None:
    """Raise CheckpointError unless `checkpoint` is a local directory, in the HF cache, or reachable on the hub.

    `where` names the suite entry (e.g. "models.clip-l14") and `file` the suite file, for the message.
    """
    directory = Path(checkpoint).expanduser()
    if directory.is_dir():
        if (directory / config_name).is_file():
            return
        raise checkpoint_error(checkpoint, f"the directory has no {config_name}", where=where, file=file, config_name=config_name)
    if looks_like_path(checkpoint):
        raise checkpoint_error(checkpoint, "no such directory", where=where, file=file, config_name=config_name)
    if _local_config_path(checkpoint, revision=revision, config_name=config_name) is not None:
        return
    if not _valid_repo_id(checkpoint):
        raise checkpoint_error(checkpoint, "neither a local directory nor a valid hub id (`org/name`)", where=where, file=file)
    if hub_offline():
        raise checkpoint_error(
            checkpoint, "not in the local Hugging Face cache, and the hub is off (HF_HUB_OFFLINE is set)", where=where, file=file
        )
    reason = _hub_problem(checkpoint, revision=revision, config_name=config_name)
    if reason:
        raise checkpoint_error(checkpoint, reason, where=where, file=file)


def _hub_problem(checkpoint: str, *, revision: str | None, config_name: str) -> str | None:
    """None if the hub serves the config file; otherwise why not, in words."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, as with the offline flag
    url = hf_hub_url(checkpoint, config_name, revision=revision, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S, endpoint=endpoint)
    except GatedRepoError:  # subclass of RepositoryNotFoundError: test it first
        return "not in the local cache, and the hub says it is gated (accept its licence and run `hf auth login`)"
    except RepositoryNotFoundError:
        return "not in the local cache, and the hub has no such model (check the spelling, or log in if it is private)"
    except RevisionNotFoundError:
        return f"not in the local cache, and the hub has no revision {revision!r}"
    except EntryNotFoundError:
        return f"not in the local cache, and the hub's repository has no {config_name}"
    except Exception as exc:  # connection refused, DNS, timeout, proxy: the hub is unreachable from here
        return f"not in the local Hugging Face cache, and the hub cannot be reached ({type(exc).__name__})"
    return None

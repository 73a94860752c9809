"""bench.models.hub: a checkpoint is usable when it is a local directory, in the HF cache, or on a reachable hub."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.errors import CheckpointError
from bench.models.hub import local_config, preflight_checkpoint

WHERE = {"where": "models.clip-l14", "file": "suites/vlm_costs.toml"}


def test_hub_module_does_not_import_torch():
    code = "import sys, bench.models.hub; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_missing_local_path_names_the_entry_and_the_fix(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(CheckpointError) as err:
        preflight_checkpoint(missing, **WHERE)
    text = str(err.value)
    assert "suites/vlm_costs.toml: models.clip-l14" in text and missing in text and "no such directory" in text
    assert 'weights = "random"' in err.value.fix and "`checkpoint`" in err.value.fix


def test_directory_without_config_is_refused_and_with_config_accepted(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        preflight_checkpoint(str(tmp_path), **WHERE)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    preflight_checkpoint(str(tmp_path), **WHERE)
    assert local_config(str(tmp_path)) == {"model_type": "clip"}


def test_unknown_hub_id_offline_says_how_to_get_it_here(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        preflight_checkpoint("nobody-here/no-such-clip", **WHERE)
    assert "HF_HUB_OFFLINE" in err.value.message
    fix = err.value.fix
    assert "hf download nobody-here/no-such-clip" in fix and "huggingface-cli download" in fix
    assert "cache" in fix and 'weights = "random"' in fix
    assert local_config("nobody-here/no-such-clip") is None


def test_invalid_id_is_not_sent_to_the_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="neither a local directory nor a valid hub id"):
        preflight_checkpoint("not a model id!", **WHERE)


def test_unreachable_hub_is_reported_quickly(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # it was read at import, under the test's offline env
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, connection refused
    with pytest.raises(CheckpointError, match="hub cannot be reached"):
        preflight_checkpoint("nobody-here/no-such-clip", **WHERE)


def test_a_checkpoint_in_the_hf_cache_passes_offline(monkeypatch, tmp_path):
    """The real cache layout (models--org--name/refs/main -> snapshots/<sha>/config.json) is found without a network."""
    import huggingface_hub.constants as hf_constants

    sha = "0" * 40
    repo = tmp_path / "models--someorg--cached-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": 768}))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preflight_checkpoint("someorg/cached-clip", **WHERE)
    assert local_config("someorg/cached-clip")["projection_dim"] == 768

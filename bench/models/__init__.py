"""Model families. Each module (clip, blip2, llava) exposes the same small interface (see base.py).

Looked up lazily by name so that the CLI can validate suites without importing torch.
"""

from __future__ import annotations

import importlib

FAMILY_MODULES = {
    "clip": "bench.models.clip",
    "blip2": "bench.models.blip2",
    "llava": "bench.models.llava",
}


def get_family(name: str):
    """The family module for `name` (import happens here, not at CLI start)."""
    return importlib.import_module(FAMILY_MODULES[name])

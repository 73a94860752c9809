"""Model families. Each module (clip, blip2, llava) exposes the same small interface (see base.py).

Looked up lazily by name so that the CLI can validate suites without importing torch.
"""

from __future__ import annotations

import importlib

from bench.models.catalog import FAMILIES

FAMILY_MODULES = {name: info.module for name, info in FAMILIES.items()}


def get_family(name: str):
    """The family module for `name` (import happens here, not at CLI start)."""
    return importlib.import_module(FAMILY_MODULES[name])

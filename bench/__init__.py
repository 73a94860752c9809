"""bench: cost/quality benchmark harness for PEFT methods on vision-language models.

Heavy libraries (torch, transformers, peft) are imported lazily so that
`bench --help`, `bench plan` and `bench report` start instantly.
"""

__version__ = "0.1.0"


def load_results(*paths):
    """Records from one or more results files as a tidy pandas DataFrame (one row per cell-run)."""
    from bench.records import load_results as _load

    return _load(*paths)

"""`bench plan SUITE --trace`: each cell's training step traced with fake tensors (bench.cost.trace), set beside
the arithmetic estimate (bench.cost.estimate) taken at the same batch shape, and the page that shows both.

Each trace runs in its own process (a crash or a hang costs one cell, and nothing fake outlives it).
"""

from __future__ import annotations

from bench.isolate import call_isolated

TRACE_TIMEOUT_S = 3600  # a 7B full fine-tune traces in minutes on two cores; an hour means something is wrong


def target_device(suite) -> str:
    """What the suite's cells will run on, as far as memory goes: the CPU only when it says so."""
    return "cpu" if suite.settings["device"] == "cpu" else "cuda"


def _trace_job(cell, splits, device: str, *, emit):
    from bench.cost.trace import NotTraceable, trace_cell

    try:
        return trace_cell(cell, splits, target_device=device)
    except NotTraceable as exc:
        return {"not_traced": str(exc)}


def trace_cells(suite, cells, splits_of, *, on_done=None) -> dict[str, dict]:
    """cell_id -> trace result, {"not_traced": why} or {"error": message}; `splits_of(cell)` gives its data."""
    out = {}
    for cell in cells:
        result = call_isolated(_trace_job, cell, splits_of(cell), target_device(suite), timeout_s=TRACE_TIMEOUT_S)
        out[cell.cell_id] = result.value if result.kind == "ok" else {"error": result.message}
        if on_done:
            on_done(cell, out[cell.cell_id])
    return out


def estimate_at_trace(cell, trace: dict, meta_models: dict, device: str) -> dict | None:
    """The arithmetic estimate at the traced batch's text length on `device` (target_device), and its error against the
    trace (%)."""
    from bench.cost.estimate import estimate_memory
    from bench.cost.params import meta_model

    config = getattr(meta_model(cell, meta_models), "config", None)
    if "peak_mb" not in trace or config is None or not hasattr(config, "vision_config"):
        return None
    est = estimate_memory(cell.model["family"], config, trace["params"], {**cell.train, **cell.method}, cell.method["kind"],
                          text_len=trace["text_len"], device=device)
    est["error_pct"] = round(100 * (est["total_mb"] - trace["peak_mb"]) / trace["peak_mb"], 1)
    return est


def _mb(v) -> str:
    """Megabytes as a page shows them: whole ones at scale, a decimal for the tiny presets."""
    if v is None:
        return "-"
    return "0" if v == 0 else f"{v:.1f}" if v < 10 else f"{v:,.0f}"


KINDS = ("param", "grad", "opt", "act", "temp")  # MemTracker's categories, in the order memory piles up


HOW = (
    "Device: **none** — every number below was traced on the CPU with fake tensors (torch FakeTensorMode + "
    "MemTracker): the cell's own build, method, batch, loss, backward and optimizer steps ran with real shapes "
    "and dtypes and no weights. The traced peak is the tensor memory a CUDA run allocates "
    "(`max_memory_allocated`), before allocator rounding and fragmentation and without the CUDA context. "
    "It is not a GPU measurement: `bench run` on a GPU measures, and keeps the estimate beside the measurement."
)
COLUMNS = (
    "Columns: *traced* is the peak over two optimizer steps of the batch_size longest training samples; "
    "param / grad / opt / act / temp is what was live at that peak (weights, gradients, optimizer state, "
    "saved activations, temporaries); *estimate* is bench's arithmetic (`bench plan --estimate`) at the "
    "traced batch's text length; *error* = (estimate − traced) / traced."
)


def render_markdown(suite_name: str, rows: list[dict], software: dict) -> str:
    """The cost-preview page: traced peak, what it is made of, the estimate and its error, per cell."""
    dirty = " (uncommitted changes)" if software.get("git_dirty") else ""
    versions = f"torch {software.get('torch')}, transformers {software.get('transformers')}, peft {software.get('peft')}"
    lines = [
        f"# Cost preview: {suite_name}", "", HOW, "",
        f"Software: {versions}; git {software.get('git_sha') or '?'}{dirty}.",
        "", COLUMNS, "",
        f"| cell | model | dataset | method | trainable | batch × text | traced MB | {' | '.join(KINDS)} | estimate MB | error |",
        "|---|---|---|---|---:|---|---:|" + "---:|" * len(KINDS) + "---:|---:|",
    ]
    for r in rows:
        t, e = r.get("trace") or {}, r.get("estimate_at_trace") or r.get("estimate") or {}
        trainable = (t.get("params") or r.get("params") or {}).get("trainable")
        head = f"| {r['cell_id']} | {r['model']} | {r['dataset']} | {r['method']} | {trainable:,} |" if trainable is not None \
            else f"| {r['cell_id']} | {r['model']} | {r['dataset']} | {r['method']} | - |"
        if "peak_mb" in t:
            shape = f"{t['batch']['input_ids'][0]} × {t['text_len']}"
            kinds = " | ".join(_mb(t["by_kind_mb"].get(k, 0)) for k in KINDS)
            err = f"{e['error_pct']:+.1f} %" if e.get("error_pct") is not None else "-"
            lines.append(f"{head} {shape} | **{_mb(t['peak_mb'])}** | {kinds} | {_mb(e.get('total_mb'))} | {err} |")
        else:
            why = t.get("not_traced") or t.get("error") or "not traced"
            blanks = " | ".join("" for _ in KINDS)
            lines.append(f"{head} | not traced: {why.splitlines()[0][:120]} | {blanks} | {_mb(e.get('total_mb'))} | - |")
    errors = [abs(r["estimate_at_trace"]["error_pct"]) for r in rows if r.get("estimate_at_trace")]
    if errors:
        within = sum(e <= 15 for e in errors)
        lines += ["", f"Estimate error over {len(errors)} traced cells: largest {max(errors):.1f} %, {within} of {len(errors)} within 15 %."]
    return "\n".join(lines) + "\n"

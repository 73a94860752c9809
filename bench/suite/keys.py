"""Every key a suite may hold, with its type, default, allowed values and one line of documentation.

One table here drives validation (bench/suite/load.py), the README's key reference and the record's
resolved config, so a documented key and a checked key cannot drift apart.
"""

from __future__ import annotations

from bench.data.problems import POLICIES
from bench.keyspec import NUMBER, SEED_MAX, Key  # noqa: F401  (SEED_MAX: the key tables' bound)
from bench.models.catalog import FAMILIES, METHOD_KINDS
from bench.suite.compose import COMBINATIONS

SUITE_KEYS = {
    "name": Key(str, None, "suite name; records go to results/<name>.jsonl (default: the file name)"),
    "description": Key(str, "", "free text shown on the report page"),
    "repeats": Key(int, 1, "runs per cell with seeds seed, seed+1, ...; reports show mean ± spread", min=1, max=1000),
    "seeds": Key(list, None, "explicit seeds per cell (instead of repeats)"),
    "device": Key(str, "auto", "where cells run", choices=("auto", "cpu", "cuda")),
    "isolate": Key(bool, True, "run each cell in its own process (crash and memory isolation)"),
    "threads": Key(int, 0, "CPU threads per cell (0: torch's default, or cores ÷ jobs side by side); tiny models run fastest on 1",
                   min=0, max=4096),
    "jobs": Key(int, 1, "cells run at once (`bench run --jobs` overrides): each on a GPU of its own, or on its share of the CPU "
                "cores; 0: as many as fit (one per GPU; on the CPU cores ÷ threads, 1 when threads is 0)", min=0, max=1024),
    "time_alone": Key(bool, True, "cells side by side on the CPU take turns at their timed work (training's timed steps, serving's "
                      "latency rounds), so no two cells are timed at once; false: they train at once (faster, steps share the "
                      "machine)"),
    "oom_backoff": Key(bool, False, "on out-of-memory halve the micro-batch and double accumulation, keeping the effective batch"),
    "min_batch_size": Key(int, 1, "smallest micro-batch the OOM back-off tries", min=1, max=65536),
}

TRAIN_KEYS = {
    "steps": Key(int, 60, "optimizer steps per cell (ignored when epochs is set)", min=1, max=10**8),
    "epochs": Key(NUMBER, None, "passes over the training split instead of a step count", above=0, max=10**4),
    "batch_size": Key(int, 8, "micro-batch size per step", min=1, max=65536),
    "grad_accum": Key(int, 1, "gradient accumulation steps; effective batch = batch_size × grad_accum × devices", min=1, max=65536),
    "devices": Key(int, 1, "devices one cell trains on, one process each, started by torch's elastic launcher (torchrun's) "
                   "and joined by accelerate; batch_size is per device. On the CPU each is a process with its share of the "
                   "cores (gloo)", min=1, max=1024, in_id="unless_default"),
    "distributed": Key(str, "ddp", "how a cell on several devices splits its work: ddp (each device a full copy, gradients "
                       "averaged) or fsdp (weights, gradients and optimizer state sharded over the devices: FULL_SHARD; CUDA "
                       "only)", choices=("ddp", "fsdp"), in_id="unless_default"),
    "lr": Key(NUMBER, 1e-3, "peak learning rate", above=0, max=10),
    "schedule": Key(str, "cosine", "learning-rate schedule after warm-up", choices=("constant", "linear", "cosine")),
    "warmup_steps": Key(int, 0, "linear learning-rate warm-up steps", min=0, max=10**8),
    "weight_decay": Key(NUMBER, 0.0, "AdamW weight decay", min=0, max=10),
    "max_grad_norm": Key(NUMBER, 1.0, "gradient clipping norm (0 disables)", min=0, max=1e6),
    "optimizer": Key(str, "adamw", "optimizer (`adamw`: torch's AdamW, its fused kernel on the CPU and foreach on a GPU; `sgd`: "
                     "torch's, momentum 0.9; the 8-bit and paged ones are bitsandbytes', CUDA only)",
                     choices=("adamw", "sgd", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit")),
    "precision": Key(str, "fp32", "compute precision (bf16/fp16 autocast; fp32 on the CPU is fastest here)", choices=("fp32", "bf16", "fp16")),
    "gradient_checkpointing": Key(bool, False, "recompute activations in backward to save memory"),
    "seed": Key(int, 0, "seed for weights, data order and dropout", min=0, max=SEED_MAX),
    "max_seq_len": Key(int, 48, "maximum text tokens per sample (prompt + answer, image tokens excluded)", min=1, max=2**20),
    "eval_batch_size": Key(int, 32, "batch size for evaluation", min=1, max=65536),
    "num_workers": Key(int, None, "DataLoader worker processes that read, decode and process batches while the model trains "
                       "(0: in the training process; default: on a GPU with images on disk, cores − 1 up to 8; otherwise 0)", min=0, max=256,
                       in_id="never"),
    "prefetch_factor": Key(int, 2, "batches each worker prepares ahead (with num_workers ≥ 1)", min=1, max=1024, in_id="never"),
    "cache_mb": Key(NUMBER, None, "with num_workers = 0: encoded training samples kept up to this many MB, so later passes "
                    "skip reading and processing (default: 512 for the bundled in-memory data, 0 for images on disk)",
                    min=0, max=1e7, in_id="never"),
    "on_bad_sample": Key(str, "error", "a record a cell cannot use (a missing or unreadable image, an empty answer, a "
                         "malformed record), from `bench validate` to the end of the run: error (validation lists every "
                         "such record of the data at once, and nothing runs) or skip (left out, counted by reason in "
                         "the record's dataset.skipped and on the report). Text-only records are always left out and "
                         "counted", choices=POLICIES, in_id="unless_default"),
    "max_new_tokens": Key(int, 8, "generation length for captioning and VQA evaluation", min=1, max=65536),
    "num_beams": Key(int, 1, "beam width for generation (1 = greedy)", min=1, max=64),
    "prompt_template": Key(str, "a photo of a {}", "CLIP zero-shot class prompt; {} is the class name"),
    "timing_warmup_steps": Key(int, 3, "first steps left out of step-time statistics", min=0, max=10**8),
    "timeout_s": Key(NUMBER, 1800, "wall-clock limit per cell; past it the cell is recorded as timeout", above=0, max=30 * 86400),
    "diverge_loss": Key(NUMBER, 1e4, "a loss above this (or NaN/inf) stops the cell as diverged", above=0, max=1e30),
    "memory_cap_mb": Key(NUMBER, None, "treat memory above this (MB above the cell's baseline) as out-of-memory", above=0, max=1e9),
    "save": Key(bool, True, "keep the trained adapter in PEFT's format (adapter_config.json + adapter_model.safetensors) "
                "under the results folder's artifacts/<suite>/<cell>/<seed>/ (`bench export` reads it); full fine-tunes "
                "only with save_full", in_id="never"),
    "save_full": Key(bool, False, "keep a full fine-tune's whole model too (safetensors: the model's full size)",
                     in_id="never"),
    "serve": Key(bool, True, "after evaluating, measure what serving the trained model costs: latency, throughput and "
                 "memory of the adapter unmerged, merged (merge_and_unload) and, for QLoRA, over its 4-bit base; the merged "
                 "model's quality too", in_id="never"),
    "serve_4bit": Key(bool, False, "also serve an adapter of another kind over the base quantised to 4 bits (NF4)",
                      in_id="never"),
    "serve_batch_size": Key(int, 8, "samples in the batched request whose throughput the serving measurement reports",
                            min=1, max=65536, in_id="never"),
    "serve_rounds": Key(int, 5, "interleaved timing rounds of the serving measurement (one warm-up before)", min=1, max=1000,
                        in_id="never"),
    "sweep": Key(dict, None, "training keys to try, each a list of values, e.g. {lr = [1e-4, 3e-4, 1e-3]} (`lr = [...]` in any "
                 "training table says the same): every combination trains on the training split less validation_size "
                 "samples, the task's metric on those picks one, and only it is evaluated; repeats reuse repeat 0's pick",
                 in_id="unless_default"),
    "validation_size": Key(int, 64, "with a sweep: training samples held out (the same ones for every method) to pick its "
                           "values; never the evaluation split", min=1, max=10**7, in_id="unless_default"),
}

# the training keys a sweep may vary: what moves the optimisation, not what the evaluation or the cost is
SWEEPABLE = ("lr", "steps", "epochs", "batch_size", "grad_accum", "schedule", "warmup_steps", "weight_decay", "max_grad_norm",
             "optimizer")
MAX_SWEEP = 32  # combinations per cell: each one trains

MODEL_KEYS = {
    "family": Key(str, None, "model family", choices=tuple(FAMILIES), required=True),
    "preset": Key(str, "tiny", "embedded architecture: tiny / small (CPU) or the real checkpoint's shape (full; qwen2_vl: "
                  "2b, 7b); family auto has none"),
    "checkpoint": Key(str, None, "Hugging Face id or local directory of real weights"),
    "weights": Key(str, None, "pretrained (load checkpoint), random (architecture only: cost is real, quality n/a), zoo (bench's "
                   "pretrained tiny base); default: pretrained with a checkpoint, zoo without", choices=("pretrained", "random", "zoo")),
    "backend": Key(str, "transformers", "implementation (CLIP also: open_clip)", choices=("transformers", "open_clip")),
    "revision": Key(str, None, "checkpoint revision (branch, tag or commit)"),
    "trust_remote_code": Key(bool, False, "allow the checkpoint's own Python code to run (marked in reports)"),
    "components": Key(dict, None, "chat families (smolvlm, qwen2_vl, auto): component -> module-name prefixes, e.g. "
                      "{language = [\"model.language_model\", \"lm_head\"], vision = [\"model.visual\"]}, for a layout "
                      "bench does not find by itself"),
    "train": Key(dict, None, "training-setting overrides for cells of this model"),
}

METHOD_KEYS = {
    "kind": Key(str, None, "fine-tuning method", choices=tuple(METHOD_KINDS), required=True),
    "r": Key(int, 8, "adapter rank (lora, dora, qlora, loha, lokr, vera)", min=1, max=65536),
    "alpha": Key(NUMBER, None, "LoRA scaling numerator (default 2·r)", above=0, max=1e6),
    "dropout": Key(NUMBER, 0.05, "adapter dropout probability", min=0, below=1),
    "targets": Key(dict, None, "component → module leaf names, e.g. {language = [\"q_proj\", \"v_proj\"]}; default: the family's recipe"),
    "train_full": Key(list, None, "components trained in full beside the adapters (default [\"projector\"]; [] for none)"),
    "freeze": Key(list, [], "components kept frozen under kind = \"full\" (e.g. [\"vision\"])"),
    "quant_type": Key(str, "nf4", "QLoRA 4-bit data type", choices=("nf4", "fp4")),
    "double_quant": Key(bool, True, "QLoRA double quantisation of the quantisation constants"),
    "compute_dtype": Key(str, "auto", "QLoRA compute dtype (auto: bf16 on CUDA, fp32 on the CPU)", choices=("auto", "float32", "bfloat16", "float16")),
    "num_virtual_tokens": Key(int, 20, "kind = \"prompt_tuning\": learnt embeddings put before the language model's input",
                              min=1, max=4096),
    "objective": Key(str, "sft", "what training optimises: sft (the next-token loss on the answers) or dpo (TRL's Direct "
                     "Preference Optimization on a preference dataset's pairs)", choices=("sft", "dpo")),
    "beta": Key(NUMBER, 0.1, "objective = \"dpo\": β, how strongly the tuned model is held to its reference (TRL's beta)",
                above=0, max=1e4),
    "start_from": Key(dict, None, "an adapter method: the cell whose kept adapter this one trains on from (under dpo also "
                      "its reference), as {dataset = ..., method = ...} (model: the cell's own), e.g. SFT then DPO; it "
                      "runs first"),
    "sources": Key(list, None, "kind = \"merge\" or \"fusion\": the cells whose kept LoRA adapters it combines (merge: no "
                   "training) or learns to mix (fusion: X-LoRA), as tables {dataset = ..., method = ...} (model: the "
                   "composed cell's own); they run first"),
    "combination": Key(str, "linear", "kind = \"merge\": PEFT's add_weighted_adapter combination type",
                       choices=COMBINATIONS),
    "weights": Key(list, None, "kind = \"merge\": one weight per source (default: 1/n each; for one source, 1: that "
                   "adapter as it is)"),
    "density": Key(NUMBER, None, "kind = \"merge\" with ties / dare / magnitude_prune: the share of each adapter's "
                   "weights kept", above=0, max=1),
    "train": Key(dict, None, "training-setting overrides for cells of this method"),
}

GRID_KEYS = {
    "models": Key(list, None, "model names", required=True),
    "datasets": Key(list, None, "dataset names", required=True),
    "methods": Key(list, None, "method names", required=True),
    "exclude": Key(list, [], "tables {model?, dataset?, method?} of combinations to skip"),
    "train": Key(dict, None, "training-setting overrides for this grid's cells"),
    "retention": Key(str, None, "a dataset of the suite, of the grid's task, on which base and tuned quality are also "
                     "measured (e.g. the scenes source split while tuning on target): Δ retention, what the method forgot"),
}

GATE_KEYS = {
    "rules": Key(list, None, "regression rules, e.g. [\"peak_memory_mb:+5%\", \"delta:-0.5\", \"status:ok\"]"),
    "baseline": Key(str, None, "baseline results file for `bench gate` (relative to the suite file)"),
}

CLUSTER_KEYS = {
    "executor": Key(str, None, "run cells as submitit jobs: on Slurm, or locally through the same path (`bench run --executor` overrides)",
                    choices=("local", "slurm")),
    "partition": Key(str, None, "Slurm partition"),
    "gpus_per_cell": Key(int, 0, "GPUs each Slurm job asks for", min=0, max=1024),
    "cpus_per_cell": Key(int, None, "CPUs each Slurm job asks for", min=1, max=4096),
    "poll_s": Key(NUMBER, 30.0, "seconds between the driver's looks at its jobs (one sacct call for all)", min=0.05, max=3600),
}

EXCLUDE_KEYS = {"model": Key(str), "dataset": Key(str), "method": Key(str)}

TOP_LEVEL = ("suite", "defaults", "models", "datasets", "methods", "grid", "gate", "cluster")


def _fmt_default(k: Key) -> str:
    if k.required:
        return "required"
    if k.default is None:
        return "—"
    if isinstance(k.default, bool):
        return "true" if k.default else "false"
    if isinstance(k.default, str):
        return f'"{k.default}"'
    return str(k.default)


def _fmt_doc(k: Key) -> str:
    doc = k.doc.replace("|", "\\|").replace("<", "&lt;")  # a bare <name> would render as an HTML tag and vanish
    if k.choices:
        doc += " (" + " / ".join(f"`{c}`" for c in k.choices) + ")"
    return doc


def markdown_tables() -> str:
    """The README's key reference, generated from the tables above (a test keeps the README in sync)."""
    from bench.data.loader import DATASET_KEYS

    datasets = DATASET_KEYS
    sections = [("[suite]", SUITE_KEYS), ("[defaults] (and every `train = {...}` override)", TRAIN_KEYS),
                ("[models.NAME]", MODEL_KEYS), ("[datasets.NAME]", datasets), ("[methods.NAME]", METHOD_KEYS),
                ("[[grid]]", GRID_KEYS), ("[gate]", GATE_KEYS), ("[cluster]", CLUSTER_KEYS)]
    out = []
    for title, spec in sections:
        out += [f"#### {title}", "", "| key | default | meaning |", "|---|---|---|"]
        out += [f"| `{name}` | {_fmt_default(k)} | {_fmt_doc(k)} |" for name, k in spec.items()]
        out.append("")
    return "\n".join(out)


def sync_readme(path: str = "README.md") -> bool:
    """Rewrite the block between the keys markers; True when it changed."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    begin, end = "<!-- keys:begin -->", "<!-- keys:end -->"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{markdown_tables()}\n{end}{tail}"
    if new != text:
        p.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README.md updated" if sync_readme() else "README.md already up to date")

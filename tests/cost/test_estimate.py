"""bench.cost.estimate against the arithmetic of its docstring, worked by hand on the tiny configs; cell._breakdown's bytes."""

from __future__ import annotations

import copy

import pytest
from transformers import CLIPConfig, LlavaConfig

from bench.cost.estimate import estimate_cells, estimate_memory
from bench.methods import apply_method, count_params, quantization_config
from bench.models import clip, llava
from bench.models.base import ModelSpec
from bench.run.cell import _breakdown
from bench.suite.load import load_suite
from bench.suite.plan import expand
from bench.train import TrainResult

MB = 1024 * 1024
LLAVA = LlavaConfig(**copy.deepcopy(llava.PRESETS["tiny"]))  # vision 32 px / patch 8, hidden 64, 4 heads, 2 layers
CLIP = CLIPConfig(**copy.deepcopy(clip.PRESETS["tiny"]))
VOCAB = 91  # the tiny word-level vocabulary
TRAIN = {"precision": "fp32", "optimizer": "adamw", "batch_size": 2, "max_seq_len": 8, "gradient_checkpointing": False}


def counts(total: int, trainable: dict[str, int], totals: dict[str, int], **more) -> dict:
    """A count_params-shaped dict written by hand."""
    by = {c: {"total": t, "trainable": trainable.get(c, 0)} for c, t in totals.items()}
    return {"total": total, "trainable": sum(trainable.values()), "by_component": by, **more}


TOTALS = {"vision": 80_000, "projector": 8_000, "language": 112_000}
FULL = counts(200_000, dict(TOTALS), TOTALS)
LORA = counts(200_000, {"projector": 8_000, "language": 2_000}, TOTALS)
QLORA = counts(200_000, {"projector": 8_000, "language": 2_000}, TOTALS, quantized=60_000)


def block(tokens: int, seq: int, act_bytes: int, hidden: int = 64, heads: int = 4) -> float:
    """Korthikanti et al.: one transformer block's stored activations (their 34 assumes 2-byte activations)."""
    return tokens * hidden * (34 + 5 * heads * seq / hidden) * act_bytes / 2


# batch 2: the vision tower sees 16 patches + CLS per image; Llama sees the 16 image tokens + 8 text tokens
VISION = 2 * block(2 * 17, 17, 4)
LANGUAGE = 2 * block(2 * 24, 24, 4)
# every position Llama runs (16 image + 8 text) × vocab × (fp32 logits, their fp32 copy in the loss, fp32 gradient)
LOGITS = 2 * 24 * VOCAB * (4 + 4 + 4)
# with checkpointing: each block keeps its input (tokens × hidden × 4 B) and one block is recomputed in full
VISION_CKPT = 2 * (2 * 17 * 64 * 4) + block(2 * 17, 17, 4)
LANGUAGE_CKPT = 2 * (2 * 24 * 64 * 4) + block(2 * 24, 24, 4)


def expect(weights: float, gradients: float, optimizer: float, activations: float, text_len: int = 8) -> dict:
    """AdamW: during step() foreach holds one more state-sized buffer (optimizer / 2), when activations are gone."""
    step = optimizer / 2
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations, "optimizer_step": step}
    return {**{k: pytest.approx(v / MB, abs=0.006) for k, v in parts.items()},
            "total_mb": pytest.approx((weights + gradients + optimizer + max(activations, step)) / MB, abs=0.006),
            "text_len": text_len}


@pytest.mark.parametrize("ckpt", [False, True])
def test_full_fine_tuning(ckpt):
    got = estimate_memory("llava", LLAVA, FULL, {**TRAIN, "gradient_checkpointing": ckpt}, "full")
    acts = (VISION_CKPT + LANGUAGE_CKPT if ckpt else VISION + LANGUAGE) + LOGITS
    # fp32: 4 B weights, 4 B gradients, AdamW's exp_avg + exp_avg_sq at 4 B each
    assert got == expect(200_000 * 4, 200_000 * 4, 200_000 * 2 * 4, acts)


@pytest.mark.parametrize("ckpt", [False, True])
def test_lora_keeps_no_activations_for_the_frozen_vision_tower(ckpt):
    got = estimate_memory("llava", LLAVA, LORA, {**TRAIN, "gradient_checkpointing": ckpt}, "lora")
    acts = (LANGUAGE_CKPT if ckpt else LANGUAGE) + LOGITS  # nothing trainable before the projector
    assert got == expect(200_000 * 4, 10_000 * 4, 10_000 * 2 * 4, acts)


@pytest.mark.parametrize("ckpt", [False, True])
def test_qlora_prices_the_4bit_weights_at_half_a_byte_plus_constants(ckpt):
    got = estimate_memory("llava", LLAVA, QLORA, {**TRAIN, "gradient_checkpointing": ckpt, "double_quant": True}, "qlora")
    weights = 60_000 * (0.5 + 0.127 / 8) + (200_000 - 60_000) * 4  # double quantisation: 0.127 bit/param of constants
    acts = (LANGUAGE_CKPT if ckpt else LANGUAGE) + LOGITS
    assert got == expect(weights, 10_000 * 4, 10_000 * 2 * 4, acts)
    single = estimate_memory("llava", LLAVA, QLORA, {**TRAIN, "double_quant": False}, "qlora")
    assert single["weights"] == pytest.approx((60_000 * (0.5 + 0.5 / 8) + 140_000 * 4) / MB, abs=0.006)


def test_qlora_in_bf16_keeps_fp32_parameters_and_2_byte_activations():
    got = estimate_memory("llava", LLAVA, QLORA, {**TRAIN, "precision": "bf16", "double_quant": True}, "qlora")
    # peft's prepare_model_for_kbit_training casts every parameter that is not 4-bit to fp32, so the rest of the
    # weights, the gradients and AdamW's states stay at 4 B; bf16 autocast halves the activations and the logits'
    # first copy (lm_head runs under autocast), not their fp32 copy and gradient
    acts = 2 * block(48, 24, 2) + 2 * 24 * VOCAB * (2 + 4 + 4)
    assert got == expect(60_000 * (0.5 + 0.127 / 8) + 140_000 * 4, 10_000 * 4, 10_000 * 2 * 4, acts)


def test_prepare_model_for_kbit_training_casts_bf16_parameters_to_fp32():
    """The library behaviour the QLoRA estimate relies on (peft 0.21)."""
    import peft
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 4)).to(torch.bfloat16)
    peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_qlora_without_a_4bit_count_falls_back_to_the_language_model_less_embeddings():
    got = estimate_memory("llava", LLAVA, LORA, {**TRAIN, "double_quant": True}, "qlora")
    quantized = (112_000 - 2_000) - 2 * VOCAB * 64  # frozen language params less embed_tokens and lm_head
    assert got["weights"] == pytest.approx((quantized * (0.5 + 0.127 / 8) + (200_000 - quantized) * 4) / MB, abs=0.006)


# in bf16: torch's optimizers keep states in the parameters' dtype (2 B); bitsandbytes' 8-bit ones 1 B, its 32-bit ones 4 B
@pytest.mark.parametrize("optimizer, states, nbytes", [("adamw", 2, 2), ("sgd", 1, 2), ("adamw_8bit", 2, 1),
                                                        ("paged_adamw_8bit", 2, 1), ("paged_adamw_32bit", 2, 4)])
def test_optimizer_state_bytes_in_bf16(optimizer, states, nbytes):
    got = estimate_memory("llava", LLAVA, LORA, {**TRAIN, "precision": "bf16", "optimizer": optimizer}, "lora")
    assert got["optimizer"] == pytest.approx(10_000 * states * nbytes / MB, abs=0.006)
    # only torch's foreach AdamW holds a state-sized buffer through step()
    assert got["optimizer_step"] == (pytest.approx(10_000 * 2 / MB, abs=0.006) if optimizer == "adamw" else 0)


def test_full_fine_tuning_peaks_in_the_optimizer_step_when_activations_are_small():
    got = estimate_memory("llava", LLAVA, FULL, {**TRAIN, "batch_size": 1, "gradient_checkpointing": True}, "full")
    assert got["optimizer_step"] > got["activations"]
    assert got["total_mb"] == pytest.approx(got["weights"] + got["gradients"] + got["optimizer"] + got["optimizer_step"], abs=0.02)


@pytest.mark.parametrize("trainable, towers", [
    ({"vision": 80_000, "projector": 8_000}, ["vision"]),  # freeze = ["language"]
    ({"language": 112_000, "projector": 8_000}, ["language"]),  # freeze = ["vision"]
    (dict(TOTALS), ["vision", "language"]),
])
def test_clip_towers_run_side_by_side(trainable, towers):
    params = counts(200_000, trainable, TOTALS)
    got = estimate_memory("clip", CLIP, params, TRAIN, "full")
    per_tower = {"vision": 2 * block(2 * 17, 17, 4), "language": 2 * block(2 * 8, 8, 4)}  # text: max_seq_len tokens, no logits
    assert got["activations"] == pytest.approx(sum(per_tower[t] for t in towers) / MB, abs=0.006)


def test_estimate_cells_skips_open_clip_models_without_a_memory_model(write_suite):
    path = write_suite("""
        [models.hf]
        family = "clip"
        weights = "random"
        [models.oc]
        family = "clip"
        weights = "random"
        backend = "open_clip"
        [datasets.cls]
        format = "scenes"
        task = "classification"
        [methods.lora]
        kind = "lora"
        [[grid]]
        models = ["hf", "oc"]
        datasets = ["cls"]
        methods = ["lora"]
    """)
    cells = {c.model["name"]: c for c in expand(load_suite(path))}
    estimates = estimate_cells(list(cells.values()))
    assert set(estimates) == {cells["hf"].cell_id}
    assert estimates[cells["hf"].cell_id]["total_mb"] > 0


# ---------------------------------------------------------------- cell._breakdown


@pytest.fixture(scope="module")
def clip_lora():
    loaded = clip.build(ModelSpec(name="clip-t", family="clip", preset="tiny", weights="random"))
    method = {"name": "lora", "kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None}
    return loaded, apply_method(loaded, method, clip)


def test_breakdown_of_a_float32_lora_model(clip_lora):
    loaded, model = clip_lora
    n = count_params(model, loaded.components)
    assert (n["total"], n["trainable"]) == (165_825 + 2_048, 8_193 + 2_048)  # tiny CLIP + adapters; projections + adapters
    got = _breakdown(model, TrainResult(steps=1, optimizer_state_bytes=81_964), peak_mb=10.0)
    weights, trainable, optimizer = 167_873 * 4 / MB, 10_241 * 4 / MB, 81_964 / MB
    assert got == {"weights": pytest.approx(weights, abs=5e-4), "trainable": pytest.approx(trainable, abs=5e-4),
                   "gradients": pytest.approx(trainable, abs=5e-4), "optimizer": pytest.approx(optimizer, abs=5e-4),
                   "activations": pytest.approx(10.0 - weights - trainable - optimizer, abs=5e-4)}
    assert _breakdown(model, TrainResult(steps=1), peak_mb=None)["activations"] is None
    assert _breakdown(model, TrainResult(steps=1), peak_mb=0.1)["activations"] == 0.0  # never negative


def test_breakdown_counts_4bit_weights_at_their_stored_size():
    method = {"name": "q", "kind": "qlora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None,
              "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}
    loaded = clip.build(ModelSpec(name="clip-t", family="clip", preset="tiny", weights="random"),
                        quantization=quantization_config(method, "cpu"))
    model = apply_method(loaded, method, clip)
    n = count_params(model, loaded.components)
    # every Linear but the two projections is 4-bit: 2 towers × 2 layers × (4 × 64² + 2 × 64 × 128)
    assert n["quantized"] == 2 * 2 * (4 * 64 * 64 + 2 * 64 * 128)
    got = _breakdown(model, TrainResult(steps=1), peak_mb=None)
    assert got["weights"] == pytest.approx(((n["total"] - n["quantized"]) * 4 + n["quantized"] / 2) / MB, abs=5e-4)

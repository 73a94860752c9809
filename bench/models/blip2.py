"""BLIP-2, the captioning family: a ViT, a Q-Former with learned query tokens, and OPT, in transformers.

Presets are plain data (importing this module loads neither torch nor transformers). "full" is
Salesforce/blip2-opt-2.7b exactly (3,744,761,856 parameters on the meta device); "tiny" and
"small" keep its shape at CPU scale and use bench's word-level tokenizer. Every model comes with
a real Blip2Processor, so the captioning task talks to tiny presets and checkpoints alike: the
processor puts `num_query_tokens` image tokens in front of the text, and the model swaps the
Q-Former's outputs in at those positions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bench.data.vocabulary import WORDS
from bench.errors import SuiteError
from bench.models.base import LoadedModel, ModelSpec
from bench.models.hub import checkpoint_error, local_config, preflight_checkpoint
from bench.models.tokenizer import SPECIAL_TOKENS

FAMILY = "blip2"
TASK = "caption"
BACKENDS = ("transformers",)
DEFAULT_CHECKPOINTS = {"full": "Salesforce/blip2-opt-2.7b"}

# The tiny tokenizer's size and special ids, counted the way bench.models.tokenizer builds it, so PRESETS
# stay plain data (a test checks them against tiny_tokenizer()).
TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + sum(w not in SPECIAL_TOKENS for w in WORDS)
_PAD, _BOS, _EOS, _IMAGE = (SPECIAL_TOKENS.index(t) for t in ("<pad>", "<s>", "</s>", "<image>"))
_TINY_IDS = {"pad_token_id": _PAD, "bos_token_id": _BOS, "eos_token_id": _EOS}


def _tiny_shape(*, hidden: int, ffn: int, layers: int, image_size: int, patch_size: int, heads: int = 4) -> dict:
    return {
        "vision_config": {"image_size": image_size, "patch_size": patch_size, "hidden_size": hidden,
                          "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads},
        "qformer_config": {"hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
                           "num_attention_heads": heads, "cross_attention_frequency": 2},
        "text_config": {"model_type": "opt", "vocab_size": TINY_VOCAB_SIZE, "hidden_size": hidden, "ffn_dim": ffn,
                        "word_embed_proj_dim": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                        "max_position_embeddings": 128, **_TINY_IDS},
        "num_query_tokens": 8,
        "image_token_index": _IMAGE,
    }


PRESETS: dict[str, dict] = {
    "tiny": _tiny_shape(hidden=64, ffn=128, layers=2, image_size=32, patch_size=8),
    "small": _tiny_shape(hidden=256, ffn=1024, layers=4, image_size=64, patch_size=16),
    # Salesforce/blip2-opt-2.7b's config.json (the Nov 2024 revision that added the <image> token at 50265
    # and padded OPT's vocabulary to 50304), architecture fields as published
    "full": {
        "vision_config": {"image_size": 224, "patch_size": 14, "hidden_size": 1408, "intermediate_size": 6144,
                          "num_hidden_layers": 39, "num_attention_heads": 16, "layer_norm_eps": 1e-6, "qkv_bias": True},
        "qformer_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "cross_attention_frequency": 2, "vocab_size": 30522,
                           "max_position_embeddings": 512, "layer_norm_eps": 1e-12},
        "text_config": {"model_type": "opt", "vocab_size": 50304, "hidden_size": 2560, "ffn_dim": 10240,
                        "word_embed_proj_dim": 2560, "num_hidden_layers": 32, "num_attention_heads": 32,
                        "max_position_embeddings": 2048, "activation_function": "relu", "do_layer_norm_before": True,
                        "enable_bias": True, "prefix": "</s>", "pad_token_id": 1, "bos_token_id": 2,
                        "eos_token_id": 50118},
        "num_query_tokens": 32,
        "image_token_index": 50265,
        "image_text_hidden_size": 256,
    },
}

_COMPONENTS = {
    "vision": ("vision_model",),
    "qformer": ("qformer", "query_tokens"),
    "projector": ("language_projection",),
    "language": ("language_model",),  # OPTForCausalLM, its (tied) lm_head included
}
# Default adapter targets within a component: OPT's attention q/v for the LoRA family; k/v and the
# feed-forward output (fc2) for IA3. The vision tower's attention is one fused `qkv`, the Q-Former's
# query/key/value: neither matches these leaf names, and targeting by component path keeps it so.
_LORA_LIKE = ("lora", "qlora", "dora", "loha", "lokr", "vera", "oft")
_TARGETS = {**{k: {"language": ("q_proj", "v_proj")} for k in _LORA_LIKE},
            "ia3": {"language": ("k_proj", "v_proj", "fc2")}}
_FEEDFORWARD = ("fc2",)
# Kept in full precision under 4-bit loading: everything but the language model's linear layers.
# (transformers also keeps `qformer` and `query_tokens` in fp32 by itself: _keep_in_fp32_modules.)
QUANTIZATION_SKIP = ("vision_model", "qformer", "language_projection", "lm_head")


# ---------------------------------------------------------------- interface


def components(model, backend: str = "transformers") -> dict[str, tuple[str, ...]]:
    """Component -> prefixes that exist in `model` (a parameter or module name matches by prefix)."""
    _check_backend(backend)
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_modules()}
    return {
        comp: tuple(p for p in prefixes if any(n == p or n.startswith(p + ".") for n in names))
        for comp, prefixes in _COMPONENTS.items()
    }


def default_targets(kind: str, backend: str = "transformers") -> dict[str, tuple[str, ...]]:
    """Component -> leaf module names a PEFT method of `kind` adapts by default."""
    _check_backend(backend)
    if kind not in _TARGETS:
        raise SuiteError(
            f"method kind {kind!r} has no default BLIP-2 targets",
            fix=f"use one of {sorted(_TARGETS)}, or give the method explicit `targets`",
        )
    return dict(_TARGETS[kind])


def feedforward_modules(backend: str = "transformers") -> tuple[str, ...]:
    """IA3's feed-forward leaves (scaled on their input rather than their output)."""
    _check_backend(backend)
    return _FEEDFORWARD


def build(spec: ModelSpec, *, device: str = "cpu", dtype=None, quantization=None, seed: int = 0) -> LoadedModel:
    """The model and its processor. Random weights are drawn from `seed` without touching the global RNG."""
    import torch

    dtype = dtype or torch.float32
    _check_backend(spec.backend)
    if _wants_checkpoint(spec):
        return _load(spec, device=device, dtype=dtype, quantization=quantization)
    return _random(spec, device=device, dtype=dtype, quantization=quantization, seed=seed)


def build_meta(spec: ModelSpec):
    """The same architecture on the meta device: parameter counts with no memory and no weights."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    config, _ = _config(spec)
    with torch.device("meta"):
        return Blip2ForConditionalGeneration(config)


def save(loaded: LoadedModel, path) -> None:
    """Write weights (safetensors), config and processor so that build(checkpoint=path) restores them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(path)
    loaded.processor.save_pretrained(path)


# ---------------------------------------------------------------- processor


def tiny_processor(image_size: int, num_query_tokens: int):
    """A real Blip2Processor around bench's tiny tokenizer, for models built from a preset."""
    from transformers import BlipImageProcessor, Blip2Processor

    from bench.models.tokenizer import tiny_tokenizer

    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return _fix_image_token(
        Blip2Processor(image_processor=image_processor, tokenizer=tiny_tokenizer(), num_query_tokens=num_query_tokens)
    )


def _fix_image_token(processor):
    # transformers 5.23's Blip2Processor takes `tokenizer.image_token` when the tokenizer has one (bench's tiny
    # tokenizer does, as a str) but then reads `.content` from it, which only an AddedToken has.
    from transformers import AddedToken

    token = getattr(processor, "image_token", None)
    if isinstance(token, str):
        processor.image_token = AddedToken(token, normalized=False, special=True)
    return processor


# ---------------------------------------------------------------- building


def _load(spec: ModelSpec, *, device, dtype, quantization) -> LoadedModel:
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    where = f"models.{spec.name}"
    preflight_checkpoint(spec.checkpoint, revision=spec.revision, where=where, file=None)
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code, "dtype": dtype}
    if quantization is not None:
        kwargs.update(quantization_config=_with_skips(quantization), device_map={"": device})
    try:
        model = Blip2ForConditionalGeneration.from_pretrained(spec.checkpoint, **kwargs)
        processor = AutoProcessor.from_pretrained(
            spec.checkpoint, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except OSError as exc:  # config present but weights or processor files missing
        raise checkpoint_error(spec.checkpoint, f"cannot be loaded ({exc})", where=where) from None
    if quantization is None:
        model.to(device)
    info = _info(spec, weights="pretrained", config=model.config, source=spec.checkpoint,
                 tokenizer="checkpoint", quantized=quantization is not None)
    return LoadedModel(model, _fix_image_token(processor), FAMILY, "transformers", components(model), info)


def _random(spec: ModelSpec, *, device, dtype, quantization, seed: int) -> LoadedModel:
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    config, source = _config(spec)
    processor, tokenizer_kind = None, "tiny"
    if spec.checkpoint and not source.startswith("preset"):
        try:  # the checkpoint's own processor, when its files are in the cache too
            processor = AutoProcessor.from_pretrained(spec.checkpoint, revision=spec.revision, local_files_only=True)
            tokenizer_kind = "checkpoint"
        except (OSError, ValueError):
            processor = None
    if processor is None:
        # The tiny tokenizer's special ids are not architecture: generation and the image-token swap use them.
        for key, value in _TINY_IDS.items():
            setattr(config.text_config, key, value)
        config.image_token_index = _IMAGE
        processor = tiny_processor(config.vision_config.image_size, config.num_query_tokens)
    with _seeded(seed):
        model = Blip2ForConditionalGeneration(config)
    if quantization is not None:
        model = _requantize(model, quantization, device=device, dtype=dtype)
    else:
        model.to(device=device, dtype=dtype)
    info = _info(spec, weights="random", config=config, source=source, seed=seed,
                 tokenizer=tokenizer_kind, quantized=quantization is not None)
    return LoadedModel(model, _fix_image_token(processor), FAMILY, "transformers", components(model), info)


def _config(spec: ModelSpec):
    """(Blip2Config, where it came from): the checkpoint's config.json when it is here, else the preset."""
    from transformers import Blip2Config

    if spec.checkpoint:
        raw = local_config(spec.checkpoint, revision=spec.revision)
        if raw is not None:
            if raw.get("model_type") not in (None, "blip-2"):
                raise SuiteError(
                    f"checkpoint {spec.checkpoint!r} is a {raw.get('model_type')!r} model, not BLIP-2",
                    where=f"models.{spec.name}", fix="use a BLIP-2 checkpoint or another model family",
                )
            return Blip2Config.from_dict(raw), f"config.json of {spec.checkpoint}"
        if spec.preset is None:
            raise checkpoint_error(spec.checkpoint, "its config.json is not here and no `preset` is named",
                                   where=f"models.{spec.name}")
    return Blip2Config(**copy.deepcopy(_preset(spec))), f"preset {spec.preset}"


def _requantize(model, quantization, *, device, dtype):
    """Load a config-built model through from_pretrained so bitsandbytes quantises it as it would real weights."""
    from transformers import Blip2ForConditionalGeneration

    with tempfile.TemporaryDirectory(prefix="bench-blip2-") as tmp:
        model.save_pretrained(tmp)
        return Blip2ForConditionalGeneration.from_pretrained(
            tmp, quantization_config=_with_skips(quantization), device_map={"": device}, dtype=dtype
        )


def _with_skips(quantization):
    if getattr(quantization, "llm_int8_skip_modules", None):
        return quantization
    quantization = copy.deepcopy(quantization)
    quantization.llm_int8_skip_modules = list(QUANTIZATION_SKIP)
    return quantization


# ---------------------------------------------------------------- helpers


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise SuiteError(f"BLIP-2 has no backend {backend!r}", fix=f"set backend to one of {list(BACKENDS)}")
    return backend


def _wants_checkpoint(spec: ModelSpec) -> bool:
    # "zoo" names bench's own trained base: by the time a model is built it is a saved directory
    return bool(spec.checkpoint) and spec.weights in ("pretrained", "zoo")


def _preset(spec: ModelSpec) -> dict:
    if spec.preset not in PRESETS:
        raise SuiteError(f"BLIP-2 has no preset {spec.preset!r}", where=f"models.{spec.name}",
                         fix=f"set preset to one of {list(PRESETS)}, or name a `checkpoint`")
    return PRESETS[spec.preset]


@contextmanager
def _seeded(seed: int):
    """Same seed, same random weights; the caller's RNG stream is left where it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _info(spec: ModelSpec, *, weights: str, config, source: str, tokenizer: str, quantized: bool,
          seed: int | None = None) -> dict:
    blob = json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
    return {
        "checkpoint": spec.checkpoint, "revision": spec.revision, "preset": spec.preset, "weights": weights,
        "config_source": source, "config_hash": hashlib.sha256(blob).hexdigest()[:12], "seed": seed,
        "image_size": config.vision_config.image_size, "context_length": config.text_config.max_position_embeddings,
        "image_tokens": config.num_query_tokens, "tokenizer": tokenizer, "quantized": quantized,
    }

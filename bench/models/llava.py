"""LLaVA, the visual-instruction family: a CLIP vision tower, a two-layer MLP projector and Llama, in transformers.

Presets are plain data (importing this module loads neither torch nor transformers). "full" is
llava-hf/llava-1.5-7b-hf exactly (7,063,427,072 parameters on the meta device; its language model
has LLaMA-7B's shape); "tiny" and "small" keep the shape at CPU scale and use bench's word-level
tokenizer. Every model comes with a real LlavaProcessor, which expands each `<image>` in the
prompt into one image token per patch feature the projector emits.
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

FAMILY = "llava"
TASK = "vqa"
BACKENDS = ("transformers",)
DEFAULT_CHECKPOINTS = {"full": "llava-hf/llava-1.5-7b-hf"}

# The tiny tokenizer's size and special ids, counted the way bench.models.tokenizer builds it, so PRESETS
# stay plain data (a test checks them against tiny_tokenizer()).
TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + sum(w not in SPECIAL_TOKENS for w in WORDS)
_PAD, _BOS, _EOS, _IMAGE = (SPECIAL_TOKENS.index(t) for t in ("<pad>", "<s>", "</s>", "<image>"))
_TINY_IDS = {"pad_token_id": _PAD, "bos_token_id": _BOS, "eos_token_id": _EOS}


def _tiny_shape(*, hidden: int, ffn: int, layers: int, image_size: int, patch_size: int, heads: int = 4) -> dict:
    return {
        "vision_config": {"model_type": "clip_vision_model", "image_size": image_size, "patch_size": patch_size,
                          "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
                          "num_attention_heads": heads},
        "text_config": {"model_type": "llama", "vocab_size": TINY_VOCAB_SIZE, "hidden_size": hidden,
                        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
                        "num_key_value_heads": heads, "max_position_embeddings": 256, **_TINY_IDS},
        "image_token_index": _IMAGE,
        "image_seq_length": (image_size // patch_size) ** 2,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "pad_token_id": _PAD,
    }


PRESETS: dict[str, dict] = {
    "tiny": _tiny_shape(hidden=64, ffn=128, layers=2, image_size=32, patch_size=8),
    "small": _tiny_shape(hidden=256, ffn=1024, layers=4, image_size=64, patch_size=16),
    # llava-hf/llava-1.5-7b-hf's config.json, architecture fields as published: CLIP ViT-L/14 at 336 px, and
    # Vicuna-7B (LLaMA-7B's shape) with <image> = 32000 and <pad> = 32001 added and the vocabulary padded to 32064
    "full": {
        "vision_config": {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14, "hidden_size": 1024,
                          "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                          "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
                        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False},
        "image_token_index": 32000,
        "image_seq_length": 576,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        "pad_token_id": 32001,
    },
}

_COMPONENTS = {
    "vision": ("model.vision_tower",),
    "projector": ("model.multi_modal_projector",),
    "language": ("model.language_model", "lm_head"),
}
# Default adapter targets within a component: Llama's attention q/v for the LoRA family; k/v and the
# feed-forward output (down_proj) for IA3. The CLIP vision tower has q_proj/v_proj too: targeting by
# component path is what keeps it out.
_LORA_LIKE = ("lora", "qlora", "dora", "loha", "lokr", "vera", "oft")
_TARGETS = {**{k: {"language": ("q_proj", "v_proj")} for k in _LORA_LIKE},
            "ia3": {"language": ("k_proj", "v_proj", "down_proj")}}
_FEEDFORWARD = ("down_proj",)
# Kept in full precision under 4-bit loading: everything but the language model's linear layers.
QUANTIZATION_SKIP = ("model.vision_tower", "model.multi_modal_projector", "lm_head")


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
            f"method kind {kind!r} has no default LLaVA targets",
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
    from transformers import LlavaForConditionalGeneration

    config, _ = _config(spec)
    with torch.device("meta"):
        return LlavaForConditionalGeneration(config)


def save(loaded: LoadedModel, path) -> None:
    """Write weights (safetensors), config and processor so that build(checkpoint=path) restores them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(path)
    loaded.processor.save_pretrained(path)


# ---------------------------------------------------------------- processor


def tiny_processor(image_size: int, patch_size: int, vision_feature_select_strategy: str = "default"):
    """A real LlavaProcessor around bench's tiny tokenizer, for models built from a preset."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    from bench.models.tokenizer import tiny_tokenizer

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    # num_additional_image_tokens=1 counts CLIP's class token, which the "default" strategy then drops:
    # one image token per patch, as the real checkpoint's processor_config.json says.
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tiny_tokenizer(), patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy, image_token="<image>",
        num_additional_image_tokens=1,
    )


# ---------------------------------------------------------------- building


def _load(spec: ModelSpec, *, device, dtype, quantization) -> LoadedModel:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    where = f"models.{spec.name}"
    preflight_checkpoint(spec.checkpoint, revision=spec.revision, where=where, file=None)
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code, "dtype": dtype}
    if quantization is not None:
        kwargs.update(quantization_config=_with_skips(quantization), device_map={"": device})
    try:
        model = LlavaForConditionalGeneration.from_pretrained(spec.checkpoint, **kwargs)
        processor = AutoProcessor.from_pretrained(
            spec.checkpoint, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except OSError as exc:  # config present but weights or processor files missing
        raise checkpoint_error(spec.checkpoint, f"cannot be loaded ({exc})", where=where) from None
    if quantization is None:
        model.to(device)
    info = _info(spec, weights="pretrained", config=model.config, source=spec.checkpoint,
                 tokenizer="checkpoint", quantized=quantization is not None)
    return LoadedModel(model, processor, FAMILY, "transformers", components(model), info)


def _random(spec: ModelSpec, *, device, dtype, quantization, seed: int) -> LoadedModel:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

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
        config.pad_token_id = _PAD
        processor = tiny_processor(config.vision_config.image_size, config.vision_config.patch_size,
                                   config.vision_feature_select_strategy)
    with _seeded(seed):
        model = LlavaForConditionalGeneration(config)
    if quantization is not None:
        model = _requantize(model, quantization, device=device, dtype=dtype)
    else:
        model.to(device=device, dtype=dtype)
    info = _info(spec, weights="random", config=config, source=source, seed=seed,
                 tokenizer=tokenizer_kind, quantized=quantization is not None)
    return LoadedModel(model, processor, FAMILY, "transformers", components(model), info)


def _config(spec: ModelSpec):
    """(LlavaConfig, where it came from): the checkpoint's config.json when it is here, else the preset."""
    from transformers import LlavaConfig

    if spec.checkpoint:
        raw = local_config(spec.checkpoint, revision=spec.revision)
        if raw is not None:
            if raw.get("model_type") not in (None, "llava"):
                raise SuiteError(
                    f"checkpoint {spec.checkpoint!r} is a {raw.get('model_type')!r} model, not LLaVA",
                    where=f"models.{spec.name}", fix="use a LLaVA checkpoint or another model family",
                )
            return LlavaConfig.from_dict(raw), f"config.json of {spec.checkpoint}"
        if spec.preset is None:
            raise checkpoint_error(spec.checkpoint, "its config.json is not here and no `preset` is named",
                                   where=f"models.{spec.name}")
    return LlavaConfig(**copy.deepcopy(_preset(spec))), f"preset {spec.preset}"


def _requantize(model, quantization, *, device, dtype):
    """Load a config-built model through from_pretrained so bitsandbytes quantises it as it would real weights."""
    from transformers import LlavaForConditionalGeneration

    with tempfile.TemporaryDirectory(prefix="bench-llava-") as tmp:
        model.save_pretrained(tmp)
        return LlavaForConditionalGeneration.from_pretrained(
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
        raise SuiteError(f"LLaVA has no backend {backend!r}", fix=f"set backend to one of {list(BACKENDS)}")
    return backend


def _wants_checkpoint(spec: ModelSpec) -> bool:
    # "zoo" names bench's own trained base: by the time a model is built it is a saved directory
    return bool(spec.checkpoint) and spec.weights in ("pretrained", "zoo")


def _preset(spec: ModelSpec) -> dict:
    if spec.preset not in PRESETS:
        raise SuiteError(f"LLaVA has no preset {spec.preset!r}", where=f"models.{spec.name}",
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
    vision = config.vision_config
    return {
        "checkpoint": spec.checkpoint, "revision": spec.revision, "preset": spec.preset, "weights": weights,
        "config_source": source, "config_hash": hashlib.sha256(blob).hexdigest()[:12], "seed": seed,
        "image_size": vision.image_size, "context_length": config.text_config.max_position_embeddings,
        "image_tokens": (vision.image_size // vision.patch_size) ** 2, "tokenizer": tokenizer, "quantized": quantized,
    }

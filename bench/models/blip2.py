"""BLIP-2, the captioning family: a ViT, a Q-Former with learned query tokens, and OPT, in transformers.

Presets are plain data (importing this module loads neither torch nor transformers). "full" is
Salesforce/blip2-opt-2.7b exactly (3,744,761,856 parameters on the meta device); "tiny" and
"small" keep its shape at CPU scale and use bench's word-level tokenizer. Every model comes with
a real Blip2Processor, so the captioning task talks to tiny presets and checkpoints alike: the
processor puts `num_query_tokens` image tokens in front of the text, and the model swaps the
Q-Former's outputs in at those positions.
"""

from __future__ import annotations

from bench.models import hf
from bench.models.base import LoadedModel, ModelSpec, check_backend, present_components, targets_from
from bench.models.tokenizer import IMAGE_ID, TINY_IDS, TINY_VOCAB_SIZE

FAMILY = "blip2"
TASK = "caption"
BACKENDS = ("transformers",)
DEFAULT_CHECKPOINTS = {"full": "Salesforce/blip2-opt-2.7b"}


def _tiny_shape(*, hidden: int, ffn: int, layers: int, image_size: int, patch_size: int, heads: int = 4) -> dict:
    return {
        "vision_config": {"image_size": image_size, "patch_size": patch_size, "hidden_size": hidden,
                          "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads},
        "qformer_config": {"hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
                           "num_attention_heads": heads, "cross_attention_frequency": 2},
        "text_config": {"model_type": "opt", "vocab_size": TINY_VOCAB_SIZE, "hidden_size": hidden, "ffn_dim": ffn,
                        "word_embed_proj_dim": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                        "max_position_embeddings": 128, **TINY_IDS},
        "num_query_tokens": 8,
        "image_token_index": IMAGE_ID,
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
_TARGETS = {"attention": {"language": ("q_proj", "v_proj")}, "ia3": {"language": ("k_proj", "v_proj", "fc2")}}
_FEEDFORWARD = ("fc2",)
# Kept in full precision under 4-bit loading: everything but the language model's linear layers.
# (transformers also keeps `qformer` and `query_tokens` in fp32 by itself: _keep_in_fp32_modules.)
QUANTIZATION_SKIP = ("vision_model", "qformer", "language_projection", "lm_head")


# ---------------------------------------------------------------- interface


def components(model, backend: str = "transformers") -> dict[str, tuple[str, ...]]:
    """Component -> prefixes that exist in `model` (a parameter or module name matches by prefix)."""
    _check_backend(backend)
    return present_components(model, _COMPONENTS)


def default_targets(kind: str, backend: str = "transformers", loaded=None) -> dict[str, tuple[str, ...]]:
    """Component -> leaf module names a PEFT method of `kind` adapts by default (`loaded`: unused, the table holds)."""
    _check_backend(backend)
    return targets_from(_TARGETS, kind, "BLIP-2 targets")


def feedforward_modules(backend: str = "transformers", loaded=None) -> tuple[str, ...]:
    """IA3's feed-forward leaves (scaled on their input rather than their output)."""
    _check_backend(backend)
    return _FEEDFORWARD


def build(spec: ModelSpec, *, device: str = "cpu", dtype=None, quantization=None, seed: int = 0) -> LoadedModel:
    """The model and its processor. Random weights are drawn from `seed` without touching the global RNG."""
    _check_backend(spec.backend)
    return hf.build(spec, _ARCH, device=device, dtype=dtype, quantization=quantization, seed=seed)


def build_meta(spec: ModelSpec):
    """The same architecture on the meta device: parameter counts with no memory and no weights."""
    return hf.build_meta(spec, _ARCH)


def save(loaded: LoadedModel, path) -> None:
    """Write weights (safetensors), config and processor so that build(checkpoint=path) restores them."""
    hf.save(loaded, path)


# ---------------------------------------------------------------- processor


def tiny_processor(image_size: int, num_query_tokens: int):
    """A real Blip2Processor around bench's tiny tokenizer, for models built from a preset."""
    from transformers import Blip2Processor, BlipImageProcessor

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


def _check_backend(backend: str) -> str:
    return check_backend(backend, BACKENDS, "BLIP-2")


_ARCH = hf.Arch(
    family=FAMILY, label="BLIP-2", model_type="blip-2", model_class="Blip2ForConditionalGeneration",
    config_class="Blip2Config", presets=PRESETS, quantization_skip=QUANTIZATION_SKIP, components=components,
    tiny_processor=lambda config: tiny_processor(config.vision_config.image_size, config.num_query_tokens),
    tiny_ids={"image_token_index": IMAGE_ID}, image_tokens=lambda config: config.num_query_tokens,
    fix_processor=_fix_image_token,
)

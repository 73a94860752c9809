"""LLaVA, the visual-instruction family: a CLIP vision tower, a two-layer MLP projector and Llama, in transformers.

Presets are plain data (importing this module loads neither torch nor transformers). "full" is
llava-hf/llava-1.5-7b-hf exactly (7,063,427,072 parameters on the meta device; its language model
has LLaMA-7B's shape); "tiny" and "small" keep the shape at CPU scale and use bench's word-level
tokenizer. Every model comes with a real LlavaProcessor, which expands each `<image>` in the
prompt into one image token per patch feature the projector emits.
"""

from __future__ import annotations

from bench.models import hf
from bench.models.base import LoadedModel, ModelSpec, check_backend, present_components, targets_from
from bench.models.tokenizer import IMAGE_ID, PAD_ID, TINY_IDS, TINY_VOCAB_SIZE

FAMILY = "llava"
TASK = "vqa"
BACKENDS = ("transformers",)
DEFAULT_CHECKPOINTS = {"full": "llava-hf/llava-1.5-7b-hf"}


def _tiny_shape(*, hidden: int, ffn: int, layers: int, image_size: int, patch_size: int, heads: int = 4) -> dict:
    return {
        "vision_config": {"model_type": "clip_vision_model", "image_size": image_size, "patch_size": patch_size,
                          "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
                          "num_attention_heads": heads},
        "text_config": {"model_type": "llama", "vocab_size": TINY_VOCAB_SIZE, "hidden_size": hidden,
                        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
                        "num_key_value_heads": heads, "max_position_embeddings": 256, **TINY_IDS},
        "image_token_index": IMAGE_ID,
        "image_seq_length": (image_size // patch_size) ** 2,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "pad_token_id": PAD_ID,
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
_TARGETS = {"attention": {"language": ("q_proj", "v_proj")}, "ia3": {"language": ("k_proj", "v_proj", "down_proj")}}
_FEEDFORWARD = ("down_proj",)
# Kept in full precision under 4-bit loading: everything but the language model's linear layers.
QUANTIZATION_SKIP = ("model.vision_tower", "model.multi_modal_projector", "lm_head")


# ---------------------------------------------------------------- interface


def components(model, backend: str = "transformers") -> dict[str, tuple[str, ...]]:
    """Component -> prefixes that exist in `model` (a parameter or module name matches by prefix)."""
    _check_backend(backend)
    return present_components(model, _COMPONENTS)


def default_targets(kind: str, backend: str = "transformers", loaded=None) -> dict[str, tuple[str, ...]]:
    """Component -> leaf module names a PEFT method of `kind` adapts by default (`loaded`: unused, the table holds)."""
    _check_backend(backend)
    return targets_from(_TARGETS, kind, "LLaVA targets")


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


def _check_backend(backend: str) -> str:
    return check_backend(backend, BACKENDS, "LLaVA")


def _image_tokens(config) -> int:
    # one per patch: the "default" feature strategy drops CLIP's class token
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


_ARCH = hf.Arch(
    family=FAMILY, label="LLaVA", model_type="llava", model_class="LlavaForConditionalGeneration",
    config_class="LlavaConfig", presets=PRESETS, quantization_skip=QUANTIZATION_SKIP, components=components,
    tiny_processor=lambda config: tiny_processor(config.vision_config.image_size, config.vision_config.patch_size,
                                                 config.vision_feature_select_strategy),
    tiny_ids={"image_token_index": IMAGE_ID, "pad_token_id": PAD_ID}, image_tokens=_image_tokens,
)

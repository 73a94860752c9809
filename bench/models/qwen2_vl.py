"""Qwen2-VL: a ViT with 2-D rotary positions and a patch merger, and Qwen2 with multimodal rotary positions.

Built through AutoModelForImageTextToText (bench/models/chat.py): components and default targets are found from
the model (the merger inside the vision tower is the projector). "2b" and "7b" are Qwen/Qwen2-VL-2B-Instruct's and
Qwen/Qwen2-VL-7B-Instruct's architectures (bench/models/vlm_presets.py); "tiny" keeps the shape at CPU scale, with
a real Qwen2VLProcessor around a word-level tokenizer that has Qwen's special tokens and Qwen2-VL-Instruct's chat
template, so conversations are written and masked exactly as for the real checkpoints.
"""

from __future__ import annotations

from bench.models import hf
from bench.models.chat import CHAT_WORDS, QUANTIZATION_SKIP, ChatFamily, discover_components
from bench.models.tokenizer import vocabulary
from bench.models.vlm_presets import FULL_CHECKPOINTS, FULL_PRESETS

FAMILY = "qwen2_vl"
TASK = "vqa"
BACKENDS = ("transformers",)
DEFAULT_CHECKPOINTS = {"2b": FULL_CHECKPOINTS["qwen2-vl-2b"], "7b": FULL_CHECKPOINTS["qwen2-vl-7b"]}

# Qwen/Qwen2-VL-2B-Instruct's chat template (the 7B's is the same), verbatim
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
PAD_ID, EOS_ID, VISION_START_ID, VISION_END_ID, IMAGE_ID, VIDEO_ID = (SPECIAL_TOKENS.index(t) for t in (
    "<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"))
VOCAB_SIZE = len(vocabulary(SPECIAL_TOKENS, CHAT_WORDS))
TEXT_IDS = {"pad_token_id": PAD_ID, "bos_token_id": PAD_ID, "eos_token_id": EOS_ID}  # Qwen's bos is <|endoftext|>
MERGE = 2  # the merger's spatial_merge_size: 2x2 patches per image token


def _tiny_shape(*, hidden: int, ffn: int, layers: int, image_size: int, patch_size: int, heads: int = 4) -> dict:
    head_dim = hidden // heads
    return {
        "model_type": "qwen2_vl",
        "vision_config": {"depth": layers, "embed_dim": hidden, "hidden_size": hidden, "num_heads": heads,
                          "mlp_ratio": ffn // hidden, "patch_size": patch_size, "spatial_merge_size": MERGE,
                          "temporal_patch_size": 2, "in_channels": 3},
        "text_config": {"vocab_size": VOCAB_SIZE, "hidden_size": hidden, "intermediate_size": ffn,
                        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads // 2,
                        "max_position_embeddings": 256, "tie_word_embeddings": False,
                        # temporal, height, width sections of the rotary half-dimension, in Qwen2-VL's 16:24:24 ratio
                        "rope_scaling": {"type": "mrope", "mrope_section": _mrope_section(head_dim)}, **TEXT_IDS},
        "image_token_id": IMAGE_ID, "video_token_id": VIDEO_ID,
        "vision_start_token_id": VISION_START_ID, "vision_end_token_id": VISION_END_ID,
        "tie_word_embeddings": False,
        # the image processor resizes every image to this many pixels (Qwen2-VL's min_pixels/max_pixels)
        "image_size": image_size,
    }


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    temporal = half * 16 // 64
    return [temporal, (half - temporal) // 2, half - temporal - (half - temporal) // 2]


PRESETS: dict[str, dict] = {
    "tiny": _tiny_shape(hidden=64, ffn=128, layers=2, image_size=64, patch_size=16),
    "2b": FULL_PRESETS["qwen2-vl-2b"],
    "7b": FULL_PRESETS["qwen2-vl-7b"],
}


def tiny_processor(config):
    """A real Qwen2VLProcessor around the tiny word-level tokenizer; every image resized to about image_size² pixels
    (its aspect ratio kept, each side rounded to whole merged patches: a square image gives (side / 32)² tokens)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from bench.models.tokenizer import word_level

    vision = config.vision_config
    pixels = getattr(config, "image_size", 64) ** 2
    tokenizer = word_level(
        SPECIAL_TOKENS, CHAT_WORDS, pad_token="<|endoftext|>", unk_token="<unk>", eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )
    shape = {"patch_size": vision.patch_size, "merge_size": vision.spatial_merge_size,
             "temporal_patch_size": vision.temporal_patch_size}
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, **shape),
                            video_processor=Qwen2VLVideoProcessor(**shape), tokenizer=tokenizer,
                            chat_template=CHAT_TEMPLATE)


def _image_tokens(config):
    """Image tokens of a square image (what bench's bundled data draws); other shapes round to other counts."""
    side = getattr(config, "image_size", None)
    if side is None:  # a real checkpoint: the count follows each image's size
        return None
    return (side // config.vision_config.patch_size // config.vision_config.spatial_merge_size) ** 2


_ARCH = hf.Arch(
    family=FAMILY, label="Qwen2-VL", model_type="qwen2_vl", model_class="AutoModelForImageTextToText",
    config_class="AutoConfig", presets=PRESETS, quantization_skip=QUANTIZATION_SKIP, components=discover_components,
    tiny_processor=tiny_processor,
    tiny_ids={"image_token_id": IMAGE_ID, "video_token_id": VIDEO_ID, "vision_start_token_id": VISION_START_ID,
              "vision_end_token_id": VISION_END_ID},
    image_tokens=_image_tokens, text_ids=TEXT_IDS,
)
_FAMILY = ChatFamily(_ARCH)
components, default_targets, feedforward_modules = _FAMILY.components, _FAMILY.default_targets, _FAMILY.feedforward_modules
build, build_meta, save = _FAMILY.build, _FAMILY.build_meta, _FAMILY.save

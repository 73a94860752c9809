"""SmolVLM / Idefics3: a SigLIP vision tower, a pixel-shuffle connector and a Llama-shaped SmolLM2, in transformers.

Built through AutoModelForImageTextToText (bench/models/chat.py): components and default targets are found from
the model. "full" is HuggingFaceTB/SmolVLM-Instruct's architecture (bench/models/vlm_presets.py); "tiny" keeps its
shape at CPU scale, with a real Idefics3Processor around a word-level tokenizer that has SmolVLM's special tokens
and its chat template, so conversations are written and masked exactly as for the real checkpoint.
"""

from __future__ import annotations

from bench.models import hf
from bench.models.chat import CHAT_WORDS, QUANTIZATION_SKIP, ChatFamily, discover_components
from bench.models.tokenizer import vocabulary
from bench.models.vlm_presets import FULL_CHECKPOINTS, FULL_PRESETS

FAMILY = "smolvlm"
TASK = "vqa"
BACKENDS = ("transformers",)
DEFAULT_CHECKPOINTS = {"full": FULL_CHECKPOINTS["smolvlm"]}

# HuggingFaceTB/SmolVLM-Instruct's chat template (its processor's chat_template.json), verbatim
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == "
    "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SPECIAL_TOKENS = ("<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                  "<global-img>")
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = (SPECIAL_TOKENS.index(t) for t in ("<pad>", "<|im_start|>", "<end_of_utterance>",
                                                                      "<image>"))
VOCAB_SIZE = len(vocabulary(SPECIAL_TOKENS, CHAT_WORDS))
TEXT_IDS = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


def _tiny_shape(*, hidden: int, ffn: int, layers: int, image_size: int, patch_size: int, heads: int = 4) -> dict:
    return {
        "model_type": "idefics3",
        "vision_config": {"image_size": image_size, "patch_size": patch_size, "hidden_size": hidden,
                          "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads},
        "text_config": {"model_type": "llama", "vocab_size": VOCAB_SIZE, "hidden_size": hidden, "intermediate_size": ffn,
                        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
                        "max_position_embeddings": 256, **TEXT_IDS},
        "scale_factor": 2,  # the connector's pixel shuffle: 2x2 patches per image token, as SmolVLM's 3 -> here 2
        "image_token_id": IMAGE_ID,
        "pad_token_id": PAD_ID,
        "tie_word_embeddings": False,
    }


PRESETS: dict[str, dict] = {
    "tiny": _tiny_shape(hidden=64, ffn=128, layers=2, image_size=64, patch_size=16),
    "full": FULL_PRESETS["smolvlm"],
}


def tiny_processor(config):
    """A real Idefics3Processor around the tiny word-level tokenizer, one image at the vision tower's size (no
    splitting into tiles), image_seq_len the connector's output per image."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    from bench.models.tokenizer import word_level

    size = config.vision_config.image_size
    tokenizer = word_level(
        SPECIAL_TOKENS, CHAT_WORDS, pad_token="<pad>", unk_token="<unk>", bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        extra_special_tokens={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"},
    )
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": size},
                                             max_image_size={"longest_edge": size})
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                             image_seq_len=_image_tokens(config))


def _image_tokens(config) -> int:
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    return patches // config.scale_factor ** 2


_ARCH = hf.Arch(
    family=FAMILY, label="SmolVLM", model_type="idefics3", model_class="AutoModelForImageTextToText",
    config_class="AutoConfig", presets=PRESETS, quantization_skip=QUANTIZATION_SKIP, components=discover_components,
    tiny_processor=tiny_processor, tiny_ids={"image_token_id": IMAGE_ID, "pad_token_id": PAD_ID},
    image_tokens=_image_tokens, text_ids=TEXT_IDS,
)
_FAMILY = ChatFamily(_ARCH)
components, default_targets, feedforward_modules = _FAMILY.components, _FAMILY.default_targets, _FAMILY.feedforward_modules
build, build_meta, save = _FAMILY.build, _FAMILY.build_meta, _FAMILY.save

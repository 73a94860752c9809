"""What each model family offers, as plain data: read by the suite validator without importing torch.

The family modules (clip.py, blip2.py, llava.py) hold the configs; a test checks they agree with this.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyInfo:
    task: str  # the dataset task it trains on
    presets: tuple[str, ...]
    backends: tuple[str, ...]
    default_checkpoints: dict  # preset -> the Hugging Face id whose architecture the preset copies
    components: tuple[str, ...]
    # PEFT kinds known not to work on this family (measured: prompt tuning fails on BLIP-2 and CLIP)
    unsupported_methods: tuple[str, ...] = ()


FAMILIES: dict[str, FamilyInfo] = {
    "clip": FamilyInfo(
        task="classification",
        presets=("tiny", "small", "full"),
        backends=("transformers", "open_clip"),
        default_checkpoints={"full": "openai/clip-vit-large-patch14"},
        components=("vision", "projector", "language"),
        unsupported_methods=("prompt_tuning",),
    ),
    "blip2": FamilyInfo(
        task="caption",
        presets=("tiny", "small", "full"),
        backends=("transformers",),
        default_checkpoints={"full": "Salesforce/blip2-opt-2.7b"},
        components=("vision", "qformer", "projector", "language"),
        unsupported_methods=("prompt_tuning",),
    ),
    "llava": FamilyInfo(
        task="vqa",
        presets=("tiny", "small", "full"),
        backends=("transformers",),
        default_checkpoints={"full": "llava-hf/llava-1.5-7b-hf"},
        components=("vision", "projector", "language"),
    ),
}

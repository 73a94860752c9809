"""`family = "auto"`: any image-text-to-text checkpoint, through AutoModelForImageTextToText and AutoProcessor.

The checkpoint (a Hugging Face id in the local cache, or a local directory) brings the architecture, the weights,
the processor and the chat template; components and default targets are found from the loaded model
(bench/models/chat.py), or named by the suite's `components` table for an unusual layout. There are no presets:
the tiny CPU-scale models of this kind are the smolvlm and qwen2_vl families.
"""

from __future__ import annotations

from bench.errors import SuiteError
from bench.models import hf
from bench.models.chat import QUANTIZATION_SKIP, ChatFamily, discover_components

FAMILY = "auto"
TASK = "vqa"
BACKENDS = ("transformers",)
DEFAULT_CHECKPOINTS: dict[str, str] = {}
PRESETS: dict[str, dict] = {}


def _no_tiny_processor(config):
    raise SuiteError("family \"auto\" takes the processor from its checkpoint, and its files (tokenizer, chat template, "
                     "preprocessor_config.json) are not here", fix="put the checkpoint's processor files beside its "
                     "config.json (or in the Hugging Face cache)")


_ARCH = hf.Arch(
    family=FAMILY, label="auto", model_type=None, model_class="AutoModelForImageTextToText", config_class="AutoConfig",
    presets=PRESETS, quantization_skip=QUANTIZATION_SKIP, components=discover_components,
    tiny_processor=_no_tiny_processor, tiny_ids={},
)
_FAMILY = ChatFamily(_ARCH)
components, default_targets, feedforward_modules = _FAMILY.components, _FAMILY.default_targets, _FAMILY.feedforward_modules
build, build_meta, save = _FAMILY.build, _FAMILY.build_meta, _FAMILY.save

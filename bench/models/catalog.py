"""The spec table: every model family and every method kind, as plain data, read without importing torch.

Validation (bench/suite/load.py and the key table), the CLI's choices, the family and task modules and plan's
skip reasons are all derived from FAMILIES and METHOD_KINDS; tests/test_catalog.py checks that they agree.
Adding a method kind = a MethodKind row here + its construction in bench/methods.py. Adding a family = a
FamilyInfo row + its module in bench/models/ (and its task in bench/tasks/ if the task is new).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MethodKind:
    name: str
    adapter: bool  # PEFT adapters (targets, train_full) rather than full fine-tuning
    ranked: bool  # takes r / alpha / dropout
    # which default targets a family gives it when the method names none: "attention" (the LoRA family:
    # q/v projections) or "ia3" (k/v and the feed-forward output); a family may override per kind
    targets: str | None = None
    # whether distributed = "fsdp" takes it: full fine-tuning shards the model itself; of the adapters, peft documents
    # FSDP for the LoRA family (QLoRA since peft 0.10, its 4-bit weights stored as bf16); the others are refused
    fsdp: bool = False
    # builds on the adapters other cells of the suite trained, named by `sources` (bench/suite/compose.py)
    composes: bool = False
    trains: bool = True  # False: combines them and is evaluated, nothing trains (bench/run/compose.py)
    mergeable: bool = True  # merge_and_unload folds it into the base (serving's "merged", `bench export --merged`)


METHOD_KINDS: dict[str, MethodKind] = {m.name: m for m in (
    MethodKind("full", adapter=False, ranked=False, fsdp=True),
    MethodKind("lora", adapter=True, ranked=True, targets="attention", fsdp=True),
    MethodKind("dora", adapter=True, ranked=True, targets="attention", fsdp=True),
    MethodKind("qlora", adapter=True, ranked=True, targets="attention", fsdp=True),
    MethodKind("ia3", adapter=True, ranked=False, targets="ia3"),
    MethodKind("loha", adapter=True, ranked=True, targets="attention"),
    MethodKind("lokr", adapter=True, ranked=True, targets="attention"),
    MethodKind("vera", adapter=True, ranked=True, targets="attention"),
    MethodKind("merge", adapter=True, ranked=False, composes=True, trains=False),
    # PEFT's X-LoRA: the sources' LoRA adapters as frozen experts, a small classifier learns to mix them per token
    MethodKind("fusion", adapter=True, ranked=False, composes=True, mergeable=False),
    # PEFT's prompt tuning: num_virtual_tokens learnt embeddings before the language model's input, nothing else trains
    MethodKind("prompt_tuning", adapter=True, ranked=False, mergeable=False),
)}
ADAPTER_KINDS = tuple(k for k, m in METHOD_KINDS.items() if m.adapter)
RANKED_KINDS = tuple(k for k, m in METHOD_KINDS.items() if m.ranked)


@dataclass(frozen=True)
class FamilyInfo:
    task: str  # the dataset task it trains on
    presets: tuple[str, ...]
    backends: tuple[str, ...]
    default_checkpoints: dict  # preset -> the Hugging Face id whose architecture the preset copies
    components: tuple[str, ...]
    module: str  # the family's module (build, components, default targets)
    task_module: str  # its task's module (batches, loss, quality)
    # method kinds of METHOD_KINDS known not to work on this family, with why: plan marks those cells skipped
    unsupported_methods: dict = field(default_factory=dict)
    # conversations are written by the processor's chat template, components found from the model (bench/models/chat.py)
    chat_template: bool = False


FAMILIES: dict[str, FamilyInfo] = {
    "clip": FamilyInfo(
        task="classification",
        presets=("tiny", "small", "full"),
        backends=("transformers", "open_clip"),
        default_checkpoints={"full": "openai/clip-vit-large-patch14"},
        components=("vision", "projector", "language"),
        module="bench.models.clip",
        task_module="bench.tasks.contrastive",
        unsupported_methods={"fusion": "X-LoRA's classifier reads the hidden states of a language model that generates; "
                                       "CLIP has none",
                             "prompt_tuning": "PEFT's prompt tuning prepends virtual tokens to a generating language "
                                              "model's input; CLIP's text encoder is not one"},
    ),
    "blip2": FamilyInfo(
        task="caption",
        presets=("tiny", "small", "full"),
        backends=("transformers",),
        default_checkpoints={"full": "Salesforce/blip2-opt-2.7b"},
        components=("vision", "qformer", "projector", "language"),
        module="bench.models.blip2",
        task_module="bench.tasks.captioning",
        unsupported_methods={"fusion": "PEFT's X-LoRA (0.21) cannot load LoRA experts into BLIP-2: its loader rejects the "
                                       "OPT language model's adapter keys as unexpected",
                             "prompt_tuning": "PEFT's prompt tuning (0.21) finds no word-embedding layer in BLIP-2, "
                                              "so its forward fails before the model runs"},
    ),
    "llava": FamilyInfo(
        task="vqa",
        presets=("tiny", "small", "full"),
        backends=("transformers",),
        default_checkpoints={"full": "llava-hf/llava-1.5-7b-hf"},
        components=("vision", "projector", "language"),
        module="bench.models.llava",
        task_module="bench.tasks.instruct",
    ),
    # the chat-template families (bench/models/chat.py): AutoModelForImageTextToText, components found from the model,
    # conversations written by the processor's chat template (bench/tasks/chat.py)
    "smolvlm": FamilyInfo(
        task="vqa",
        presets=("tiny", "full"),
        backends=("transformers",),
        default_checkpoints={"full": "HuggingFaceTB/SmolVLM-Instruct"},
        components=("vision", "projector", "language"),
        module="bench.models.smolvlm",
        task_module="bench.tasks.chat",
                chat_template=True,
    ),
    "qwen2_vl": FamilyInfo(
        task="vqa",
        presets=("tiny", "2b", "7b"),
        backends=("transformers",),
        default_checkpoints={"2b": "Qwen/Qwen2-VL-2B-Instruct", "7b": "Qwen/Qwen2-VL-7B-Instruct"},
        components=("vision", "projector", "language"),
        module="bench.models.qwen2_vl",
        task_module="bench.tasks.chat",
        unsupported_methods={"prompt_tuning": "PEFT's prompt tuning (0.21) puts its virtual tokens before the input "
                                              "embeddings but not into Qwen2-VL's 3-D multimodal rotary positions "
                                              "(made from input_ids and the image grid), so the forward fails on "
                                              "mismatched lengths"},
        chat_template=True,
    ),
    # any image-text-to-text checkpoint: no presets, the checkpoint brings architecture, processor and chat template
    "auto": FamilyInfo(
        task="vqa",
        presets=(),
        backends=("transformers",),
        default_checkpoints={},
        components=("vision", "projector", "language"),
        module="bench.models.auto",
        task_module="bench.tasks.chat",
                chat_template=True,
    ),
}

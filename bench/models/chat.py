"""What the chat-template families share: any image-text-to-text model through AutoModelForImageTextToText.

SmolVLM (bench/models/smolvlm.py), Qwen2-VL (qwen2_vl.py) and `family = "auto"` (auto.py, any checkpoint) are
built by bench/models/hf.py's flow with the Auto classes, and answer the family interface from the loaded model's
structure instead of hand-written tables:

- components: the language model is the module that owns `config.text_config` (plus the output embeddings), the
  vision tower the one that owns `config.vision_config`; the projector is what else sits beside the language model
  (Idefics3's connector, LLaVA's multi_modal_projector) or a merger inside the vision tower (Qwen2-VL). A suite's
  `components` key overrides this for unusual layouts.
- default targets: the language model's attention and feed-forward leaf names, the first convention of
  ATTENTION / IA3 that the model has (Llama's q_proj/v_proj, Phi-3's qkv_proj, Falcon's query_key_value, ...).

The tiny presets' processors are the real processor classes around a word-level tokenizer that carries the real
checkpoint's special tokens and chat template (bench/models/tokenizer.py), so the instruction task
(bench/tasks/chat.py) runs on them exactly as on a downloaded checkpoint. Importing this module loads neither torch
nor transformers.
"""

from __future__ import annotations

from bench.data.vocabulary import CHART_WORDS, WORDS
from bench.errors import SuiteError
from bench.models.base import COMPONENTS, component_of

# Words a chat template writes around the conversation (roles, Qwen2-VL's default system prompt), so that the tiny
# tokenizer reads them rather than <unk>; the bundled datasets' words follow.
TEMPLATE_WORDS = ("user", "assistant", "system", "you", "helpful")
CHAT_WORDS = TEMPLATE_WORDS + WORDS + CHART_WORDS

# Leaf names of the language model's layers, by convention: the first row whose every name the model has wins
ATTENTION = (("q_proj", "v_proj"), ("qkv_proj",), ("query_key_value",), ("c_attn",), ("Wqkv",))
IA3 = (("k_proj", "v_proj", "down_proj"), ("k_proj", "v_proj", "fc2"), ("qkv_proj", "down_proj"),
       ("query_key_value", "dense_4h_to_h"), ("c_attn", "c_proj"))
FEEDFORWARD = ("down_proj", "dense_4h_to_h", "c_proj", "fc2")  # IA3 scales these on their input
# Projectors that live inside the vision tower rather than beside the language model
INNER_PROJECTORS = ("merger",)
# Kept in full precision under 4-bit loading: vision towers, projectors and the head, wherever they sit (transformers
# matches each pattern as a regex from the start of a module's name, up to a name boundary, or as its suffix)
QUANTIZATION_SKIP = tuple(rf".*\b{name}" for name in ("vision_model", "visual", "vision_tower", "connector",
                                                        "multi_modal_projector", "merger")) + ("lm_head",)


def discover_components(model) -> dict[str, tuple[str, ...]]:
    """Component -> module-name prefixes, found from which modules own the text and vision configs."""
    config = model.config
    modules = dict(model.named_modules())
    language = _owner(modules, getattr(config, "text_config", None))
    vision = _owner(modules, getattr(config, "vision_config", None))
    found = {"vision": (), "projector": (), "language": ()}
    if language is not None:
        head = next((n for n, m in modules.items() if m is model.get_output_embeddings()), None)
        found["language"] = (language,) + ((head,) if head else ())
        parent = language.rpartition(".")[0]
        # beside the language model: sub-modules with parameters, and parameters of their own (BLIP-2's query_tokens)
        found["projector"] = tuple(
            name for name, m in modules.items()
            if name and name.rpartition(".")[0] == parent and name not in (language, vision)
            and any(True for _ in m.parameters()) and not name.startswith(found["language"])
        ) + tuple(name for name, _ in model.named_parameters() if name.rpartition(".")[0] == parent)
    if vision is not None:
        found["vision"] = (vision,)
        found["projector"] += tuple(n for n in modules if n.startswith(vision + ".") and n.rpartition(".")[2] in INNER_PROJECTORS)
    return found


def _owner(modules: dict, config) -> str | None:
    """The shortest module name whose module holds exactly `config` (sub-models are built from it)."""
    if config is None:
        return None
    names = [n for n, m in modules.items() if n and getattr(m, "config", None) is config]
    return min(names, key=len) if names else None


def components_or_override(model, override: dict | None, label: str) -> dict[str, tuple[str, ...]]:
    """discover_components, or the suite's `components` table when it gives one (every prefix must exist)."""
    if not override:
        found = discover_components(model)
        if not found["language"]:
            raise SuiteError(f"{label}: cannot find the language model in {type(model).__name__} (no module holds its "
                             "text_config)", fix='name the components yourself: components = {language = ["model.'
                                                 'language_model", "lm_head"], vision = [...], projector = [...]}')
        return found
    from bench.models.base import present_components

    present = present_components(model, override)  # a prefix matches a module or a parameter, as discovery's do
    for comp, prefixes in override.items():
        missing = [p for p in prefixes if p not in present[comp]]
        if missing:
            raise SuiteError(f"components.{comp} names {missing}, which {type(model).__name__} does not have",
                             fix="use module or parameter names as model.named_modules() / named_parameters() print "
                                 "them")
    return {comp: tuple(override.get(comp, ())) for comp in COMPONENTS}


def language_leaves(model, components: dict[str, tuple[str, ...]]) -> set[str]:
    """Leaf names of the language model's Linear layers (q_proj, down_proj, ...)."""
    import torch

    return {name.rpartition(".")[2] for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and component_of(name, components) == "language"
            and not name.endswith("lm_head")}


def targets_for(kind: str, leaves: set[str] | None) -> dict[str, tuple[str, ...]]:
    """Default adapter targets for `kind` on the language model whose linear leaf names are `leaves` (None: not
    known yet, e.g. a cost estimate before any model is built: Llama's names, which SmolVLM and Qwen2-VL use)."""
    from bench.models.catalog import METHOD_KINDS

    group = METHOD_KINDS[kind].targets if kind in METHOD_KINDS else None
    rows = {"attention": ATTENTION, "ia3": IA3}.get(group)
    if rows is None:
        kinds = [k for k, m in METHOD_KINDS.items() if m.targets]
        raise SuiteError(f"method kind {kind!r} has no default targets", fix=f"use one of {kinds}, or give the method "
                                                                            "explicit `targets`")
    for row in rows:
        if leaves is None or set(row) <= leaves:
            return {"language": row}
    raise SuiteError(f"the language model's layers ({sorted(leaves)}) follow none of the conventions bench knows for "
                     f"{kind} targets", fix="give the method explicit `targets`, e.g. targets = {language = "
                                            '["q_proj", "v_proj"]}')


def feedforward_of(leaves: set[str] | None) -> tuple[str, ...]:
    return tuple(n for n in FEEDFORWARD if leaves is None or n in leaves)


class ChatFamily:
    """The family interface (bench/models/base.py) of one chat-template family, over its hf.Arch: the module of each
    family binds these methods to its names."""

    def __init__(self, arch):
        self.arch = arch

    def components(self, model, backend: str = "transformers") -> dict[str, tuple[str, ...]]:
        self._check_backend(backend)
        return components_or_override(model, None, self.arch.label)

    def default_targets(self, kind: str, backend: str = "transformers", loaded=None) -> dict[str, tuple[str, ...]]:
        """Component -> leaf names a PEFT method of `kind` adapts by default: from the loaded model's language layers
        when there is one, else Llama's names."""
        self._check_backend(backend)
        return targets_for(kind, None if loaded is None else language_leaves(loaded.model, loaded.components))

    def feedforward_modules(self, backend: str = "transformers", loaded=None) -> tuple[str, ...]:
        self._check_backend(backend)
        return feedforward_of(None if loaded is None else language_leaves(loaded.model, loaded.components))

    def build(self, spec, *, device: str = "cpu", dtype=None, quantization=None, seed: int = 0):
        """The model and its processor (hf.build), its components the suite's override when it gives them."""
        from bench.models import hf

        self._check_backend(spec.backend)
        loaded = hf.build(spec, self.arch, device=device, dtype=dtype, quantization=quantization, seed=seed)
        loaded.components = components_or_override(loaded.model, dict(spec.components), self.arch.label)
        if getattr(loaded.processor, "chat_template", None) is None:
            raise SuiteError(f"the processor of models.{spec.name} has no chat template, so conversations cannot be "
                             "written for it", where=f"models.{spec.name}",
                             fix="use an instruction-tuned checkpoint (its processor or tokenizer carries a chat "
                                 "template), or add chat_template.json to the checkpoint folder")
        return loaded

    def build_meta(self, spec):
        from bench.models import hf

        return hf.build_meta(spec, self.arch)

    def save(self, loaded, path) -> None:
        from bench.models import hf

        hf.save(loaded, path)

    def _check_backend(self, backend: str) -> str:
        from bench.models.base import check_backend

        return check_backend(backend, ("transformers",), self.arch.label)

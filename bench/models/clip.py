"""CLIP, the contrastive image-text family, on two backends: transformers' CLIPModel and open_clip's CLIP.

Presets are plain data (importing this module loads neither torch nor transformers, so the CLI can
validate suites against PRESETS). "full" is openai/clip-vit-large-patch14 exactly (427,616,513
parameters on both backends); "tiny" and "small" share its shape at CPU scale and use bench's
word-level tokenizer, to which this module adds the <s> ... </s> template CLIP pools on.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache, partial
from pathlib import Path

from bench.errors import SuiteError
from bench.models import hf
from bench.models.base import LoadedModel, ModelSpec, base_model, check_backend, present_components, targets_from
from bench.models.hub import checkpoint_error, local_config, preflight_checkpoint
from bench.models.tokenizer import EOS_ID, PAD_ID, TINY_IDS, TINY_VOCAB_SIZE

FAMILY = "clip"
TASK = "classification"
BACKENDS = ("transformers", "open_clip")
DEFAULT_CHECKPOINTS = {"full": "openai/clip-vit-large-patch14"}


def _tiny_shape(*, hidden: int, ffn: int, layers: int, image_size: int, patch_size: int, heads: int = 4) -> dict:
    return {
        "vision_config": {"image_size": image_size, "patch_size": patch_size, "hidden_size": hidden,
                          "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads},
        "text_config": {"vocab_size": TINY_VOCAB_SIZE, "hidden_size": hidden, "intermediate_size": ffn,
                        "num_hidden_layers": layers, "num_attention_heads": heads, "max_position_embeddings": 64,
                        **TINY_IDS},
        "projection_dim": hidden,
    }


PRESETS: dict[str, dict] = {
    "tiny": _tiny_shape(hidden=64, ffn=128, layers=2, image_size=32, patch_size=8),
    "small": _tiny_shape(hidden=256, ffn=1024, layers=4, image_size=64, patch_size=16),
    # openai/clip-vit-large-patch14's config.json, architecture fields as published
    "full": {
        "vision_config": {"image_size": 224, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
                          "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768,
                          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
        "text_config": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        "projection_dim": 768,
        "logit_scale_init_value": 2.6592,
    },
}

# open_clip's own registry name for a preset, built with open_clip.create_model (the others are built from a dict)
OPEN_CLIP_NAMES = {"full": "ViT-L-14"}
TINY_TOKENIZER_NAME = "bench-tiny-word-level"  # recorded in saved open_clip configs; the files sit beside the weights

# Component -> name prefixes. logit_scale is the contrastive head's temperature: it goes with the projections.
_COMPONENTS = {
    "transformers": {
        "vision": ("vision_model",),
        "projector": ("visual_projection", "text_projection", "logit_scale"),
        "language": ("text_model",),
    },
    "open_clip": {  # open_clip keeps the text tower's parts at the top level, beside `visual`
        "vision": ("visual",),
        "projector": ("visual.proj", "text_projection", "logit_scale", "logit_bias"),
        "language": ("transformer", "token_embedding", "positional_embedding", "ln_final"),
    },
}

# Default adapter targets (leaf module names, within a component), after the seeds' recipe: the text side's
# attention q/v for LoRA; k/v and the feed-forward output for IA3. open_clip's attention is one
# nn.MultiheadAttention whose projections are not Linear children (LoRA on `out_proj` changes nothing), so
# LoRA targets the whole `attn` (PEFT wraps MultiheadAttention) and the other kinds the MLP's c_fc/c_proj.
_TARGETS = {
    "transformers": {"attention": {"language": ("q_proj", "v_proj")}, "ia3": {"language": ("k_proj", "v_proj", "fc2")}},
    # qlora: open_clip models are not loaded through transformers' 4-bit path
    "open_clip": {"lora": {"language": ("attn",)}, "qlora": None,
                  "attention": {"language": ("c_fc", "c_proj")}, "ia3": {"language": ("c_fc", "c_proj")}},
}
_FEEDFORWARD = {"transformers": ("fc2",), "open_clip": ("c_proj",)}
# Kept in full precision under 4-bit loading: trainable as a component, and transformers' default would
# quantise visual_projection but not text_projection (it skips only the last module).
QUANTIZATION_SKIP = ("visual_projection", "text_projection")


# ---------------------------------------------------------------- interface


def components(model, backend: str) -> dict[str, tuple[str, ...]]:
    """Component -> prefixes that exist in `model` (a parameter or module name matches by prefix)."""
    return present_components(model, _COMPONENTS[_check_backend(backend)])


def default_targets(kind: str, backend: str = "transformers", loaded=None) -> dict[str, tuple[str, ...]]:
    """Component -> leaf module names a PEFT method of `kind` adapts by default (`loaded`: unused, the table holds)."""
    return targets_from(_TARGETS[_check_backend(backend)], kind, f"CLIP targets on the {backend} backend")


def feedforward_modules(backend: str = "transformers", loaded=None) -> tuple[str, ...]:
    """IA3's feed-forward leaves (scaled on their input rather than their output)."""
    return _FEEDFORWARD[_check_backend(backend)]


def backend_of(model) -> str:
    """Which backend built `model`, looking through data-parallel and PEFT wrappers."""
    return "open_clip" if type(base_model(model)).__module__.startswith("open_clip") else "transformers"


def build(spec: ModelSpec, *, device: str = "cpu", dtype=None, quantization=None, seed: int = 0) -> LoadedModel:
    """The model and its processor. Random weights are drawn from `seed` without touching the global RNG."""
    if _check_backend(spec.backend) == "transformers":
        return hf.build(spec, _HF, device=device, dtype=dtype, quantization=quantization, seed=seed)
    import torch

    return _build_open_clip(spec, device=device, dtype=dtype or torch.float32, quantization=quantization, seed=seed)


def build_meta(spec: ModelSpec):
    """The same architecture on the meta device: parameter counts with no memory and no weights."""
    import torch

    if _check_backend(spec.backend) == "open_clip":
        with torch.device("meta"):
            model_cfg, name, _ = _open_clip_cfg_for(spec)
            return _open_clip_from_config(model_cfg, name, device="meta")
    return hf.build_meta(spec, _HF)


def save(loaded: LoadedModel, path) -> None:
    """Write weights, config and processor so that build(checkpoint=path, weights="pretrained") restores them."""
    if loaded.backend == "transformers":
        hf.save(loaded, path)
        return
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model_cfg = copy.deepcopy(loaded.info["open_clip_cfg"])
    if loaded.processor.is_hf_tokenizer:
        model_cfg["text_cfg"]["hf_tokenizer_name"] = TINY_TOKENIZER_NAME  # open_clip's get_tokenizer then reads this dir
    config = {"model_cfg": model_cfg, "preprocess_cfg": loaded.processor.preprocess_cfg}
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in loaded.model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
    loaded.processor.save_pretrained(path)


# ---------------------------------------------------------------- tokenizer and processors


@lru_cache(maxsize=4)
def clip_tokenizer(model_max_length: int = 64):
    """bench's tiny tokenizer plus `<s> ... </s>` around every text: CLIP pools the text at </s>."""
    from tokenizers import processors

    from bench.models.tokenizer import tiny_tokenizer

    base = tiny_tokenizer()
    tok = copy.deepcopy(base)  # the shared instance stays as the other families expect it
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", base.bos_token_id), ("</s>", base.eos_token_id)],
    )
    tok.model_max_length = model_max_length
    return tok


def _tiny_processor(image_size: int, max_length: int):
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(max_length))


class OpenClipProcessor:
    """open_clip's image transform and a tokenizer behind CLIPProcessor's call shape.

    processor(images=[PIL...]) -> {"pixel_values"}; processor(text=[...], max_length=n) ->
    {"input_ids", "attention_mask"}, padded to the model's fixed context length (open_clip adds its
    positional table whole); the mask marks the tokens up to and including end-of-text.
    """

    def __init__(self, transform, tokenizer, *, context_length: int, preprocess_cfg: dict):
        self.transform = transform
        self.tokenizer = tokenizer  # a transformers tokenizer (tiny presets) or an open_clip tokenizer
        self.context_length = context_length
        self.preprocess_cfg = preprocess_cfg
        self.is_hf_tokenizer = hasattr(tokenizer, "save_pretrained")
        if hasattr(tokenizer, "eot_token_id"):  # open_clip's SimpleTokenizer pads with 0 and ends every text with eot
            self.pad_token_id, self.eos_token_id = 0, tokenizer.eot_token_id
        else:  # a transformers tokenizer, bare or inside open_clip's HFTokenizer
            inner = tokenizer if self.is_hf_tokenizer else tokenizer.tokenizer
            self.pad_token_id, self.eos_token_id = inner.pad_token_id or 0, inner.eos_token_id

    def __call__(self, images=None, text=None, *, max_length: int | None = None, **_ignored) -> dict:
        import torch
        import torch.nn.functional as F

        out = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            out["pixel_values"] = torch.stack([self.transform(im) for im in images])
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            length = min(max_length or self.context_length, self.context_length)
            if self.is_hf_tokenizer:
                ids = self.tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                                     return_tensors="pt")["input_ids"]
            else:
                ids = self.tokenizer(texts, context_length=length)
            ids = F.pad(ids, (0, self.context_length - length), value=self.pad_token_id)
            out["input_ids"] = ids
            out["attention_mask"] = (
                mask_through_eos(ids, self.eos_token_id) if self.eos_token_id is not None
                else (ids != self.pad_token_id).long()
            )
        return out

    def save_pretrained(self, path) -> None:
        if self.is_hf_tokenizer:
            self.tokenizer.save_pretrained(path)


def mask_through_eos(input_ids, eos_token_id: int):
    """1 up to and including each row's first end-of-text token, 0 after (all ones when it has none)."""
    import torch

    is_eos = input_ids == eos_token_id
    last = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(input_ids[:, 0], input_ids.shape[1] - 1))
    return (torch.arange(input_ids.shape[1], device=input_ids.device)[None] <= last[:, None]).long()


# ---------------------------------------------------------------- transformers backend


_HF = hf.Arch(
    family=FAMILY, label="CLIP", model_type="clip", model_class="CLIPModel", config_class="CLIPConfig",
    presets=PRESETS, quantization_skip=QUANTIZATION_SKIP, components=partial(components, backend="transformers"),
    tiny_processor=lambda config: _tiny_processor(config.vision_config.image_size,
                                                  config.text_config.max_position_embeddings),
    tiny_ids={},
)


# ---------------------------------------------------------------- open_clip backend


def _build_open_clip(spec: ModelSpec, *, device, dtype, quantization, seed: int) -> LoadedModel:
    if quantization is not None:
        raise SuiteError(
            "4-bit quantisation (QLoRA) needs the transformers backend: open_clip's attention is one "
            "nn.MultiheadAttention whose weights bitsandbytes cannot replace",
            where=f"models.{spec.name}", fix='set backend = "transformers" for this model, or use lora instead of qlora',
        )
    if hf.wants_checkpoint(spec):
        model, processor, model_cfg = _load_open_clip(spec)
        weights, source, tokenizer_kind = "pretrained", spec.checkpoint, "checkpoint"
    else:
        model_cfg, name, source = _open_clip_cfg_for(spec)
        with hf.seeded(seed):
            model = _open_clip_from_config(model_cfg, name)
        processor = _open_clip_processor(model_cfg, _preprocess_cfg(model_cfg["vision_cfg"]["image_size"]))
        weights = "random"
        tokenizer_kind = "tiny" if processor.is_hf_tokenizer else "open_clip"
    model.to(device=device, dtype=dtype)
    info = hf.info(spec, weights=weights, config=hf.without_provenance(model_cfg), source=source,
                   seed=seed if weights == "random" else None, image_size=processor.preprocess_cfg["size"],
                   context_length=processor.context_length, tokenizer=tokenizer_kind, quantized=False)
    info["open_clip_cfg"] = model_cfg
    return LoadedModel(model, processor, FAMILY, "open_clip", components(model, "open_clip"), info)


def open_clip_config(preset: dict) -> dict:
    """An open_clip model config with the same architecture as a transformers preset."""
    v, t = preset["vision_config"], preset["text_config"]
    cfg = {
        "embed_dim": preset["projection_dim"],
        "quick_gelu": v.get("hidden_act", "quick_gelu") == "quick_gelu",
        "vision_cfg": {"image_size": v["image_size"], "patch_size": v["patch_size"], "width": v["hidden_size"],
                       "layers": v["num_hidden_layers"], "head_width": v["hidden_size"] // v["num_attention_heads"],
                       "mlp_ratio": v["intermediate_size"] / v["hidden_size"]},
        "text_cfg": {"context_length": t["max_position_embeddings"], "vocab_size": t["vocab_size"],
                     "width": t["hidden_size"], "heads": t["num_attention_heads"], "layers": t["num_hidden_layers"],
                     "mlp_ratio": t["intermediate_size"] / t["hidden_size"]},
    }
    if t["vocab_size"] == TINY_VOCAB_SIZE:  # the word-level tokenizer: pool at its </s>, not at the highest id
        cfg["text_cfg"].update(pad_id=PAD_ID, eos_id=EOS_ID, pool_type="eos")
    return cfg


def _open_clip_cfg_for(spec: ModelSpec) -> tuple[dict, str | None, str]:
    """(model config, open_clip registry name or None, where the config came from)."""
    if spec.checkpoint:
        raw = local_config(spec.checkpoint, revision=spec.revision, config_name="open_clip_config.json")
        if raw is not None and not isinstance(raw.get("model_cfg"), dict):  # not a model's config: never the preset
            raise checkpoint_error(spec.checkpoint, "its open_clip_config.json has no model_cfg object: it is not an "
                                   "open_clip model's config", where=f"models.{spec.name}",
                                   config_name="open_clip_config.json")
        if raw is not None:
            return raw["model_cfg"], None, f"open_clip_config.json of {spec.checkpoint}"
    preset = hf.preset(spec, PRESETS, "CLIP")
    name = OPEN_CLIP_NAMES.get(spec.preset)
    if name is None:
        return open_clip_config(preset), None, f"preset {spec.preset}"
    import open_clip

    cfg = copy.deepcopy(open_clip.get_model_config(name))
    cfg["quick_gelu"] = open_clip_config(preset)["quick_gelu"]  # OpenAI's ViT-L/14 was trained with QuickGELU
    return cfg, name, f"preset {spec.preset} (open_clip {name})"


def _open_clip_from_config(model_cfg: dict, name: str | None, *, device="cpu"):
    """An open_clip CLIP with random weights: by registry name when there is one, else from the dict."""
    import open_clip
    from open_clip.model import CLIP

    if name is not None:
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(model_cfg.get("quick_gelu")),
                                      output_dict=True, device=device)
    return CLIP(**copy.deepcopy(model_cfg), output_dict=True)


def _preprocess_cfg(image_size: int) -> dict:
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    return asdict(PreprocessCfg(size=image_size))


def _open_clip_processor(model_cfg: dict, preprocess_cfg: dict, tokenizer=None) -> OpenClipProcessor:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    text_cfg = model_cfg["text_cfg"]
    context_length = text_cfg.get("context_length", 77)
    if tokenizer is None:
        if text_cfg.get("vocab_size") == TINY_VOCAB_SIZE:
            tokenizer = clip_tokenizer(context_length)
        else:
            tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    return OpenClipProcessor(transform, tokenizer, context_length=context_length, preprocess_cfg=preprocess_cfg)


def _load_open_clip(spec: ModelSpec):
    """(model, processor, model_cfg) from a saved directory, an `hf-hub:` id, or a pretrained tag/file of the preset."""
    import open_clip

    where, ck = f"models.{spec.name}", spec.checkpoint
    directory = Path(ck).expanduser()
    if ck.startswith("hf-hub:"):
        preflight_checkpoint(ck[len("hf-hub:"):], revision=spec.revision, where=where, file=None,
                             config_name="open_clip_config.json")
        name, pretrained, quick = ck, None, False
    elif directory.is_dir():
        preflight_checkpoint(str(directory), where=where, file=None, config_name="open_clip_config.json")
        name, pretrained, quick = f"local-dir:{directory}", None, False
    else:  # a pretrained tag of the preset's architecture ("openai", "laion2b_s32b_b82k") or a weights file
        name = OPEN_CLIP_NAMES.get(spec.preset)
        if name is None:
            raise SuiteError(
                f"checkpoint {ck!r} is not a directory or an `hf-hub:` id, and preset {spec.preset!r} has no "
                f"open_clip pretrained tags", where=where,
                fix=f"use a saved directory, an `hf-hub:org/name` id, or preset one of {sorted(OPEN_CLIP_NAMES)}",
            )
        pretrained = ck
        quick = bool((open_clip.get_pretrained_cfg(name, ck) or {}).get("quick_gelu", False))
    try:
        model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick, output_dict=True)
    except (RuntimeError, OSError, ValueError) as exc:  # open_clip reports failed downloads as RuntimeError
        raise checkpoint_error(ck, f"open_clip cannot load it ({exc})", where=where,
                               config_name="open_clip_config.json") from None

    if pretrained is not None:
        model_cfg = {**copy.deepcopy(open_clip.get_model_config(name)), "quick_gelu": quick}
    else:  # the directory's (or, now cached, the hub's) open_clip_config.json
        source = str(directory) if directory.is_dir() else ck[len("hf-hub:"):]
        model_cfg = local_config(source, revision=spec.revision, config_name="open_clip_config.json")["model_cfg"]
    tokenizer = None
    if directory.is_dir() and (directory / "tokenizer_config.json").is_file():  # a tiny model bench saved
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
    elif model_cfg["text_cfg"].get("vocab_size") != TINY_VOCAB_SIZE:
        tokenizer = open_clip.get_tokenizer(name)
    processor = _open_clip_processor(model_cfg, dict(model.visual.preprocess_cfg), tokenizer)
    return model, processor, model_cfg


# ---------------------------------------------------------------- helpers


def _check_backend(backend: str) -> str:
    return check_backend(backend, BACKENDS, "CLIP")

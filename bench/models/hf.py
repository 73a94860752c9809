"""Build, load and 4-bit quantise a transformers model, for any family (CLIP, BLIP-2, LLaVA).

A family describes itself as an `Arch` (class names, presets, what stays unquantised, how its tiny
processor is made) and this module runs the flow they share: a checkpoint through from_pretrained,
or random weights drawn from a seed on the checkpoint's config.json or a preset, both quantised by
bitsandbytes the same way. Importing it loads neither torch nor transformers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.errors import SuiteError
from bench.models.base import LoadedModel, ModelSpec
from bench.models.hub import checkpoint_error, local_config, looks_like_path, preflight_checkpoint
from bench.models.tokenizer import TINY_IDS


def _same(processor):
    return processor


@dataclass(frozen=True)
class Arch:
    """What the shared flow needs to know about one family's transformers models."""

    family: str  # FAMILY, recorded on every LoadedModel
    label: str  # how messages name the family: "BLIP-2"
    model_type: str | None  # the config.json model_type a checkpoint of this family has (None: any, the "auto" family)
    model_class: str  # transformers class names, imported when a model is built ("Auto..." classes build from_config)
    config_class: str
    presets: dict[str, dict]
    quantization_skip: tuple[str, ...]  # module names kept in full precision under 4-bit loading
    components: Callable  # model -> component prefixes
    tiny_processor: Callable  # config -> a real processor around bench's tiny tokenizer
    tiny_ids: dict  # top-level config ids the tiny tokenizer sets, beside text_ids on text_config
    image_tokens: Callable | None = None  # config -> image tokens per sample, recorded in info
    fix_processor: Callable = _same  # applied to every processor, the checkpoint's and the tiny one
    text_ids: dict | None = None  # the text config's special ids under the tiny tokenizer (None: TINY_IDS)


def build(spec: ModelSpec, arch: Arch, *, device: str = "cpu", dtype=None, quantization=None,
          seed: int = 0) -> LoadedModel:
    """The model and its processor. Random weights are drawn from `seed` without touching the global RNG."""
    import torch

    dtype = dtype or torch.float32
    if wants_checkpoint(spec):
        return _load(spec, arch, device=device, dtype=dtype, quantization=quantization)
    return _random(spec, arch, device=device, dtype=dtype, quantization=quantization, seed=seed)


def build_meta(spec: ModelSpec, arch: Arch):
    """The same architecture on the meta device: parameter counts with no memory and no weights."""
    import torch

    config, _ = config_for(spec, arch)
    with torch.device("meta"):
        return construct(arch, config)


def save(loaded: LoadedModel, path) -> None:
    """Write weights (safetensors), config and processor so that build(checkpoint=path) restores them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(path)
    loaded.processor.save_pretrained(path)


def config_for(spec: ModelSpec, arch: Arch):
    """(config, where it came from): the checkpoint's config.json when it is here, else the preset."""
    if spec.checkpoint:
        raw = local_config(spec.checkpoint, revision=spec.revision)
        if raw is not None and not (isinstance(raw.get("model_type"), str) and raw["model_type"]):
            # save_pretrained always writes model_type: without one it is not a model's config (the defaults would
            # silently build some other model)
            raise checkpoint_error(spec.checkpoint, "its config.json names no model_type: it is not a transformers "
                                   "model's config", where=f"models.{spec.name}")
        if raw is not None:
            if arch.model_type is not None and raw.get("model_type") not in (None, arch.model_type):
                raise SuiteError(
                    f"checkpoint {spec.checkpoint!r} is a {raw.get('model_type')!r} model, not {arch.label}",
                    where=f"models.{spec.name}", fix=f"use a {arch.label} checkpoint or another model family",
                )
            return make_config(arch, raw, where=f"models.{spec.name}"), f"config.json of {spec.checkpoint}"
        if spec.preset is None:
            raise checkpoint_error(spec.checkpoint, "its config.json is not here and no `preset` is named",
                                   where=f"models.{spec.name}")
        if looks_like_path(spec.checkpoint):  # a folder the user named: its shape is meant, never the preset's
            raise checkpoint_error(spec.checkpoint, "the folder has no config.json", where=f"models.{spec.name}")
    return make_config(arch, copy.deepcopy(preset(spec, arch.presets, arch.label))), f"preset {spec.preset}"


def make_config(arch: Arch, raw: dict, where: str | None = None):
    """The transformers config of a config.json or preset dict; an "Auto" family's by its model_type, which must be
    one AutoModelForImageTextToText builds."""
    if arch.config_class != "AutoConfig":
        return _class(arch.config_class).from_dict(raw)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    raw = dict(raw)
    model_type = raw.pop("model_type", None)
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise SuiteError(f"model_type {model_type!r} is not an image-text-to-text model transformers knows", where=where,
                         fix="use a checkpoint whose config.json names a model AutoModelForImageTextToText loads "
                             "(e.g. idefics3, qwen2_vl, llava, paligemma)")
    config = AutoConfig.for_model(model_type, **raw)
    missing = [k for k in ("text_config", "vision_config") if getattr(config, k, None) is None]
    if missing:  # fuyu, git, idefics (1), chameleon: one decoder reads patches, nothing to find components in
        raise SuiteError(f"a {model_type!r} model has no {' and no '.join(missing)}: bench finds a chat model's vision "
                         "tower and language model by their configs", where=where,
                         fix="use a model with separate vision and text configs (idefics3, qwen2_vl, llava, ...)")
    return config


def construct(arch: Arch, config):
    """A model of `config` with fresh weights (Auto classes build from_config)."""
    cls = _class(arch.model_class)
    return cls.from_config(config) if arch.model_class.startswith("Auto") else cls(config)


# ---------------------------------------------------------------- the two ways to a model


def _load(spec: ModelSpec, arch: Arch, *, device, dtype, quantization) -> LoadedModel:
    from transformers import AutoProcessor

    where = f"models.{spec.name}"
    preflight_checkpoint(spec.checkpoint, revision=spec.revision, where=where, file=None)
    kwargs = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code, "dtype": dtype}
    if quantization is not None:
        kwargs.update(quantization_config=with_skips(quantization, arch.quantization_skip), device_map={"": device})
    try:
        model = _class(arch.model_class).from_pretrained(spec.checkpoint, **kwargs)
        processor = AutoProcessor.from_pretrained(
            spec.checkpoint, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except OSError as exc:  # config present but weights or processor files missing
        raise checkpoint_error(spec.checkpoint, f"cannot be loaded ({exc})", where=where) from None
    if quantization is None:
        model.to(device)
    info = _info_of(spec, arch, model.config, weights="pretrained", source=spec.checkpoint, tokenizer="checkpoint",
                    quantized=quantization is not None)
    return LoadedModel(model, arch.fix_processor(processor), arch.family, "transformers", arch.components(model), info)


def _random(spec: ModelSpec, arch: Arch, *, device, dtype, quantization, seed: int) -> LoadedModel:
    from transformers import AutoProcessor

    config, source = config_for(spec, arch)
    processor, tokenizer_kind = None, "tiny"
    if spec.checkpoint and not source.startswith("preset"):
        try:  # the checkpoint's own processor, when its files are in the cache too
            processor = AutoProcessor.from_pretrained(spec.checkpoint, revision=spec.revision, local_files_only=True)
            tokenizer_kind = "checkpoint"
        except (OSError, ValueError):
            processor = None
    if processor is None:
        # The tiny tokenizer's special ids are not architecture: text pooling, generation and the image-token
        # swap use them.
        for key, value in (arch.text_ids or TINY_IDS).items():
            setattr(config.text_config, key, value)
        for key, value in arch.tiny_ids.items():
            setattr(config, key, value)
        processor = arch.tiny_processor(config)
    with seeded(seed):
        model = construct(arch, config)
    if quantization is not None:
        model = requantize(model, quantization, arch, device=device, dtype=dtype)
    else:
        model.to(device=device, dtype=dtype)
    info = _info_of(spec, arch, config, weights="random", source=source, seed=seed, tokenizer=tokenizer_kind,
                    quantized=quantization is not None)
    return LoadedModel(model, arch.fix_processor(processor), arch.family, "transformers", arch.components(model), info)


# ---------------------------------------------------------------- quantisation


def requantize(model, quantization, arch: Arch, *, device, dtype):
    """Load a config-built model through from_pretrained so bitsandbytes quantises it as it would real weights."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{arch.family}-") as tmp:
        model.save_pretrained(tmp)
        return type(model).from_pretrained(
            tmp, quantization_config=with_skips(quantization, arch.quantization_skip), device_map={"": device},
            dtype=dtype,
        )


def with_skips(quantization, skip: tuple[str, ...]):
    """`quantization` with `skip` kept in full precision, unless the caller named its own skips."""
    if getattr(quantization, "llm_int8_skip_modules", None):
        return quantization
    quantization = copy.deepcopy(quantization)
    quantization.llm_int8_skip_modules = list(skip)
    return quantization


# ---------------------------------------------------------------- shared with the families' other backends


def wants_checkpoint(spec: ModelSpec) -> bool:
    # "zoo" names bench's own trained base: by the time a model is built it is a saved directory
    return bool(spec.checkpoint) and spec.weights in ("pretrained", "zoo")


def preset(spec: ModelSpec, presets: dict[str, dict], label: str) -> dict:
    if spec.preset not in presets:
        raise SuiteError(f"{label} has no preset {spec.preset!r}", where=f"models.{spec.name}",
                         fix=f"set preset to one of {list(presets)}, or name a `checkpoint`")
    return presets[spec.preset]


@contextmanager
def seeded(seed: int):
    """Same seed, same random weights; the caller's RNG stream is left where it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def info(spec: ModelSpec, *, weights: str, config: dict, source: str, image_size, context_length, tokenizer: str,
         quantized: bool, seed: int | None = None, **more) -> dict:
    """A LoadedModel's provenance; `config` is hashed as given, `more` (image_tokens) follows context_length."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return {
        "checkpoint": spec.checkpoint, "revision": spec.revision, "preset": spec.preset, "weights": weights,
        "config_source": source, "config_hash": hashlib.sha256(blob).hexdigest()[:12], "seed": seed,
        "image_size": image_size, "context_length": context_length, **more, "tokenizer": tokenizer,
        "quantized": quantized,
    }


def without_provenance(config):
    """The config minus what does not shape the model (library version, source path), for a stable hash."""
    if isinstance(config, dict):
        return {k: without_provenance(v) for k, v in config.items()
                if k not in ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype",
                              "hf_tokenizer_name")}
    return config


def _info_of(spec: ModelSpec, arch: Arch, config, **kw) -> dict:
    raw = config.to_dict()
    more = {} if arch.image_tokens is None else {"image_tokens": arch.image_tokens(config)}
    # hashed without library version and source path: a saved and reloaded model keeps its hash
    return info(spec, config=without_provenance(raw),
                # Qwen2-VL's tiny preset resizes every image to config.image_size; its vision config has no size
                image_size=getattr(config.vision_config, "image_size", None) or getattr(config, "image_size", None),
                context_length=config.text_config.max_position_embeddings, **more, **kw)


def _class(name: str):
    import transformers

    return getattr(transformers, name)

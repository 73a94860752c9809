"""bench.models.clip: presets, both backends, components, adapter targets, QLoRA, save/load."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bench.errors import CheckpointError, SuiteError
from bench.models import clip
from bench.models.base import COMPONENTS, ModelSpec, component_of
from bench.tasks import contrastive
from bench.tasks.base import TaskSettings

FULL_PARAMS = 427_616_513  # openai/clip-vit-large-patch14 as transformers' CLIPModel


def spec(backend="transformers", preset="tiny", **kw):
    kw.setdefault("weights", "random")
    return ModelSpec(name="clip-test", family="clip", preset=preset, backend=backend, **kw)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def batch_for(loaded, texts, seed=0):
    settings = TaskSettings()
    ids, mask = contrastive.tokenize(loaded.processor, texts, settings.max_seq_len)
    return {"pixel_values": contrastive.pixel_values(loaded.processor, images(len(texts), seed)),
            "input_ids": ids, "attention_mask": mask}


TEXTS = ["a red circle", "a blue square", "two green crosses", "a photo of a yellow triangle"]


def features(model, batch):
    """(image embeddings, text embeddings) of either backend, without gradients."""
    with torch.no_grad():
        if clip.backend_of(model) == "open_clip":
            return model.encode_image(batch["pixel_values"]), model.encode_text(batch["input_ids"])
        image = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        return image, text


def target_regex(model, components, targets) -> str:
    """Full module paths of the target leaves inside their component, as one anchored regex.

    A list of names would not do: PEFT matches list entries as suffixes, and open_clip's text
    blocks (`transformer.resblocks.0.attn`) are a suffix of the vision tower's (`visual.transformer...`).
    """
    paths = [
        name for name, _ in model.named_modules()
        for comp, leaves in targets.items()
        if name.split(".")[-1] in leaves and component_of(name, components) == comp
    ]
    assert paths, f"no module matches {targets}"
    return "^(" + "|".join(re.escape(p) for p in paths) + ")$"


# ---------------------------------------------------------------- presets and builds


def test_importing_clip_does_not_import_torch():
    code = "import sys, bench.models.clip as c; assert 'torch' not in sys.modules, 'torch'; print(sorted(c.PRESETS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "['full', 'small', 'tiny']" in out.stdout


def test_tiny_presets_match_the_tiny_tokenizer():
    from bench.models.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    text = clip.PRESETS["tiny"]["text_config"]
    assert text["vocab_size"] == clip.TINY_VOCAB_SIZE == len(tok)
    assert (text["pad_token_id"], text["bos_token_id"], text["eos_token_id"]) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)


def test_clip_tokenizer_brackets_text_and_leaves_the_shared_one_alone():
    from bench.models.tokenizer import tiny_tokenizer

    tok = clip.clip_tokenizer(64)
    ids = tok("a red circle")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 5
    assert tiny_tokenizer()("a red circle")["input_ids"] == ids[1:-1]
    truncated = tok(["a red circle on the left"], truncation=True, max_length=4)["input_ids"][0]
    assert len(truncated) == 4 and truncated[-1] == tok.eos_token_id  # CLIP still finds its pooling token


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_tiny_builds_on_both_backends_with_the_same_architecture(backend):
    loaded = clip.build(spec(backend))
    assert loaded.family == "clip" and loaded.backend == backend
    assert loaded.info["weights"] == "random" and loaded.info["image_size"] == 32
    reference = sum(p.numel() for p in clip.build_meta(spec("transformers")).parameters())
    assert sum(p.numel() for p in loaded.model.parameters()) == reference
    out = loaded.processor(images=images(2), text=TEXTS[:2], return_tensors="pt", padding=True)
    assert out["pixel_values"].shape == (2, 3, 32, 32)
    assert (out["input_ids"][:, 0] == clip.PRESETS["tiny"]["text_config"]["bos_token_id"]).all()


def test_small_preset_has_the_same_architecture_on_both_backends():
    counts = {b: sum(p.numel() for p in clip.build_meta(spec(b, "small")).parameters()) for b in clip.BACKENDS}
    assert counts["transformers"] == counts["open_clip"] > 3_000_000


def test_full_preset_is_clip_vit_large_patch14_on_the_meta_device():
    model = clip.build_meta(spec(preset="full"))
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == FULL_PARAMS
    assert all(p.is_meta for p in params)
    assert model.config.vision_config.patch_size == 14 and model.config.vision_config.image_size == 224


def test_open_clip_full_is_vit_l_14_on_the_meta_device():
    import open_clip

    model = clip.build_meta(spec("open_clip", "full"))
    assert sum(p.numel() for p in model.parameters()) == FULL_PARAMS
    assert all(p.is_meta for p in model.parameters())
    # the registry's ViT-L-14 is the architecture the transformers preset describes
    expected = {**open_clip.get_model_config("ViT-L-14"), "quick_gelu": True}
    mapped = clip.open_clip_config(clip.PRESETS["full"])
    assert mapped["embed_dim"] == expected["embed_dim"] and mapped["quick_gelu"]
    for key, value in expected["vision_cfg"].items():
        assert mapped["vision_cfg"][key] == value
    for key, value in expected["text_cfg"].items():
        assert mapped["text_cfg"][key] == value


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_same_seed_same_weights_and_the_callers_rng_is_untouched(backend):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = clip.build(spec(backend), seed=7).model.state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = clip.build(spec(backend), seed=7).model.state_dict()
    c = clip.build(spec(backend), seed=8).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_preset_backend_and_kind_are_suite_errors():
    with pytest.raises(SuiteError, match="preset"):
        clip.build(spec(preset="huge"))
    with pytest.raises(SuiteError, match="backend"):
        clip.build(spec(backend="jax"))
    with pytest.raises(SuiteError, match="explicit `targets`"):
        clip.default_targets("prompt_tuning", "transformers")


def test_open_clip_refuses_quantization_with_a_fix():
    from transformers import BitsAndBytesConfig

    with pytest.raises(SuiteError, match='backend = "transformers"'):
        clip.build(spec("open_clip"), quantization=BitsAndBytesConfig(load_in_4bit=True))


def test_missing_checkpoint_directory_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="no such directory"):
        clip.build(spec(checkpoint="./no/such/clip", weights="pretrained"))


# ---------------------------------------------------------------- components


@pytest.mark.parametrize("backend", clip.BACKENDS)
@pytest.mark.parametrize("preset", ["tiny", "full"])
def test_every_parameter_is_in_exactly_one_component(backend, preset):
    model = clip.build_meta(spec(backend, preset))
    comps = clip.components(model, backend)
    assert set(comps) == set(COMPONENTS)
    owners = {comp: 0 for comp in COMPONENTS}
    for name, _ in model.named_parameters():
        matching = [c for c, prefixes in comps.items() if any(name == p or name.startswith(p + ".") for p in prefixes)]
        # visual.proj sits inside `visual`: the longer prefix (projector) must win, and nothing else may match
        assert component_of(name, comps) is not None, name
        assert len(matching) == 1 or name == "visual.proj", (name, matching)
        owners[component_of(name, comps)] += 1
    assert all(owners.values()), owners
    if backend == "open_clip":
        assert component_of("visual.proj", comps) == "projector"


def test_loaded_model_carries_its_components():
    loaded = clip.build(spec())
    assert loaded.components == clip.components(loaded.model, "transformers")
    assert loaded.components["language"] == ("text_model",)


# ---------------------------------------------------------------- adapter targets


def _train_steps(model, loaded, batch, steps=2, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = contrastive.loss(model, batch)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()


def peft_config(kind, backend, model, components):
    """The PEFT config of `kind` on CLIP's default targets (full paths, anchored)."""
    import peft

    regex = target_regex(model, components, clip.default_targets(kind, backend))
    if kind == "ia3":
        ff = target_regex(model, components, {"language": clip.feedforward_modules(backend)})
        return peft.IA3Config(target_modules=regex, feedforward_modules=ff)
    return {
        "lora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=regex),
        "dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=regex, use_dora=True),
        "loha": lambda: peft.LoHaConfig(r=4, target_modules=regex),
        "lokr": lambda: peft.LoKrConfig(r=4, target_modules=regex),
        "vera": lambda: peft.VeraConfig(r=4, target_modules=regex),
    }[kind]()


@pytest.mark.parametrize("backend", clip.BACKENDS)
@pytest.mark.parametrize("kind", ["lora", "ia3", "dora", "loha", "lokr", "vera"])
def test_default_targets_adapt_only_the_text_side(backend, kind):
    from peft import get_peft_model

    loaded = clip.build(spec(backend))
    batch = batch_for(loaded, TEXTS)
    image_before, text_before = features(loaded.model, batch)
    assert set(clip.default_targets(kind, backend)) == {"language"}
    model = get_peft_model(loaded.model, peft_config(kind, backend, loaded.model, loaded.components))
    adapted = [n for n, p in model.named_parameters() if p.requires_grad]
    assert adapted and not any("visual" in n or "vision_model" in n for n in adapted)
    _train_steps(model, loaded, batch)
    image_after, text_after = features(model, batch)
    assert torch.allclose(image_after, image_before), "the vision tower must not change"
    assert (text_after - text_before).abs().max() > 1e-4, "the adapted text side must change"


def test_lora_on_open_clip_out_proj_alone_is_never_used():
    """Why open_clip's default LoRA target is `attn`: nn.MultiheadAttention never calls out_proj's forward."""
    from peft import LoraConfig, get_peft_model

    loaded = clip.build(spec("open_clip"))
    batch = batch_for(loaded, TEXTS)
    _, text_before = features(loaded.model, batch)
    regex = target_regex(loaded.model, loaded.components, {"language": ("out_proj",)})
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=regex, init_lora_weights=False))
    assert any(p.requires_grad for p in model.parameters())  # adapters exist (non-zero B) ...
    assert not contrastive.loss(model, batch).requires_grad  # ... but no adapter reaches the loss
    _, text_after = features(model, batch)
    assert torch.equal(text_after, text_before)


def test_qlora_tiny_on_the_cpu_trains_a_lora_step():
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = clip.build(spec(), quantization=quant)
    assert quant.llm_int8_skip_modules is None  # the caller's config is not mutated
    model = loaded.model
    assert loaded.info["quantized"]
    assert isinstance(model.text_model.encoder.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(model.vision_model.encoder.layers[0].mlp.fc2, bnb.nn.Linear4bit)
    for name in clip.QUANTIZATION_SKIP:  # projections stay trainable full-precision Linear
        assert type(getattr(model, name)) is torch.nn.Linear
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    regex = target_regex(model, loaded.components, clip.default_targets("qlora"))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=regex))
    batch = batch_for(loaded, TEXTS)
    loss = contrastive.loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert all("lora_" in n and ".text_model." in n for n in grads)


def test_a_saved_checkpoint_loads_quantized(tmp_path):
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    clip.save(clip.build(spec()), tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = clip.build(spec(preset=None, checkpoint=str(tmp_path), weights="pretrained"), quantization=quant)
    assert loaded.info["quantized"] and loaded.info["weights"] == "pretrained"
    assert isinstance(loaded.model.text_model.encoder.layers[1].self_attn.v_proj, bnb.nn.Linear4bit)
    assert torch.isfinite(contrastive.loss(loaded.model, batch_for(loaded, TEXTS)))


# ---------------------------------------------------------------- save and load


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_save_then_build_from_the_directory_restores_the_same_model(backend, tmp_path):
    loaded = clip.build(spec(backend), seed=3)
    with torch.no_grad():  # make the weights unlike any fresh init
        for p in loaded.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    clip.save(loaded, tmp_path)
    restored = clip.build(spec(backend, preset=None, checkpoint=str(tmp_path), weights="pretrained"))
    assert restored.info["weights"] == "pretrained" and restored.info["checkpoint"] == str(tmp_path)
    assert restored.info["config_hash"] == loaded.info["config_hash"]  # same architecture, same provenance hash
    batch = batch_for(loaded, TEXTS)
    assert torch.equal(batch_for(restored, TEXTS)["input_ids"], batch["input_ids"])
    assert torch.allclose(batch_for(restored, TEXTS)["pixel_values"], batch["pixel_values"])
    for before, after in zip(features(loaded.model, batch), features(restored.model, batch)):
        assert torch.allclose(before, after, atol=1e-6)
    loaded.model.eval()
    restored.model.eval()
    with torch.no_grad():
        assert torch.allclose(contrastive.loss(loaded.model, batch), contrastive.loss(restored.model, batch), atol=1e-6)


@pytest.mark.parametrize("backend", clip.BACKENDS)
def test_random_weights_with_a_local_checkpoint_use_its_config(backend, tmp_path):
    saved = clip.build(spec(backend), seed=1)
    clip.save(saved, tmp_path)
    fresh = clip.build(spec(backend, preset=None, checkpoint=str(tmp_path), weights="random"), seed=0)
    assert fresh.info["weights"] == "random" and str(tmp_path) in fresh.info["config_source"]
    a, b = saved.model.state_dict(), fresh.model.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not all(torch.equal(a[k], b[k]) for k in a)

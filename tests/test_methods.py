"""bench.methods on real tiny models: component-aware targets, what each method leaves trainable, parameter counts."""

from __future__ import annotations

import copy
import re

import peft
import pytest
import torch

from bench.errors import BenchError
from bench.methods import apply_method, check_targets, count_params, quantization_config, resolve_targets, target_regex
from bench.models import clip, llava
from bench.models.base import ModelSpec, component_of

LORA = {"name": "lora", "kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None, "train_full": None}
QV = {"language": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def llava_base():
    return llava.build(ModelSpec(name="llava-t", family="llava", preset="tiny", weights="random"))


@pytest.fixture
def llava_tiny(llava_base):
    """A fresh copy per test: apply_method freezes and wraps the model in place."""
    return copy.deepcopy(llava_base)


@pytest.fixture(scope="module")
def clip_base():
    return clip.build(ModelSpec(name="clip-t", family="clip", preset="tiny", weights="random"))


def adapted_names(model, attr: str = "lora_A") -> list[str]:
    """Paths (in the base model) of the modules peft wrapped with an adapter."""
    prefix = "base_model.model."
    return [n[len(prefix):] for n, m in model.named_modules() if hasattr(m, attr) and n.startswith(prefix)]


# ---------------------------------------------------------------- target_regex


def test_target_regex_is_a_full_match_under_the_component_only(llava_tiny):
    regex = target_regex(llava_tiny.components, QV)
    assert regex.startswith("^") and regex.endswith("$")
    assert re.fullmatch(regex, "model.language_model.layers.0.self_attn.q_proj")
    assert re.fullmatch(regex, "model.language_model.layers.1.self_attn.v_proj")
    for name in (
        "model.vision_tower.encoder.layers.0.self_attn.q_proj",  # same leaf, wrong component
        "model.language_model.layers.0.self_attn.q_proj.lora_A",  # a child of a target is not a target
        "model.language_model.layers.0.self_attn.q_proj_extra",  # a longer leaf name
        "model.language_model.layers.0.self_attn.k_proj",
        "xmodel.language_model.layers.0.self_attn.q_proj",  # the prefix is anchored
        "model.language_model_2.layers.0.self_attn.q_proj",  # ... and ends at a '.'
        "q_proj",
    ):
        assert re.fullmatch(regex, name) is None, name
    # the regex is what peft receives: peft matches a string target with re.fullmatch as well
    matched = [n for n, _ in llava_tiny.model.named_modules() if re.fullmatch(regex, n)]
    assert matched == [f"model.language_model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


def test_a_target_that_is_the_component_root_module_is_matched(llava_tiny):
    # LLaVA's lm_head is a component prefix itself; before the fix check_targets accepted it and peft then found nothing
    model = apply_method(llava_tiny, {**LORA, "targets": {"language": ["lm_head"]}, "train_full": []}, llava)
    assert adapted_names(model) == ["lm_head"]


# ---------------------------------------------------------------- LLaVA: the vision tower's q_proj/v_proj


def test_lora_on_language_q_v_adapts_no_vision_module(llava_tiny):
    model = apply_method(llava_tiny, {**LORA, "targets": QV}, llava)
    names = adapted_names(model)
    assert len(names) == 4  # 2 Llama layers × (q_proj, v_proj)
    assert all(component_of(n, llava_tiny.components) == "language" for n in names)
    assert not [n for n in names if n.startswith("model.vision_tower")]
    vision = [p for n, p in model.get_base_model().named_parameters() if n.startswith("model.vision_tower")]
    assert vision and not any(p.requires_grad for p in vision)


def test_a_bare_leaf_list_would_have_adapted_the_vision_tower(llava_tiny):
    """The danger component-aware targeting avoids: peft's plain list matches the leaf name anywhere."""
    model = peft.get_peft_model(llava_tiny.model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    names = adapted_names(model)
    vision = [n for n in names if n.startswith("model.vision_tower")]
    assert len(vision) == 4 and len(names) == 8  # the CLIP tower's 2 layers × (q_proj, v_proj) came along


def test_default_targets_resolve_to_the_family_recipe(llava_tiny):
    assert resolve_targets(LORA, llava, "transformers") == QV
    assert resolve_targets({**LORA, "kind": "qlora"}, llava, "transformers") == QV  # qlora uses the lora recipe
    assert resolve_targets({"kind": "ia3"}, llava, "transformers") == {"language": ["k_proj", "v_proj", "down_proj"]}
    assert resolve_targets({**LORA, "targets": {"vision": ["fc1"]}}, llava, "transformers") == {"vision": ["fc1"]}


# ---------------------------------------------------------------- what stays trainable


def trainable_base_params(model) -> set[str]:
    """Trainable parameters of the base model that are not adapter weights."""
    return {n for n, p in model.get_base_model().named_parameters() if p.requires_grad and "lora_" not in n}


def test_train_full_projector_makes_exactly_the_projector_trainable(llava_tiny, llava_base):
    projector = {n for n, _ in llava_base.model.named_parameters() if n.startswith("model.multi_modal_projector.")}
    assert len(projector) == 4  # linear_1 and linear_2, weight and bias
    model = apply_method(llava_tiny, {**LORA, "train_full": ["projector"]}, llava)
    assert trainable_base_params(model) == projector
    counts = count_params(model, llava_tiny.components)
    assert counts["by_component"]["projector"]["trainable"] == counts["by_component"]["projector"]["total"]
    assert counts["by_component"]["vision"]["trainable"] == 0


def test_train_full_default_is_the_projector_and_empty_means_adapters_only(llava_base):
    default = apply_method(copy.deepcopy(llava_base), LORA, llava)  # train_full = None
    none = apply_method(copy.deepcopy(llava_base), {**LORA, "train_full": []}, llava)
    assert all(n.startswith("model.multi_modal_projector.") for n in trainable_base_params(default))
    assert trainable_base_params(none) == set()
    assert count_params(none, llava_base.components)["trainable"] == 2 * 2 * 4 * (64 + 64)  # layers × q,v × r × (in + out)


def test_train_full_with_an_unknown_component_is_a_bench_error(llava_tiny):
    with pytest.raises(BenchError, match=r"train_full names unknown component\(s\) \['qformer'\]"):
        apply_method(llava_tiny, {**LORA, "train_full": ["qformer"]}, llava)


def test_full_with_freeze_vision_trains_everything_else(llava_tiny):
    model = apply_method(llava_tiny, {"name": "full", "kind": "full", "freeze": ["vision"]}, llava)
    for name, p in model.named_parameters():
        assert p.requires_grad == (component_of(name, llava_tiny.components) != "vision"), name
    by = count_params(model, llava_tiny.components)["by_component"]
    assert by["vision"]["trainable"] == 0 < by["vision"]["total"]
    assert all(by[c]["trainable"] == by[c]["total"] > 0 for c in ("projector", "language"))


def test_full_with_a_misspelt_freeze_component_is_a_bench_error(llava_tiny):
    with pytest.raises(BenchError, match=r"freeze names unknown component\(s\) \['visoin'\]") as info:
        apply_method(llava_tiny, {"name": "full", "kind": "full", "freeze": ["visoin"]}, llava)
    assert "vision, projector, language" in info.value.render()


# ---------------------------------------------------------------- IA3


def test_ia3_scales_feed_forward_inputs_and_attention_outputs(clip_base):
    loaded = copy.deepcopy(clip_base)
    model = apply_method(loaded, {"name": "ia3", "kind": "ia3", "targets": None, "train_full": []}, clip)
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "ia3_l")}
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"k_proj", "v_proj", "fc2"}  # CLIP's IA3 recipe
    assert all(".text_model." in n for n in layers)
    for name, m in layers.items():
        vector = tuple(m.ia3_l["default"].shape)
        if name.endswith("fc2"):  # feed-forward: one scale per input feature (fc2: 128 -> 64)
            assert m.is_feedforward and vector == (1, 128)
        else:  # attention: one scale per output feature
            assert not m.is_feedforward and vector == (64, 1)
    # 2 layers × (k 64 + v 64 + fc2 128) scales, nothing else trainable
    assert count_params(model, loaded.components)["trainable"] == 2 * (64 + 64 + 128)


def test_ia3_without_feed_forward_targets_gives_peft_an_empty_list(clip_base):
    loaded = copy.deepcopy(clip_base)
    model = apply_method(loaded, {"name": "ia3", "kind": "ia3", "targets": {"language": ["k_proj"]}, "train_full": []}, clip)
    assert model.peft_config["default"].feedforward_modules in ([], set())
    assert not any(getattr(m, "is_feedforward", False) for m in model.modules())


# ---------------------------------------------------------------- count_params and check_targets


def test_count_params_totals_match_the_model(llava_tiny):
    model = apply_method(llava_tiny, {**LORA, "r": 8}, llava)
    counts = count_params(model, llava_tiny.components)
    params = list(model.parameters())
    assert counts["total"] == sum(p.numel() for p in params)
    assert counts["trainable"] == sum(p.numel() for p in params if p.requires_grad)
    assert counts["trainable_pct"] == round(100 * counts["trainable"] / counts["total"], 4)
    by = counts["by_component"]
    assert set(by) == {"vision", "projector", "language"}  # every LLaVA parameter has a component, no "other"
    assert sum(v["total"] for v in by.values()) == counts["total"]
    assert sum(v["trainable"] for v in by.values()) == counts["trainable"]
    assert by["language"]["trainable"] == 2 * 2 * 8 * (64 + 64)  # adapters count in the component they adapt
    assert "quantized" not in counts


def test_check_targets_names_the_missing_leaf_and_lists_what_exists(llava_tiny):
    with pytest.raises(BenchError) as info:
        check_targets(llava_tiny.model, llava_tiny.components, {"language": ["q_proj", "qkv"]}, "my-lora")
    text = info.value.render()
    assert "method 'my-lora'" in text and "targets.language = ['qkv']" in text
    for leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert leaf in info.value.fix, leaf
    assert "fc1" not in info.value.fix  # the vision tower's layers are not offered for the language component


def test_check_targets_rejects_an_unknown_component(llava_tiny):
    with pytest.raises(BenchError, match=r"unknown component\(s\) \['qformer'\]") as info:
        apply_method(llava_tiny, {**LORA, "targets": {"qformer": ["query"]}}, llava)
    assert "vision, projector, language" in info.value.fix


# ---------------------------------------------------------------- QLoRA on the CPU


def test_quantization_config_is_nf4_with_float32_compute_on_the_cpu():
    method = {"kind": "qlora", "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}
    cpu, cuda = quantization_config(method, "cpu"), quantization_config(method, "cuda")
    assert cpu.load_in_4bit and cpu.bnb_4bit_quant_type == "nf4" and cpu.bnb_4bit_use_double_quant
    assert cpu.bnb_4bit_compute_dtype == torch.float32 and cuda.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config({**method, "compute_dtype": "float16"}, "cpu").bnb_4bit_compute_dtype == torch.float16
    assert quantization_config({"kind": "lora"}, "cpu") is None


def test_qlora_on_tiny_clip_counts_4bit_weights_unpacked(clip_base):
    method = {**LORA, "kind": "qlora", "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}
    spec = ModelSpec(name="clip-t", family="clip", preset="tiny", weights="random")
    quantized = clip.build(spec, quantization=quantization_config(method, "cpu"))
    packed = [p for p in quantized.model.parameters() if type(p).__name__ == "Params4bit"]
    assert packed and all(p.dtype == torch.uint8 for p in packed)
    assert sum(p.numel() for p in packed) * 2 == sum(p.quant_state.shape.numel() for p in packed)  # two per byte

    model = apply_method(quantized, method, clip)
    counts = count_params(model, quantized.components)
    reference = count_params(apply_method(copy.deepcopy(clip_base), {**method, "kind": "lora"}, clip), clip_base.components)
    adapters = 2 * 2 * 4 * (64 + 64)  # text layers × (q_proj, v_proj) × r × (in + out)
    assert counts["total"] == reference["total"] == sum(p.numel() for p in clip_base.model.parameters()) + adapters
    assert counts["trainable"] == reference["trainable"] and counts["by_component"] == reference["by_component"]
    assert counts["quantized"] == sum(p.quant_state.shape.numel() for p in packed)
    lora_layer = next(m for m in model.modules() if hasattr(m, "lora_A"))
    assert type(lora_layer.base_layer).__name__ == "Linear4bit" and lora_layer.base_layer.compute_dtype == torch.float32


# ---------------------------------------------------------------- gradient checkpointing


def checkpoint_functions(model) -> set[str]:
    return {repr(m._gradient_checkpointing_func) for m in model.modules() if hasattr(m, "_gradient_checkpointing_func")}


def test_gradient_checkpointing_is_non_reentrant_and_adapters_still_get_gradients(llava_tiny):
    model = apply_method(llava_tiny, {**LORA, "train_full": []}, llava, gradient_checkpointing=True)
    assert model.get_base_model().is_gradient_checkpointing
    assert checkpoint_functions(model) and all("use_reentrant=False" in f for f in checkpoint_functions(model))
    model.train()
    ids = torch.randint(4, 90, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(adapters) == 8 and all(p.grad is not None for p in adapters.values())
    # lora_B starts at zero, so lora_A's first gradient is zero; lora_B's is not
    assert all(p.grad.abs().sum() > 0 for n, p in adapters.items() if "lora_B" in n)


@pytest.mark.parametrize("method", [LORA, {"name": "full", "kind": "full", "freeze": ["vision"]}], ids=["lora", "full-frozen-vision"])
def test_checkpointing_does_not_send_backward_through_the_frozen_vision_tower(llava_tiny, method):
    """transformers and peft make every input embedding's output require grad (reentrant checkpointing needs it):
    the frozen vision tower would then keep activations and be back-propagated for nothing. bench removes the hooks."""
    model = apply_method(llava_tiny, method, llava, gradient_checkpointing=True)
    seen = {}

    def keep_output(module, inputs, output):
        seen["out"] = output.last_hidden_state

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.model.vision_tower.register_forward_hook(keep_output)
    model.train()
    image, n_image = model.config.image_token_id, (32 // 8) ** 2
    text = torch.randint(4, 90, (2, 6))
    text[text == image] = image + 1
    ids = torch.cat([torch.full((2, n_image), image), text], dim=1)
    labels = ids.masked_fill(ids == image, -100)
    model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32), labels=labels).loss.backward()
    assert not seen["out"].requires_grad
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b) and (lora_b or method["kind"] == "full")
    assert all(p.grad is not None for n, p in model.named_parameters() if "multi_modal_projector" in n)


def test_qlora_keeps_checkpointing_non_reentrant(clip_base):
    # peft's prepare_model_for_kbit_training re-enables checkpointing; with no kwargs torch's default is reentrant
    method = {**LORA, "kind": "qlora", "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"}
    spec = ModelSpec(name="clip-t", family="clip", preset="tiny", weights="random")
    loaded = clip.build(spec, quantization=quantization_config(method, "cpu"))
    model = apply_method(loaded, method, clip, gradient_checkpointing=True)
    functions = checkpoint_functions(model)
    assert functions and all("use_reentrant=False" in f for f in functions), functions


def test_gradient_checkpointing_reaches_open_clip():
    loaded = clip.build(ModelSpec(name="oc", family="clip", preset="tiny", weights="random", backend="open_clip"))
    model = apply_method(loaded, {"name": "full", "kind": "full", "freeze": []}, clip, gradient_checkpointing=True)
    assert model.visual.transformer.grad_checkpointing and model.transformer.grad_checkpointing


def test_each_kind_gets_its_own_family_default_targets():
    """open_clip: LoRA wraps the MultiheadAttention; DoRA cannot, so its default is the MLP (not LoRA's targets)."""
    from bench.methods import apply_method
    from bench.models import get_family
    from bench.models.base import ModelSpec

    fam = get_family("clip")
    loaded = fam.build(ModelSpec(name="o", family="clip", preset="tiny", weights="random", backend="open_clip"))
    model = apply_method(loaded, {"name": "d", "kind": "dora", "r": 4, "alpha": 8.0, "dropout": 0.0, "targets": None,
                                  "train_full": None}, fam)
    adapted = {n.rsplit(".", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_magnitude_vector")}
    assert adapted and all(n.endswith(("c_fc", "c_proj")) and ".visual." not in n for n in adapted)


# ---------------------------------------------------------------- prompt tuning


@pytest.mark.parametrize("tokens", [1, 5, 16])
def test_prompt_tuning_trains_only_its_virtual_tokens_and_they_move(llava_tiny, tokens):
    from PIL import Image

    loaded = llava_tiny
    hidden = loaded.model.config.text_config.hidden_size
    model = apply_method(loaded, {"name": "pt", "kind": "prompt_tuning", "num_virtual_tokens": tokens},
                         llava)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == tokens * hidden and len(trainable) == 1
    assert count_params(model, loaded.components)["trainable"] == tokens * hidden
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    enc = loaded.processor(images=[image], text=["USER: <image>\nwhat colour ? ASSISTANT: red"], return_tensors="pt")
    optimizer = torch.optim.SGD(trainable.values(), lr=1.0)
    model(**enc, labels=enc["input_ids"]).loss.backward()
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in trainable.items())  # the tokens learnt
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)  # nothing else did
    out = model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3


def test_the_families_prompt_tuning_skips_still_say_what_peft_does(clip_base):
    """The catalog's reasons for skipping prompt tuning on CLIP and BLIP-2 are what PEFT 0.21 does: checked, so a PEFT
    that learns them makes this fail rather than leave the cells skipped for a reason no longer true."""
    from PIL import Image

    from bench.models import blip2
    from bench.models.catalog import FAMILIES

    assert "prompt_tuning" in FAMILIES["clip"].unsupported_methods and "prompt_tuning" in FAMILIES["blip2"].unsupported_methods
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    loaded = blip2.build(ModelSpec(name="b", family="blip2", preset="tiny", weights="random"))
    model = peft.get_peft_model(loaded.model, config)
    enc = loaded.processor(images=[Image.new("RGB", (32, 32))], text=["a red circle"], return_tensors="pt")
    with pytest.raises(TypeError):
        model(**enc, labels=enc["input_ids"])
    with pytest.raises(AttributeError):
        peft.get_peft_model(copy.deepcopy(clip_base.model), config)

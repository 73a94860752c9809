"""LLaVA family: tiny builds train, presets match the real architecture, LoRA counts, save/load, QLoRA."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import lm_batch, noise_image

from bench.errors import SuiteError
from bench.models import llava
from bench.models.base import ModelSpec, component_of
from bench.models.tokenizer import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "USER: <image>\nwhat color is the circle? ASSISTANT: red</s>"


def spec(**kw) -> ModelSpec:
    return ModelSpec(**{"name": "l", "family": "llava", "preset": "tiny", "weights": "random", **kw})


def image(seed: int = 0):
    return noise_image(seed, 44, 36)


@pytest.fixture(scope="module")
def tiny():
    return llava.build(spec())


def batch_for(loaded, texts):
    return lm_batch(loaded, [image(i) for i in range(len(texts))], texts)


def language_lora_regex(components) -> str:
    """q_proj/v_proj under the language model's prefixes only (the vision tower has q_proj/v_proj too)."""
    return rf"^(?:{'|'.join(map(re.escape, components['language']))})\..*\.(?:q_proj|v_proj)$"


def test_tiny_presets_use_the_tiny_tokenizers_ids():
    tok = tiny_tokenizer()
    assert llava.TINY_VOCAB_SIZE == len(tok)
    for name in ("tiny", "small"):
        preset = llava.PRESETS[name]
        assert preset["image_token_index"] == tok.image_token_id
        assert preset["text_config"]["vocab_size"] == len(tok)
        assert (preset["text_config"]["eos_token_id"], preset["text_config"]["pad_token_id"]) == (tok.eos_token_id, tok.pad_token_id)


def test_processor_expands_image_to_one_token_per_patch_feature(tiny):
    enc = tiny.processor(images=[image()], text=[TEXT], return_tensors="pt")
    n_image = int((enc["input_ids"] == tiny.model.config.image_token_id).sum())
    assert n_image == (32 // 8) ** 2 == tiny.info["image_tokens"]  # the "default" strategy drops CLIP's class token
    with torch.no_grad():
        features = tiny.model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output
    assert sum(f.shape[0] for f in features) == n_image


def test_tiny_training_step_gives_finite_loss_and_gradients(tiny):
    model = llava.build(spec(), seed=3).model
    out = model(**batch_for(tiny, [TEXT, "USER: <image>\nhow many? ASSISTANT: two</s>"]))
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    # LLaVA reads the vision tower's penultimate layer (vision_feature_layer = -2): the last layer gets no gradient
    unused = {n for n, g in grads.items() if g is None}
    assert unused and all(n.startswith(("model.vision_tower.encoder.layers.1.", "model.vision_tower.post_layernorm."))
                          for n in unused)
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert grads["model.multi_modal_projector.linear_1.weight"].abs().sum() > 0
    assert grads["lm_head.weight"].abs().sum() > 0


def test_components_cover_every_parameter_exactly_once(tiny):
    comps = tiny.components
    assert comps == {"vision": ("model.vision_tower",), "projector": ("model.multi_modal_projector",),
                     "language": ("model.language_model", "lm_head")}
    for name, _ in tiny.model.named_parameters():
        owners = [c for c, prefixes in comps.items() if component_of(name, {c: prefixes})]
        assert len(owners) == 1, (name, owners)


def test_full_preset_is_llava_1_5_7b_on_the_meta_device():
    model = llava.build_meta(spec(preset="full"))
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == 7_063_427_072  # published: 7.06B
    comps = llava.components(model)
    by_comp = {c: 0 for c in comps}
    for name, p in params.items():
        by_comp[component_of(name, comps)] += p.numel()
    assert by_comp == {"vision": 303_507_456, "projector": 20_979_712, "language": 6_738_939_904}
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (4096, 32, 32, 11008)
    assert (text.vocab_size, model.config.image_token_index) == (32064, 32000)


def test_lora_r8_on_language_q_v_of_the_full_preset_trains_4194304_parameters():
    import peft

    model = llava.build_meta(spec(preset="full"))
    regex = language_lora_regex(llava.components(model))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=regex))
    trainable, _ = lora.get_nb_trainable_parameters()
    assert trainable == 4_194_304  # 32 layers x (q, v) x 8 x (4096 + 4096)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in lora.named_parameters() if ".lora_A." in n}
    assert adapted and not any("vision_tower" in n for n in adapted)

    # the bare leaf names would also adapt the vision tower's 24 layers: 786,432 more
    bare = peft.get_peft_model(llava.build_meta(spec(preset="full")),
                               peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    assert bare.get_nb_trainable_parameters()[0] == 4_194_304 + 24 * 2 * 8 * (1024 + 1024)


def test_small_preset_shape():
    model = llava.build_meta(spec(preset="small"))
    v, t = model.config.vision_config, model.config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size) == (256, 4, 64, 16)
    assert (t.hidden_size, t.num_hidden_layers) == (256, 4)


def test_default_targets_name_llama_layers():
    assert llava.default_targets("lora") == {"language": ("q_proj", "v_proj")}
    assert llava.default_targets("ia3") == {"language": ("k_proj", "v_proj", "down_proj")}
    assert llava.feedforward_modules() == ("down_proj",)
    with pytest.raises(SuiteError, match="no default LLaVA targets"):
        llava.default_targets("adalora")


def test_save_and_load_give_identical_logits(tiny, tmp_path):
    llava.save(tiny, tmp_path)
    loaded = llava.build(spec(checkpoint=str(tmp_path), weights="pretrained"))
    assert type(loaded.processor).__name__ == "LlavaProcessor"
    a, b = batch_for(tiny, [TEXT]), batch_for(loaded, [TEXT])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    tiny.model.eval(), loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(tiny.model(**a).logits, loaded.model(**b).logits)


def test_qlora_quantises_only_the_language_model_and_trains_on_cpu():
    import peft
    from transformers import BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = llava.build(spec(), quantization=q)
    quantised = [n for n, m in loaded.model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantised and all(n.startswith("model.language_model.") for n in quantised)

    model = peft.prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=language_lora_regex(loaded.components)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    loss = model(**batch_for(loaded, [TEXT, "USER: <image>\nhow many? ASSISTANT: two</s>"])).loss
    assert math.isfinite(loss.item())
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))

"""BLIP-2 family: tiny builds train, presets match the real architecture, components, save/load, QLoRA."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import lm_batch, noise_image

from bench.errors import CheckpointError, SuiteError
from bench.models import blip2
from bench.models.base import ModelSpec, component_of
from bench.models.tokenizer import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(**kw) -> ModelSpec:
    return ModelSpec(**{"name": "b", "family": "blip2", "preset": "tiny", "weights": "random", **kw})


def image(seed: int = 0):
    return noise_image(seed, 40, 52)


@pytest.fixture(scope="module")
def tiny():
    return blip2.build(spec())


def batch_for(loaded, texts):
    return lm_batch(loaded, [image(i) for i in range(len(texts))], texts)


def test_tiny_presets_use_the_tiny_tokenizers_ids():
    tok = tiny_tokenizer()
    assert blip2.TINY_VOCAB_SIZE == len(tok)
    for name in ("tiny", "small"):
        preset = blip2.PRESETS[name]
        assert preset["image_token_index"] == tok.image_token_id
        assert preset["text_config"]["vocab_size"] == len(tok)
        assert (preset["text_config"]["eos_token_id"], preset["text_config"]["pad_token_id"]) == (tok.eos_token_id, tok.pad_token_id)


def test_processor_puts_one_image_token_per_query_in_front(tiny):
    enc = tiny.processor(images=[image()], text=["a red circle</s>"], return_tensors="pt")
    ids = enc["input_ids"][0]
    q = tiny.model.config.num_query_tokens
    assert q == 8
    assert ids[:q].tolist() == [tiny.model.config.image_token_id] * q
    assert int((ids == tiny.model.config.image_token_id).sum()) == q
    assert enc["pixel_values"].shape == (1, 3, 32, 32)
    assert tiny.info["image_tokens"] == q and tiny.info["weights"] == "random"


def test_tiny_training_step_gives_finite_loss_and_gradients(tiny):
    model = blip2.build(spec(), seed=3).model
    out = model(**batch_for(tiny, ["a red circle</s>", "two blue squares on the left</s>"]))
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the loss reaches every component: Q-Former queries and the vision tower get a gradient through the LM
    assert grads["query_tokens"].abs().sum() > 0
    assert grads["vision_model.embeddings.patch_embedding.weight"].abs().sum() > 0


def test_random_weights_come_from_the_seed_without_touching_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = blip2.build(spec(), seed=1).model
    after = torch.rand(1)
    b = blip2.build(spec(), seed=1).model
    c = blip2.build(spec(), seed=2).model
    assert torch.equal(before, after)
    w = "language_model.model.decoder.layers.0.fc1.weight"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert torch.equal(sa[w], sb[w]) and not torch.equal(sa[w], sc[w])


def test_components_cover_every_parameter_exactly_once(tiny):
    comps = tiny.components
    assert set(comps) == {"vision", "qformer", "projector", "language"}
    for name, _ in tiny.model.named_parameters():
        owners = [c for c, prefixes in comps.items() if component_of(name, {c: prefixes})]
        assert len(owners) == 1, (name, owners)
    assert component_of("query_tokens", comps) == "qformer"
    assert component_of("language_model.lm_head", comps) == "language"  # OPT's head lives inside language_model


def test_full_preset_is_blip2_opt_2_7b_on_the_meta_device():
    model = blip2.build_meta(spec(preset="full"))
    params = dict(model.named_parameters())
    assert all(p.is_meta for p in params.values())
    assert sum(p.numel() for p in params.values()) == 3_744_761_856  # published: 3.74B
    comps = blip2.components(model)
    by_comp = {c: 0 for c in comps}
    for name, p in params.items():
        by_comp[component_of(name, comps)] += p.numel()
    assert by_comp == {"vision": 985_952_256, "qformer": 105_162_240, "projector": 1_968_640, "language": 2_651_678_720}
    assert params["language_model.model.decoder.embed_tokens.weight"].shape == (50304, 2560)
    assert model.config.image_token_index == 50265 and model.config.num_query_tokens == 32


def test_small_preset_shape():
    model = blip2.build_meta(spec(preset="small"))
    v = model.config.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size) == (256, 4, 64, 16)
    assert model.config.text_config.num_hidden_layers == 4 and model.config.text_config.hidden_size == 256


def test_default_targets_name_opt_layers_only():
    assert blip2.default_targets("lora", "transformers") == {"language": ("q_proj", "v_proj")}
    assert blip2.default_targets("qlora") == {"language": ("q_proj", "v_proj")}
    assert blip2.default_targets("ia3") == {"language": ("k_proj", "v_proj", "fc2")}
    assert blip2.feedforward_modules("transformers") == ("fc2",)
    with pytest.raises(SuiteError, match="no default BLIP-2 targets"):
        blip2.default_targets("prompt_tuning")
    with pytest.raises(SuiteError, match="backend"):
        blip2.components(torch.nn.Linear(1, 1), "open_clip")


def test_bad_preset_and_missing_checkpoint_are_user_errors(tmp_path):
    with pytest.raises(SuiteError, match="no preset 'huge'"):
        blip2.build(spec(preset="huge"))
    with pytest.raises(CheckpointError, match="no such directory"):
        blip2.build(spec(checkpoint=str(tmp_path / "missing"), weights="pretrained"))


def test_save_and_load_give_identical_logits(tiny, tmp_path):
    blip2.save(tiny, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "processor_config.json").is_file()
    loaded = blip2.build(spec(checkpoint=str(tmp_path), weights="pretrained"))
    assert loaded.info["weights"] == "pretrained" and loaded.info["tokenizer"] == "checkpoint"
    text = ["a red circle</s>"]
    a, b = batch_for(tiny, text), batch_for(loaded, text)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    tiny.model.eval(), loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(tiny.model(**a).logits, loaded.model(**b).logits)

    # weights = "random" with a checkpoint: its config and processor, fresh weights
    fresh = blip2.build(spec(checkpoint=str(tmp_path), weights="random"), seed=7)
    assert fresh.info["tokenizer"] == "checkpoint" and fresh.info["config_source"].startswith("config.json")
    w = "language_projection.weight"
    assert not torch.equal(fresh.model.state_dict()[w], tiny.model.state_dict()[w])


def test_qlora_quantises_only_the_language_model_and_trains_on_cpu():
    import peft
    from transformers import BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = blip2.build(spec(), quantization=q)
    assert loaded.info["quantized"]
    quantised = [n for n, m in loaded.model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantised and all(component_of(n, loaded.components) == "language" for n in quantised)
    assert not any(n.endswith("lm_head") for n in quantised)

    model = peft.prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
    regex = rf"^(?:{'|'.join(map(re.escape, loaded.components['language']))})\..*\.(?:q_proj|v_proj)$"
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=regex))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    loss = model(**batch_for(loaded, ["a red circle</s>", "two blue squares</s>"])).loss
    assert math.isfinite(loss.item())
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))

"""The chat-template families (smolvlm, qwen2_vl, auto): components and default targets found from the model, the
suite's components override, the real chat templates on the tiny processors, and a saved tiny model rebuilt as
`family = "auto"`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import noise_image

from bench.data.sample import Sample
from bench.errors import SuiteError
from bench.models import blip2, get_family, llava, qwen2_vl, smolvlm
from bench.models.base import COMPONENTS, ModelSpec, component_of
from bench.models.chat import components_or_override, discover_components, feedforward_of, language_leaves, targets_for
from bench.tasks import chat
from bench.tasks.base import TaskSettings

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED = {
    "smolvlm": {"vision": ("model.vision_model",), "projector": ("model.connector",),
                "language": ("model.text_model", "lm_head")},
    "qwen2_vl": {"vision": ("model.visual",), "projector": ("model.visual.merger",),
                 "language": ("model.language_model", "lm_head")},
}
LLAMA_LEAVES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
CONVERSATION = chat.messages((("what color is it?", "red"), ("how many?", "two circles")))


def spec(family: str, **kw) -> ModelSpec:
    return ModelSpec(**{"name": "m", "family": family, "preset": "tiny", "weights": "random", **kw})


@pytest.fixture(scope="module")
def models():
    """family -> its tiny model, built when first asked for."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = get_family(family).build(spec(family))
        return cache[family]

    return get


# ---------------------------------------------------------------- components found from the model


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_discovered_components(models, family):
    loaded = models(family)
    assert loaded.components == EXPECTED[family]
    assert discover_components(loaded.model) == EXPECTED[family]
    assert get_family(family).components(loaded.model) == EXPECTED[family]


def test_discovery_on_llava_agrees_with_its_hand_written_table(models):
    loaded = models("llava")
    assert discover_components(loaded.model) == llava.components(loaded.model) == loaded.components


@pytest.mark.parametrize("family", [
    "smolvlm", "qwen2_vl", "llava",
    # BLIP-2 (AutoModelForImageTextToText loads it) keeps its query tokens as a bare nn.Parameter on the top-level
    # model, not in a module: discovery counts it with the projector beside the language model
    "blip2",
])
def test_every_parameter_belongs_to_exactly_one_discovered_component(models, family):
    model = models(family).model
    found = discover_components(model)
    assert set(found) == set(COMPONENTS)
    for name, _ in model.named_parameters():
        assert component_of(name, found) is not None, name
        # exactly one: a parameter under two prefixes is only the projector nested in the vision tower (Qwen2-VL)
        owners = {c for c, prefixes in found.items() if component_of(name, {c: prefixes})}
        assert len(owners) == 1 or owners == {"vision", "projector"}, (name, owners)


def test_qwen2_vl_merger_is_the_projector_and_the_rest_of_the_tower_is_vision(models):
    loaded = models("qwen2_vl")
    by_component = {c: 0 for c in COMPONENTS}
    for name, p in loaded.model.named_parameters():
        comp = component_of(name, loaded.components)
        assert comp == ("projector" if name.startswith("model.visual.merger.") else
                        "vision" if name.startswith("model.visual.") else "language"), name
        by_component[comp] += p.numel()
    assert all(by_component.values())
    assert sum(by_component.values()) == sum(p.numel() for p in loaded.model.parameters())


def test_a_model_without_a_text_config_owner_asks_for_components():
    fake = torch.nn.Module()
    fake.config = SimpleNamespace()
    fake.body = torch.nn.Linear(2, 2)
    fake.get_output_embeddings = lambda: None
    with pytest.raises(SuiteError, match="cannot find the language model") as info:
        components_or_override(fake, None, "Fake")
    assert "components" in info.value.fix


# ---------------------------------------------------------------- default targets


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_default_targets_from_the_loaded_language_model(models, family):
    loaded = models(family)
    fam = get_family(family)
    # the vision tower's own linear layers (SigLIP's out_proj/fc1/fc2, Qwen2-VL's qkv/proj) are not language leaves
    assert language_leaves(loaded.model, loaded.components) == LLAMA_LEAVES
    assert fam.default_targets("lora", loaded=loaded) == {"language": ("q_proj", "v_proj")}
    assert fam.default_targets("ia3", loaded=loaded) == {"language": ("k_proj", "v_proj", "down_proj")}
    assert fam.feedforward_modules(loaded=loaded) == ("down_proj",)
    for kind in ("dora", "qlora", "loha", "lokr", "vera"):
        assert fam.default_targets(kind, loaded=loaded) == {"language": ("q_proj", "v_proj")}
    # before any model is built (plan's cost estimate): Llama's names
    assert fam.default_targets("lora") == {"language": ("q_proj", "v_proj")}
    assert fam.feedforward_modules()[0] == "down_proj"  # (every known feed-forward name: IA3 intersects with its targets)


def fake_model(language: set[str], vision: set[str] = frozenset({"q_proj", "k_proj", "v_proj", "down_proj"})):
    """A language model of torch.nn.Linear layers with these leaf names, beside a vision tower with Llama's names
    (which must never decide the language model's convention), and a head."""
    def layers(names):
        return torch.nn.ModuleList([torch.nn.ModuleDict({n: torch.nn.Linear(4, 4) for n in sorted(names)})
                                    for _ in range(2)])

    model = torch.nn.Module()
    model.lm = torch.nn.Module()
    model.lm.layers = layers(language)
    model.tower = torch.nn.Module()
    model.tower.layers = layers(vision)
    model.lm_head = torch.nn.Linear(4, 4)
    components = {"vision": ("tower",), "projector": (), "language": ("lm", "lm_head")}
    return SimpleNamespace(model=model, components=components)


CONVENTIONS = [  # (language leaves, lora, ia3, feed-forward)
    ({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
     ("q_proj", "v_proj"), ("k_proj", "v_proj", "down_proj"), ("down_proj",)),  # Llama, Mistral, Qwen2
    ({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
     ("qkv_proj",), ("qkv_proj", "down_proj"), ("down_proj",)),  # Phi-3
    ({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
     ("query_key_value",), ("query_key_value", "dense_4h_to_h"), ("dense_4h_to_h",)),  # Falcon, GPT-NeoX
    ({"c_attn", "c_proj", "c_fc"}, ("c_attn",), ("c_attn", "c_proj"), ("c_proj",)),  # GPT-2 style
]


@pytest.mark.parametrize(("leaves", "lora", "ia3", "feedforward"), CONVENTIONS)
def test_the_language_models_convention_is_chosen(leaves, lora, ia3, feedforward):
    loaded = fake_model(leaves)
    assert language_leaves(loaded.model, loaded.components) == leaves  # lm_head and the tower left out
    auto = get_family("auto")
    assert auto.default_targets("lora", loaded=loaded) == {"language": lora}
    assert auto.default_targets("ia3", loaded=loaded) == {"language": ia3}
    assert auto.feedforward_modules(loaded=loaded) == feedforward
    assert targets_for("lora", leaves) == {"language": lora} and feedforward_of(leaves) == feedforward


def test_ia3_on_an_opt_style_language_model_scales_fc2():
    leaves = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    loaded = fake_model(leaves)
    auto = get_family("auto")
    assert auto.default_targets("lora", loaded=loaded) == {"language": ("q_proj", "v_proj")}
    assert auto.feedforward_modules(loaded=loaded) == ("fc2",)
    assert auto.default_targets("ia3", loaded=loaded) == {"language": ("k_proj", "v_proj", "fc2")}


@pytest.mark.parametrize("kind", ["lora", "ia3", "vera"])
def test_an_unknown_layout_is_a_suite_error_naming_targets(kind):
    loaded = fake_model({"attn_in", "attn_out", "mlp_in", "mlp_out"})
    with pytest.raises(SuiteError, match="targets") as info:
        get_family("auto").default_targets(kind, loaded=loaded)
    assert "attn_in" in info.value.message and "targets" in info.value.fix


def test_a_kind_without_default_targets_is_a_suite_error():
    for kind in ("full", "adalora"):
        with pytest.raises(SuiteError, match="no default targets"):
            targets_for(kind, LLAMA_LEAVES)


# ---------------------------------------------------------------- the suite's components override


def test_components_override_is_used_as_given():
    given = (("language", ("model.text_model", "lm_head")), ("vision", ("model.vision_model",)))
    loaded = smolvlm.build(spec("smolvlm", components=given))
    assert loaded.components == {"vision": ("model.vision_model",), "projector": (), "language": ("model.text_model", "lm_head")}
    # the connector is then in no component (it is neither frozen with the tower nor trained as a projector)
    assert {n.split(".")[1] for n, _ in loaded.model.named_parameters() if component_of(n, loaded.components) is None} == {"connector"}
    # a narrower language component than discovered: only the decoder layers' leaves count
    inner = qwen2_vl.build(spec("qwen2_vl", components=(("language", ("model.language_model.layers.0",)),)))
    assert inner.components["language"] == ("model.language_model.layers.0",) and inner.components["vision"] == ()
    assert language_leaves(inner.model, inner.components) == LLAMA_LEAVES


@pytest.mark.parametrize("prefix", ["model.language_model", "text_model", "model.text_model.layers.9", "lm_head.bias"])
def test_components_override_with_a_missing_prefix_is_a_suite_error(prefix):
    given = (("language", ("model.text_model", prefix)),) if prefix != "model.language_model" else (("language", (prefix,)),)
    with pytest.raises(SuiteError, match="does not have") as info:
        smolvlm.build(spec("smolvlm", components=given))
    assert prefix in info.value.message and "components.language" in info.value.message


def test_a_components_override_may_name_parameters_as_discovery_does():
    # BLIP-2's query_tokens is a bare parameter: discovery names it, so a layout copied from discovery must validate
    model = blip2.build(ModelSpec(name="b", family="blip2", preset="tiny", weights="random")).model
    found = discover_components(model)
    assert "query_tokens" in found["projector"]
    assert components_or_override(model, {k: list(v) for k, v in found.items() if v}, "auto") == found


# ---------------------------------------------------------------- the tiny processors: real templates, matching ids


def test_smolvlm_tiny_processor_renders_smolvlm_instructs_template(models):
    processor = models("smolvlm").processor
    assert processor.chat_template == smolvlm.CHAT_TEMPLATE
    assert chat.render(processor, CONVERSATION) == (
        "<|im_start|>User:<image>what color is it?<end_of_utterance>\nAssistant: red<end_of_utterance>\n"
        "User: how many?<end_of_utterance>\nAssistant: two circles<end_of_utterance>\n")
    assert chat.prompt(processor, "what color is it?") == (
        "<|im_start|>User:<image>what color is it?<end_of_utterance>\nAssistant:")


def test_qwen2_vl_tiny_processor_renders_qwen2_vl_instructs_template(models):
    processor = models("qwen2_vl").processor
    assert processor.chat_template == qwen2_vl.CHAT_TEMPLATE
    assert chat.render(processor, CONVERSATION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what color is it?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\nhow many?<|im_end|>\n"
        "<|im_start|>assistant\ntwo circles<|im_end|>\n")
    assert chat.prompt(processor, "what?").endswith("what?<|im_end|>\n<|im_start|>assistant\n")
    # a system turn of the conversation's own replaces the default one
    system = [{"role": "system", "content": [{"type": "text", "text": "answer in one word."}]}] + CONVERSATION[:1]
    assert chat.render(processor, system).startswith("<|im_start|>system\nanswer in one word.<|im_end|>\n<|im_start|>user\n")


def test_templates_read_no_unknown_token(models):
    """The template's own words (roles, Qwen2-VL's system prompt) are in the tiny vocabulary."""
    for family in ("smolvlm", "qwen2_vl"):
        processor = models(family).processor
        enc = processor(images=[noise_image(0, 40, 40)], text=[chat.render(processor, CONVERSATION)], return_tensors="pt")
        assert processor.tokenizer.unk_token_id not in enc["input_ids"][0].tolist(), family


@pytest.mark.parametrize(("module", "ids"), [
    (smolvlm, {"pad_token_id": "<pad>", "bos_token_id": "<|im_start|>", "eos_token_id": "<end_of_utterance>"}),
    (qwen2_vl, {"pad_token_id": "<|endoftext|>", "bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>"}),
])
def test_presets_match_the_tiny_tokenizer(models, module, ids):
    loaded = models(module.FAMILY)
    tok = loaded.processor.tokenizer
    preset = module.PRESETS["tiny"]
    assert module.VOCAB_SIZE == preset["text_config"]["vocab_size"] == len(tok) == loaded.model.config.text_config.vocab_size
    for key, token in ids.items():
        assert preset["text_config"][key] == tok.convert_tokens_to_ids(token) == getattr(loaded.model.config.text_config, key), key
    assert (tok.pad_token_id, tok.eos_token_id) == (preset["text_config"]["pad_token_id"], preset["text_config"]["eos_token_id"])
    assert preset["image_token_id"] == tok.convert_tokens_to_ids(tok.image_token) == loaded.processor.image_token_id
    assert [tok.convert_tokens_to_ids(t) for t in module.SPECIAL_TOKENS] == list(range(len(module.SPECIAL_TOKENS)))
    if module is qwen2_vl:
        for key, token in (("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
                           ("vision_end_token_id", "<|vision_end|>")):
            assert preset[key] == tok.convert_tokens_to_ids(token) == getattr(loaded.model.config, key), key


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_image_placeholder_expands_to_the_recorded_image_tokens_for_a_square_image(models, family):
    loaded = models(family)
    processor = loaded.processor
    enc = processor(images=[noise_image(3, 64, 64)], text=[chat.prompt(processor, "what?")], return_tensors="pt")
    assert int((enc["input_ids"] == loaded.model.config.image_token_id).sum()) == loaded.info["image_tokens"] == 4


# ---------------------------------------------------------------- saved, then rebuilt as family "auto"


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_a_saved_tiny_model_rebuilds_as_family_auto(models, family, tmp_path):
    loaded = models(family)
    get_family(family).save(loaded, tmp_path)
    auto = get_family("auto").build(ModelSpec(name="a", family="auto", preset=None, checkpoint=str(tmp_path),
                                              weights="pretrained"))
    assert type(auto.model) is type(loaded.model) and type(auto.processor) is type(loaded.processor)
    assert auto.components == EXPECTED[family] and auto.info["tokenizer"] == "checkpoint"
    assert auto.processor.chat_template == loaded.processor.chat_template
    a, b = loaded.model.state_dict(), auto.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    image = noise_image(4, 30, 50)
    text = chat.render(loaded.processor, CONVERSATION)
    x = loaded.processor(images=[image], text=[text], return_tensors="pt")
    y = auto.processor(images=[image], text=[text], return_tensors="pt")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    auto.model.eval(), loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(**x).logits, auto.model(**y).logits)
    # the same encoding and masks through the chat task
    sample = Sample(image=image, turns=(("what color is it?", "red"),))
    settings = TaskSettings(max_seq_len=64)
    mine, theirs = chat.encode(loaded, [sample], settings)[0], chat.encode(auto, [sample], settings)[0]
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_auto_with_random_weights_takes_the_checkpoints_shape_and_processor(models, tmp_path):
    loaded = models("smolvlm")
    smolvlm.save(loaded, tmp_path)
    auto = get_family("auto").build(ModelSpec(name="a", family="auto", preset=None, checkpoint=str(tmp_path),
                                              weights="random"), seed=7)
    a, b = loaded.model.state_dict(), auto.model.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert not all(torch.equal(a[k], b[k]) for k in a)  # other weights, drawn from another seed
    assert auto.info["tokenizer"] == "checkpoint" and auto.processor.chat_template == smolvlm.CHAT_TEMPLATE


def test_auto_refuses_a_checkpoint_without_a_chat_template(models, tmp_path):
    llava.save(models("llava"), tmp_path)  # the tiny LlavaProcessor carries no chat template
    with pytest.raises(SuiteError, match="no chat template"):
        get_family("auto").build(ModelSpec(name="a", family="auto", preset=None, checkpoint=str(tmp_path),
                                           weights="pretrained"))


def test_auto_has_no_presets():
    with pytest.raises(SuiteError, match="no preset 'tiny'"):
        get_family("auto").build(spec("auto"))


def test_an_auto_model_type_without_separate_vision_and_text_configs_is_named():
    from bench.models.auto import _ARCH
    from bench.models.hf import make_config

    with pytest.raises(SuiteError, match="no text_config and no vision_config|no vision_config|no text_config") as info:
        make_config(_ARCH, {"model_type": "fuyu"}, where="models.f")
    assert info.value.where == "models.f" and "fuyu" in info.value.message

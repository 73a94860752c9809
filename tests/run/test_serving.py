"""What serving a trained cell costs (bench/run/serving.py): which variants each method kind is served as, that merging
changes no output, the timing arithmetic of `measure`, MemTracker over repeated root calls (bench/profile.py), and how
the cell (bench/run/cell.py) takes the serving section: a failure there is never the cell's. Tiny models from config
on the CPU; the LoRA/IA3 weights are set away from their identity initialisation so the adapter changes outputs."""

from __future__ import annotations

import statistics
import textwrap
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data.loader import load_suite_dataset
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.profile import MB, tensor_kinds, tensor_tracker
from bench.run import serving
from bench.run.cell import _serve, build_model, evaluate_trained, run_cell
from bench.suite.load import load_suite
from bench.suite.plan import expand
from bench.tasks import task_for_family

pytestmark = pytest.mark.usefixtures("one_thread")

# vision targets too: CLIP is served as an image embedder, and its default targets are on the text side only
SUITE = """
[suite]
name = "serving"

[defaults]
steps = 2
batch_size = 4
max_seq_len = 16
eval_batch_size = 4
serve_batch_size = 4
max_new_tokens = 3
timing_warmup_steps = 0
serve_rounds = 2

[models.clip]
family = "clip"
preset = "tiny"
weights = "random"

[models.llava]
family = "llava"
preset = "tiny"
weights = "random"

[models.kept]
family = "clip"
preset = "tiny"
weights = "zoo"

[datasets.cls]
format = "scenes"
task = "classification"
split = "target"
train_size = 8
eval_size = 4

[datasets.scored]  # enough samples that the kept model's accuracy is not 0 (tuned = merged = 0 would prove nothing)
format = "scenes"
task = "classification"
split = "target"
train_size = 8
eval_size = 16

[datasets.vqa]
format = "scenes"
task = "vqa"
split = "target"
train_size = 8
eval_size = 4

[methods.lora]
kind = "lora"
r = 4
targets = {vision = ["q_proj", "v_proj"], language = ["q_proj", "v_proj"]}

[methods.ia3]
kind = "ia3"
targets = {vision = ["k_proj", "v_proj", "fc2"], language = ["k_proj", "v_proj"]}

[methods.qlora]
kind = "qlora"
r = 4
targets = {vision = ["q_proj", "v_proj"], language = ["q_proj", "v_proj"]}

[methods.dora]
kind = "dora"
r = 4

[methods.loha]
kind = "loha"
r = 4
targets = {vision = ["q_proj", "v_proj"], language = ["q_proj", "v_proj"]}

[methods.lokr]
kind = "lokr"
r = 4
targets = {vision = ["q_proj", "v_proj"], language = ["q_proj", "v_proj"]}

[methods.vera]
kind = "vera"
r = 4
targets = {vision = ["q_proj", "v_proj"], language = ["q_proj", "v_proj"]}

[methods.full]
kind = "full"

[[grid]]
models = ["clip"]
datasets = ["cls"]
methods = ["lora", "ia3", "qlora", "full", "loha", "lokr", "vera"]

[[grid]]
models = ["llava"]
datasets = ["vqa"]
methods = ["lora", "ia3", "dora"]

[[grid]]
models = ["kept"]
datasets = ["scored"]
methods = ["lora", "qlora", "full"]
"""

EXPECTED = {  # method kind, serve_4bit -> the variants served, in order
    ("full", False): ["merged"], ("full", True): ["merged"],
    ("lora", False): ["unmerged", "merged"], ("lora", True): ["unmerged", "merged", "4bit"],
    ("ia3", False): ["unmerged", "merged"], ("ia3", True): ["unmerged", "merged", "4bit"],
    ("qlora", False): ["unmerged", "merged", "4bit"], ("qlora", True): ["unmerged", "merged", "4bit"],
}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """(model name, method name) -> (cell, its splits), and the folder of the 'kept' model: random tiny CLIP weights
    saved as a checkpoint, so that its cells have (meaningless but real) quality without bench's zoo."""
    folder = tmp_path_factory.mktemp("serving")
    (folder / "serving.toml").write_text(textwrap.dedent(SUITE))
    suite = load_suite(folder / "serving.toml")
    splits = {}
    cells = {}
    for cell in expand(suite):
        name = cell.dataset["name"]
        if name not in splits:
            splits[name] = load_suite_dataset(cell.dataset, suite.base_dir)
        cells[cell.model["name"], cell.method["name"]] = (cell, splits[name])
    family = get_family("clip")
    family.save(family.build(ModelSpec(name="kept", family="clip", preset="tiny", weights="random"), seed=1), folder / "kept")
    return cells, str(folder / "kept")


def away_from_identity(model, seed: int = 0) -> None:
    """LoRA's B matrices start at zero and IA3's vectors at one (LoHa, LoKr and VeRA have a zero factor too): the
    adapter changes nothing until trained."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "ia3_l" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif p.requires_grad and any(key in name for key in ("hada_", "lokr_", "vera_lambda")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)


def trained(cell, cell_settings: dict, zoo_path=None):
    """(loaded, model) as a cell has them after training: built, adapted, and the adapter moved off its identity."""
    torch.manual_seed(0)
    loaded, model = build_model(cell, cell_settings, device="cpu", zoo_path=zoo_path, seed=0)
    away_from_identity(model)
    return loaded, model


def served(monkeypatch, cell, splits, cell_settings: dict, loaded, model, zoo_path=None) -> tuple[dict, dict]:
    """serve()'s section and the models it measured (name -> model), caught on their way into measure, with the 4-bit
    variant's weights dequantised as built (`seen["4bit weights"]`: a request on some CPUs repacks them)."""
    seen = {}
    real, real_variants = serving.measure, serving._variants

    def spy(models, one, batch, **kw):
        seen.update(models)
        return real(models, one, batch, **kw)

    def variants_spy(*args, **kwargs):
        variants, notes = real_variants(*args, **kwargs)
        if "4bit" in variants:
            seen["4bit weights"] = dequantized(variants["4bit"])
        return variants, notes

    monkeypatch.setattr(serving, "measure", spy)
    monkeypatch.setattr(serving, "_variants", variants_spy)
    out = serving.serve(cell, cell_settings, task=task_for_family(cell.model["family"]), loaded=loaded, model=model,
                        splits=splits, device="cpu", zoo_path=zoo_path, seed=0)
    return out, seen


def adapter_state(model) -> dict:
    """The adapter's own parameters (LoRA A/B, IA3 vectors), keyed the same however the base layer is stored."""
    return {n: p.detach() for n, p in model.named_parameters() if "lora_" in n or "ia3_l" in n}


def quantized(model) -> bool:
    return any(type(p).__name__ == "Params4bit" for p in model.parameters())


def dequantized(model) -> dict:
    """Layer name -> its 4-bit weight dequantised (before any request: bitsandbytes repacks it for AVX512-BF16 CPUs)."""
    import bitsandbytes.functional as bnb

    return {n: bnb.dequantize_4bit(m.weight.data, m.weight.quant_state) for n, m in model.named_modules()
            if type(m).__name__ == "Linear4bit"}


def assert_same_base(four: dict, full) -> None:
    """The 4-bit weights `four` (dequantized) are `full`'s, quantised: NF4 errs by ~9 % of a matrix's norm (other random
    weights: ~140 %)."""
    layers = dict(full.named_modules())
    errors = {n: float((w - layers[n].weight).norm() / layers[n].weight.norm()) for n, w in four.items()}
    assert errors and max(errors.values()) < 0.2, {n: e for n, e in errors.items() if e >= 0.2}


# ---------------------------------------------------------------- 1. the variants of each method kind


@pytest.mark.parametrize(("kind", "four_bit"), list(EXPECTED))
def test_each_method_kind_is_served_as_its_variants(planned, monkeypatch, kind, four_bit):
    cells, _ = planned
    cell, splits = cells["clip", kind]
    cell_settings = {**cell.train, "serve_4bit": four_bit, "serve_rounds": 1}
    loaded, model = trained(cell, cell_settings)
    out, models = served(monkeypatch, cell, splits, cell_settings, loaded, model)

    weights = models.pop("4bit weights", None)
    assert list(out["variants"]) == list(models) == EXPECTED[kind, four_bit]
    assert out["rounds"] == 1 and out["memory_kind"] == "cpu_tensors"
    assert "notes" not in out and "merged_quality" not in out  # random weights: cost only
    for fig in out["variants"].values():
        assert fig["batch"] == 4 and fig["unit"] == "images/s"
        assert fig["latency_ms_range"][0] <= fig["latency_ms"] <= fig["latency_ms_range"][1] and fig["latency_ms"] > 0
        assert fig["batch_s_range"][0] <= fig["batch_s_range"][1] and fig["throughput"] > 0
        assert fig["weights_mb"] > 0 and fig["activations_mb"] > 0
        assert fig["peak_memory_mb"] == pytest.approx(fig["weights_mb"] + fig["activations_mb"], abs=0.011)

    merged = models["merged"]
    assert not quantized(merged) and not adapter_state(merged) and not hasattr(merged, "peft_config")  # a plain model
    if kind == "full":
        assert merged is model  # served as the plain model it is
        return
    unmerged = models["unmerged"]
    assert not quantized(unmerged) and hasattr(unmerged, "peft_config")
    if kind == "qlora":  # the trained model is the 4-bit variant; its adapter is shipped over the base in full precision
        assert models["4bit"] is model and unmerged is not model
    else:
        assert unmerged is model
    if "4bit" in models:
        four = models["4bit"]
        assert quantized(four) and hasattr(four, "peft_config")
        trained_state, four_state = adapter_state(model), adapter_state(four)
        assert trained_state and four_state.keys() == trained_state.keys()
        assert all(torch.equal(four_state[n], trained_state[n]) for n in trained_state)
        assert_same_base(weights, unmerged)
        # NF4 weights: a 4-bit byte holds two weights
        assert out["variants"]["4bit"]["weights_mb"] < 0.5 * out["variants"]["merged"]["weights_mb"]


def test_a_generating_task_counts_its_tokens_over_repeated_root_calls(planned, monkeypatch):
    """LLaVA served generates exactly max_new_tokens per sample; CPU memory is tracked over generation, which calls the
    model's forward once per token (MemTracker refused that before bench/profile.py's _pre_fw_hook)."""
    cells, _ = planned
    cell, splits = cells["llava", "lora"]
    cell_settings = {**cell.train, "serve_rounds": 1}
    loaded, model = trained(cell, cell_settings)
    calls = []
    model.get_base_model().register_forward_pre_hook(lambda module, _: calls.append(id(module)))
    out, _ = served(monkeypatch, cell, splits, cell_settings, loaded, model)
    assert list(out["variants"]) == ["unmerged", "merged"]
    for fig in out["variants"].values():
        assert fig["unit"] == "tokens/s" and fig["batch"] == 4 and fig["activations_mb"] > 0
        # throughput is 4 samples × 3 tokens over the median batch time, which lies within its range
        low, high = fig["batch_s_range"]
        assert 12 / high * 0.99 <= fig["throughput"] <= 12 / max(low, 1e-5) * 1.01
    # one forward per generated token (3) in each generation of the unmerged model: the warm-up's (one sample, then the
    # batch, its memory tracked) and the timed round's
    assert calls.count(id(model.get_base_model())) == 3 * 4


@pytest.mark.parametrize("kind", ["loha", "lokr", "vera"])
def test_an_adapter_with_no_4bit_layer_is_served_without_it_and_says_why(planned, monkeypatch, kind):
    """PEFT 0.21 cannot put LoHa over a 4-bit layer (building fails) nor run LoKr there (its first request fails):
    the 4-bit variant is left out with a note, the others are still measured; VeRA has one."""
    cells, _ = planned
    cell, splits = cells["clip", kind]
    cell_settings = {**cell.train, "serve_4bit": True, "serve_rounds": 1}
    loaded, model = trained(cell, cell_settings)
    out, _ = served(monkeypatch, cell, splits, cell_settings, loaded, model)
    if kind == "vera":
        assert list(out["variants"]) == ["unmerged", "merged", "4bit"] and "notes" not in out
        return
    assert list(out["variants"]) == ["unmerged", "merged"] and "error" not in out
    [note] = out["notes"]
    assert note.startswith("4bit: RuntimeError: ") and "\n" not in note


# ---------------------------------------------------------------- 2. merging changes no output


def clip_outputs(model, loaded, splits):
    from bench.tasks.contrastive import _image_embeddings, pixel_values

    with torch.no_grad():
        return _image_embeddings(model, pixel_values(loaded.processor, [s.image for s in splits.eval]))


def llava_outputs(model, loaded, splits):
    from bench.tasks.captioning import PromptInputs
    from bench.tasks.instruct import prompt

    inputs = PromptInputs(loaded.processor, lambda s: prompt(s.question))(list(splits.eval))
    with torch.no_grad():
        return model(**inputs).logits.float()


@pytest.mark.parametrize(("family", "kind"), [("clip", "lora"), ("clip", "ia3"), ("clip", "qlora"), ("llava", "lora"),
                                              ("llava", "ia3"), ("clip", "loha"), ("clip", "lokr"), ("clip", "vera")])
def test_the_merged_model_computes_what_the_unmerged_adapter_does(planned, monkeypatch, family, kind):
    cells, _ = planned
    cell, splits = cells[family, kind]
    cell_settings = {**cell.train, "serve_rounds": 1}
    loaded, model = trained(cell, cell_settings)
    outputs = clip_outputs if family == "clip" else llava_outputs
    _, models = served(monkeypatch, cell, splits, cell_settings, loaded, model)
    unmerged, merged = outputs(models["unmerged"], loaded, splits), outputs(models["merged"], loaded, splits)
    with models["unmerged"].disable_adapter():
        base = outputs(models["unmerged"], loaded, splits)
    assert (unmerged - base).abs().max() > 1e-2  # the adapter changes the outputs: the comparison below means something
    assert (merged - unmerged).abs().max() <= 1e-4
    if kind == "qlora":  # the unmerged QLoRA adapter holds what was trained, over the base it was quantised from
        trained_state, full_state = adapter_state(model), adapter_state(models["unmerged"])
        assert full_state.keys() == trained_state.keys()
        assert all(torch.equal(full_state[n], trained_state[n]) for n in trained_state)
        assert_same_base(models["4bit weights"], models["unmerged"])


def cell_run(cell, splits, **kw) -> dict:
    return run_cell(cell, seed=0, device="cpu", splits=splits, base=None, **kw)


def test_merging_a_lora_changes_no_score_end_to_end(planned):
    cells, zoo = planned
    cell, splits = cells["kept", "lora"]
    out = cell_run(cell, splits, zoo_path=zoo)
    assert out["status"] == "ok", out["message"]
    quality, section = out["quality"], out["serving"]
    assert list(section["variants"]) == ["unmerged", "merged"] and "merged_quality" not in section  # moved to quality
    assert quality["tuned"] > 0 and quality["merged"] == quality["tuned"] and quality["merged_delta"] == 0
    assert out["cost"]["phases_s"]["serve"] == section["wall_s"] > 0


def test_a_full_fine_tune_has_no_merged_score_and_random_weights_none_at_all(planned):
    cells, zoo = planned
    full = cell_run(*cells["kept", "full"], zoo_path=zoo)
    assert full["status"] == "ok" and list(full["serving"]["variants"]) == ["merged"]
    assert full["quality"]["tuned"] is not None and "merged" not in full["quality"] and "merged_delta" not in full["quality"]
    random = cell_run(*cells["clip", "lora"])
    assert random["status"] == "ok" and list(random["serving"]["variants"]) == ["unmerged", "merged"]
    assert "merged_quality" not in random["serving"] and "merged" not in random["quality"]
    assert random["quality"]["applicable"] is False


def test_a_swept_qlora_pick_is_served_from_its_kept_state(planned, monkeypatch):
    """evaluate_trained (a sweep's pick) builds afresh and serves with the kept state: the full-precision rebuild
    takes its adapter from that state, and the merged model's quality comes back with the section."""
    cells, zoo = planned
    cell, splits = cells["kept", "qlora"]
    cell_settings = {**cell.train, "serve_rounds": 1, "save": False}
    _, model = trained(cell, cell_settings, zoo)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    seen = {}
    real = serving.measure
    monkeypatch.setattr(serving, "measure", lambda models, *a, **kw: seen.update(models) or real(models, *a, **kw))
    out = evaluate_trained(cell, cell_settings, seed=0, device="cpu", splits=splits, zoo_path=zoo, state=state)
    section = out["serving"]
    assert list(section["variants"]) == ["unmerged", "merged", "4bit"] and "error" not in section
    assert section["merged_quality"]["metric"] == out["tuned"]["metric"] and section["merged_quality"]["n"] == 16
    full_state = adapter_state(seen["unmerged"])
    assert full_state and all(torch.equal(full_state[n], state[n]) for n in full_state)


# ---------------------------------------------------------------- 3. measure()


class FakeClock:
    """time.perf_counter advanced only by the requests: each call lasts exactly what it is given."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@settings(max_examples=60, deadline=None)
@given(n_models=st.integers(1, 4), rounds=st.integers(1, 6), data=st.data())
def test_measure_interleaves_rotates_and_reports_exact_medians(n_models, rounds, data):
    names = [f"m{i}" for i in range(n_models)]
    # durations in 1/1024 s, exact in binary: the clock's differences are the durations to the last bit
    ticks = st.integers(1, 4096)
    durations = {(n, k): data.draw(st.lists(ticks, min_size=rounds + 2, max_size=rounds + 2), label=f"{n} {k}")
                 for n in names for k in ("one", "batch")}
    units = {n: data.draw(st.integers(1, 64), label=f"{n} units") for n in names}
    clock, log = FakeClock(), []
    models = {n: object() for n in names}  # what a model is is the requests' business
    of = {id(m): n for n, m in models.items()}

    def request(kind):
        def call(model):
            name = of[id(model)]
            done = sum(1 for e in log if e == (name, kind))
            log.append((name, kind))
            clock.now += durations[name, kind][done] / 1024
            return units[name] if kind == "batch" else 1

        return call

    def sync():
        log.append("sync")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serving, "time", types.SimpleNamespace(perf_counter=lambda: (log.append("clock"), clock.perf_counter())[1]))
        mp.setattr(serving, "_sync", lambda device: sync)
        # memory has its own test below (MemTracker's hooks, for every example, are slow); its batched request is kept
        mp.setattr(serving, "_memory", lambda model, batch, device: (batch(model), {"memory_of": model}))
        out = serving.measure(models, request("one"), request("batch"), rounds=rounds, device="cpu")

    calls = [e for e in log if isinstance(e, tuple)]
    warm_up = [(n, k) for n in names for k in ("one", "batch")]
    assert calls[: len(warm_up)] == warm_up  # one warm-up of each request for each model, in order, untimed (the
    # batched one's memory tracked)
    timed = calls[len(warm_up): len(warm_up) + 2 * n_models * rounds]
    for r in range(rounds):
        first = r % n_models  # who goes first turns each round
        turn = names[first:] + names[:first]
        assert timed[2 * n_models * r: 2 * n_models * (r + 1)] == [(n, k) for n in turn for k in ("one", "batch")]
    assert len(calls) == len(warm_up) + len(timed)  # and nothing else: each request rounds + 1 times
    # every clock read is taken with the device synchronised just before it, and every timed request is bracketed
    reads = [i for i, e in enumerate(log) if e == "clock"]
    assert len(reads) == 2 * 2 * n_models * rounds and all(log[i - 1] == "sync" for i in reads)
    for start, stop in zip(reads[::2], reads[1::2]):
        assert [e for e in log[start:stop] if isinstance(e, tuple)] and log[stop - 1] == "sync"

    assert list(out) == names
    for n in names:
        one_s = [d / 1024 for d in durations[n, "one"][1: rounds + 1]]
        batch_s = [d / 1024 for d in durations[n, "batch"][1: rounds + 1]]
        fig = out[n]
        assert fig["latency_ms"] == round(1000 * statistics.median(one_s), 3)
        assert fig["latency_ms_range"] == [round(1000 * min(one_s), 3), round(1000 * max(one_s), 3)]
        assert fig["throughput"] == round(units[n] / statistics.median(batch_s), 3)
        assert fig["batch_s_range"] == [round(min(batch_s), 5), round(max(batch_s), 5)]
        assert fig["memory_of"] is models[n]


def test_measure_reports_the_weights_and_what_the_batched_request_adds():
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    batch_size = 32

    def batch(m):
        with torch.no_grad():
            m(torch.randn(batch_size, 256))
        return batch_size

    fig = serving.measure({"only": model}, batch, batch, rounds=1, device="cpu")["only"]
    weights = sum(p.numel() * 4 for p in model.parameters()) / MB
    assert fig["weights_mb"] == round(weights, 2)
    hidden = batch_size * 1024 * 4 / MB  # the hidden activation, alive at the peak
    assert hidden <= fig["activations_mb"] <= 4 * hidden
    assert fig["peak_memory_mb"] == pytest.approx(fig["weights_mb"] + fig["activations_mb"], abs=0.011)


def test_beside_other_cells_only_the_timed_rounds_wait_for_their_turn(tmp_path, monkeypatch):
    """bench/turns.py: the warm-up and the memory count run while another cell is timed; the rounds wait for the
    turn, and the wait is reported apart, in no latency."""
    import fcntl
    import os
    import threading
    import time

    from bench.turns import ENV

    lock = tmp_path / "turns.lock"
    monkeypatch.setenv(ENV, str(lock))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another cell is timing
    released: list[float] = []
    calls: list[float] = []

    def release():  # once both warm-up requests ran (they must not wait), and a while after
        deadline = time.monotonic() + 20
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        released.append(time.monotonic())
        os.close(fd)

    threading.Thread(target=release).start()
    model = torch.nn.Linear(4, 4)

    def request(m):
        calls.append(time.monotonic())
        with torch.no_grad():
            m(torch.ones(2, 4))
        return 2

    waits: list = []
    fig = serving.measure({"only": model}, request, request, rounds=3, device="cpu", waits=waits)["only"]
    assert len(calls) == 2 + 2 * 3  # one warm-up each, then three rounds of both
    assert all(t < released[0] for t in calls[:2]) and all(t >= released[0] for t in calls[2:]), (calls, released)
    (asked, got), = waits
    assert got - asked >= 0.25 and fig["latency_ms_range"][1] < 1000 * (got - asked)


# ---------------------------------------------------------------- 4. MemTracker over repeated root calls


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("calls", [1, 3])
def test_the_tracker_takes_a_root_module_called_again(grad, calls):
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64))
    model.requires_grad_(grad)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    tracker = tensor_tracker(model)
    kept = []
    with tracker, torch.set_grad_enabled(grad):
        for _ in range(calls):  # as generation calls forward once per token
            kept.append(model(torch.randn(16, 64)))
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    kinds = tensor_kinds(peak)
    assert kinds["param"] >= params and peak["Total"] >= params + calls * 16 * 64 * 4  # every output is still held
    if grad:
        loss = sum(out.sum() for out in kept)
        with tracker:  # the same tracker in backward after the calls: no error either
            loss.backward()
        assert all(p.grad is not None for p in model.parameters())


class Swapping(torch.nn.Module):
    """Replaces its frozen weight on every call, as PEFT's DoRA over a 4-bit layer does on the CPU (its dequantisation
    sets `module.weight = module.weight.to(device)`, a new Params4bit)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(64, 64), requires_grad=False)

    def forward(self, x):
        self.weight = torch.nn.Parameter(self.weight.detach().clone(), requires_grad=False)
        return x @ self.weight


def test_the_tracker_takes_a_frozen_parameter_swapped_in_between_calls():
    model = torch.nn.Sequential(Swapping(), torch.nn.Linear(64, 64))
    tracker = tensor_tracker(model)
    with tracker, torch.no_grad():
        for _ in range(3):  # from the second call each module is tracked afresh, with a weight the tracker never saw
            model(torch.randn(4, 64))
    assert tensor_kinds(next(iter(tracker.get_tracker_snapshot("peak").values())))["param"] >= 64 * 64 * 4


def test_dora_over_a_4bit_base_is_served_while_generating(planned, monkeypatch):
    """The case the test above stands for: without the tracker's fix the CPU memory pass over the 4-bit variant failed,
    and with it the whole serving section."""
    cells, _ = planned
    cell, splits = cells["llava", "dora"]
    cell_settings = {**cell.train, "serve_rounds": 1, "serve_4bit": True}
    loaded, model = trained(cell, cell_settings)
    out, _ = served(monkeypatch, cell, splits, cell_settings, loaded, model)
    assert list(out["variants"]) == ["unmerged", "merged", "4bit"] and "notes" not in out
    assert all(fig["activations_mb"] > 0 for fig in out["variants"].values())


# ---------------------------------------------------------------- 5, 6. how the cell takes the serving section


def test_a_serving_failure_is_the_sections_not_the_cells(planned, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this\nsecond line")

    monkeypatch.setattr(serving, "serve", broken)
    cells, _ = planned
    cell, _ = cells["clip", "lora"]
    out = _serve(cell, dict(cell.train))
    assert set(out) == {"error", "wall_s"} and out["error"].startswith("RuntimeError: no kernel for this")
    assert "test_serving.py" in out["error"] and out["wall_s"] >= 0
    whole = cell_run(*cells["clip", "lora"])
    assert whole["status"] == "ok" and whole["message"] == ""
    assert set(whole["serving"]) == {"error", "wall_s"} and whole["cost"]["phases_s"]["serve"] == whole["serving"]["wall_s"]


def test_a_cell_that_serves_nothing_has_no_serving_section(planned, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("serve = false, yet serving ran")

    monkeypatch.setattr(serving, "serve", never)
    cells, _ = planned
    cell, splits = cells["clip", "full"]
    assert _serve(cell, {**cell.train, "serve": False}) is None
    out = cell_run(cell, splits, settings={**cell.train, "serve": False})
    assert out["status"] == "ok" and out["serving"] is None and not out["cost"]["phases_s"].get("serve")


RECORDED = """
[suite]
name = "recorded"
isolate = false
threads = 1

[defaults]
steps = 1
batch_size = 4
max_seq_len = 16
eval_batch_size = 4
serve_batch_size = 2
serve_rounds = 1
timing_warmup_steps = 0
save = false

[models.clip]
family = "clip"
preset = "tiny"
weights = "random"

[datasets.cls]
format = "scenes"
task = "classification"
split = "target"
train_size = 4
eval_size = 2

[methods.lora]
kind = "lora"
r = 2

[methods.unserved]
kind = "lora"
r = 2
train = {serve = false}

[[grid]]
models = ["clip"]
datasets = ["cls"]
methods = ["lora", "unserved"]
"""


def test_the_record_has_a_serving_section_unless_the_cell_serves_nothing(write_suite, tmp_path):
    from bench.records import read_latest
    from bench.run.runner import Runner

    runner = Runner(load_suite(write_suite(RECORDED)), results_dir=tmp_path / "r", reports_dir=tmp_path / "p",
                    show_progress=False)
    assert runner.run().statuses == {"ok": 2}
    by = {r["method"]["name"]: r for r in read_latest([runner.results])}
    assert "serving" not in by["unserved"]
    section = by["lora"]["serving"]
    assert set(section["variants"]) == {"unmerged", "merged"} and section["wall_s"] > 0
    assert all(fig["batch"] == 2 and fig["unit"] == "images/s" for fig in section["variants"].values())

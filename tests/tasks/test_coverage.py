"""bench.tasks.coverage: the share of the target text a model's tokenizer maps to its unknown token, and how many
training samples max_seq_len cuts, on hand-made texts, random texts, every task's own encode, the three data sources
and the bundled suites' data."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, solid
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data.loader import load_dataset, load_suite_dataset
from bench.data.sample import DatasetSplits, ImageFile, Sample
from bench.data.vocabulary import WORDS
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.models.tokenizer import tiny_tokenizer
from bench.tasks import captioning, chat, contrastive, coverage, instruct
from bench.tasks.base import TaskSettings

pytestmark = pytest.mark.usefixtures("one_thread")

NO_HOOK = SimpleNamespace()  # a task without `truncated`: nothing is cut


def tiny(tokenizer=None):
    """A stand-in for a LoadedModel: only its processor's tokenizer is read."""
    return SimpleNamespace(processor=SimpleNamespace(tokenizer=tokenizer or tiny_tokenizer()))


def build(family: str, **kw):
    return get_family(family).build(ModelSpec(name=family, family=family, preset="tiny", weights="random", **kw), seed=0)


@pytest.fixture(scope="module")
def models():
    return {}


def model(models, family: str):
    if family not in models:
        models[family] = build(family)
    return models[family]


# ---------------------------------------------------------------- the unknown share


def test_the_unknown_share_is_exact_on_hand_made_texts():
    # counted by hand with the tiny word-level tokenizer (lower-cased, split on whitespace and punctuation):
    train = [Sample(image=None, captions=("a red circle", "a mauve zebra")),  # 6 tokens: mauve, zebra unknown
             Sample(image=None, captions=("zebra's stripes.",))]  # zebra ' s stripes . : 5 tokens, 4 unknown
    # distinct answers blue, teal (the turn's teal is the same text) and the rejected green: 3 tokens, teal unknown
    evals = [Sample(image=None, question="what color ?", answers=("blue", "blue", "teal"), turns=(("what color ?", "teal"),),
                    rejected="green")]
    splits = DatasetSplits(task="caption", train=train, eval=evals, classnames=("red circle", "okapi"))  # 3, okapi
    out = coverage.text_coverage(NO_HOOK, tiny(), splits, TaskSettings())
    assert out == {"unknown_token_pct": round(100 * 8 / 17, 4), "tokens": 17, "texts": 8, "truncated": 0,
                   "truncated_pct": 0.0, "samples": 2}


KNOWN = [w for w in WORDS if w.isalpha()]
UNKNOWN = st.text(alphabet="bcdfghjklmnpqrstvwxz", min_size=3, max_size=9).filter(
    lambda w: w not in tiny_tokenizer().get_vocab())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.sampled_from(KNOWN).map(lambda w: (w, False)), UNKNOWN.map(lambda w: (w, True))),
                         min_size=1, max_size=12), min_size=1, max_size=8))
def test_the_unknown_share_is_the_share_of_unknown_words(texts):
    samples = [Sample(image=None, captions=(" ".join(w for w, _ in words),)) for words in texts]
    out = coverage.text_coverage(NO_HOOK, tiny(), DatasetSplits(task="caption", train=samples, eval=[]), TaskSettings())
    words = [unknown for t in texts for _, unknown in t]
    assert out["tokens"] == len(words) and out["texts"] == len(texts)
    assert out["unknown_token_pct"] == round(100 * sum(words) / len(words), 4)


def test_a_tokenizer_without_an_unknown_token_reports_none():
    import open_clip

    byte_level = SimpleNamespace(processor=SimpleNamespace(tokenizer=open_clip.SimpleTokenizer()))
    splits = DatasetSplits(task="caption", train=[Sample(image=None, captions=("a zebra's stripes, grazing",))], eval=[])
    out = coverage.text_coverage(NO_HOOK, byte_level, splits, TaskSettings())
    assert out["unknown_token_pct"] == 0.0 and out["tokens"] > 0


def test_big_splits_are_sampled_evenly_and_say_how_many():
    samples = [Sample(image=None, captions=(f"caption {i}",)) for i in range(2 * coverage.MOST_SAMPLES + 7)]
    picked = coverage.spread(samples)
    assert len(picked) == coverage.MOST_SAMPLES and picked[0] is samples[0] and picked == coverage.spread(samples)
    out = coverage.text_coverage(NO_HOOK, tiny(), DatasetSplits(task="caption", train=samples, eval=samples[:3]),
                                 TaskSettings())
    assert out["texts"] == coverage.MOST_SAMPLES + 3 and out["samples"] == coverage.MOST_SAMPLES


# ---------------------------------------------------------------- truncation: each task's own length, at the boundary


def learned(row: dict) -> int:
    return int((row["labels"] != -100).sum())


def test_a_caption_that_fits_max_seq_len_exactly_is_not_cut(models):
    loaded = model(models, "blip2")
    sample = Sample(image=solid((200, 0, 0)), captions=("a red circle on the left",))  # 6 words + </s>: 7 tokens
    whole = captioning.encode(loaded, [sample], TaskSettings(max_seq_len=40))[0]
    for length, cut in ((7, False), (6, True)):
        settings_ = TaskSettings(max_seq_len=length)
        assert captioning.truncated(loaded, [sample], settings_) == [cut]
        assert (learned(captioning.encode(loaded, [sample], settings_)[0]) < learned(whole)) is cut


def test_a_class_prompt_that_fits_exactly_is_not_cut(models):
    loaded = model(models, "clip")
    sample = Sample(image=solid((0, 0, 200)), label=0)  # <s> a photo of a red circle </s>: 8 tokens
    for length, cut in ((8, False), (7, True)):
        settings_ = TaskSettings(max_seq_len=length)
        assert contrastive.truncated(loaded, [sample], settings_, classnames=("red circle",)) == [cut]
        encoded = contrastive.encode(loaded, [sample], settings_, classnames=("red circle",))[0]
        assert (len(encoded["input_ids"]) < 8) is cut


def test_a_conversation_that_fits_exactly_is_not_cut(models):
    loaded = model(models, "llava")
    # USER : <image> what color is the circle ? ASSISTANT : red </s>: 12 tokens besides the image placeholder
    sample = Sample(image=solid((0, 200, 0)), turns=(("what color is the circle ?", "red"),))
    whole = instruct.encode(loaded, [sample], TaskSettings(max_seq_len=40))[0]
    for length, cut in ((12, False), (11, True)):
        settings_ = TaskSettings(max_seq_len=length)
        assert instruct.truncated(loaded, [sample], settings_) == [cut]
        assert (learned(instruct.encode(loaded, [sample], settings_)[0]) < learned(whole)) is cut


@pytest.mark.parametrize("family", ["smolvlm", "qwen2_vl"])
def test_a_chat_conversation_is_cut_where_its_encode_cuts(models, family):
    loaded = model(models, family)
    sample = Sample(image=solid((0, 200, 0)), turns=(("what color is the circle ?", "the circle is red"),))
    def kept(n: int) -> int:
        return learned(chat.encode(loaded, [sample], TaskSettings(max_seq_len=n))[0])

    whole, fits = kept(200), 200
    while kept(fits - 1) == whole:  # down to the shortest max_seq_len that keeps the whole answer
        fits -= 1
    assert kept(fits - 1) < whole
    assert chat.truncated(loaded, [sample], TaskSettings(max_seq_len=fits)) == [False]
    assert chat.truncated(loaded, [sample], TaskSettings(max_seq_len=fits - 1)) == [True]


def test_a_preference_pair_is_cut_when_its_rejected_answer_is(models):
    loaded = model(models, "llava")
    pair = Sample(image=solid((0, 200, 0)), question="what color is the circle ?", answers=("red",),
                  turns=(("what color is the circle ?", "red"),), rejected="a blue circle on the left")
    out = coverage.text_coverage(instruct, loaded, DatasetSplits(task="preference", train=[pair], eval=[]),
                                 TaskSettings(max_seq_len=12))  # the chosen answer fits exactly, the rejected does not
    assert (out["truncated"], out["truncated_pct"], out["samples"]) == (1, 100.0, 1)


def test_a_sample_encode_refuses_is_not_counted(models):
    loaded = model(models, "blip2")
    samples = [Sample(image=None, captions=("red",)), Sample(image=None, captions=())]
    out = coverage.text_coverage(captioning, loaded, DatasetSplits(task="caption", train=samples, eval=[]),
                                 TaskSettings(max_seq_len=8))
    assert (out["truncated"], out["samples"]) == (0, 1)


# ---------------------------------------------------------------- the three data sources

# five words each, two of them unknown to the tiny tokenizer: 40 % exactly
FOREIGN = ("a red zebra on savanna", "the blue giraffe is tall", "a small zebra in meadow", "the large square near grass")


def png(rgb) -> bytes:
    buffer = io.BytesIO()
    solid(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def never_read(monkeypatch):
    """Counting must read no image: opening one fails the test."""
    def refuse(self, *a, **kw):
        raise AssertionError("an image was read")

    monkeypatch.setattr(ImageFile, "open", refuse)
    monkeypatch.setattr(ImageFile, "header_size", refuse)


def foreign_coco(folder: Path, n: int = 8) -> Path:
    """n PNG images and a COCO captions file whose captions are FOREIGN's, in turn."""
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        (folder / "images" / f"{i}.png").write_bytes(png((30 * i, 0, 0)))
    data = {"images": [{"id": i, "file_name": f"images/{i}.png"} for i in range(n)],
            "annotations": [{"id": i, "image_id": i, "caption": FOREIGN[i % len(FOREIGN)]} for i in range(n)]}
    (folder / "captions.json").write_text(json.dumps(data))
    return folder / "captions.json"


def test_in_memory_data(models):
    splits = DatasetSplits(task="caption", train=[Sample(image=solid((9, 9, 9)), captions=(c,)) for c in FOREIGN],
                           eval=[Sample(image=solid((9, 9, 9)), captions=(FOREIGN[0],))])
    out = coverage.text_coverage(captioning, model(models, "blip2"), splits, TaskSettings(max_seq_len=24))
    assert out == {"unknown_token_pct": 40.0, "tokens": 25, "texts": 5, "truncated": 0, "truncated_pct": 0.0, "samples": 4}


def test_image_files_on_disk_are_never_read(models, tmp_path, monkeypatch):
    from bench.data.make import make_scenes

    bundled = make_scenes(tmp_path / "scenes", n=8, fmt="coco_captions", image_size=16, processes=1)
    foreign = foreign_coco(tmp_path / "foreign")
    loaded = model(models, "blip2")
    never_read(monkeypatch)
    for path, unknown in ((bundled, 0.0), (foreign, 40.0)):
        splits = load_dataset({"format": "coco_captions", "path": str(path), "eval_size": 2}, base_dir=tmp_path)
        assert isinstance(splits.train[0].image, ImageFile)
        out = coverage.text_coverage(captioning, loaded, splits, TaskSettings(max_seq_len=24))
        assert out["unknown_token_pct"] == unknown and out["samples"] == len(splits.train) and out["truncated"] == 0


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="`datasets` is not installed")
def test_hugging_face_image_bytes(models, tmp_path, monkeypatch):
    import datasets

    rows = {"image": [{"bytes": png((i, 0, 0)), "path": None} for i in range(8)],
            "caption": [FOREIGN[i % len(FOREIGN)] for i in range(8)]}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    never_read(monkeypatch)
    splits = load_dataset({"format": "hf", "task": "caption", "path": "saved", "eval_size": 2}, base_dir=tmp_path)
    assert isinstance(splits.train[0].image, ImageFile) and isinstance(splits.train[0].image.source, bytes)
    out = coverage.text_coverage(captioning, model(models, "blip2"), splits, TaskSettings(max_seq_len=24))
    assert out == {"unknown_token_pct": 40.0, "tokens": 40, "texts": 8, "truncated": 0, "truncated_pct": 0.0, "samples": 6}


# ---------------------------------------------------------------- the bundled suites' data is the tiny vocabulary's


@pytest.mark.parametrize("suite_file", ["quickstart.toml", "smolvlm_chartqa.toml", "ci_gate.toml", "composition.toml"])
def test_the_bundled_suites_data_is_fully_covered(models, suite_file):
    """Every (model, dataset) of the shipped tiny suites: no unknown token, nothing cut at the cell's max_seq_len: a
    run of them prints no text-coverage warning."""
    from bench.suite.load import load_suite
    from bench.suite.plan import expand
    from bench.tasks import task_for_family
    from bench.tasks.base import task_settings

    suite = load_suite(REPO / "suites" / suite_file)
    seen, splits = set(), {}
    for cell in expand(suite):
        key = (cell.model["name"], cell.dataset["name"], cell.train["max_seq_len"])
        if key in seen or cell.skip_reason:
            continue
        seen.add(key)
        name = cell.dataset["name"]
        if name not in splits:
            splits[name] = load_suite_dataset(cell.dataset, suite.base_dir)
        out = coverage.text_coverage(task_for_family(cell.model["family"]), model(models, cell.model["family"]),
                                     splits[name], task_settings(cell.train, "cpu", splits[name]))
        assert out["unknown_token_pct"] == 0.0 and out["truncated"] == 0 and out["tokens"] > 0, (key, out)


# ---------------------------------------------------------------- the run's warning


def record(model_name: str, dataset: str, unknown: float, cut: float = 0.0, applicable: bool = True) -> dict:
    return {"model": {"name": model_name}, "dataset": {"name": dataset}, "train": {"max_seq_len": 24},
            "quality": {"applicable": applicable, "text_coverage": {"unknown_token_pct": unknown, "truncated_pct": cut}}}


def test_the_warning_names_each_model_and_dataset_once_with_its_figure_and_fix():
    records = [record("llava-tiny", "mine", 41.2), record("llava-tiny", "mine", 40.0), record("blip2-tiny", "long", 0, 12.5),
               record("llava-tiny", "scenes", 0.0), record("clip-tiny", "mine", 5.0), record("x", "y", 90, applicable=False)]
    text = coverage.warning([low for r in records if (low := coverage.low_coverage(r)) is not None])
    assert text.count("llava-tiny × mine") == 1 and "41.2 %" in text
    assert "blip2-tiny × long" in text and "12.5 %" in text and "max_seq_len = 24" in text
    assert "scenes" not in text and "clip-tiny" not in text and "x × y" not in text  # 5 % is not above 5 %
    assert 'checkpoint = "..."' in text and "larger max_seq_len" in text
    assert coverage.warning([]) is None
    only_cut = coverage.warning([coverage.low_coverage(record("m", "d", 0.0, 50.0))])
    assert "checkpoint" not in only_cut and "max_seq_len" in only_cut

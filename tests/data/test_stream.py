"""Streamed batches (bench/data/stream.py): the same tensors as encoding up front, the seed's order, bad samples."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.data.loader import load_dataset
from bench.data.make import make_scenes
from bench.data.scenes import scenes_dataset
from bench.data.stream import SeededBatches, Skipped, StreamSettings, default_workers, eval_batches, in_memory_batches, train_batches
from bench.errors import DataError
from bench.models import get_family
from bench.models.base import ModelSpec
from bench.tasks import task_for_family
from bench.tasks.base import TaskSettings, TrainingBatch, encode_kwargs

FAMILIES = {"clip": ("classification", "csv"), "blip2": ("caption", "coco_captions"), "llava": ("vqa", "llava")}
STREAMS = {
    "in the training process": StreamSettings(num_workers=0),
    "in the training process, cached": StreamSettings(num_workers=0, cache_mb=64),
    "one worker": StreamSettings(num_workers=1),
    "two workers, prefetch 1": StreamSettings(num_workers=2, prefetch_factor=1),
}


@pytest.fixture(scope="module")
def built():
    return {f: get_family(f).build(ModelSpec(name=f, family=f, preset="tiny", weights="random")) for f in FAMILIES}


def take(batches, n: int) -> list[dict]:
    out = [next(batches) for _ in range(n)]
    batches.close()
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("stream", STREAMS, ids=list(STREAMS))
@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_batches_are_the_batches_encoded_up_front(built, family, stream):
    """The same token ids, labels, masks and pixels, batch for batch, over more than one pass (12 × 8 > 40)."""
    loaded, task = built[family], task_for_family(family)
    splits = scenes_dataset(FAMILIES[family][0], train_size=40, eval_size=1, label="object" if family == "clip" else "shape")
    ts = TaskSettings(max_seq_len=24, stream=STREAMS[stream])
    encoded = task.encode(loaded, splits.train, ts, **encode_kwargs(task, splits))
    reference = take(in_memory_batches(encoded, lambda chunk: task.collate(chunk, loaded), batch_size=8, seed=3), 12)
    streamed = take(train_batches(splits.train, TrainingBatch(task, loaded, ts, splits), batch_size=8, seed=3,
                                  stream=ts.stream), 12)
    assert_same_batches(reference, streamed)


@pytest.mark.parametrize("family", FAMILIES)
def test_images_read_from_disk_give_the_batches_of_the_same_images_in_memory(built, family, tmp_path):
    """A dataset written by `bench data make` and streamed from its files (a worker decoding them) equals the same
    samples decoded up front and encoded as before."""
    task_name, fmt = FAMILIES[family]
    path = make_scenes(tmp_path / "d", n=30, fmt=fmt, image_size=32, image_format="png", processes=1)
    splits = load_dataset({"format": fmt, "task": task_name, "path": str(path), "eval_fraction": 0.1}, base_dir=tmp_path)
    loaded, task = built[family], task_for_family(family)
    ts = TaskSettings(max_seq_len=24, stream=StreamSettings(num_workers=1))
    decoded = [s.decoded() for s in splits.train]
    encoded = task.encode(loaded, decoded, ts, **encode_kwargs(task, splits))
    reference = take(in_memory_batches(encoded, lambda chunk: task.collate(chunk, loaded), batch_size=8, seed=0), 6)
    streamed = take(train_batches(splits.train, TrainingBatch(task, loaded, ts, splits), batch_size=8, seed=0,
                                  stream=ts.stream), 6)
    assert_same_batches(reference, streamed)


@settings(max_examples=int(os.environ.get("BENCH_HYPOTHESIS_EXAMPLES", 60)), deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 70), seed=st.integers(0, 2**63 - 1))
def test_seeded_batches_are_whole_passes_in_the_seeds_order(n, batch_size, seed):
    """Flattened, the batches are one permutation of the split after another; the same seed gives the same ones."""
    first = SeededBatches(n, batch_size, seed)
    batches = [b for b, _ in zip(first, range(4 * (n // batch_size + 2)))]
    again = [b for b, _ in zip(SeededBatches(n, batch_size, seed), range(len(batches)))]
    assert batches == again
    assert all(len(b) == batch_size for b in batches if n >= batch_size)
    flat = [i for b in batches for i in b]
    for start in range(0, len(flat) - n + 1, n):
        assert sorted(flat[start:start + n]) == list(range(n))


@settings(max_examples=int(os.environ.get("BENCH_HYPOTHESIS_EXAMPLES", 60)), deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 20), seed=st.integers(0, 2**63 - 1), world=st.integers(1, 8),
       accum=st.integers(1, 4), steps=st.integers(1, 6))
def test_devices_together_take_the_batches_one_device_takes_with_their_accumulation(n, batch_size, seed, world, accum,
                                                                                     steps):
    """A cell on `world` devices with grad_accum = accum uses, at every optimizer step, the very batches one device
    with grad_accum = world × accum uses at that step: the shards interleave back into the one sequence."""
    one = [b for b, _ in zip(SeededBatches(n, batch_size, seed), range(steps * world * accum))]
    shards = [[b for b, _ in zip(SeededBatches(n, batch_size, seed, (r, world)), range(steps * accum))] for r in range(world)]
    for step in range(steps):
        alone = one[step * world * accum:(step + 1) * world * accum]
        together = [b for shard in shards for b in shard[step * accum:(step + 1) * accum]]
        assert sorted(map(tuple, together)) == sorted(map(tuple, alone))


def test_another_seed_gives_another_order():
    a = [b for b, _ in zip(SeededBatches(50, 10, 0), range(5))]
    b = [b for b, _ in zip(SeededBatches(50, 10, 1), range(5))]
    assert a != b


def test_the_data_order_leaves_torchs_global_random_stream_alone():
    """Dropout and adapter init draw from torch's global generator: reading batches must not move it."""
    splits = scenes_dataset("caption", train_size=16, eval_size=1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    take(train_batches(splits.train, lambda samples: {"n": torch.tensor(len(samples))}, batch_size=4, seed=0,
                       stream=StreamSettings(num_workers=1)), 3)
    assert torch.equal(torch.rand(3), expected)


def corrupt(path, keep: int = 120) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture
def broken_on_disk(tmp_path):
    """30 scenes on disk as PNG; the image of record 17 cut short after its header (it passes validation)."""
    path = make_scenes(tmp_path / "d", n=30, fmt="coco_captions", image_size=32, image_format="png", processes=1)
    corrupt(tmp_path / "d" / "images" / "0000017.png")
    splits = load_dataset({"format": "coco_captions", "task": "caption", "path": str(path), "shuffle": False,
                           "eval_fraction": 0.1}, base_dir=tmp_path)
    return splits


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_stops_the_stream_naming_file_record_and_sample(broken_on_disk, workers):
    stream = StreamSettings(num_workers=workers)
    with pytest.raises(DataError) as err:
        take(train_batches(broken_on_disk.train, lambda samples: len(samples), batch_size=4, seed=0, stream=stream), 12)
    text = err.value.render()
    assert "0000017.png" in text and "train sample 17" in text and "record 17" in text and "captions.json" in text
    assert "on_bad_sample" in text  # the fix names the way out


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_leaves_the_unreadable_sample_out_and_counts_it(broken_on_disk, workers):
    skipped = Skipped()
    stream = StreamSettings(num_workers=workers, on_bad_sample="skip")
    sizes = take(train_batches(broken_on_disk.train, lambda samples: {"n": torch.tensor(len(samples))}, batch_size=9,
                               seed=0, stream=stream, skipped=skipped), 9)
    assert skipped.counts == {"train": 1}
    assert sum(int(b["n"]) for b in sizes) == 9 * 9 - 3  # 27 samples, 3 passes: the broken one missed each time
    read = [i for indices, _ in eval_batches(broken_on_disk.train, 10, len, stream, skipped=skipped) for i in indices]
    assert read == [i for i in range(27) if i != 17] and skipped.counts == {"train": 1, "eval": 1}


def test_a_sample_prepare_refuses_is_named_by_its_index_in_the_split():
    splits = scenes_dataset("caption", train_size=12, eval_size=1)

    def prepare(samples):
        if any(s is splits.train[7] for s in samples):
            raise DataError("a captioning sample needs at least one non-empty caption", where="train[0].captions")
        return len(samples)

    with pytest.raises(DataError, match=r"train sample 7 \(train\[0\]\.captions\)"):
        take(train_batches(splits.train, prepare, batch_size=4, seed=0, stream=StreamSettings(num_workers=1)), 6)


def test_a_worker_killed_by_the_os_is_reported_not_waited_for():
    """SIGKILL in a worker (what the kernel's OOM killer sends): the stream raises at once."""
    from bench.run.cell import _is_worker_death

    splits = scenes_dataset("caption", train_size=12, eval_size=1)

    def prepare(samples):
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(RuntimeError) as err:
        take(train_batches(splits.train, prepare, batch_size=4, seed=0, stream=StreamSettings(num_workers=1)), 2)
    assert _is_worker_death(err.value), str(err.value)


def test_default_workers_feed_a_gpu_from_disk_and_leave_the_cpu_to_training(broken_on_disk):
    in_memory = scenes_dataset("caption", train_size=4, eval_size=1).train
    assert default_workers("cpu", in_memory, cpus=2) == default_workers("cuda", in_memory, cpus=16) == 0
    assert default_workers("cpu", broken_on_disk.train, cpus=2) == default_workers("cpu", broken_on_disk.train, cpus=64) == 0
    assert default_workers("cuda", broken_on_disk.train, cpus=16) == 8
    assert default_workers("cuda", broken_on_disk.train, cpus=4) == 3


def test_the_cache_counts_the_bytes_of_what_it_keeps_and_stops_at_its_budget(built):
    """data_held_mb's cache part: the encoded tensors kept, never beyond cache_mb, nothing without a cache."""
    family, (task_name, _) = "llava", FAMILIES["llava"]
    splits = scenes_dataset(task_name, train_size=32, eval_size=1)
    loaded, task = built[family], task_for_family(family)
    make = TrainingBatch(task, loaded, TaskSettings(max_seq_len=24), splits)
    one = make.encode(splits.train[:1])[0]
    size = sum(v.element_size() * v.numel() for v in one.values() if hasattr(v, "numel"))
    for budget_samples in (0.5, 5, 100):  # below one sample, a few, all of them
        stream = StreamSettings(num_workers=0, cache_mb=budget_samples * size / 2**20)
        batches = train_batches(splits.train, make, batch_size=8, seed=0, stream=stream)
        take(batches, 4)  # one pass over the 32 samples
        assert batches.cached_bytes <= stream.cache_mb * 2**20
        assert batches.cached_bytes >= min(32, int(budget_samples)) * size * 0.5  # samples differ a little in length
    assert train_batches(splits.train, make, batch_size=8, seed=0, stream=StreamSettings(num_workers=0, cache_mb=0)).cached_bytes == 0


def test_held_bytes_count_pixels_and_encoded_bytes_but_not_paths(tmp_path):
    from PIL import Image

    from bench.data.sample import ImageFile, Sample, held_bytes

    png = tmp_path / "a.png"
    Image.new("RGB", (5, 7)).save(png)
    samples = [Sample(Image.new("RGB", (4, 3))), Sample(ImageFile(png.read_bytes(), "f", "r")), Sample(ImageFile(str(png), "f", "r"))]
    assert held_bytes(samples) == 4 * 3 * 3 + len(png.read_bytes())

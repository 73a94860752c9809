"""Batches made while the model trains: samples read, decoded and processed per batch in DataLoader workers.

Nothing is encoded up front, so memory does not grow with the dataset: a worker opens a batch's images
(`Sample.decoded`), runs the task's processor and padding (`prepare`) and hands back tensors, while the
model works on the previous batch. With `num_workers = 0` the same happens in the training process.

- Training batches come in the order the seed fixes (`SeededBatches`): one permutation of the training
  split per pass, drawn from a generator seeded with the cell's seed, a short tail joining the next pass.
  The same seed gives the same batches whatever the worker count.
- An image that cannot be read is a DataError naming the data file, the record, the image and the
  split's sample index; with `on_bad_sample = "skip"` the sample is left out and counted instead.
- Workers are forked from the cell's process (the model is not copied: fork shares its pages), so
  `prepare` may use the loaded processor as it is; they die with the cell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bench.errors import BenchError, DataError


@dataclass(frozen=True)
class StreamSettings:
    num_workers: int = 0  # 0: batches are made in the training process
    prefetch_factor: int = 2  # batches each worker prepares ahead
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies (CUDA only)
    on_bad_sample: str = "error"  # "error": the cell fails naming the sample; "skip": left out and counted
    cache_mb: float = 0  # with num_workers = 0: encoded training samples kept up to this many MB


def on_disk(samples: list) -> bool:
    from bench.data.sample import ImageFile

    return any(isinstance(s.image, ImageFile) for s in samples[:64])


def default_workers(device: str, samples: list, cpus: int | None = None) -> int:
    """Workers when the suite does not say. On a GPU reading images from disk: enough to keep it fed (up to 8, one
    core left to the training process). Otherwise none: images in memory need no reading, and on the CPU the training
    threads use every core, so a worker only competes with them — while each worker process holds another copy of
    the runtime (~0.5 GB RSS). Measured on 2 cores, 50k images on disk: the same wall time with 0 or 1 worker."""
    cpus = cpus or len(os.sched_getaffinity(0))
    if device.startswith("cuda") and on_disk(samples):
        return max(1, min(8, cpus - 1))
    return 0


@dataclass(frozen=True)
class BadSample:
    index: int
    error: DataError


@dataclass
class Prepared:
    """One batch as a worker hands it back: what `prepare` made of the readable samples and what went wrong."""

    indices: list[int]  # the split's indices of the samples in `value`
    value: object = None  # None when no sample of the batch could be read
    bad: list[BadSample] = field(default_factory=list)
    error: BenchError | None = None  # `prepare` refused a sample (a missing caption, a cut image token)

    def pin_memory(self):  # called by the DataLoader's pin-memory thread on CUDA
        if isinstance(self.value, dict):
            self.value = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in self.value.items()}
        return self


class SeededBatches:
    """Batches of indices into a split of `n` samples, without end: a fresh permutation per pass from a generator
    seeded with `seed`; a pass's short tail joins the next pass. (A DataLoader batch sampler.)

    `shard = (rank, world)`: one device's share of a cell on several, every world-th batch of the same sequence from
    the rank-th on. So an optimizer step's batches are the same samples whatever the devices: world devices with
    grad_accum = a take the batches one device with grad_accum = world × a does."""

    def __init__(self, n: int, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)):
        self.n, self.batch_size, self.seed, self.shard = n, batch_size, seed, shard

    def __iter__(self):
        import torch

        rank, world = self.shard
        generator = torch.Generator().manual_seed(self.seed)
        order: list[int] = []
        index = 0
        while True:
            if len(order) < self.batch_size:
                order += torch.randperm(self.n, generator=generator).tolist()
            batch, order = order[: self.batch_size], order[self.batch_size:]
            if index % world == rank:
                yield batch
            index += 1


def _tensor_bytes(batch: dict) -> int:
    """Bytes an encoded sample holds: its tensors, and its images where the encoding keeps them (a DPO example: TRL's
    collator processes the image per batch)."""
    from bench.data.sample import image_bytes

    tensors = sum(v.numel() * v.element_size() for v in batch.values() if hasattr(v, "element_size"))
    return tensors + image_bytes(batch.get("image"))


class _Encoded:
    """A sample the cache already holds encoded: nothing to read or process."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class EncodedCache:
    """Training samples encoded once and kept, up to a byte budget, so later passes skip reading and processing
    (what encoding the whole split up front did, paid as the first pass goes). Only where batches are made in the
    training process (num_workers = 0): a worker's copy would be one of several, each filled at random."""

    def __init__(self, budget_mb: float):
        self.budget = budget_mb * 2**20
        self.used = 0
        self.items: dict[int, dict] = {}

    def offer(self, index: int, encoded: dict) -> None:
        size = _tensor_bytes(encoded)
        if self.used + size <= self.budget:
            self.items[index] = encoded
            self.used += size


class _Samples:
    """The split as a map-style dataset: item i is (i, the sample with its image read), a BadSample, or the
    sample's cached encoding."""

    def __init__(self, samples: list, split: str, cache: EncodedCache | None = None):
        self.samples, self.split, self.cache = samples, split, cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        if self.cache is not None and i in self.cache.items:
            return i, _Encoded(self.cache.items[i])
        try:
            return i, self.samples[i].decoded()
        except DataError as e:
            return i, BadSample(i, DataError(e.message, file=e.file, where=f"{self.split} sample {i}, {e.where}", fix=e.fix))


INBAND_BYTES = 1 << 20  # a worker's batch below this travels inside its message; above, through shared memory


def _portable(value):
    """A small batch as numpy arrays: pickled into the worker's message in one piece. Tensors would each go through
    shared memory, whose per-tensor hand-over (a socket connection for the file descriptor) costs ~0.6 ms — more than
    a tiny model's whole step."""
    if not isinstance(value, dict):
        return value
    if _tensor_bytes(value) > INBAND_BYTES or any(str(getattr(v, "dtype", "")) == "torch.bfloat16" for v in value.values()):
        return value
    return {k: _InBand(v.numpy()) if hasattr(v, "element_size") else v for k, v in value.items()}


class _InBand:
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


def _restored(value):
    if isinstance(value, dict) and any(isinstance(v, _InBand) for v in value.values()):
        import torch

        return {k: torch.from_numpy(v.array) if isinstance(v, _InBand) else v for k, v in value.items()}
    return value


class _Prepare:
    """The DataLoader's collate function: `prepare` over a batch's readable samples, in the worker (or in the training
    process with num_workers = 0). A training `prepare` has `encode` and `collate`, so samples can be cached encoded."""

    def __init__(self, prepare, split: str, *, cache: EncodedCache | None = None, inband: bool = False):
        self.prepare, self.split, self.cache, self.inband = prepare, split, cache, inband

    def __call__(self, items: list) -> Prepared:
        good = [(i, s) for i, s in items if not isinstance(s, BadSample)]
        out = Prepared([i for i, _ in good], bad=[s for _, s in items if isinstance(s, BadSample)])
        if not good:
            return out
        try:
            value = self._cached(good) if self.cache is not None else self.prepare([s for _, s in good])
            out.value = _portable(value) if self.inband else value
        except BenchError as e:
            out.error = self._culprit(good) or e
        return out

    def _cached(self, good: list):
        encoded = {i: s.value for i, s in good if isinstance(s, _Encoded)}
        todo = [(i, s) for i, s in good if not isinstance(s, _Encoded)]
        if todo:
            for (i, _), e in zip(todo, self.prepare.encode([s for _, s in todo])):
                encoded[i] = e
                self.cache.offer(i, e)
        return self.prepare.collate([encoded[i] for i, _ in good])

    def _culprit(self, good: list) -> BenchError | None:
        """The error of the first sample `prepare` refuses alone, named by its index in the split."""
        for i, sample in good:
            if isinstance(sample, _Encoded):
                continue
            try:
                self.prepare([sample])
            except BenchError as e:
                where = f"{self.split} sample {i}" + (f" ({e.where})" if e.where else "")
                return type(e)(e.message, file=e.file, where=where, fix=e.fix)
        return None


def _loader(samples: list, prepare, batches, stream: StreamSettings, *, seed: int, split: str, cache=None):
    if not stream.num_workers:
        return _in_process(_Samples(samples, split, cache), _Prepare(prepare, split, cache=cache), batches, stream.pin_memory)
    import torch
    from torch.utils.data import DataLoader

    kwargs = {"prefetch_factor": stream.prefetch_factor, "multiprocessing_context": "fork"}
    collate = _Prepare(prepare, split, inband=not stream.pin_memory)  # no cache: a worker's would be one of several
    # the generator seeds the workers; without one the DataLoader would draw from torch's global RNG, which
    # dropout and weight init also use, and the worker count would change the training numbers
    return DataLoader(_Samples(samples, split), batch_sampler=batches, collate_fn=collate,
                      num_workers=stream.num_workers, pin_memory=stream.pin_memory,
                      generator=torch.Generator().manual_seed(seed), **kwargs)


def _in_process(dataset: _Samples, collate: _Prepare, batches, pin: bool):
    """What a DataLoader without workers does — fetch, collate, pin — minus its per-batch bookkeeping and profiler
    hooks, which cost a tiny model several per cent of its step."""
    for indices in batches:
        prepared = collate([dataset[i] for i in indices])
        yield prepared.pin_memory() if pin else prepared


class Skipped:
    """Which samples `on_bad_sample = "skip"` left out, per split (their count is recorded with the cell)."""

    def __init__(self):
        self.indices: dict[str, set[int]] = {}

    def add(self, split: str, indices) -> None:
        self.indices.setdefault(split, set()).update(indices)

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(ix) for split, ix in self.indices.items()}


def _checked(batches, stream: StreamSettings, split: str, skipped: Skipped | None):
    """(indices, value) of each batch that has readable samples; errors raised, bad samples skipped or raised."""
    for prepared in batches:
        if prepared.error is not None:
            raise prepared.error
        if prepared.bad:
            if stream.on_bad_sample != "skip":
                raise prepared.bad[0].error
            if skipped is not None:
                skipped.add(split, [b.index for b in prepared.bad])
        if prepared.value is not None:
            yield prepared.indices, _restored(prepared.value)


class TrainBatches:
    """The training micro-batches, an endless iterator, and the encoded cache behind them (data the cell holds)."""

    def __init__(self, batches, cache: EncodedCache | None):
        self._batches, self.cache = batches, cache

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._batches)

    def close(self) -> None:
        self._batches.close()

    @property
    def cached_bytes(self) -> int:
        return self.cache.used if self.cache is not None else 0


def train_batches(samples: list, prepare, *, batch_size: int, seed: int, stream: StreamSettings,
                  skipped: Skipped | None = None, shard: tuple[int, int] = (0, 1)) -> TrainBatches:
    """Micro-batches for training, without end, in the seed's order (`shard`: one device's share, see SeededBatches).
    `prepare(samples) -> batch` runs in the workers; with num_workers = 0 and a `prepare` that has `encode` and
    `collate`, encoded samples are cached (cache_mb)."""
    cache = EncodedCache(stream.cache_mb) if not stream.num_workers and stream.cache_mb and hasattr(prepare, "encode") else None
    loader = _loader(samples, prepare, SeededBatches(len(samples), batch_size, seed, shard), stream, seed=seed,
                     split="train", cache=cache)
    return TrainBatches((value for _, value in _checked(loader, stream, "train", skipped)), cache)


def eval_batches(samples: list, batch_size: int, prepare, stream: StreamSettings, *, skipped: Skipped | None = None):
    """(indices, prepare(chunk)) for consecutive chunks of the evaluation split; indices say which samples were read."""
    chunks = [list(range(i, min(i + batch_size, len(samples)))) for i in range(0, len(samples), batch_size)]
    return _checked(_loader(samples, prepare, chunks, stream, seed=0, split="eval"), stream, "eval", skipped)


def in_memory_batches(encoded: list, collate, *, batch_size: int, seed: int):
    """The reference the streamed path is held to: samples encoded up front and collated in this process, in the same
    seeded order (what bench did before streaming; tests and benchmarks/streaming.py compare the two)."""
    for idx in SeededBatches(len(encoded), batch_size, seed):
        yield collate([encoded[i] for i in idx])

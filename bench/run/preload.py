"""Imported once by the cell-process server (see isolate.py): the heavy libraries and the model classes,
so every forked cell starts warm instead of paying ~10 s of imports. Importing it is its only job.

Warm means more than imported. Each family's architecture is adapted once on the meta device (no memory, no
computation), which fills the caches Python keeps per process: isinstance checks against peft's and
transformers' abstract classes, compiled regular expressions. Then every object is frozen out of the
garbage collector's reach. Measured on tiny LLaVA LoRA (2-core CPU): a forked cell spent 0.7 s building its
model and 0.28 s in one gc.collect cold, 0.14 s and ~0 warm; the warm-up costs the server ~0.5 s once.
"""

import gc
import logging
import os
import warnings

# deprecation chatter from the libraries is not the user's to act on; keep the progress display readable
warnings.filterwarnings("ignore", category=FutureWarning)
# bitsandbytes tries to fetch an optional CPU kernel from the hub and warns when it can't; the fallback is fine
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

import torch  # noqa: E402,F401
import transformers.utils.logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()  # re-quantised loads would draw shard bars through the live display
hf_logging.set_verbosity_error()

from tqdm.std import TqdmDefaultWriteLock  # noqa: E402

# tqdm's first bar in a process makes a multiprocessing lock, a named semaphore the run's resource tracker then counts as
# leaked when the cell leaves with os._exit (PEFT's merge_and_unload makes a bar, disabled, in every served cell): cells
# draw no bars, so their bars lock with threads only
TqdmDefaultWriteLock.mp_lock = None

import peft  # noqa: E402,F401
import torch.distributed._tools.mem_tracker  # noqa: E402,F401  (CPU tensor memory: imported in every cell otherwise)
from transformers import Blip2ForConditionalGeneration, CLIPModel, LlavaForConditionalGeneration  # noqa: E402,F401

import bench.methods  # noqa: E402,F401
import bench.metrics  # noqa: E402,F401
import bench.run.cell  # noqa: E402,F401
import bench.train  # noqa: E402,F401
from bench.isolate import WARM_FAMILIES  # noqa: E402
from bench.models import FAMILY_MODULES, get_family  # noqa: E402
from bench.models.catalog import FAMILIES  # noqa: E402
from bench.tasks import TASK_MODULES, task_for_family  # noqa: E402

for _family in FAMILY_MODULES:
    get_family(_family)
for _family in TASK_MODULES:
    task_for_family(_family)



def _adapt_each_family_on_meta() -> None:
    """Every family's tiny architecture (those the run's cells use, where the runner says), adapted by a LoRA and an IA3
    on the meta device: the class checks and patterns a cell's build and method runs through are then cached in the
    server, and inherited by every fork.
    The server stays free of real tensors (no thread pool started, nothing for a fork to inherit mid-use)."""
    import copy

    from bench.methods import apply_method
    from bench.models.base import LoadedModel, ModelSpec

    wanted = os.environ.get(WARM_FAMILIES)
    for name in FAMILY_MODULES:
        if "tiny" not in FAMILIES[name].presets:  # `auto`: its architecture is its checkpoint's
            continue
        if wanted is not None and name not in wanted.split(","):  # ~0.1 s each, on the run's way to its first cell
            continue
        family = get_family(name)
        base = family.build_meta(ModelSpec(name="warm-up", family=name, preset="tiny", weights="random"))
        for kind in ("lora", "ia3"):
            model = copy.deepcopy(base)
            loaded = LoadedModel(model=model, processor=None, family=name, backend="transformers",
                                 components=family.components(model, "transformers"))
            method = {"name": kind, "kind": kind, "r": 8, "alpha": 16, "dropout": 0.0, "targets": None, "train_full": None}
            with torch.device("meta"):
                apply_method(loaded, method, family)
        WARMED.append(name)


WARMED: list[str] = []  # the families warmed up, in order (what the runner asked for)

try:
    _adapt_each_family_on_meta()
except Exception:  # noqa: BLE001  an optimisation only: a cell that finds its caches cold is slower, never wrong
    pass
# what the imports and the warm-up made lives as long as the server: out of every collection a cell runs (a full
# collection walked all of it, ~0.2 s each), and its pages are not written to, so forks keep sharing them. Frozen
# without a collection first: one found 18 unreachable objects among 560k and took 0.3 s of the run's start-up
gc.freeze()

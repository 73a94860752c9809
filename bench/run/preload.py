"""Imported once by the cell-process server (see isolate.py): the heavy libraries and the model classes,
so every forked cell starts warm instead of paying ~10 s of imports. Importing it is its only job."""

import logging
import warnings

# deprecation chatter from the libraries is not the user's to act on; keep the progress display readable
warnings.filterwarnings("ignore", category=FutureWarning)
# bitsandbytes tries to fetch an optional CPU kernel from the hub and warns when it can't; the fallback is fine
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

import torch  # noqa: E402,F401
import transformers.utils.logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()  # re-quantised loads would draw shard bars through the live display
hf_logging.set_verbosity_error()

import peft  # noqa: E402,F401
import torch.distributed._tools.mem_tracker  # noqa: E402,F401  (CPU tensor memory: imported in every cell otherwise)
from transformers import Blip2ForConditionalGeneration, CLIPModel, LlavaForConditionalGeneration  # noqa: E402,F401

import bench.methods  # noqa: E402,F401
import bench.metrics  # noqa: E402,F401
import bench.run.cell  # noqa: E402,F401
import bench.train  # noqa: E402,F401
from bench.models import FAMILY_MODULES, get_family  # noqa: E402
from bench.tasks import TASK_MODULES, task_for_family  # noqa: E402

for _family in FAMILY_MODULES:
    get_family(_family)
for _family in TASK_MODULES:
    task_for_family(_family)

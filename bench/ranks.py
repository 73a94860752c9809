"""A cell's process among several, one per device: accelerate's view of them, and the few collective steps the
training loop takes (wrap the model, average the step's loss, add up the counts, clip the global gradient norm).

The processes are started by torch's elastic launcher (bench/run/launch.py), which sets each one's rank, world size
and rendezvous in the environment. The process group is joined (through accelerate: gloo on the CPU, NCCL on GPUs)
only when the model is wrapped, after it is built: building writes files on every device (a config-built QLoRA model
is saved and reloaded to be quantised), which transformers does only on rank 0 inside a process group. With
`devices = 1` none of this exists and bench.train runs exactly as before.
"""

from __future__ import annotations

import os
from contextlib import nullcontext


class Ranks:
    def __init__(self, device: str, strategy: str, threads: int):
        self.device, self.strategy, self.threads = device, strategy, threads
        self.accelerator = None  # accelerate.Accelerator, once the model is wrapped

    @property
    def rank(self) -> int:
        return int(os.environ["RANK"])

    @property
    def world(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        """Join the group, then DDP or FSDP around the model (the optimizer is made afterwards, over the wrapped
        parameters)."""
        import torch
        from accelerate import Accelerator, DistributedDataParallelKwargs

        plugin = self._fsdp_plugin(model) if self.strategy == "fsdp" else None
        # some trainable parameters take no part in the loss (LLaVA's last vision layer, whose output it does not read):
        # DDP stops on them unless it looks for them after each backward (a walk over the graph, small beside the step);
        # gradients live in DDP's buckets rather than beside them
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True, gradient_as_bucket_view=True)
        # precision stays bench's own autocast (bench.train.autocast), as on one device: the numbers mean the same
        self.accelerator = Accelerator(cpu=self.device == "cpu", fsdp_plugin=plugin, mixed_precision="no",
                                       kwargs_handlers=[ddp])
        torch.set_num_threads(self.threads)  # accelerate sets its own share on the CPU; the slot's is bench's
        return self.accelerator.prepare_model(model)

    @staticmethod
    def _fsdp_plugin(model):
        """FULL_SHARD: weights, gradients and optimizer state split over the devices, original parameters kept (a unit
        may hold frozen and trainable ones), units from fsdp_wrap_policy."""
        from accelerate import FullyShardedDataParallelPlugin

        return FullyShardedDataParallelPlugin(fsdp_version=1, reshard_after_forward="FULL_SHARD",
                                              auto_wrap_policy=fsdp_wrap_policy(model), use_orig_params=True,
                                              sync_module_states=True, state_dict_type="FULL_STATE_DICT")

    def no_sync(self, model, last: bool):
        """Micro-batches before a step's last accumulate gradients locally; the last one averages them over devices."""
        return nullcontext() if last else self.accelerator.no_sync(model)

    def mean(self, value):
        """The devices' mean of a scalar tensor (gloo has no AVG reduction: SUM, then divide)."""
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world

    def total(self, counts: list[int]) -> list[int]:
        """Counts added up over the devices."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(counts, dtype=torch.int64, device=self.accelerator.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [int(x) for x in tensor.tolist()]

    def clip(self, model, params, max_norm: float) -> None:
        """Clip by the global gradient norm (FSDP: over every device's shard, through the wrapped model)."""
        import torch

        if self.strategy == "fsdp":
            model.clip_grad_norm_(max_norm)
        else:  # DDP's gradients are averaged already: the same on every device
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def full_state(self, model) -> dict:
        """The trained weights whole, on the main process (FSDP gathers the shards; every process must call this)."""
        return self.accelerator.get_state_dict(model)


def fsdp_wrap_policy(model):
    """FSDP's units for `model`: each block class the model's own `_no_split_modules` names (those it holds: LLaVA
    names CLIP's text embeddings, which it has not, and the stock policies of accelerate and peft stop on the absent
    name), and under PEFT each leaf with a trainable weight (an adapter's layer, fp32 beside bf16 weights) on its own."""
    import functools

    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    named = set()
    for module in model.modules():
        named |= set(getattr(module, "_no_split_modules", None) or ())
    blocks = {type(m) for m in model.modules() if type(m).__name__ in named}
    policies = [functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=blocks)]
    if hasattr(model, "peft_config"):
        def trainable_leaf(module) -> bool:
            weight = getattr(module, "weight", None)
            return next(module.children(), None) is None and weight is not None and weight.requires_grad

        policies.append(functools.partial(lambda_auto_wrap_policy, lambda_fn=trainable_leaf))
    return functools.partial(_or_policy, policies=policies)

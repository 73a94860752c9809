"""A cell's process among several, one per device: accelerate's view of them, and the few collective steps the
training loop takes (wrap the model, average the step's loss, add up the counts, clip the global gradient norm).

The processes are started by torch's elastic launcher (bench/run/launch.py); accelerate reads the rank, world size
and rendezvous it set in the environment and joins the process group (gloo on the CPU, NCCL on GPUs). With
`devices = 1` none of this exists and bench.train runs exactly as before.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass


@dataclass
class Ranks:
    accelerator: object  # accelerate.Accelerator
    strategy: str  # "ddp" | "fsdp"

    @classmethod
    def join(cls, device: str, strategy: str, precision: str) -> Ranks:
        """Join the cell's process group through accelerate (the environment says rank, world and rendezvous)."""
        from accelerate import Accelerator, DistributedDataParallelKwargs

        plugin = None
        if strategy == "fsdp":
            from accelerate import FullyShardedDataParallelPlugin

            # FULL_SHARD: weights, gradients and optimizer state split over the devices; original parameters kept so a
            # unit may hold frozen and trainable ones (adapters); units are the model's own no-split blocks
            plugin = FullyShardedDataParallelPlugin(fsdp_version=1, reshard_after_forward="FULL_SHARD",
                                                    auto_wrap_policy="transformer_based_wrap", use_orig_params=True,
                                                    sync_module_states=True, state_dict_type="FULL_STATE_DICT")
        # a static graph: the same parameters take part in every step, and some trainable ones never do (LLaVA's last
        # vision layer, whose output it does not read), which DDP otherwise stops on
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True, gradient_as_bucket_view=True)
        # precision stays bench's own autocast (bench.train.autocast), as on one device: the numbers mean the same
        return cls(Accelerator(cpu=device == "cpu", fsdp_plugin=plugin, mixed_precision="no", kwargs_handlers=[ddp]), strategy)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        """DDP or FSDP around the model (the optimizer is made afterwards, over the wrapped parameters)."""
        return self.accelerator.prepare_model(model)

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

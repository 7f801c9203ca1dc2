"""Where the trainer runs: device, precision, attention path and the torchrun process group.

``torchrun --nproc_per_node N -m vllm_pard2.train -c cfg.yaml`` sets RANK /
WORLD_SIZE / LOCAL_RANK; the trainer then joins one process group (NCCL on
GPU, gloo on CPU) and trains one model with DDP. A plain ``python -m`` run is
world size 1 with no process group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vllm_pard2.train.config import TrainConfig, resolve_device_type


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype  # the training precision: autocast dtype and the frozen target's dtype
    attention: str  # resolved: "flex" or "dense"
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16 autocast (weights stay fp32) or nothing for fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Resolve ``device`` / ``precision`` / ``attention`` and join the torchrun group if any."""
    device_type = resolve_device_type(cfg.device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    attention = cfg.attention if cfg.attention != "auto" else ("flex" if device_type == "cuda" else "dense")
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    return Runtime(device=device, dtype=dtype, attention=attention, rank=rank, world_size=world_size)

"""One process or many: torchrun sets RANK/WORLD_SIZE; NCCL on GPUs, gloo on CPUs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from gpt2cli.errors import Gpt2Error, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """The device to train on; one this machine lacks is a usage error, not a crash at the first tensor."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", local_rank) if preference == "cuda" else torch.device(preference)
    except RuntimeError:
        raise UsageError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {preference}: no CUDA device is available to this PyTorch ({torch.__version__})")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"device {device}: only {torch.cuda.device_count()} CUDA devices are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device mps: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device {preference}: pretrain runs on cpu, cuda or mps")
    return device


def setup(device_preference: str) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank, local_rank, world, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object, ctx: Context) -> object:
    if not dist.is_initialized():
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(compute: Callable[[], T], ctx: Context) -> T:
    """``compute()`` run by rank 0, its result on every process; the error it raised (a held lock, a full disk) is
    raised by every process too, so that all exit alike instead of the others dying with a traceback in the next
    collective when rank 0 is gone. Every process waits here for rank 0."""
    result: T | None = None
    error: Gpt2Error | OSError | None = None
    if ctx.is_main:
        try:
            result = compute()
        except (Gpt2Error, OSError) as e:
            error = e
    result, error = broadcast_object((result, error), ctx)  # type: ignore[misc]
    if error is not None:
        if not ctx.is_main:
            error.said_by_rank_0 = True  # type: ignore[union-attr]  # one line for the job: rank 0's (see cli.main)
        raise error
    return result  # type: ignore[return-value]

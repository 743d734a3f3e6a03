"""Data-parallel evaluation over the GPUs of one host: every process loads the model on its own GPU, generates or
scores a share of each suite's prompts, and all processes get every result back, so scoring and metrics run
unchanged (and identically) everywhere; only the main process writes files.

    accelerate launch --num_processes 2 -m harmgate eval RUN_DIR      # or torchrun --nproc_per_node 2 -m harmgate ...

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK; without them (a plain ``harmgate eval``) everything here is a
no-op. Results are exchanged with ``torch.distributed.all_gather_object`` (NCCL on GPUs, gloo on CPUs): a few
megabytes of text per suite, small next to the generation it replaces.

Shares are dealt from the length-sorted work (rank r takes every world-th item), so each process gets as many
long prompts as short ones. Greedy replies do not depend on the world size beyond bf16 batch-shape rounding;
sampled ones do (each process seeds its own stream), as they depend on batch shapes within one process.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """This process's place, from the launcher's environment (one process when none is set)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return ranks().main


def _group():
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ranks().local_rank)
        dist.init_process_group(backend)
        # A group left alive at interpreter exit can abort the process ("terminate called without an active
        # exception" from gloo's threads, seen in CI after every result was written): the group we open, we close.
        atexit.register(_close_group)
    return dist


def _close_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if ranks().world > 1:
        _group().barrier()


def device_map() -> dict[str, int] | None:
    """Where this process loads the model: its own GPU (``{"": local_rank}``), or None on a CPU."""
    import torch

    return {"": ranks().local_rank} if torch.cuda.is_available() else None


def seed_for(seed: int) -> int:
    """Each process's sampling seed: distinct streams, reproducible for the same seed and world size."""
    return seed + 1_000_003 * ranks().rank


def shard_map(items: Sequence[T], fn: Callable[[list[T]], list[R]], *,
              cost: Callable[[T], float] | None = None) -> list[R]:
    """``fn(items)`` computed in shares over the processes; every process returns the whole list, in order.
    ``fn`` must return one result per item it is given."""
    r = ranks()
    if r.world <= 1:
        return fn(list(items))
    order = sorted(range(len(items)), key=(lambda i: cost(items[i])) if cost else (lambda i: i))
    mine = order[r.rank::r.world]
    got = fn([items[i] for i in mine]) if mine else []
    if len(got) != len(mine):
        raise RuntimeError(f"rank {r.rank}: {len(got)} results for {len(mine)} items")
    parts: list[Any] = [None] * r.world
    _group().all_gather_object(parts, (mine, got))
    out: list[Any] = [None] * len(items)
    for idx, res in parts:
        for i, v in zip(idx, res):
            out[i] = v
    return out

"""Epoch order and sharding shared by every loader, so DALI and torch read the same files on the same rank.

Epoch ``e`` reads a permutation seeded by ``(seed, e)`` (identity for eval); rank ``r`` of ``w`` takes the
contiguous block ``[r*n//w, (r+1)*n//w)`` of it (DALI's own shard rule), so the shards cover every file exactly
once per epoch.
"""

from __future__ import annotations

import torch

from infer_fast.runtime import mix_seed, rank_and_world


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """``(rank, world)``: the argument, else torch.distributed (initialized group or RANK/WORLD_SIZE env)."""
    if shard is None:
        shard = rank_and_world()
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (rank, world_size), got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must satisfy 0 <= rank < world_size, got rank={rank}, world_size={world}")
    return rank, world


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """Global read order of epoch ``epoch`` (int64 [n])."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def shard_indices(n: int, seed: int, epoch: int, shuffle: bool, rank: int, world: int) -> torch.Tensor:
    lo, hi = shard_bounds(n, rank, world)
    return epoch_order(n, seed, epoch, shuffle)[lo:hi]


def num_batches(shard_len: int, batch_size: int, drop_last: bool) -> int:
    return shard_len // batch_size if drop_last else -(-shard_len // batch_size)


def train_batches(n: int, world: int, batch_size: int) -> int:
    """Batches per rank for training: the same on every rank (the smallest shard), so DDP never waits."""
    return (n // world) // batch_size

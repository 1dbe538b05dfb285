"""Epoch order and sharding shared by every loader, so DALI and torch read the same files on the same rank.

Epoch ``e`` reads a permutation seeded by ``(seed, e)`` (identity for eval); rank ``r`` of ``w`` takes the
contiguous block ``[r*n//w, (r+1)*n//w)`` of it (DALI's own shard rule), so the shards cover every file exactly
once per epoch.
"""

from __future__ import annotations

import os

import torch


def resolve_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    """``(rank, world)``: the argument, else torch.distributed (initialized group or RANK/WORLD_SIZE env)."""
    if shard is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            shard = (dist.get_rank(), dist.get_world_size())
        else:
            shard = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
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


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64-style), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def num_batches(shard_len: int, batch_size: int, drop_last: bool) -> int:
    return shard_len // batch_size if drop_last else -(-shard_len // batch_size)


def train_batches(n: int, world: int, batch_size: int) -> int:
    """Batches per rank for training: the same on every rank (the smallest shard), so DDP never waits."""
    return (n // world) // batch_size

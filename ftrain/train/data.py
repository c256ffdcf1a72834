"""Elastic, resumable sampler: every sample of an epoch is consumed exactly once, whatever the
world size does mid-epoch.

The position is global (epoch, cursor into a seeded permutation), identical on every rank, so
it is part of the replicated state. Each step takes the next global batch (the sum of the
ranks' shares) from the cursor; rank r takes its contiguous part. At the end of an epoch the
remainder is split as evenly as possible (a rank may get none), then the next epoch starts.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate


def split_counts(total: int, shares: Sequence[int]) -> list[int]:
    """Splits `total` samples in proportion to `shares` (largest remainder; sums exactly)."""
    weight = sum(shares)
    if weight <= 0:
        raise ValueError("shares must have a positive sum")
    exact = [total * s / weight for s in shares]
    counts = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class ElasticSampler:
    def __init__(self, dataset_len: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if dataset_len < 1:
            raise ValueError(f"dataset is empty (len {dataset_len}); ftrain.init needs at least one sample")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.cursor = 0
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                self._perm = torch.randperm(self.dataset_len, generator=generator)
            else:
                self._perm = torch.arange(self.dataset_len)
            self._perm_epoch = self.epoch
        assert self._perm is not None
        return self._perm

    def rank_counts(self, world_size: int, shares: Sequence[int] | None = None) -> list[int]:
        """Samples per rank for the next step: batch_size each, or the global batch
        (batch_size x world_size) split by `shares` (relative weights, e.g. after a straggler
        rebalance); the epoch's tail is split the same way."""
        if shares:
            if len(shares) != world_size:
                raise ValueError(f"{len(shares)} batch shares for world size {world_size}")
            counts = split_counts(self.batch_size * world_size, shares)
        else:
            counts = [self.batch_size] * world_size
        remaining = self.dataset_len - self.cursor
        if sum(counts) <= remaining:
            return counts
        return split_counts(remaining, counts)

    def global_indices(self, world_size: int, shares: Sequence[int] | None = None) -> list[list[int]]:
        """Indices for every rank for the next step (does not advance)."""
        counts = self.rank_counts(world_size, shares)
        perm = self._permutation()
        out, start = [], self.cursor
        for count in counts:
            out.append(perm[start:start + count].tolist())
            start += count
        return out

    def indices(self, rank: int, world_size: int, shares: Sequence[int] | None = None) -> list[int]:
        counts = self.rank_counts(world_size, shares)
        start = self.cursor + sum(counts[:rank])
        return self._permutation()[start:start + counts[rank]].tolist()

    def advance(self, world_size: int, shares: Sequence[int] | None = None) -> None:
        self.cursor += sum(self.rank_counts(world_size, shares))
        if self.cursor >= self.dataset_len:
            self.epoch += 1
            self.cursor = 0

    def copy(self) -> "ElasticSampler":
        """A sampler at the same position, to walk ahead without moving this one."""
        other = ElasticSampler(self.dataset_len, self.batch_size, self.seed, self.shuffle)
        other.epoch, other.cursor = self.epoch, self.cursor
        return other

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "dataset_len": self.dataset_len,
                "batch_size": self.batch_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dataset_len"] != self.dataset_len:
            raise ValueError(f"snapshot's dataset has {state['dataset_len']} samples, this one {self.dataset_len}: "
                             "restore with the same dataset")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def make_collate(dataset: Dataset, collate_fn: Callable | None) -> Callable[[list[int]], Any]:
    """Batch builder: fast tensor indexing for TensorDataset, else collate_fn/default_collate."""
    if collate_fn is None and isinstance(dataset, TensorDataset):
        tensors = dataset.tensors

        def take(indices: list[int]) -> Any:
            index = torch.tensor(indices, dtype=torch.long)
            return tuple(t[index] for t in tensors)

        return take
    collate = collate_fn or default_collate
    return lambda indices: collate([dataset[i] for i in indices])

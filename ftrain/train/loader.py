"""Batches through a real `torch.utils.data.DataLoader` whose batch sampler is ftrain's elastic
sampler: worker processes, `pin_memory`, prefetching and the user's `collate_fn` work as with
plain PyTorch, and exactly-once sampling still holds across failures.

The sampler's position (epoch, cursor) only moves when the training loop *consumes* a step's
batch, and that is what a snapshot records. The loader's batch sampler walks ahead from a copy
of that position, so prefetched batches are simply dropped when the position is reset
(a restore, a new world size or new batch shares): a fresh loader iterator starts at the
consumed position.

Worker processes get their RNG seeded per batch from (seed, epoch, cursor, rank), so random
augmentations in `__getitem__` give the same batch after a recovery as before it, whichever
worker builds it. With `num_workers=0` batches are built in the training process and use its
global RNG, exactly as a plain DataLoader does (that RNG is part of every snapshot).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info

from ftrain.train.data import ElasticSampler


class _StepIndices(list):
    """One step's indices for this rank, tagged with a seed for the worker that builds it."""

    seed: int = 0


class _SeededDataset(Dataset):
    """Wraps the user's dataset: in a worker process, seeds torch/numpy/random from the batch's tag
    before fetching its items."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        if get_worker_info() is not None and isinstance(indices, _StepIndices):
            seed = indices.seed
            if torch.accelerator.is_available():  # every device's generator, as torch.manual_seed seeds them
                torch.manual_seed(seed)
            else:  # CPU only: the same seeding without the stack trace it formats per call for lazy CUDA init
                torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is not None:
            return getitems(list(indices))
        return [self.dataset[i] for i in indices]


class _Collate:
    """The user's collate function (default_collate when none); an empty step gives None."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(self, items: list[Any]) -> Any:
        return self.collate_fn(items) if items else None


class _StepBatches:
    """Batch sampler: this rank's indices for every step from a fixed starting position."""

    def __init__(self, sampler: ElasticSampler, rank: int, world_size: int, shares: Sequence[int] | None,
                 steps: int) -> None:
        self.sampler = sampler.copy()
        self.rank, self.world_size, self.shares, self.steps = rank, world_size, shares, steps

    def __iter__(self) -> Iterator[list[int]]:
        s = self.sampler
        for _ in range(self.steps):
            batch = _StepIndices(s.indices(self.rank, self.world_size, self.shares))
            batch.seed = (s.seed * 1_000_003 + s.epoch * 7_919 + s.cursor * 31 + self.rank) % 2**63
            yield batch
            s.advance(self.world_size, self.shares)

    def __len__(self) -> int:
        return self.steps


def check_dataset(dataset: Any) -> None:
    if isinstance(dataset, DataLoader):
        raise TypeError("ftrain.init(dataset=...): got a DataLoader; pass its dataset and options instead, e.g. "
                        "ftrain.init(model, optimizer, dataset=loader.dataset, batch_size=loader.batch_size, "
                        "num_workers=loader.num_workers, collate_fn=loader.collate_fn)")
    if isinstance(dataset, IterableDataset):
        raise TypeError("ftrain.init(dataset=...): an IterableDataset has no index, so ftrain cannot record its "
                        "position for exactly-once recovery; use a map-style Dataset (__getitem__ and __len__)")
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(f"ftrain.init(dataset=...): needs a map-style Dataset with __getitem__ and __len__; "
                        f"got {type(dataset).__name__}")


class BatchFeed:
    """This rank's batches, one per step, from the sampler's consumed position."""

    def __init__(self, dataset: Dataset, sampler: ElasticSampler, *, num_workers: int = 0,
                 collate_fn: Callable | None = None, pin_memory: bool = False, prefetch_factor: int | None = None,
                 worker_init_fn: Callable | None = None, multiprocessing_context: Any = None,
                 timeout: float = 0) -> None:
        if num_workers < 0:
            raise ValueError(f"ftrain.init: num_workers must be >= 0; got {num_workers}")
        if prefetch_factor is not None and num_workers == 0:
            raise ValueError("ftrain.init: prefetch_factor needs num_workers > 0 (as for DataLoader)")
        self.dataset = _SeededDataset(dataset)
        self.sampler = sampler
        self.options: dict[str, Any] = dict(num_workers=num_workers, collate_fn=_Collate(collate_fn),
                                            pin_memory=pin_memory, worker_init_fn=worker_init_fn,
                                            multiprocessing_context=multiprocessing_context, timeout=timeout)
        if prefetch_factor is not None:
            self.options["prefetch_factor"] = prefetch_factor
        self._iterator: Iterator[Any] | None = None
        self._key: tuple | None = None
        self._fast = num_workers == 0 and collate_fn is None and isinstance(dataset, torch.utils.data.TensorDataset)

    def reset(self) -> None:
        """Drops prefetched batches; the next batch starts at the sampler's position."""
        self._iterator, self._key = None, None

    def next(self, rank: int, world_size: int, shares: Sequence[int] | None, steps_left: int) -> Any:
        """The batch of the step at the sampler's position (None when this rank has no sample)."""
        key = (rank, world_size, tuple(shares or ()), self.sampler.epoch, self.sampler.cursor)
        if self._fast:  # TensorDataset in the training process: index the tensors directly
            indices = self.sampler.indices(rank, world_size, shares)
            if not indices:
                return None
            index = torch.tensor(indices, dtype=torch.long)
            return tuple(t[index] for t in self.dataset.dataset.tensors)  # type: ignore[attr-defined]
        if self._iterator is None or self._key != key:
            # a generator of its own: creating the iterator draws its workers' base seed from it, never
            # from the global RNG, whose state the snapshot restores for the user's loop (dropout...)
            generator = torch.Generator().manual_seed(self.sampler.epoch * 1_000_003 + self.sampler.cursor)
            loader = DataLoader(self.dataset, batch_sampler=_StepBatches(self.sampler, rank, world_size, shares,
                                                                         max(1, steps_left)),
                                generator=generator, **self.options)
            self._iterator = iter(loader)
        batch = next(self._iterator)
        # where the loader's walk will be after this batch, if the loop consumes it
        probe = self.sampler.copy()
        probe.advance(world_size, shares)
        self._key = (rank, world_size, tuple(shares or ()), probe.epoch, probe.cursor)
        return batch

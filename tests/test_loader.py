"""BatchFeed: random augmentations in DataLoader workers are seeded per batch, so a batch is the
same whichever worker builds it and after a reset (a recovery re-reading from the consumed
position), and the CPU generator seeding is what torch.manual_seed would give."""
import random

import numpy as np
import pytest
import torch

from ftrain.train.data import ElasticSampler
from ftrain.train.loader import BatchFeed, _SeededDataset, _StepIndices


class Augmented(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]) + torch.rand(1), random.random(), float(np.random.rand())


def batches(feed: BatchFeed, sampler: ElasticSampler, n: int) -> list:
    out = []
    for _ in range(n):
        out.append(feed.next(0, 2, None, 10))
        sampler.advance(2)
    return out


@pytest.mark.timeout(120)
def test_worker_augmentations_repeat_after_reset_and_across_worker_counts() -> None:
    runs = []
    for workers in (1, 2):
        sampler = ElasticSampler(64, 4, seed=5)
        feed = BatchFeed(Augmented(), sampler, num_workers=workers)
        first = batches(feed, sampler, 4)
        sampler.epoch, sampler.cursor = 0, 8  # a restore to the position after step 1
        feed.reset()
        again = batches(feed, sampler, 3)
        for a, b in zip(first[1:], again):
            assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))
        runs.append(first)
        feed.reset()
    for a, b in zip(*runs):
        assert all(torch.equal(torch.as_tensor(x), torch.as_tensor(y)) for x, y in zip(a, b))


def test_worker_seeding_matches_torch_manual_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ftrain.train.loader.get_worker_info", lambda: object())
    indices = _StepIndices([3, 7])
    indices.seed = 12345
    got = _SeededDataset(Augmented()).__getitems__(indices)
    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)
    want = [Augmented()[3], Augmented()[7]]
    assert [(float(a[0]), a[1], a[2]) for a in got] == [(float(a[0]), a[1], a[2]) for a in want]

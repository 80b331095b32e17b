"""The training DataLoader: seeded order, workers/pinning/prefetch knobs, and length bucketing.

Every variant of an experiment draws the same sample order from the same seed: the shuffle uses its
own `torch.Generator`, so batch size, worker count or pinning never change which samples are seen.
(Bucketing does change the order; it is a `quality` knob.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from harness.config import RunConfig
from harness.workload import Workload


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length samples: sort within pools of 50 batches, shuffle batches."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool_batches: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool):
            pool = sorted(order[start:start + self.pool], key=lambda i: self.lengths[i])
            batches += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        batches = [b for b in batches if len(b) == self.batch_size]  # drop_last, as the plain loader
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle differently (and reproducibly) each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size


class RankBatches(Sampler[list[int]]):
    """Rank `rank`'s slice of every global batch: with `world` ranks at `batch_size` b, the global batches are the
    batches of one process at batch size world x b, in the same order, and rank r gets positions [r*b, (r+1)*b) of
    each. So ``ddp=N, batch_size=b`` sees exactly the samples of ``ddp=1, batch_size=N*b``, step for step."""

    def __init__(self, global_batches: Sampler[list[int]], rank: int, world: int, batch_size: int) -> None:
        assert 0 <= rank < world, (rank, world)
        self.global_batches, self.rank, self.world, self.batch_size = global_batches, rank, world, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.rank * self.batch_size
        for batch in self.global_batches:
            assert len(batch) == self.world * self.batch_size, "global batches are full (drop_last)"
            yield list(batch[lo:lo + self.batch_size])

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the global batches (bucketing reshuffles per epoch)."""
        if hasattr(self.global_batches, "set_epoch"):
            self.global_batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.global_batches)  # type: ignore[arg-type]


def effective_workers(cfg: RunConfig) -> int:
    """Worker count actually used: capped at the machine's cores (a warning says so)."""
    return min(cfg.num_workers, os.cpu_count() or 1)


def make_loader(dataset: Dataset, cfg: RunConfig, workload: Workload, device: torch.device, *,
                rank: int = 0, world: int = 1) -> DataLoader:
    """The training loader for a config; with `world` > 1 ranks, rank `rank`'s slice of each global batch
    (`RankBatches`)."""
    workers = effective_workers(cfg)
    collate = workload.collate(cfg)
    common = dict(num_workers=workers, collate_fn=collate, pin_memory=cfg.pin_memory and device.type == "cuda")
    if workers > 0:
        common.update(persistent_workers=cfg.persistent_workers, prefetch_factor=cfg.prefetch_factor)
    global_batch = cfg.batch_size * world
    if len(dataset) < global_batch:  # type: ignore[arg-type]
        per_rank = f" x {world} ranks" if world > 1 else ""
        raise ValueError(f"knob 'batch_size': bad value {cfg.batch_size}{per_rank}: the train split has only "
                         f"{len(dataset)} samples; use batch_size <= {len(dataset) // world}")  # type: ignore[arg-type]
    if cfg.bucket_by_length:
        lengths = workload.sample_lengths(dataset, cfg)
        if lengths is None:
            raise ValueError(f"knob 'bucket_by_length': workload '{workload.name}' has no per-sample lengths; "
                             "set bucket_by_length=false")
        batches: Sampler[list[int]] = BucketBatchSampler(lengths, global_batch, cfg.seed)
        if world > 1:
            batches = RankBatches(batches, rank, world, cfg.batch_size)
        return DataLoader(dataset, batch_sampler=batches, **common)
    # The shuffle owns its generator: the DataLoader draws worker seeds from *its* generator each time
    # an iterator starts (every epoch, or once with persistent workers), which must not move the order.
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(cfg.seed))
    loader_seed = torch.Generator().manual_seed(cfg.seed + 1)
    if world > 1:
        batches = RankBatches(BatchSampler(sampler, global_batch, drop_last=True), rank, world, cfg.batch_size)
        return DataLoader(dataset, batch_sampler=batches, generator=loader_seed, **common)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, generator=loader_seed,
                      **common)


def batches_forever(loader: Iterable[Any]) -> Iterator[tuple[int, object]]:
    """(epoch, batch) pairs, starting a new epoch whenever the loader is exhausted.

    A dataset (or batch sampler) with ``set_epoch(epoch)`` is told each epoch before it is read,
    e.g. for a curriculum; it must make the change visible to persistent workers itself.
    """
    epoch = 0
    while True:
        for part in (getattr(loader, "dataset", None), getattr(loader, "batch_sampler", None)):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield epoch, batch
        assert not empty, "the train loader produced no batch"
        epoch += 1

"""Samplers: seeded training order (`SeededSampler`) and size-grouped evaluation batches
(`SizeGroupedBatchSampler`, `BatchSamplerLoader`), both correct under DDP."""

import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import islice

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SeededSampler(DistributedSampler):
    """Random order and per-item augmentation seeds derived from (seed, epoch, index) alone.

    Yields (index, augmentation seed) pairs; `SegmentationDataset` seeds its random transforms with the
    second element. The data order and every crop, scale and flip are then the same whatever the number
    of loader workers, and a run resumed at epoch e (Lightning calls `set_epoch`) replays epoch e exactly.
    With `num_samples` > dataset size (the cycling unlabeled stream) fresh permutations follow each other;
    the permutation's number joins the seed so a repeated image gets a new augmentation.
    Under DDP each process takes every world-size-th item of the one global sequence. (A DistributedSampler
    subclass only so that Lightning does not wrap it: it shards itself and needs none of the parent's setup.)
    With `passes` > 1 an epoch chains that many one-pass epochs: pass p of epoch e is drawn exactly as epoch
    e * passes + p of a one-pass sampler, and each process's share of a pass is cut to whole batches of
    `batch_size` as a loader's `drop_last` cuts an epoch. The batches are then those of `passes` one-pass
    epochs, but the loader does not restart between them (a tiny labeled set otherwise restarts it every
    few batches: one batch's loading waited for, each time). What counts epochs or a batch's index within
    its epoch then counts differently: validation and epoch-end checkpoints, `d_every_n_batches` and
    `g_every_n_batches` (where a pass is not a multiple of N batches), and a resume from inside an epoch,
    which replays the epoch's loader from its start (up to `passes` passes, not one). A loader without
    persistent workers draws a seed from torch's generator at each epoch's start (with 0 workers too), so
    fewer epochs also shift the model's own random draws; with persistent workers they do not.

    Args:
        size: dataset length.
        num_samples: indices per pass over all processes (default: `size`).
        seed: base seed (the run's `seed_everything` value).
        stream: tells apart samplers of one run (labeled 0, unlabeled 1).
        passes: one-pass epochs per epoch, >= 1.
        batch_size: each process's share of a pass is cut to a multiple of it (1: not cut).
    """

    def __init__(self, size: int, num_samples: int | None = None, seed: int = 0, stream: int = 0,
                 passes: int = 1, batch_size: int = 1):  # fmt: skip
        self.size, self.num_samples = size, size if num_samples is None else num_samples
        self.seed, self.stream, self.epoch = seed, stream, 0
        self.passes, self.batch_size = passes, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        share = self.num_samples // world()[1]  # this process's items of one pass
        return self.passes * (share - share % self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_pass = len(self) // self.passes
        for one_pass in range(self.passes):
            yield from islice(self._pass(self.epoch * self.passes + one_pass), per_pass)

    def _pass(self, epoch: int) -> Iterator[tuple[int, int]]:
        rank, world_size = world()
        key = [self.seed, self.stream, epoch]
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        for position in range(self.num_samples // world_size * world_size):
            round_, place = divmod(position, self.size)
            if place == 0:
                order = torch.randperm(self.size, generator=generator).tolist()
            if position % world_size == rank:
                index = order[place]
                augment_seed = int(np.random.SeedSequence([*key, index, round_]).generate_state(1)[0])
                yield index, augment_seed


class SizeGroupedBatchSampler(BatchSampler):
    """Batches of up to `batch_size` indices whose images have one size, from the indices `sampler` yields.

    Evaluation runs on whole images, and images of different sizes cannot be stacked into one batch.
    Each index goes into the bucket of its size; a bucket is yielded as soon as it is full, and the
    partial buckets left at the end follow, ordered by their first index. So every index the sampler
    yields is in exactly one batch, and a dataset of one size is batched exactly as by a `BatchSampler`.
    Under DDP give it the process's shard (`UnrepeatedDistributedSampler`): grouping is within the shard.

    Args:
        sampler: the indices, e.g. `SequentialSampler` or `UnrepeatedDistributedSampler`.
        batch_size: most indices per batch, >= 1.
        drop_last: drop the partial buckets at the end (keep False in evaluation: every image counts).
        sizes: sizes[index] is the (height, width) of the dataset's image `index`, for every index.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool = False,
        sizes: Sequence[tuple[int, int]] = (),
    ):
        super().__init__(sampler, batch_size, drop_last)
        self.sizes = [tuple(size) for size in sizes]

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[tuple[int, int], list[int]] = {}
        for index in self.sampler:
            size = self.sizes[index]
            bucket = buckets.setdefault(size, [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield buckets.pop(size)
        if not self.drop_last:
            yield from sorted(buckets.values())

    def __len__(self) -> int:
        counts = Counter(self.sizes[index] for index in self.sampler).values()
        if self.drop_last:
            return sum(count // self.batch_size for count in counts)
        return sum(math.ceil(count / self.batch_size) for count in counts)


class BatchSamplerLoader(DataLoader):
    """A DataLoader built from a batch sampler, whose `sampler` attribute is the batch sampler's sampler.

    Lightning decides from `loader.sampler` whether to inject a DistributedSampler under DDP. A plain
    DataLoader built from a batch sampler reports there a default SequentialSampler that it never uses,
    so Lightning would put into the batch sampler a DistributedSampler that pads the last shard with
    repeated images (counted twice in the confusion matrix). Reporting the sampler actually used (an
    `UnrepeatedDistributedSampler` under DDP) keeps every image on exactly one process.
    """

    @property
    def sampler(self) -> Sampler:
        return self.batch_sampler.sampler

    @sampler.setter
    def sampler(self, value: Sampler) -> None:
        pass  # DataLoader.__init__ assigns its unused default sampler here


def run_seed() -> int:
    """The run's seed: Lightning's seed_everything value, else torch's initial seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

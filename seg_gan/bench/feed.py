"""What feeds the timed training step of the speed benchmarks (`gpu`, `step`): in-memory random batches, or
the Cityscapes data module's real loader over a few frames on disk, with its warm-up prefetch dropped."""

import torch
from torch.utils.data import DataLoader, Dataset

from seg_gan.data.cityscapes import CityscapesDataModule


class RandomBatches(Dataset):
    """`length` items of one random image [3, H, W] and mask [H, W] (no loading cost: the step alone)."""

    def __init__(self, length: int, crop: tuple[int, int], num_classes: int = 19):
        generator = torch.Generator().manual_seed(0)
        self.image = torch.randn(3, *crop, generator=generator)
        self.mask = torch.randint(0, num_classes, tuple(crop), generator=generator)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"image": self.image, "mask": self.mask}


class RepeatedCityscapes(CityscapesDataModule):
    """The Cityscapes data module with its training frames listed `repeat` times, so that a few frames on disk
    give as many batches as a run needs (every item is still decoded, mapped, scaled, cropped and flipped)."""

    def __init__(self, root: str, repeat: int, **kwargs):
        super().__init__(root, **kwargs)
        self.repeat = repeat

    def find_samples(self, split: str) -> list:
        return super().find_samples(split) * (self.repeat if split == "train" else 1)


class Drained:
    """A training loader whose batches prefetched by the time batch `warmup` is asked for are dropped unused
    (`drop`: workers x prefetch factor), so that the timed window starts with an empty prefetch queue: a
    loader slower than the step cannot pass for a fast one on batches it made during warm-up (compilation)."""

    def __init__(self, loader: DataLoader, warmup: int, drop: int):
        self.loader, self.warmup, self.drop = loader, warmup, drop

    def __len__(self) -> int:
        return len(self.loader) - self.drop

    def __iter__(self):
        batches = iter(self.loader)
        for index in range(len(self)):
            if index == self.warmup:
                for _ in range(self.drop):
                    next(batches)
            yield next(batches)

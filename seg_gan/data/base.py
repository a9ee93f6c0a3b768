"""What every dataset shares: the item dict, label-id lookup, loaders and the labeled split.

A dataset is a list of `Sample`s (image path, label path or None, name, city). Items are dicts:
`image` float [3, H, W] ImageNet-normalised, `mask` int64 [H, W] of train ids (ignore_index = void),
`name` (file stem), `city` (folder; sequence for CamVid); unlabeled-stream items also carry their labels as
`hidden_mask` [H, W] (their `mask` is all void), read only to measure pseudo-labels, never trained on.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from seg_gan.data.io import check_labelled, check_pairs, image_size, label_size, read_image, read_label
from seg_gan.data.labels import describe_ids, unknown_ids
from seg_gan.data.samplers import BatchSamplerLoader, SeededSampler, SizeGroupedBatchSampler, run_seed, world
from seg_gan.data.splits import choose_labeled
from seg_gan.data.transforms import eval_transform, train_transform
from seg_gan.errors import UserError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Sample:
    image: Path
    label: Path | None
    name: str
    city: str
    hidden: Path | None = None  # an unlabeled image's label file: decoded for diagnostics, never trained on


class SegmentationDataset(Dataset):
    """Decodes a sample, maps label ids to train ids through `lookup`, applies the joint transform.

    `lookup` is a uint8 numpy table of 256 entries: lookup[label id] = train id or IGNORE_INDEX.
    `known` (bool numpy, 256) marks the ids the dataset defines; others become void, with a warning, or
    are refused (UserError naming the file, ids and pixel counts) with `refuse_unknown`. `read` decodes
    a label file to uint8 [H, W] ids (`read_label`; a `ColorLabels` for colour masks).
    """

    def __init__(self, samples: list[Sample], lookup: np.ndarray, known: np.ndarray, transform: v2.Transform,
                 read=read_label, refuse_unknown: bool = False):  # fmt: skip
        self.samples, self.lookup, self.known, self.unknown = samples, lookup, known, ~known
        self.transform, self.read, self.refuse_unknown = transform, read, refuse_unknown
        self._sizes: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every sample's image at its original size, from the file headers (read once)."""
        if self._sizes is None:
            self._sizes = [image_size(sample.image) for sample in self.samples]
        return self._sizes

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        # (index, augmentation seed) from SeededSampler in training; a plain index in evaluation
        index, augment_seed = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[index]
        image = tv_tensors.Image(read_image(sample.image))  # [3, H, W] uint8
        labels = sample.label or sample.hidden
        if labels is None:  # unlabeled image: an all-void mask keeps one item format
            mask = torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.uint8)
        else:
            ids = self.read(labels)  # [H, W] uint8 label ids
            # np.take with the uint8 ids as indices: half the time of bincount + fancy indexing on 2 MP frames
            unknown = int(np.count_nonzero(np.take(self.unknown, ids)))
            if unknown and self.refuse_unknown:  # a folder dataset's class list, typed by the user: refuse
                found = describe_ids(unknown_ids(ids, self.known))
                raise UserError(f"{labels} holds class ids beyond the class list: {found}; expected only the "
                                "dataset's class ids and its void index.")  # fmt: skip
            if unknown:
                warnings.warn(f"{labels}: {unknown} pixels have label ids outside the dataset's table; they are "
                              "treated as void (ignored).", stacklevel=2)  # fmt: skip
            mask = torch.from_numpy(np.take(self.lookup, ids))  # [H, W] uint8 train ids
        if augment_seed is None:
            image, mask = self.transform(image, tv_tensors.Mask(mask))
        else:  # the transforms draw from torch's global generator: seed it here, leave it as it was
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(augment_seed)
                image, mask = self.transform(image, tv_tensors.Mask(mask))
        mask = mask.as_subclass(torch.Tensor).long()
        item = {"image": image.as_subclass(torch.Tensor), "mask": mask, "name": sample.name, "city": sample.city}
        if sample.label is None and sample.hidden is not None:  # moved with the image, out of the training's reach
            item["mask"], item["hidden_mask"] = torch.full_like(mask, IGNORE_INDEX), mask
        return item


class SegmentationDataModule(pl.LightningDataModule):
    """Shared loaders and augmentation; subclasses list the files (`find_samples`) and the classes.

    Subclasses set `root`, `class_names`, `class_colors`, `lookup`, `known`, `default_crop_size`
    and implement `find_samples`; `label_reader`/`label_header` (colour masks), `refuse_unknown` and
    `label_image` (predictions in the dataset's own format) where they differ from the defaults.

    Args:
        batch_size: training batch size.
        eval_batch_size: batch size of validation, test and predict; whole images are batched with
            images of the same original size only (a batch may hold fewer).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster GPU copies.
        persistent_workers: keep workers alive between epochs.
        crop_size: training crop (height, width); scaled images smaller than it are padded (image 0,
            mask void). null = the dataset's default (Cityscapes 512x1024, CamVid 352x480).
        scale_range: random scale factor range applied before cropping.
        hflip: random horizontal flips in training.
        color_jitter: brightness/contrast/saturation jitter strength on training images (0 = off).
        eval_size: (height, width) the images are resized to for validation and test; null keeps the
            full resolution. Metrics are always computed at the labels' full resolution.
        labeled_fraction: share of training images whose labels are used, in (0, 1].
        labeled_list: text file of labeled image names, one per line (overrides labeled_fraction).
        split_seed: seed of the labeled subset draw.
        predict_dir: predict on every PNG/JPEG image under this folder (any size, no labels) instead of
            a dataset split; outputs mirror its subfolders.
        unlabeled_stream: also feed the training images outside the labeled subset, without labels,
            as a second stream for semi-supervised training (each batch is then a dict with
            "labeled" and "unlabeled"; the epoch has as many batches as the labeled loader).
        passes_per_epoch: passes over the labeled images per training epoch (>= 1): the loader restarts
            once per epoch, not every pass (a wait for loading every few batches with a small labeled set).
            The batches are those of one-pass epochs; epoch-counted settings count these epochs, and a
            resume from inside an epoch replays it from its start (`SeededSampler` says what else).
    """

    default_crop_size = (512, 1024)
    test_split = "val"  # subclasses take it as an argument
    predict_split = "val"

    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    label_ids: np.ndarray | None = None  # train id -> dataset label id, where they differ (Cityscapes)
    ignore_index = IGNORE_INDEX
    label_reader, label_header = staticmethod(read_label), staticmethod(label_size)  # label file -> ids / size
    refuse_unknown = False  # label ids outside the table: warn and void (False) or refuse (True)
    label_folder, label_suffix = "labelIds", "_labelIds.png"  # where predict writes `label_image`

    def __init__(
        self,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        crop_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        color_jitter: float = 0.0,
        eval_size: tuple[int, int] | None = None,
        labeled_fraction: float = 1.0,
        labeled_list: str | None = None,
        split_seed: int = 0,
        unlabeled_stream: bool = False,
        predict_dir: str | None = None,
        passes_per_epoch: int = 1,
    ):
        super().__init__()
        crop_size = self.default_crop_size if crop_size is None else crop_size
        if min(crop_size) <= 0:
            raise UserError(f"data.crop_size: {list(crop_size)} must be two positive integers (height, width).")
        if min(crop_size) < 32:
            raise UserError(f"data.crop_size: {list(crop_size)} is smaller than 32 pixels on a side; expected at "
                            "least 32x32 (the generator and discriminator downsample by 32).")  # fmt: skip
        if not 0 < scale_range[0] <= scale_range[1]:
            raise UserError(f"data.scale_range: {list(scale_range)} must be (low, high) with 0 < low <= high.")
        if eval_size is not None and min(eval_size) <= 0:
            raise UserError(f"data.eval_size: {list(eval_size)} must be two positive integers or null.")
        if not 0 < labeled_fraction <= 1:
            raise UserError(
                f"data.labeled_fraction: {labeled_fraction} is outside (0, 1]. Expected e.g. 0.125, 0.25, 0.5 or 1.0."
            )
        if passes_per_epoch < 1:
            raise UserError(f"data.passes_per_epoch: {passes_per_epoch} is below 1; expected a whole number >= 1.")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.crop_size, self.scale_range = tuple(crop_size), tuple(scale_range)
        self.hflip, self.color_jitter = hflip, color_jitter
        self.eval_size = None if eval_size is None else tuple(eval_size)
        self.labeled_fraction, self.labeled_list, self.split_seed = labeled_fraction, labeled_list, split_seed
        self.unlabeled_stream, self.passes_per_epoch = unlabeled_stream, passes_per_epoch
        self.predict_dir = None if predict_dir is None else Path(predict_dir).expanduser()
        self.labeled_names: list[str] = []
        self.unlabeled_samples: list[Sample] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def find_samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def samples(self, split: str) -> list[Sample]:
        """The split's samples, checked (non-empty, labels present, matching sizes)."""
        samples = self.find_samples(split)
        check_pairs(samples, f"split {split!r} of {self.root}", self.label_header)
        return samples

    def label_image(self, train_ids: np.ndarray) -> Image.Image | None:
        """A prediction (uint8 [H, W] train ids) in the dataset's own label format (Cityscapes: label ids),
        written by `predict` as <label_folder>/<split>/<city>/<name><label_suffix>; None: no such format."""
        return None if self.label_ids is None else Image.fromarray(self.label_ids[train_ids])

    def check_crop(self, samples: list[Sample]) -> None:
        height, width = image_size(samples[0].image)
        max_h, max_w = height * self.scale_range[1], width * self.scale_range[1]
        if self.crop_size[0] > max_h or self.crop_size[1] > max_w:
            raise UserError(
                f"data.crop_size: {list(self.crop_size)} is larger than the training images even at the largest "
                f"scale ({height}x{width} x {self.scale_range[1]} = {max_h:.0f}x{max_w:.0f}); expected a crop "
                "that fits, e.g. a smaller crop_size or a larger scale_range."
            )

    def dataset(self, samples: list[Sample], train: bool) -> SegmentationDataset:
        if train:
            transform = train_transform(self.crop_size, self.scale_range, self.hflip, self.color_jitter, IGNORE_INDEX)
        else:
            transform = eval_transform(self.eval_size)
        return SegmentationDataset(samples, self.lookup, self.known, transform, self.label_reader, self.refuse_unknown)

    def _labelled_set(self, samples: list[Sample], split: str, train: bool) -> SegmentationDataset:
        """The dataset of `samples`, refused (UserError) if none of its label files holds a class pixel."""
        where = f"split {split!r} of {self.root}" + (" (its labeled images)" if train else "")
        check_labelled(samples, self.lookup, IGNORE_INDEX, where, self.label_reader)
        return self.dataset(samples, train)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            train = self.samples("train")
            self.check_crop(train)
            self.labeled_names = choose_labeled(
                [s.name for s in train], self.labeled_fraction, self.labeled_list, self.split_seed
            )
            chosen = set(self.labeled_names)
            self.train_set = self._labelled_set([s for s in train if s.name in chosen], "train", train=True)
            # the unlabeled stream keeps its label files as `hidden_mask`, for the semi-supervised diagnostics only
            self.unlabeled_samples = [
                Sample(s.image, None, s.name, s.city, s.label) for s in train if s.name not in chosen
            ]
        if stage in ("fit", "validate"):
            self.val_set = self._labelled_set(self.samples("val"), "val", train=False)
        if stage == "test":
            self.test_set = self._labelled_set(self.samples(self.test_split), self.test_split, train=False)
        if stage == "predict":  # labels are not needed (Cityscapes' test labels are placeholders)
            if self.predict_dir is not None:
                samples, where = image_folder(self.predict_dir), f"data.predict_dir {str(self.predict_dir)!r}"
                self.predict_split = self.predict_dir.name
            else:
                samples = [Sample(s.image, None, s.name, s.city) for s in self.find_samples(self.predict_split)]
                where = f"split {self.predict_split!r} of {self.root}"
            check_pairs(samples, where)
            self.predict_set = self.dataset(samples, train=False)

    def state_dict(self) -> dict:
        """Stored in checkpoints: the labeled subset the run trained on, and its passes per epoch."""
        return {"labeled_names": list(self.labeled_names), "passes_per_epoch": self.passes_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("labeled_names") or []
        if saved and self.labeled_names and sorted(saved) != sorted(self.labeled_names):
            raise UserError(
                f"ckpt_path: the checkpoint was trained on another labeled subset ({len(saved)} images, e.g. "
                f"{sorted(set(saved) - set(self.labeled_names))[:3]} are not in this run's {len(self.labeled_names)}). "
                "Expected the same data.labeled_fraction, data.split_seed and data.labeled_list as the run being "
                "resumed, or data.labeled_list pointing at that run's labeled_split.txt."
            )
        saved_passes = state.get("passes_per_epoch", 1)  # checkpoints from before the option: one pass
        if self.labeled_names and saved_passes != self.passes_per_epoch:  # fitting (the names are set then)
            raise UserError(f"ckpt_path: the checkpoint's run drew {saved_passes} labeled passes per epoch, this one "
                            f"{self.passes_per_epoch}; expected the same data.passes_per_epoch (it sets the data "
                            "order a resumed epoch replays).")  # fmt: skip

    def _loader(self, dataset: Dataset, num_samples: int | None = None, stream: int = 0) -> DataLoader:
        """A training loader: a SeededSampler of `passes_per_epoch` passes, each cut to whole batches."""
        sampler = SeededSampler(len(dataset), num_samples, seed=run_seed(), stream=stream,
                                passes=self.passes_per_epoch, batch_size=self.batch_size)  # fmt: skip
        return DataLoader(dataset, self.batch_size, sampler=sampler, drop_last=True, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.persistent_workers)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            raise UserError(f"data.batch_size: {self.batch_size} is larger than the {len(self.train_set)} labeled "
                            "training images; expected a batch size no larger than that.")  # fmt: skip
        labeled = self._loader(self.train_set)
        if not self.unlabeled_stream:
            return labeled
        if not self.unlabeled_samples:
            raise UserError(f"data.unlabeled_stream: true, but every training image is labeled (labeled_fraction "
                            f"{self.labeled_fraction}); expected labeled_fraction < 1 or a labeled_list.")  # fmt: skip
        # The unlabeled stream cycles: a sampler drawing exactly one unlabeled batch per labeled batch
        # (fresh permutations when it runs out), so the labeled loader defines the epoch.
        draws = len(labeled) // self.passes_per_epoch * self.batch_size * world()[1]  # per pass, all processes
        unlabeled = self._loader(self.dataset(self.unlabeled_samples, train=True), draws, stream=1)
        return CombinedLoader({"labeled": labeled, "unlabeled": unlabeled}, mode="min_size")

    def _eval_loader(self, dataset: SegmentationDataset) -> DataLoader:
        """Whole images in batches of one original size (validation, test, predict), each image once.

        Under DDP, each image goes to exactly one process: Lightning's default DistributedSampler pads by
        repeating images, which would count them twice in the confusion matrix. Batches are then grouped
        by size within each process's shard.
        """
        if world()[1] > 1:
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        else:
            sampler = SequentialSampler(dataset)
        batches = SizeGroupedBatchSampler(sampler, self.eval_batch_size, sizes=dataset.image_sizes())
        return BatchSamplerLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.predict_set)


def image_folder(folder: Path) -> list[Sample]:
    """Every PNG/JPEG under `folder`, unlabeled; `city` is the subfolder, so outputs mirror it."""
    if not folder.is_dir():
        raise UserError(f"data.predict_dir: {str(folder)!r} is not a folder. Expected a folder of PNG or JPEG images.")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return [Sample(p, None, p.stem, str(p.parent.relative_to(folder))) for p in images]


def check_root(root: str | Path, required: list[str], expected: str) -> Path:
    """The dataset root as a Path; UserError naming what is missing."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root: {str(path)!r} does not exist or is not a folder. Expected {expected}.")
    missing = [name for name in required if not (path / name).is_dir()]
    if missing:
        raise UserError(f"data.root: {str(path)!r} has no {' or '.join(missing)} folder. Expected {expected}.")
    return path

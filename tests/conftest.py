"""Shared test helpers and fixtures: tiny datasets written into tmp dirs (Cityscapes, CamVid, VOC and folder layouts),
the CLI argument set the tests build on, small training helpers, and the check that the suite never
writes into the working tree. Nothing comes from the network."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from seg_gan import SegGAN
from seg_gan.cli import main
from seg_gan.data import CityscapesDataModule
from seg_gan.data.cityscapes import cityscapes_paths

# Cityscapes label ids of a few train classes: road, building, sky, car
ROAD, BUILDING, SKY, CAR = 7, 11, 23, 26


COLORS = {ROAD: (128, 64, 128), BUILDING: (70, 70, 70), SKY: (70, 130, 180), CAR: (0, 0, 142)}


def every_id_labels(height: int, width: int, offset: int = 0) -> np.ndarray:
    """Label ids 0..33 laid out by position, so every official id occurs in each image."""
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * width + cols + offset) % 34).astype(np.uint8)


def striped_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A trivially learnable scene: bands of sky/building/road with a car box; class = colour."""
    labels = np.full((height, width), ROAD, np.uint8)
    labels[: height // 3] = SKY
    labels[height // 3 : height // 2] = BUILDING
    top, left = rng.integers(height // 2, height - 6), rng.integers(0, width - 12)
    labels[top : top + 6, left : left + 12] = CAR
    image = np.zeros((height, width, 3), np.uint8)
    for label_id, color in COLORS.items():
        image[labels == label_id] = color
    noise = rng.normal(0, 8, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), labels


def write_cityscapes(root: Path, counts: dict[str, int], size=(32, 64), scene="striped", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for index in range(count):
            city = ["aachen", "bochum"][index % 2]
            if scene == "striped":
                image, labels = striped_scene(rng, *size)
            else:
                labels = every_id_labels(*size, offset=index)
                image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            image_path, label_path = cityscapes_paths(root, split, city, f"{city}_{index:06d}_000019")
            image_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_path)
            Image.fromarray(labels).save(label_path)
    return root


def write_camvid(root: Path, counts: dict[str, int], size=(36, 48), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            labels = every_id_labels(*size, offset=index) % 12  # 0..10 classes, 11 Unlabelled
            image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            name = f"0016E5_{index:05d}.png"
            Image.fromarray(image).save(root / split / name)
            Image.fromarray(labels.astype(np.uint8)).save(root / f"{split}annot" / name)
    return root


def voc_ids(height: int, width: int, offset: int = 0) -> np.ndarray:
    """VOC class ids 0..20 and 255 (void) laid out by position: every one occurs in each image."""
    rows, cols = np.mgrid[0:height, 0:width]
    ids = ((rows // 2 * width + cols + offset) % 22).astype(np.uint8)
    ids[ids == 21] = 255
    return ids


def write_voc(root: Path, train: int = 4, val: int = 2, aug: int = 0, size=(40, 48), seed=0) -> Path:
    """A tiny VOCdevkit/VOC2012: JPEG images, palette SegmentationClass PNGs, ImageSets lists; with `aug`
    > 0 also SegmentationClassAug (single-channel, for the train and aug images) and train_aug.txt."""
    from seg_gan.data.voc import VOC_PALETTE

    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] + ["SegmentationClassAug"] * bool(aug):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    splits = {"train": [f"2007_{i:06d}" for i in range(train)], "val": [f"2008_{i:06d}" for i in range(val)],
              "aug": [f"2009_{i:06d}" for i in range(aug)]}  # fmt: skip
    for index, name in enumerate(splits["train"] + splits["val"] + splits["aug"]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        ids = voc_ids(*size, offset=index)
        if not name.startswith("2009"):
            palette = Image.fromarray(ids, "P")
            palette.putpalette(VOC_PALETTE.ravel().tolist())
            palette.save(voc / "SegmentationClass" / f"{name}.png")
        if aug and not name.startswith("2008"):  # SBD-style labels: no void borders, other ids than VOC's
            Image.fromarray(np.where(ids == 255, 0, 20 - ids % 21).astype(np.uint8)).save(
                voc / "SegmentationClassAug" / f"{name}.png"
            )
    for split in ["train", "val"]:
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(splits[split]) + "\n")
    if aug:
        names = splits["train"] + splits["aug"]
        (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(names) + "\n")
    return root / "VOCdevkit"


def write_folder(root: Path, counts: dict[str, int], size=(32, 40), classes: int = 3, fmt: str = "L",
                 colors=None, void=255, mask_suffix=".png", image_ext=".jpg", seed=0) -> Path:  # fmt: skip
    """A folder dataset: images/<split>/<stem><image_ext>, masks/<split>/<stem><mask_suffix>. Masks hold
    class ids 0..classes-1 and `void` by position, as grayscale (L), palette (P) or colours (color)."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
            ids = ((rows // 4 + cols // 5 + index) % (classes + 1)).astype(np.uint8)
            ids[ids == classes] = void
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                root / "images" / split / f"img{index:03d}{image_ext}"
            )
            mask = root / "masks" / split / f"img{index:03d}{mask_suffix}"
            if fmt == "color":
                table = np.zeros((256, 3), np.uint8)
                table[: len(colors)] = colors
                Image.fromarray(table[ids]).save(mask)
            elif fmt == "P":
                image = Image.fromarray(ids, "P")
                image.putpalette(np.random.default_rng(1).integers(0, 255, 768).tolist())
                image.save(mask)
            else:
                Image.fromarray(ids).save(mask)
    return root


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """Anything that falls back to the synthetic cache writes into a tmp dir, never into ~/.cache."""
    monkeypatch.setenv("SEG_GAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    """Striped scenes (learnable), 8 train and 3 val images of 32x64."""
    return write_cityscapes(tmp_path / "cityscapes", {"train": 8, "val": 3})


@pytest.fixture
def every_id_root(tmp_path: Path) -> Path:
    """Random images whose labels hold every Cityscapes label id."""
    return write_cityscapes(tmp_path / "cityscapes_ids", {"train": 4, "val": 2}, scene="every_id")


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    return write_camvid(tmp_path / "camvid", {"train": 4, "val": 2})


REPO = Path(__file__).resolve().parents[1]


TESTS = Path(__file__).resolve().parent


def tiny_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data.class_path", "seg_gan.data.CityscapesDataModule", "--data.root", str(root),
        "--data.batch_size", "4", "--data.num_workers", "0", "--data.crop_size", "[32, 64]",
        "--data.scale_range", "[1.0, 1.0]",
        "--model.arch", "Unet", "--trainer.default_root_dir", str(out),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1", *extra,
    ]  # fmt: skip


def learning_args(root: Path, out: Path, *extra: str) -> list[str]:
    """`tiny_args` with Adam at lr 1e-3: a few steps move G enough for predictions to differ."""
    return tiny_args(root, out, "--model.g_optimizer", "adam", "--model.g_lr", "0.001", *extra)


def read_metrics(out: Path) -> list[dict]:
    (path,) = out.rglob("metrics.csv")
    return list(csv.DictReader(path.open()))


def fails_with(capsys, args: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert re.search(expected, capsys.readouterr().err), expected


@pytest.fixture
def trained(cityscapes_root, tmp_path) -> Path:
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "2")])
    return next((tmp_path / "fit").rglob("last.ckpt"))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[name], after[name]) for name in before)


def fit_one_batch(model: SegGAN, root, max_steps: int = 1, logger=False, **data_args) -> pl.Trainer:
    settings = {"batch_size": 2, "num_workers": 0, "crop_size": (32, 64), "scale_range": (1, 1)} | data_args
    data = CityscapesDataModule(str(root), **settings)
    trainer = pl.Trainer(
        max_steps=max_steps,
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    return trainer


SEMI = {"labeled_fraction": 0.5, "unlabeled_stream": True}


def run_subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "seg_gan", *args], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


SIZES = [(64, 128), (90, 120), (64, 128), (50, 70)]


def mixed_cityscapes(root: Path, sizes: list[tuple[int, int]] = SIZES) -> Path:
    """Cityscapes layout with a small training split and validation images of the given sizes."""
    write_cityscapes(root, {"train": 4})
    rng = np.random.default_rng(1)
    for index, size in enumerate(sizes):
        image, labels = striped_scene(rng, *size)
        image_path, label_path = cityscapes_paths(root, "val", "aachen", f"aachen_{index:06d}_000019")
        image_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path)
        Image.fromarray(labels).save(label_path)
    return root


# ---- the suite never writes into the working tree -----------------------------------------------------------
TREE_KEY = pytest.StashKey[set]()


SCRATCH = {".git", "__pycache__", ".pytest_cache", ".ruff_cache"}  # caches Python and the tools keep


def tree_files() -> set[Path]:
    found = set()
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in SCRATCH and not d.endswith(".egg-info")]
        found.update(Path(folder, name).relative_to(REPO) for name in files)
    return found


def pytest_sessionstart(session):
    session.config.stash[TREE_KEY] = tree_files()


def pytest_sessionfinish(session, exitstatus):
    new = sorted(map(str, tree_files() - session.config.stash[TREE_KEY]))
    if new:  # a test wrote into the repository: fail the run, naming the files
        print(f"\nerror: the test run wrote {len(new)} files into the working tree: {new[:10]}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

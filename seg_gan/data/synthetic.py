"""The embedded default: procedurally drawn street scenes written in the Cityscapes layout (in `prepare_data`).

Each scene has sky, buildings with windows, trees, a road with lane marks, sidewalks, cars, poles
and people, drawn as textured shapes with noise, with a layout drawn from a seeded generator, and
sometimes an ego-vehicle strip (a void class). Labels are real Cityscapes label ids, so the default
run exercises exactly the Cityscapes loading code.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from seg_gan.data.cityscapes import CityscapesDataModule, cityscapes_paths

# Cityscapes label ids (cityscapesscripts.helpers.labels)
EGO_VEHICLE, ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR = 1, 7, 8, 11, 17, 21, 23, 24, 26
CITIES = {"train": "synthtown", "val": "synthcity", "test": "synthville"}


def default_cache() -> Path:
    return Path(os.environ.get("SEG_GAN_CACHE", Path.home() / ".cache" / "seg_gan"))


def draw_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 [H, W, 3], Cityscapes label ids uint8 [H, W])."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.float32)
    labels = np.zeros((height, width), np.uint8)

    def paint(region: np.ndarray, label: int, color, texture: float = 8.0) -> None:
        labels[region] = label
        shade = np.asarray(color, np.float32) + rng.normal(0, 12, 3)
        image[region] = shade + rng.normal(0, texture, (int(region.sum()), 1))

    horizon = int(height * rng.uniform(0.38, 0.52))
    sky_blue = rng.uniform(0.0, 1.0)
    paint(rows < horizon + 1, SKY, (110 + 60 * sky_blue, 150 + 40 * sky_blue, 210), texture=4)
    paint(rows >= horizon, SIDEWALK, (175, 150, 160), texture=10)
    # road: a trapezoid towards a vanishing point near the horizon
    vanish = width * rng.uniform(0.35, 0.65)
    half_bottom = width * rng.uniform(0.3, 0.45)
    depth = (rows - horizon) / max(1, height - horizon)
    road = (rows >= horizon) & (np.abs(cols - vanish) < 2 + half_bottom * depth * 1.6)
    paint(road, ROAD, (80, 70, 85), texture=6)
    marks = road & (np.abs(cols - vanish) < 1 + 2 * depth) & ((rows // 4) % 2 == 0) & (depth > 0.15)
    image[marks] = 220  # lane marks are still road
    # buildings along the horizon, with a grid of darker windows
    x = 0
    while x < width:
        w = int(rng.uniform(0.12, 0.3) * width)
        top = int(horizon * rng.uniform(0.1, 0.7))
        block = (rows >= top) & (rows < horizon) & (cols >= x) & (cols < x + w)
        paint(block, BUILDING, rng.choice([(120, 90, 70), (150, 140, 130), (100, 100, 110)]), texture=6)
        windows = block & ((rows - top) % 8 < 4) & ((cols - x) % 7 < 3) & (rows > top + 2)
        image[windows] *= 0.55
        x += w + int(rng.uniform(0, 0.12) * width)
    # trees: green blobs above the sidewalk
    for _ in range(rng.integers(0, 4)):
        cy, cx, r = horizon - rng.uniform(0, 0.2) * height, rng.uniform(0, width), rng.uniform(0.05, 0.12) * height
        crown = (rows - cy) ** 2 + ((cols - cx) / 1.3) ** 2 < r**2
        paint(crown, VEGETATION, (60, 130, 50), texture=20)
    # poles: thin grey verticals standing on the sidewalk
    for _ in range(rng.integers(1, 4)):
        px, base = rng.uniform(0, width), horizon + rng.uniform(0.05, 0.3) * (height - horizon)
        pole = (np.abs(cols - px) < max(1.0, width / 160)) & (rows < base) & (rows > base - 0.45 * height)
        paint(pole, POLE, (140, 140, 135), texture=3)
    # cars: boxes with dark wheels on the road
    for _ in range(rng.integers(1, 4)):
        bottom = horizon + rng.uniform(0.25, 0.95) * (height - horizon)
        size = 0.1 + 0.25 * (bottom - horizon) / (height - horizon)
        cx = vanish + rng.uniform(-0.8, 0.8) * half_bottom * (bottom - horizon) / (height - horizon)
        cw, ch = size * width * 0.6, size * height * 0.5
        car = (np.abs(cols - cx) < cw / 2) & (rows < bottom) & (rows > bottom - ch)
        paint(car, CAR, rng.uniform(20, 230, 3), texture=5)
        wheels = car & (rows > bottom - ch * 0.25) & (np.abs(np.abs(cols - cx) - cw * 0.3) < cw * 0.1)
        image[wheels] = 20
    # people: a head and a body on the sidewalk
    for _ in range(rng.integers(0, 4)):
        feet = horizon + rng.uniform(0.1, 0.6) * (height - horizon)
        px, tall = rng.uniform(0, width), (0.15 + 0.2 * (feet - horizon) / (height - horizon)) * height
        body = (np.abs(cols - px) < tall * 0.14) & (rows < feet) & (rows > feet - tall * 0.8)
        head = (rows - (feet - tall * 0.88)) ** 2 + (cols - px) ** 2 < (tall * 0.1) ** 2
        paint(body | head, PERSON, rng.choice([(200, 50, 50), (40, 40, 160), (220, 190, 60)]), texture=8)
    if rng.random() < 0.3:  # ego vehicle bonnet: void in Cityscapes
        paint(rows > height * 0.93, EGO_VEHICLE, (30, 30, 30), texture=2)
    image += rng.normal(0, 6, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_synthetic_cityscapes(root: Path, image_size: tuple[int, int], counts: dict[str, int], seed: int) -> Path:
    """Write the scenes under `root` in the Cityscapes layout (atomically: temp folder, then rename)."""
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        total = sum(counts.values())
        with tqdm(total=total, desc=f"Drawing synthetic scenes into {root}", unit="img") as progress:
            for split_index, (split, count) in enumerate(counts.items()):
                rng = np.random.default_rng([seed, split_index])
                city = CITIES[split]
                for index in range(count):
                    image, labels = draw_scene(rng, *image_size)
                    image_path, label_path = cityscapes_paths(staging, split, city, f"{city}_{index:06d}_000019")
                    image_path.parent.mkdir(parents=True, exist_ok=True)
                    label_path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(image_path)
                    Image.fromarray(labels).save(label_path)
                    progress.update()
        os.replace(staging, root)  # another process may have won the race: then keep theirs
    except OSError:
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


class SyntheticCityscapesDataModule(CityscapesDataModule):
    """Procedurally drawn street scenes in the Cityscapes layout; drawn once, then cached.

    Args:
        root: where the scenes are written; null = `$SEG_GAN_CACHE` (default ~/.cache/seg_gan)
            /synthetic-<H>x<W>-<train>-<val>-seed<seed>.
        image_size: (height, width) of the drawn scenes.
        num_train: number of training scenes.
        num_val: number of validation scenes.
        seed: seed of the scene layouts.
        **kwargs: loader, augmentation and split settings of `SegmentationDataModule`.
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: tuple[int, int] = (128, 256),
        num_train: int = 300,
        num_val: int = 50,
        seed: int = 0,
        **kwargs,
    ):
        height, width = image_size
        if root is None:
            root = default_cache() / f"synthetic-{height}x{width}-{num_train}-{num_val}-seed{seed}"
        self.scenes = ((height, width), {"train": num_train, "val": num_val}, seed)
        self.default_crop_size = (height, width)
        super().__init__(root=str(root), **kwargs)

    def locate(self, root: str) -> Path:
        return Path(root).expanduser()  # drawn by prepare_data, checked in setup

    def prepare_data(self) -> None:
        """Draw the scenes if they are not there yet: once per node (Lightning calls this on one process;
        the others wait), atomically, so concurrent runs sharing the cache never see half a dataset."""
        write_synthetic_cityscapes(self.root, *self.scenes)

    def setup(self, stage: str) -> None:
        if not self.root.is_dir():  # used outside a Trainer (notebooks, benchmarks): nothing drew them yet
            self.prepare_data()
        super().setup(stage)

"""Labeled subsets for semi-supervised training: drawn once with a seed, identical everywhere; and the
list files that name images (split lists, labeled lists) in the formats reference codebases publish."""

import random
from pathlib import Path

from seg_gan.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_names(path: Path) -> list[str]:
    """The image names a list file gives, in its order: per non-empty line, the first whitespace-separated
    field, without folders and without an image extension (.jpg, .jpeg, .png).

    So every common layout reads the same: plain stems (VOC `ImageSets/Segmentation/train.txt`,
    AdvSemiSeg's `voc_list/train_aug.txt`: `2007_000032`), image and label paths (DeepLab-ResNet's
    `/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`, UniMatch's
    `splits/pascal/92/labeled.txt`: `JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png`).
    """
    names = []
    for line in Path(path).read_text().splitlines():
        if line.split():
            name = line.split()[0].replace("\\", "/").rsplit("/", 1)[-1]
            names.append(name[: -len(ext)] if (ext := Path(name).suffix).lower() in IMAGE_EXTENSIONS else name)
    return names


def choose_labeled(
    names: list[str], fraction: float = 1.0, labeled_list: str | None = None, seed: int = 0
) -> list[str]:
    """Names of the labeled training images, sorted.

    With `labeled_list` (a text file, one image name per line, read by `read_names`) that list is used as
    it is; otherwise round(fraction * N) names are drawn from the sorted names with `random.Random(seed)`, which gives
    the same subset for the same names and seed on any machine and Python version.
    """
    if labeled_list is not None:
        path = Path(labeled_list)
        if not path.is_file():
            raise UserError(f"data.labeled_list: {labeled_list!r} is not a file. Expected a text file of image names.")
        chosen = read_names(path)
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise UserError(
                f"data.labeled_list: {labeled_list!r} names {len(unknown)} images that are not in the "
                f"training split (e.g. {unknown[:3]}). Expected names like {sorted(names)[:2]}."
            )
        return sorted(set(chosen))
    if not 0 < fraction <= 1:
        raise UserError(f"data.labeled_fraction: {fraction} is outside (0, 1]. Expected e.g. 0.125, 0.25, 0.5 or 1.0.")
    ordered = sorted(names)
    count = max(1, round(fraction * len(ordered)))
    return sorted(random.Random(seed).sample(ordered, count))


def choose_balanced(
    presence: dict[str, set[int]],
    groups: dict[str, str],
    count: int,
    classes: int,
    seed: int = 0,
    min_frames: int = 2,
    max_tries: int = 100_000,
) -> tuple[list[str], int]:
    """A labeled subset in which every class occurs, spread over the groups: seeded draws of `count` names,
    stratified by group (each group gets its share of `count`, at least one), until every class occurs
    in at least `min_frames` of the drawn images. The same inputs give the same subset on any machine.

    Args:
        presence: name -> the class ids present in its label file.
        groups: name -> its group (CamVid: the video sequence).
        count: names to draw.
        classes: number of classes (ids 0..classes-1) that must each occur `min_frames` times.
        seed: seed of `random.Random`.
        min_frames: images each class must occur in.
        max_tries: draws before giving up.

    Returns:
        (sorted names, the number of the draw that satisfied the condition, from 1).

    Raises:
        UserError: no draw within `max_tries` satisfies the condition (too few names for the classes).
    """
    rng = random.Random(seed)
    by_group: dict[str, list[str]] = {}
    for name in sorted(presence):
        by_group.setdefault(groups[name], []).append(name)
    total = len(presence)
    shares = {g: max(1, round(count * len(names) / total)) for g, names in sorted(by_group.items())}
    largest = max(shares, key=lambda g: len(by_group[g]))
    shares[largest] += count - sum(shares.values())  # rounding: the largest group absorbs the difference
    for attempt in range(1, max_tries + 1):
        chosen = [name for g in sorted(by_group) for name in rng.sample(by_group[g], shares[g])]
        frames = [sum(c in presence[name] for name in chosen) for c in range(classes)]
        if min(frames) >= min_frames:
            return sorted(chosen), attempt
    raise UserError(
        f"no draw of {count} images in {max_tries} tries has every one of the {classes} classes in at least "
        f"{min_frames} images; expected a larger count or a smaller min_frames."
    )

"""Labeled subsets for semi-supervised training: drawn once with a seed, identical everywhere."""

import random
from pathlib import Path

from seg_gan.errors import UserError


def choose_labeled(
    names: list[str], fraction: float = 1.0, labeled_list: str | None = None, seed: int = 0
) -> list[str]:
    """Names of the labeled training images, sorted.

    With `labeled_list` (a text file, one image name per line) that list is used as it is; otherwise
    round(fraction * N) names are drawn from the sorted names with `random.Random(seed)`, which gives
    the same subset for the same names and seed on any machine and Python version.
    """
    if labeled_list is not None:
        path = Path(labeled_list)
        if not path.is_file():
            raise UserError(f"data.labeled_list: {labeled_list!r} is not a file. Expected a text file of image names.")
        chosen = [line.strip() for line in path.read_text().splitlines() if line.strip()]
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

"""Where a run writes: its own folder, never another run's.

Layout: <runs root>/<run>/ holds config.yaml, labeled_split.txt and checkpoints/. The runs root is the
first logger's <save_dir>/<name> (W&B: <save_dir>/<project>, so runs/seg_gan/<run id>; CSV:
<save_dir>/<name>/version_N), or <default_root_dir>/runs without a logger (runs/version_N).
"""

import weakref
from pathlib import Path

import lightning.pytorch as pl


def runs_root(trainer: pl.Trainer) -> Path:
    """The folder that holds this project's run folders: <save_dir>/<name> of the first logger (W&B:
    <save_dir>/<project>), or <default_root_dir>/runs without a logger."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
    return Path(trainer.default_root_dir) / "runs"


_RUN_DIRS: "weakref.WeakKeyDictionary[pl.Trainer, Path]" = weakref.WeakKeyDictionary()


def run_dir(trainer: pl.Trainer) -> Path:
    """This run's own folder, chosen once per Trainer: <runs_root>/<logger version> (W&B: the run id;
    CSV/TensorBoard: version_N), or a new <default_root_dir>/runs/version_N without a logger, so no run
    ever writes into another's folder. Call it from a hook that runs on every process (setup): rank 0
    chooses and the others receive its choice."""
    if trainer in _RUN_DIRS:
        return _RUN_DIRS[trainer]
    folder = None
    if trainer.loggers:
        version = trainer.loggers[0].version
        folder = runs_root(trainer) / (version if isinstance(version, str) else f"version_{version}")
    elif trainer.is_global_zero:
        folder = new_version_folder(runs_root(trainer))
    folder = trainer.strategy.broadcast(folder)
    _RUN_DIRS[trainer] = folder
    return folder


def new_version_folder(parent: Path) -> Path:
    """Creates and returns parent/version_N for the first N not taken (mkdir is atomic: two runs
    started at once get different folders)."""
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in parent.glob("version_*") if p.name[8:].isdigit()]
    number = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{number}").mkdir()
            return parent / f"version_{number}"
        except FileExistsError:
            number += 1


def fresh_path(folder: Path, name: str) -> Path:
    """folder/name, or folder/<stem>_2<suffix>, _3, ... if taken: a run record is never overwritten
    (a resumed W&B run or a fixed logger version can point two runs at one folder)."""
    path, number = folder / name, 1
    while path.exists():
        number += 1
        path = folder / f"{Path(name).stem}_{number}{Path(name).suffix}"
    return path

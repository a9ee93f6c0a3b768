"""W&B offline: run a short fit, then read the run file W&B really wrote (no mocks)."""

import json
import os
import shutil
import statistics
from pathlib import Path

import pytest
from wandb_reader import read_finished_records, run_contents

from seg_gan.cli import main


def wandb_args(root: Path, out: Path) -> list[str]:
    return [
        "fit", "--data.class_path", "seg_gan.data.CityscapesDataModule", "--data.root", str(root),
        "--data.batch_size", "4", "--data.num_workers", "0", "--data.crop_size", "[32, 64]",
        "--data.scale_range", "[1.0, 1.0]", "--model.arch", "Unet", "--trainer.max_epochs", "2",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), "--trainer.logger.save_dir", str(out / "runs"),
        "--trainer.logger.group", "tests", "--trainer.logger.tags", "[a, b]",
    ]  # fmt: skip


@pytest.mark.slow
def test_offline_run_records_config_history_summary_and_media(cityscapes_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    main(wandb_args(cityscapes_root, out))
    (run_file,) = (out / "runs" / "wandb").glob("offline-run-*/run-*.wandb")
    contents = run_contents(run_file)
    config = contents["config"]
    assert config["model"]["lambda_adv"] == 0.01 and config["model"]["discriminator"] == "fcn"
    assert config["data"]["class_path"] == "seg_gan.data.CityscapesDataModule"
    assert config["data"]["init_args"]["split_seed"] == 0
    assert config["data"]["init_args"]["root"] == str(cityscapes_root)
    keys = set().union(*contents["history"])
    metrics = ["val/mIoU", "train/loss_g", "train/loss_ce", "train/loss_d", "train/d_real", "train/d_fake",
               "train/grad_norm_g", "train/grad_norm_d", "val/IoU/road"]  # fmt: skip
    # media are stored as nested values: the IoU table, images with masks, the confusion-matrix plot
    media = ["val/IoU_table/_type", "val/examples/_type", "val/examples/all_masks", "val/confusion_matrix/_type"]
    for key in metrics + media:
        assert key in keys, key
    mious = [row["val/mIoU"] for row in contents["history"] if "val/mIoU" in row]
    assert len(mious) == 2
    assert contents["summary"]["val/mIoU"] == {"max": max(mious)}
    # each validation's IoU table is that validation's, not the one before
    tables = [row["val/IoU_table/path"] for row in contents["history"] if "val/IoU_table/path" in row]
    assert len(tables) == len(mious)
    for path, miou in zip(tables, mious, strict=True):
        rows = json.loads((run_file.parent / "files" / path).read_text())["data"]
        assert statistics.mean(iou for _, iou in rows if iou is not None) == pytest.approx(miou, abs=1e-6)
    examples = next(row for row in contents["history"] if "val/examples/count" in row)
    assert examples["val/examples/count"] == 2 * 3  # 3 val images, each with D's confidence map
    assert examples["val/IoU_table/_type"] == "table-file"
    run_dir = next((out / "runs" / "seg_gan").iterdir())
    assert (run_dir / "config.yaml").is_file() and (run_dir / "labeled_split.txt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()

    main(wandb_args(cityscapes_root, out))  # a second run in the same folder: no clash
    assert len(list((out / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))) == 2
    assert len(list((out / "runs" / "seg_gan").glob("*/config.yaml"))) == 2


@pytest.mark.slow  # ~10 s each; writes two checkpoints and W&B's staged copies of them (removed at the end)
@pytest.mark.parametrize(
    "extra, note",
    [
        (["--trainer.logger.log_model", "true"], "offline (no W&B API key found); log_model=True keeps"),
        (
            ["--trainer.logger.mode", "offline", "--trainer.logger.log_model", "all"],
            "(mode 'offline'); log_model='all'",
        ),
        (["--trainer.logger.mode", "disabled", "--trainer.logger.log_model", "true"], "log_model=True is ignored"),
    ],
)
def test_log_model_without_an_api_key(cityscapes_root, tmp_path, monkeypatch, recwarn, extra, note):
    # Lightning refuses log_model with offline=True, yet offline W&B runs keep artifacts until `wandb sync`
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # W&B's artifact staging folder
    out = tmp_path / "out"
    args = wandb_args(cityscapes_root, out)
    args[args.index("--trainer.max_epochs") + 1] = "1"
    main(args + extra + ["--model.encoder_name", "mobilenet_v2"])  # small checkpoints: ~4x less to copy
    notes = [str(w.message) for w in recwarn if "log_model=" in str(w.message)]
    assert "WANDB_MODE" not in os.environ  # nothing set for the rest of the process (Lightning's offline=True does)
    (checkpoints,) = (out / "runs" / "seg_gan").glob("*/checkpoints")
    assert {p.name for p in checkpoints.iterdir()} == {"best.ckpt", "last.ckpt"}
    run_files = list((out / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(notes) == 1 and note in notes[0], notes  # one warning for the whole run
    if "disabled" in extra:  # nothing recorded, nothing staged
        assert not run_files and not (tmp_path / "wandb-data").exists()
        return
    (run_file,) = run_files
    records = read_finished_records(run_file)
    assert records[-1].WhichOneof("record_type") == "exit"  # the run finished
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    artifacts = [a for a in artifacts if a.type == "model"]  # the others are the IoU tables
    assert artifacts
    assert any("best" in a.aliases for a in artifacts)
    staged = [Path(e.local_path) for a in artifacts for e in a.manifest.contents]
    sizes = {p.stat().st_size for p in checkpoints.iterdir()}
    for path in staged:  # the copies `wandb sync` uploads, in WANDB_DATA_DIR
        assert path.is_relative_to(tmp_path / "wandb-data" / "artifacts" / "staging") and path.stat().st_size in sizes
    shutil.rmtree(tmp_path)  # hundreds of MB: do not keep them among pytest's retained tmp folders

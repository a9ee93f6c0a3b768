"""The CLI as users run it: in-process through main([...]) and as a real subprocess."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seg_gan.cli import main

REPO = Path(__file__).resolve().parents[1]


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


def read_metrics(out: Path) -> list[dict]:
    (path,) = out.rglob("metrics.csv")
    return list(csv.DictReader(path.open()))


def test_fit_then_validate_in_process(cityscapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    main(["fit", *tiny_args(cityscapes_root, out, "--trainer.max_epochs", "2")])
    printed = capsys.readouterr().out
    assert "Per-class IoU (val, epoch 1)" in printed and "mIoU " in printed
    checkpoints = {p.name for p in out.rglob("*.ckpt")}
    assert {"best.ckpt", "last.ckpt"} <= checkpoints
    rows = read_metrics(out)
    keys = set().union(*rows)
    for key in [
        "train/loss_ce",
        "train/loss_adv",
        "train/loss_d",
        "train/d_real",
        "train/d_fake",
        "val/mIoU",
        "val/pixel_acc",
        "val/IoU/road",
        "val/IoU/sky",
    ]:
        assert key in keys, key
    assert (next(out.rglob("labeled_split.txt")).read_text().split()) == sorted(
        p.name.removesuffix("_leftImg8bit.png") for p in (cityscapes_root / "leftImg8bit" / "train").rglob("*.png")
    )
    best = next(out.rglob("best.ckpt"))
    state = torch.load(best, map_location="cpu", weights_only=False)
    assert len(state["optimizer_states"]) == 2  # G and D
    main(["validate", *tiny_args(cityscapes_root, tmp_path / "val"), "--ckpt_path", str(best)])
    assert "Per-class IoU (val, epoch" in capsys.readouterr().out
    main(["test", *tiny_args(cityscapes_root, tmp_path / "test"), "--ckpt_path", str(best)])
    assert "Per-class IoU (test, epoch" in capsys.readouterr().out
    (label,) = list((cityscapes_root / "gtFine" / "val").rglob("*_labelIds.png"))[:1]
    label.unlink()  # predict needs no labels
    predictions = tmp_path / "predictions"
    main(["predict", *tiny_args(cityscapes_root, tmp_path / "predict"), "--ckpt_path", str(best),
          "--writer.output_dir", str(predictions)])  # fmt: skip
    images = list((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))
    assert len(list((predictions / "trainIds").rglob("*_trainIds.png"))) == len(images) > 0


def test_supervised_baseline_and_custom_discriminator_from_the_cli(cityscapes_root, tmp_path, capsys):
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "sup", "--trainer.max_steps", "2", "--model.lambda_adv", "0")])
    keys = set().union(*read_metrics(tmp_path / "sup"))
    assert "train/loss_ce" in keys and "train/loss_d" not in keys
    main(
        [
            "fit",
            *tiny_args(
                cityscapes_root,
                tmp_path / "custom",
                "--trainer.max_steps",
                "2",
                "--model.discriminator",
                "custom_parts.TinyDiscriminator",
                "--model.discriminator.width",
                "3",
            ),
        ]
    )
    state = torch.load(next((tmp_path / "custom").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert state["state_dict"]["discriminator.net.0.weight"].shape == (3, 19, 3, 3)


def test_runs_without_a_logger_get_their_own_folders(cityscapes_root, tmp_path):
    # two runs in one folder: neither overwrites the other's config, split or checkpoints
    for lambda_adv in ["0.01", "0"]:
        main(["fit", *tiny_args(cityscapes_root, tmp_path), "--trainer.logger", "false", "--trainer.max_steps", "2",
              "--model.lambda_adv", lambda_adv, "--data.labeled_fraction", "0.5"])  # fmt: skip
    runs = sorted((tmp_path / "runs").iterdir())
    assert [run.name for run in runs] == ["version_0", "version_1"]
    for run, lambda_adv in zip(runs, [0.01, 0.0], strict=True):
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["lambda_adv"] == lambda_adv
        assert len((run / "labeled_split.txt").read_text().split()) == 4
        state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert state["hyper_parameters"]["lambda_adv"] == lambda_adv
    assert not list(tmp_path.glob("*.yaml")) and not list(tmp_path.glob("*.txt"))


def test_checkpointing_can_be_switched_off(cityscapes_root, tmp_path):
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "run"), "--trainer.enable_checkpointing", "false",
          "--trainer.max_steps", "2"])  # fmt: skip
    assert not list((tmp_path / "run").rglob("*.ckpt")) and list((tmp_path / "run").rglob("metrics.csv"))


def test_sweep_definition_names_real_parameters():
    import yaml

    sweep = yaml.safe_load((REPO / "configs" / "sweeps" / "camvid_adversarial.yaml").read_text())
    assert sweep["metric"]["name"] == "val/mIoU" and sweep["program"] == "seg_gan"
    for name, spec in sweep["parameters"].items():
        for value in spec["values"]:  # every value must parse on top of the config the sweep uses
            with pytest.raises(SystemExit) as exit_info:
                main(["fit", "--config", str(REPO / "configs" / "camvid_semi.yaml"), f"--{name}", str(value),
                      "--print_config"])  # fmt: skip
            assert exit_info.value.code in (0, None)


def test_bf16_and_channels_last_fit(cityscapes_root, tmp_path):
    out = tmp_path / "bf16"
    extra = ["--trainer.max_steps", "4", "--trainer.precision", "bf16-mixed", "--model.channels_last", "true"]
    main(["fit", *tiny_args(cityscapes_root, out, *extra, "--trainer.limit_val_batches", "1")])
    rows = read_metrics(out)
    for key in ["train/loss_ce", "train/loss_adv", "train/loss_d"]:
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(math.isfinite(v) for v in values), key


@pytest.mark.parametrize("args, expected", [
    (["gpu", "--crop", "64", "64", "--encoder", "resnet18", "--steps", "1", "--warmup", "1", "--batch", "1",
      "--variants", "fp32", "bf16+channels_last, supervised (no D)"], "| bf16+channels_last, supervised (no D) |"),
    (["step", "--sizes", "64x64", "--steps", "1", "--warmup", "1", "--batch", "1"], "FLOPs adv/sup"),
    (["inference", "--size", "64", "128", "--images", "1", "--window", "64", "64", "--stride", "32", "32"], "slide"),
])  # fmt: skip
def test_benchmark_code_paths_run_on_cpu(capsys, args, expected):
    from seg_gan.bench.__main__ import main as bench

    bench([*args, "--device", "cpu"])
    assert expected in capsys.readouterr().out


def test_semi_supervised_fit_from_the_cli(cityscapes_root, tmp_path):
    out = tmp_path / "semi"
    semi_args = ["--data.labeled_fraction", "0.5", "--data.unlabeled_stream", "true", "--model.semi_start", "1"]
    main(["fit", *tiny_args(cityscapes_root, out, "--trainer.max_steps", "4", "--data.batch_size", "2", *semi_args)])
    rows = read_metrics(out)
    semi = [float(r["train/loss_semi"]) for r in rows if r.get("train/loss_semi")]
    assert len(semi) == 2 and semi[0] == 0  # two batches (4 optimizer steps); self-training starts at batch 1
    assert any(r.get("train/semi_mask_ratio") for r in rows) and any(r.get("train/loss_semi_adv") for r in rows)
    assert len(next(out.rglob("labeled_split.txt")).read_text().split()) == 4


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: seg_gan.data." in capsys.readouterr().out


def test_default_run_is_configs_synthetic_yaml(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    default = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs" / "synthetic.yaml"), "--print_config"])
    assert capsys.readouterr().out == default


@pytest.mark.parametrize("args, expected", [
    (["--model.lamda_adv", "0.1"], "lamda_adv"),
    (["--model.arch", "UNet"], "Unet"),
    (["--model.discriminator", "fcm"], "fcn"),
    (["--model.adversarial_loss", "wgan"], "hinge"),
    (["--model.lambda_adv", "-1"], "model.lambda_adv: -1.0 is below zero"),
    (["--model.encoder_name", "resnet1"], "model.encoder_name: unknown encoder 'resnet1'"),
    (["--data.crop_size", "[0, 64]"], "data.crop_size: [0, 64] must be two positive integers"),
    (["--data.crop_size", "[16, 64]"], "data.crop_size: [16, 64] is smaller than 32 pixels"),
    (["--data.root", "/nonexistent/cityscapes"], "data.root: '/nonexistent/cityscapes' does not exist"),
    (["--checkpoint.every_n_batches", "0"], "checkpoint.every_n_batches: 0 must be at least 1"),
    (["--trainer.gradient_clip_val", "1.0"], "Expected --model.gradient_clip_val"),
    (["--trainer.accumulate_grad_batches", "2"], "trainer.accumulate_grad_batches: 2 is not supported"),
    (["--trainer.strategy", "fsdp"], "trainer.strategy: 'fsdp' is not supported"),
])  # fmt: skip
def test_bad_input_exits_with_a_clear_message(cityscapes_root, tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(cityscapes_root, tmp_path / "bad"), *args])
    assert exit_info.value.code != 0
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing written


def test_help_as_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "seg_gan", "fit", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "weight of the adversarial term" in result.stdout  # docstrings become help text
    assert "--model.lambda_adv" in result.stdout and "--data" in result.stdout
    result = subprocess.run([sys.executable, "-m", "seg_gan", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(cmd in result.stdout for cmd in ["fit", "validate", "test", "predict"])


@pytest.mark.slow
def test_training_drives_val_miou_up(cityscapes_root, tmp_path):
    """~100 training batches on trivially learnable scenes: fails if training is broken."""
    main(["validate", *tiny_args(cityscapes_root, tmp_path / "untrained")])
    (untrained,) = [float(r["val/mIoU"]) for r in read_metrics(tmp_path / "untrained") if r.get("val/mIoU")]
    main(
        [
            "fit",
            *tiny_args(
                cityscapes_root,
                tmp_path / "learn",
                "--trainer.max_epochs",
                "50",
                "--trainer.check_val_every_n_epoch",
                "25",
                "--trainer.num_sanity_val_steps",
                "0",
            ),
        ]
    )
    mious = [float(r["val/mIoU"]) for r in read_metrics(tmp_path / "learn") if r.get("val/mIoU")]
    assert len(mious) == 2
    assert mious[-1] > 0.8 and mious[-1] > untrained + 0.3, (untrained, mious)


def test_semi_benchmark_scales_camvid_once(camvid_root, tmp_path):
    from seg_gan.bench.semi import scaled_copy

    copy = scaled_copy(camvid_root, tmp_path, [24, 32])
    for folder in ("train", "trainannot", "val", "valannot"):
        originals = sorted((camvid_root / folder).glob("*.png"))
        assert [p.name for p in sorted((copy / folder).glob("*.png"))] == [p.name for p in originals]
        original, scaled = (Image.open(d / folder / originals[0].name) for d in (camvid_root, copy))
        assert scaled.size == (32, 24) and scaled.mode == original.mode
        if folder.endswith("annot"):  # nearest: no new label values
            assert set(np.unique(np.array(scaled))) <= set(np.unique(np.array(original)))
    stamp = (copy / "DONE").stat().st_mtime_ns
    assert scaled_copy(camvid_root, tmp_path, [24, 32]) == copy and (copy / "DONE").stat().st_mtime_ns == stamp


def test_semi_benchmark_table_from_result_files(tmp_path):
    import json

    from seg_gan.bench.semi import table

    for arm, seed, miou in [("supervised", 0, 0.50), ("supervised", 1, 0.52), ("full", 0, 0.61),
                            ("semi", 0, 0.54), ("semi", 1, 0.54)]:  # fmt: skip
        result = {"arm": arm, "seed": seed, "val_mIoU": miou, "train_s": 60.0}
        (tmp_path / f"{arm}-seed{seed}.json").write_text(json.dumps(result))
    rows = {line.split(" | ")[0].strip("| "): line for line in table(tmp_path).splitlines()[2:]}
    assert list(rows) == ["supervised", "semi", "full"]  # arms without files are left out
    assert "| 0.5100 | 0.5000-0.5200 | 0.0141 |" in rows["supervised"]
    assert "| +30% |" in rows["semi"]  # (0.54 - 0.51) / (0.61 - 0.51)

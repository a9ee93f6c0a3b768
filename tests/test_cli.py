"""The CLI as users run it: in-process through main([...]) and as a real subprocess; its configs, its
run folders, and its refusals of bad input."""

import math
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, fails_with, read_metrics, tiny_args

from seg_gan.cli import main


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


def test_semi_supervised_fit_from_the_cli(cityscapes_root, tmp_path):
    out = tmp_path / "semi"
    semi_args = ["--data.labeled_fraction", "0.5", "--data.unlabeled_stream", "true", "--model.semi_start", "1"]
    main(["fit", *tiny_args(cityscapes_root, out, "--trainer.max_steps", "4", "--data.batch_size", "2", *semi_args)])
    rows = read_metrics(out)
    semi = [float(r["train/loss_semi"]) for r in rows if r.get("train/loss_semi")]
    assert len(semi) == 2 and semi[0] == 0  # two batches (4 optimizer steps); self-training starts at batch 1
    assert any(r.get("train/semi_mask_ratio") for r in rows) and any(r.get("train/loss_semi_adv") for r in rows)
    assert len(next(out.rglob("labeled_split.txt")).read_text().split()) == 4


def test_bf16_and_channels_last_fit(cityscapes_root, tmp_path):
    out = tmp_path / "bf16"
    extra = ["--trainer.max_steps", "4", "--trainer.precision", "bf16-mixed", "--model.channels_last", "true"]
    main(["fit", *tiny_args(cityscapes_root, out, *extra, "--trainer.limit_val_batches", "1")])
    rows = read_metrics(out)
    for key in ["train/loss_ce", "train/loss_adv", "train/loss_d"]:
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(math.isfinite(v) for v in values), key


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


CONFIGS = [*sorted((REPO / "configs").glob("*.yaml")), REPO / "seg_gan" / "default.yaml"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: seg_gan.data." in capsys.readouterr().out


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


@pytest.mark.parametrize("args, expected", [
    (["--model.lamda_adv", "0.1"], "lamda_adv"),
    (["--model.arch", "UNet"], "Unet"),
    (["--model.discriminator", "fcm"], "fcn"),
    (["--model.adversarial_loss", "wgan"], "hinge"),
    (["--model.lambda_adv", "-1"], "model.lambda_adv: -1.0 is below zero"),
    (["--model.encoder_name", "resnet1"], "model.encoder_name: unknown encoder 'resnet1'"),
    (["--data.crop_size", "[0, 64]"], "data.crop_size: [0, 64] must be two positive integers"),
    (["--data.crop_size", "[16, 64]"], "data.crop_size: [16, 64] is smaller than 32 pixels"),
    (["--data.passes_per_epoch", "0"], "data.passes_per_epoch: 0 is below 1"),
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


def test_config_naming_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tmp_path / "missing.yaml")])
    assert exit_info.value.code == 2 and "missing.yaml" in capsys.readouterr().err


RUN_FOLDERS = ["--trainer.default_root_dir", "--trainer.logger.save_dir", "--checkpoint.dirpath"]


@pytest.mark.parametrize("argument", RUN_FOLDERS)
def test_unwritable_run_folder(cityscapes_root, tmp_path, capsys, argument):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [*tiny_args(cityscapes_root, tmp_path / "run"), argument, str(blocker / "runs")]
    fails_with(capsys, ["fit", *args], f"{argument[2:]}: cannot write into")
    assert blocker.read_text() == "not a folder" and not (tmp_path / "run").exists()


def test_help_as_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "seg_gan", "fit", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "weight of the adversarial term" in result.stdout  # docstrings become help text
    assert "--model.lambda_adv" in result.stdout and "--data" in result.stdout
    result = subprocess.run([sys.executable, "-m", "seg_gan", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(cmd in result.stdout for cmd in ["fit", "validate", "test", "predict"])


def test_the_default_run_is_seg_gan_default_yaml(capsys):
    # one source of defaults: no arguments = the shipped file; any value of it can be overridden
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    default = yaml.safe_load(capsys.readouterr().out)
    shipped = yaml.safe_load((REPO / "seg_gan" / "default.yaml").read_text())

    def given(shipped_value, resolved_value) -> bool:  # class paths resolve with every init arg spelled out
        if isinstance(shipped_value, dict):
            return shipped_value["class_path"] == resolved_value["class_path"] and all(
                resolved_value["init_args"][k] == v for k, v in shipped_value.get("init_args", {}).items()
            )
        return shipped_value == resolved_value

    for group in ("model", "trainer"):
        for name, value in shipped[group].items():
            assert given(value, default[group][name]), (group, name)
    assert given(shipped["data"], default["data"]) and default["seed_everything"] == shipped["seed_everything"]
    with pytest.raises(SystemExit):
        main(["fit", "--model.arch", "Unet", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["arch"] == "Unet"

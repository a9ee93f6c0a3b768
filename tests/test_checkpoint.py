"""Checkpoints: identical runs, crash-safe resume (SIGKILL, SIGTERM, every N batches), `--ckpt_path last`,
what a checkpoint may and may not override, and the refusals of bad checkpoints."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TESTS, fails_with, learning_args, run_subprocess, tiny_args, write_camvid

from seg_gan import SegGAN
from seg_gan.checkpoint import check_checkpoint_fits
from seg_gan.cli import main
from seg_gan.data import CityscapesDataModule
from seg_gan.errors import UserError
from seg_gan.inference import predict_logits
from seg_gan.metrics import Scores


def run_args(root: Path, out: Path, *extra: str) -> list[str]:
    scaled = ["--data.scale_range", "[0.8, 1.2]", "--model.g_optimizer", "adam", "--trainer.max_epochs", "4"]
    return ["fit", *tiny_args(root, out, *scaled, *extra)]


def final_state(out: Path) -> dict:
    checkpoint = torch.load(next(out.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    return checkpoint["state_dict"] | {f"optimizer{i}": s for i, s in enumerate(checkpoint["optimizer_states"])}


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key


def flatten(optimizer_state: dict) -> dict:
    return {f"{i}.{k}": v for i, state in optimizer_state["state"].items() for k, v in state.items()}


@pytest.mark.slow
def test_two_runs_give_identical_weights_whatever_the_worker_count(cityscapes_root, tmp_path):
    # augmentation seeds come from (seed, epoch, index), not from the workers' random states
    main(run_args(cityscapes_root, tmp_path / "a", "--trainer.max_epochs", "2", "--data.num_workers", "0"))
    main(run_args(cityscapes_root, tmp_path / "b", "--trainer.max_epochs", "2", "--data.num_workers", "2"))
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    assert_identical(
        {k: v for k, v in a.items() if "optimizer" not in k}, {k: v for k, v in b.items() if "optimizer" not in k}
    )


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(cityscapes_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    command = [sys.executable, "-m", "seg_gan"]
    whole = subprocess.run(
        [*command, *run_args(cityscapes_root, tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=600
    )
    assert whole.returncode == 0, whole.stderr[-2000:]
    kill = ["--trainer.callbacks+=custom_parts.KillAt", "--trainer.callbacks.epoch=2", "--trainer.callbacks.batch=1"]
    killed = subprocess.run(
        [*command, *run_args(cityscapes_root, tmp_path / "killed"), *kill],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL
    last = next((tmp_path / "killed").rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1  # saved at the end of epoch 1
    assert not list((tmp_path / "killed").rglob("*.partial"))
    resumed = subprocess.run(
        [*command, *run_args(cityscapes_root, tmp_path / "resumed"), "--ckpt_path", str(last)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(next((tmp_path / "whole").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    b = torch.load(next((tmp_path / "resumed").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"]
    assert_identical(a["state_dict"], b["state_dict"])  # every tensor of G and D
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert_identical(flatten(state_a), flatten(state_b))


def kill_at(epoch: int, batch: int, signal_name: str) -> list[str]:
    return [
        "--trainer.callbacks+=custom_parts.KillAt",
        f"--trainer.callbacks.epoch={epoch}",
        f"--trainer.callbacks.batch={batch}",
        f"--trainer.callbacks.signal_name={signal_name}",
    ]


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_before_exiting_and_the_run_resumes(cityscapes_root, tmp_path):
    # batch 2: 4 batches per epoch; SIGTERM at the start of epoch 1's third batch
    args = run_args(cityscapes_root, tmp_path / "run", "--data.batch_size", "2", "--trainer.max_epochs", "2")
    stopped = run_subprocess([*args, *kill_at(1, 2, "SIGTERM")])
    assert stopped.returncode == 128 + signal.SIGTERM and "resume with --ckpt_path last" in stopped.stderr
    (last,) = list((tmp_path / "run").rglob("last.ckpt"))
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] > 2 * 4  # mid epoch 1, not epoch 0's end
    resumed = run_subprocess([*args, "--ckpt_path", "last"])  # a new run folder finds it
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Restoring states from the checkpoint path" in resumed.stdout + resumed.stderr
    finals = [torch.load(p, map_location="cpu", weights_only=False) for p in (tmp_path / "run").rglob("last.ckpt")]
    assert max(c["global_step"] for c in finals) == 2 * 4 * 2  # 2 epochs x 4 batches x (G + D)


@pytest.mark.slow
def test_last_ckpt_every_n_batches_survives_a_crash_mid_epoch(cityscapes_root, tmp_path):
    args = run_args(cityscapes_root, tmp_path / "run", "--data.batch_size", "2", "--checkpoint.every_n_batches", "2")
    killed = run_subprocess([*args, *kill_at(0, 3, "SIGKILL")])  # epoch 0 never ends
    assert killed.returncode == -signal.SIGKILL
    (last,) = list((tmp_path / "run").rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2 * 2  # after batch 2
    assert not list((tmp_path / "run").rglob("*.partial"))


def test_ckpt_path_last_resumes_from_the_newest_run_folder(cityscapes_root, tmp_path, capsys):
    main(["fit", *tiny_args(cityscapes_root, tmp_path, "--trainer.max_epochs", "1")])
    main(["fit", *tiny_args(cityscapes_root, tmp_path, "--trainer.max_epochs", "2"), "--ckpt_path", "last"])
    second = max(tmp_path.rglob("metrics.csv"), key=lambda p: p.parent.name)  # version_1
    epochs = {int(float(row["epoch"])) for row in csv.DictReader(second.open()) if row.get("epoch")}
    assert epochs == {1}  # resumed after epoch 0 instead of starting again


def test_checkpoint_keeps_the_labeled_split_and_refuses_another(cityscapes_root, tmp_path, capsys):
    half = ["--data.labeled_fraction", "0.5", "--trainer.max_epochs", "1"]
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "a", *half)])
    (last,) = list((tmp_path / "a").rglob("last.ckpt"))
    state = torch.load(last, map_location="cpu", weights_only=False)["CityscapesDataModule"]
    written = next((tmp_path / "a").rglob("labeled_split.txt")).read_text().split()
    assert state["labeled_names"] == written and len(written) == 4
    other = tiny_args(cityscapes_root, tmp_path / "b", *half, "--data.split_seed", "1", "--trainer.max_epochs", "2")
    with pytest.raises(SystemExit) as stop:
        main(["fit", *other, "--ckpt_path", str(last)])
    assert stop.value.code == 2
    assert "ckpt_path: the checkpoint was trained on another labeled subset" in capsys.readouterr().err
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0  # untouched


def test_resuming_with_other_passes_per_epoch_is_refused(cityscapes_root, tmp_path, capsys):
    # the epoch number a resume starts from picks the passes it draws: another count would draw other data
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "a", "--trainer.max_epochs", "1")])
    (last,) = list((tmp_path / "a").rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=False)["CityscapesDataModule"]["passes_per_epoch"] == 1
    other = tiny_args(cityscapes_root, tmp_path / "b", "--trainer.max_epochs", "2", "--data.passes_per_epoch", "2")
    with pytest.raises(SystemExit) as stop:
        main(["fit", *other, "--ckpt_path", str(last)])
    assert stop.value.code == 2
    assert "the checkpoint's run drew 1 labeled passes per epoch, this one 2" in capsys.readouterr().err
    evaluate = tiny_args(cityscapes_root, tmp_path / "c", "--data.passes_per_epoch", "2")
    main(["validate", *evaluate, "--ckpt_path", str(last)])  # evaluation draws no training data: accepted


def test_resuming_with_other_training_options_is_refused(cityscapes_root, tmp_path, capsys):
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "a", "--trainer.max_epochs", "1")])
    (last,) = list((tmp_path / "a").rglob("last.ckpt"))
    resume = ["--trainer.max_epochs", "2", "--ckpt_path", str(last)]
    with pytest.raises(SystemExit) as stop:  # the restored optimizer would silently keep the old rate
        main(["fit", *tiny_args(cityscapes_root, tmp_path / "b", "--model.g_lr", "0.01"), *resume])
    assert (
        stop.value.code == 2
        and "ckpt_path: resuming a run with other training options: model.g_lr is 0.01 here"
        in (capsys.readouterr().err)
    )
    main(["fit", *tiny_args(cityscapes_root, tmp_path / "c", "--model.flip_tta", "true"), *resume])  # evaluation only
    assert torch.load(next((tmp_path / "c").rglob("last.ckpt")), weights_only=False)["hyper_parameters"]["flip_tta"]


def test_resuming_a_cutmix_run_from_before_its_loss_option_keeps_the_loss_it_ran_with():
    """Checkpoints written before `cutmix_consistency` existed trained with cross-entropy consistency; today's
    default is French et al.'s squared error, so resuming one with the default would switch losses unseen."""
    old = {"num_classes": 11, "semi_method": "cutmix", "g_lr": 1e-3}  # no cutmix_consistency stored
    checkpoint = {"state_dict": {}, "hyper_parameters": old}
    with pytest.raises(UserError, match="cutmix_consistency is 'squared_error' here, but the checkpoint predates"):
        check_checkpoint_fits(checkpoint, {}, old | {"cutmix_consistency": "squared_error"}, resuming=True)
    check_checkpoint_fits(checkpoint, {}, old | {"cutmix_consistency": "cross_entropy"}, resuming=True)
    check_checkpoint_fits(checkpoint, {}, old | {"cutmix_consistency": "squared_error"}, resuming=False)  # weights only
    hung = {**old, "semi_method": "hung"}  # the option does not act in other methods
    check_checkpoint_fits({"hyper_parameters": hung}, {}, hung | {"cutmix_consistency": "squared_error"}, resuming=True)


def test_evaluation_options_given_with_a_checkpoint_win(cityscapes_root, tmp_path, capsys):
    """Options that do not change the weights come from the command line, not from the checkpoint;
    options that would not fit the weights are refused, naming the checkpoint's value."""

    main(["fit", *learning_args(cityscapes_root, tmp_path / "fit", "--trainer.max_steps", "4")])
    checkpoint = next((tmp_path / "fit").rglob("last.ckpt"))

    def validate(name: str, *extra: str) -> float:
        main(["validate", *learning_args(cityscapes_root, tmp_path / name), "--ckpt_path", str(checkpoint), *extra])
        (path,) = (tmp_path / name).rglob("metrics.csv")
        (miou,) = [float(row["val/mIoU"]) for row in csv.DictReader(path.open()) if row.get("val/mIoU")]
        return miou

    whole = validate("whole")
    slide = validate("slide", "--model.inference", "slide", "--model.window", "[32, 32]", "--model.stride", "[16, 16]")
    # the same sliding-window figure, computed without the CLI
    model = SegGAN.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False).eval()
    data = CityscapesDataModule(str(cityscapes_root), num_workers=0)
    data.setup("validate")
    confmat = torch.zeros(19, 19, dtype=torch.long)
    with torch.no_grad():
        for item in data.val_set:
            logits = predict_logits(
                model.generator, item["image"][None], mode="slide", window=(32, 32), stride=(16, 16)
            )
            valid = item["mask"] != 255
            pairs = item["mask"][valid] * 19 + logits.argmax(1)[0][valid]
            confmat += torch.bincount(pairs, minlength=19 * 19).view(19, 19)
    assert slide != pytest.approx(whole, abs=1e-6)
    assert slide == pytest.approx(Scores.from_confmat(confmat, data.class_names).miou, abs=1e-6)
    capsys.readouterr()
    for extra, expected in [
        (["--model.window", "[0, 0]", "--model.inference", "slide"], "model.window [0, 0]"),
        (["--model.arch", "FPN"], "model.arch is 'FPN' here but 'Unet' in the checkpoint"),
        (["--model.lambda_adv", "0"], "model.lambda_adv is 0.0 here but 0.01 in the checkpoint"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(
                ["validate", *learning_args(cityscapes_root, tmp_path / "bad"), "--ckpt_path", str(checkpoint), *extra]
            )
        assert stop.value.code == 2 and expected in capsys.readouterr().err, expected


def test_corrupted_checkpoint(cityscapes_root, tmp_path, capsys, trained):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(trained.read_bytes()[:1000])  # a save cut short
    before = trained.read_bytes()
    fails_with(
        capsys,
        ["validate", *tiny_args(cityscapes_root, tmp_path / "v"), "--ckpt_path", str(broken)],
        r"ckpt_path: '.*broken.ckpt' could not be read as a checkpoint",
    )
    fails_with(
        capsys,
        ["validate", *tiny_args(cityscapes_root, tmp_path / "v"), "--ckpt_path", str(tmp_path / "no")],
        r"ckpt_path: '.*no' is not a file",
    )
    assert trained.read_bytes() == before


def test_checkpoint_of_another_number_of_classes(tmp_path, capsys, trained):
    camvid = write_camvid(tmp_path / "camvid", {"train": 4, "val": 2}, size=(32, 64))
    args = tiny_args(camvid, tmp_path / "v")
    args[args.index("seg_gan.data.CityscapesDataModule")] = "seg_gan.data.CamVidDataModule"
    fails_with(
        capsys,
        ["validate", *args, "--ckpt_path", str(trained)],
        "the checkpoint was trained for 19 classes, but the data has 11",
    )

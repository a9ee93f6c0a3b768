"""Reproducibility: identical runs, and a run killed with SIGKILL then resumed equals an uninterrupted one."""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import tiny_args

from seg_gan.cli import main

TESTS = Path(__file__).resolve().parent


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
    whole = subprocess.run([*command, *run_args(cityscapes_root, tmp_path / "whole")], env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-2000:]
    kill = ["--trainer.callbacks+=custom_parts.KillAt", "--trainer.callbacks.epoch=2", "--trainer.callbacks.batch=1"]
    killed = subprocess.run([*command, *run_args(cityscapes_root, tmp_path / "killed"), *kill], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    last = next((tmp_path / "killed").rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1  # saved at the end of epoch 1
    assert not list((tmp_path / "killed").rglob("*.partial"))
    resumed = subprocess.run([*command, *run_args(cityscapes_root, tmp_path / "resumed"), "--ckpt_path", str(last)],
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(next((tmp_path / "whole").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    b = torch.load(next((tmp_path / "resumed").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"]
    assert_identical(a["state_dict"], b["state_dict"])  # every tensor of G and D
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert_identical(flatten(state_a), flatten(state_b))


def run_subprocess(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "seg_gan", *args], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def kill_at(epoch: int, batch: int, signal_name: str) -> list[str]:
    return ["--trainer.callbacks+=custom_parts.KillAt", f"--trainer.callbacks.epoch={epoch}",
            f"--trainer.callbacks.batch={batch}", f"--trainer.callbacks.signal_name={signal_name}"]  # fmt: skip


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

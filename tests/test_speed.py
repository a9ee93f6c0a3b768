"""What makes the step fast must not change what it computes (seg_gan/speed.py, and the device-side skips of
seg_gan/guards.py): fused steps skipped through `found_inf` leave no trace, the stop rule read every N batches
still stops the run, compiled training compiles in the first batch only, bf16 on an emulating CPU is named."""

import copy
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import SEMI, changed, fit_one_batch, mixed_cityscapes, snapshot
from test_guards import NaNDiscriminator
from torch._dynamo.utils import counters

from seg_gan import SegGAN
from seg_gan.data import CityscapesDataModule
from seg_gan.guards import StabilityGuard, TrainingDiverged
from seg_gan.models import FCNDiscriminator
from seg_gan.speed import (
    build_optimizer,
    compile_for_training,
    cpu_capabilities,
    has_native_bf16,
    slow_precision_advice,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (seg_gan/bench/gpu_session.sh runs it)")


# ---- fused optimizers and the device-side skip -----------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, options",
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}), (torch.optim.Adam, {"lr": 0.1}),
     (torch.optim.AdamW, {"lr": 0.1, "weight_decay": 0.01})],
    ids=["sgd", "adam", "adamw"],
)  # fmt: skip
@pytest.mark.parametrize("skipped", [0, 1], ids=["first-step-skipped", "second-step-skipped"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_fused_step_skipped_through_found_inf_is_as_if_it_never_happened(cls, options, skipped, device):
    torch.manual_seed(0)
    start = torch.randn(64, device=device)
    grads = [torch.randn(64, device=device) for _ in range(4)]
    runs = {}
    for name, skip_at in [("with skip", skipped), ("without", None)]:
        param = torch.nn.Parameter(start.clone())
        optimizer = build_optimizer(cls, [param], torch.device(device), **options)
        assert optimizer.param_groups[0]["fused"]
        for step, grad in enumerate(grads):
            if step == skip_at:  # a non-finite loss: NaN gradients, and the step is skipped on the device
                param.grad, optimizer.found_inf = torch.full_like(grad, float("nan")), torch.ones((), device=device)
                optimizer.step()
            param.grad, optimizer.found_inf = grad.clone(), torch.zeros((), device=device)
            optimizer.step()
        runs[name] = (param.detach(), optimizer.state_dict()["state"][0])
    (param, state), (expected_param, expected_state) = runs["with skip"], runs["without"]
    assert torch.equal(param, expected_param)
    assert state.keys() == expected_state.keys() and all(torch.equal(state[k], expected_state[k]) for k in state)


class FirstCallNaN(NaNDiscriminator):
    def __init__(self, num_classes: int):
        super().__init__(num_classes, bad_calls=frozenset({0}))


@pytest.mark.parametrize("check_every", [1, 4], ids=["host-checked", "device-side"])
def test_device_side_skips_count_like_host_checked_ones(cityscapes_root, check_every):
    model = SegGAN(num_classes=19, discriminator=FirstCallNaN)
    model.guard = StabilityGuard(10, 500, check_every=check_every)
    data = CityscapesDataModule(
        str(cityscapes_root), batch_size=2, num_workers=0, crop_size=(32, 64), scale_range=(1, 1)
    )
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    (d_steps,) = {float(state["step"]) for state in trainer.optimizers[1].state.values()}
    assert model.guard.skipped_steps == 1 and d_steps == 2  # batch 0's D step left no trace, not even its count
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # host-checked, the skipped step is not called and Lightning counts 5 optimizer steps in 3 batches; device-side,
    # the fused step runs and skips itself, and Lightning counts all 6
    assert trainer.global_step == (5 if check_every == 1 else 6)


def test_device_side_stop_rule_stops_the_run_within_check_every_batches(cityscapes_root):
    model = SegGAN(num_classes=19, discriminator=lambda n: NaNDiscriminator(n, "all"), max_consecutive_skips=3)
    model.guard = StabilityGuard(3, 500, check_every=4)
    before = snapshot(model.discriminator)
    batches = []
    model.on_train_batch_start = lambda batch, index: batches.append(index)
    with pytest.raises(
        TrainingDiverged, match=r"3 D optimizer steps in a row had a non-finite loss \(the last at batch 2\)"
    ):
        fit_one_batch(model, cityscapes_root, max_steps=40)
    assert not changed(before, snapshot(model.discriminator))  # the fused D steps skipped themselves
    # the counts as they were at D's third skip in a row: D and G (D's NaN reaches G's loss too) in batches 0 and 1,
    # D in batch 2; nothing was counted after that
    assert model.guard.skipped_steps == 5
    assert 2 < max(batches) <= 2 + 4  # read at the epoch end (batch 3) or the next check


def test_collapse_warning_read_from_the_device_fires_once_per_streak():
    guard = StabilityGuard(10, collapse_patience=3, check_every=5)
    with pytest.warns(UserWarning, match="wins every pixel") as record:
        for accuracy in [1.0] * 5:  # reaches the patience at the third batch; read once, at the check
            guard.watch_discriminator(torch.tensor(accuracy))
        guard.check()
    assert len(record) == 1
    with pytest.warns(UserWarning, match="is guessing"):
        for accuracy in [0.7, 0.5, 0.51, 0.49]:  # the streak broke at 0.7, then 3 guesses
            guard.watch_discriminator(torch.tensor(accuracy))
        guard.check()


# ---- torch.compile: training compiles in the first batch, evaluation never -------------------------------------
class CompileCount(pl.Callback):
    def __init__(self):
        self.at_batch_end, self.during_validation = [], 0

    def on_train_batch_end(self, *args) -> None:
        self.at_batch_end.append(counters["frames"]["ok"])

    def on_validation_start(self, *args) -> None:
        self.before_validation = counters["frames"]["ok"]

    def on_validation_end(self, *args) -> None:
        self.during_validation += counters["frames"]["ok"] - self.before_validation


def test_compile_for_training_compiles_training_calls_once_per_pattern_and_never_evaluation():
    discriminator = FCNDiscriminator(19, width=8)
    keys = set(discriminator.state_dict())
    compile_for_training(discriminator)
    counters.clear()
    torch._dynamo.reset()
    with torch.compiler.set_stance(force_backend="aot_eager"):  # traces and guards as inductor does, no codegen
        for _ in range(2):  # D's own step on [real; fake] (no graph to G), then G's step (D frozen)
            discriminator(torch.rand(4, 19, 32, 64), None).mean().backward()
            discriminator.requires_grad_(False)
            discriminator(torch.rand(2, 19, 32, 64, requires_grad=True), None).mean().backward()
            discriminator.requires_grad_(True)
        assert counters["frames"]["ok"] == 2
        discriminator.eval()
        with torch.no_grad():
            for size in [(64, 128), (50, 70), (1024, 2048)]:  # whole images at any size: eager
                assert discriminator(torch.rand(1, 19, *size), None).shape == (1, 1, *size)
    assert counters["frames"]["ok"] == 2
    assert set(discriminator.state_dict()) == keys
    copied = copy.deepcopy(discriminator)  # a copy (or pickle, as ddp_spawn does) runs eagerly
    assert torch.equal(copied(torch.ones(1, 19, 32, 32), None), discriminator(torch.ones(1, 19, 32, 32), None))


@pytest.mark.slow
def test_compiled_training_compiles_in_the_first_batch_only(tmp_path):
    """A short fit with inductor (about 100 s on 2 cores) and validation at three image sizes: recompiles used to
    come from whole-image evaluation at new sizes (which also turned graphs dynamic); D's two call patterns are
    met in batch 0."""
    root = mixed_cityscapes(tmp_path / "cs", sizes=[(64, 128), (50, 70), (90, 120)])  # evaluation at 3 sizes
    model = SegGAN(num_classes=19, encoder_name="resnet18", compile_models=True, semi_start=0)
    keys = set(model.state_dict())
    count = CompileCount()
    data = CityscapesDataModule(str(root), batch_size=1, num_workers=0, crop_size=(32, 64), scale_range=(1, 1), **SEMI)
    trainer = pl.Trainer(max_epochs=2, num_sanity_val_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[count])  # fmt: skip
    counters.clear()
    torch._dynamo.reset()
    trainer.fit(model, data)
    # 2 labeled images, batch 1: 2 batches per epoch, 4 in all; G compiled once, D twice (its own step on
    # [real; labeled fake; unlabeled fake], G's step on the fakes), all in batch 0
    assert count.at_batch_end == [3, 3, 3, 3] and count.during_validation == 0
    assert set(model.state_dict()) == keys


# ---- bf16 on a CPU ---------------------------------------------------------------------------------------------
AVX2 = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}


@pytest.mark.parametrize(
    "precision, device, capabilities, warned",
    [("bf16-mixed", "cpu", AVX2, True), ("bf16-true", "cpu", AVX2, True),
     ("bf16-mixed", "cpu", {**AVX2, "avx512_f": True}, True),  # AVX512 without BF16 emulates it too
     ("bf16-mixed", "cpu", {**AVX2, "avx512_bf16": True}, False),
     ("bf16-mixed", "cpu", {**AVX2, "amx_bf16": True}, False),
     ("bf16-mixed", "cpu", {"bf16": True}, False),  # ARM with BF16
     ("32-true", "cpu", AVX2, False), ("16-mixed", "cpu", AVX2, False), ("bf16-mixed", "cuda", AVX2, False)],
)  # fmt: skip
def test_bf16_on_a_cpu_without_native_bf16_names_the_faster_setting(precision, device, capabilities, warned):
    advice = slow_precision_advice(precision, device, capabilities)
    assert (advice is not None) == warned
    if warned:
        assert precision in advice and "--trainer.precision 32-true" in advice


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the Linux kernel's CPU flags")
def test_native_bf16_agrees_with_the_kernel_cpu_flags():
    flags = set(" ".join(re.findall(r"^(?:flags|Features)\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)).split())
    assert has_native_bf16(cpu_capabilities()) == bool(flags & {"avx512_bf16", "amx_bf16", "bf16", "sve_bf16"})

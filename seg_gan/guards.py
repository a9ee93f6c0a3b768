"""What keeps a run sane: options checked when the model is built, non-finite losses skipped (and a
run that keeps producing them stopped), and a warning when D wins or guesses for too long."""

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_warn

from seg_gan.errors import UserError, require
from seg_gan.lightning_private import find_unused_parameters


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row: reported like a bad input, without a traceback."""


class StabilityGuard:
    """Counts for the GAN-health logs, the stop rule and the D-collapse warning, kept on the loss's device.

    A non-finite loss skips that optimizer step on every process alike, and `max_consecutive_skips` skips in a row
    of one network stop the run. Decided in one of two ways (`skip`):
    - by the host, at once (`check_every` 1; the default on a CPU, where reading a value costs nothing, and for
      optimizers without fused kernels): no backward and no step;
    - on the device (`check_every` N > 1; the default on GPUs, with the fused optimizers `seg_gan.speed` builds):
      backward and step run and the fused optimizer leaves parameters, moments and step counts as they were
      (`found_inf`), with no host-device synchronisation. The host reads the counts every N batches and at each
      epoch end (`check`), so the run stops up to N batches after the K-th skip in a row, reporting the counts as
      they were then; Lightning's `global_step` counts the skipped steps too. The D-collapse warning is read
      the same way.

    Args:
        max_consecutive_skips: this many skipped steps in a row of one network (G or D) stop the run.
        collapse_patience: warn when D's accuracy stays above 99% or within 2 points of 50% for this
            many batches in a row.
        check_every: see above; None = 1 on a CPU, 50 elsewhere.
    """

    COUNTS = ("skipped", "void", "g", "d", "stopped", "stop_batch", "collapse", "collapse_warn")

    def __init__(self, max_consecutive_skips: int = 10, collapse_patience: int = 500, check_every: int | None = None):
        self.max_consecutive_skips, self.collapse_patience = max_consecutive_skips, collapse_patience
        self.check_every, self.checked_batch = check_every, -1
        # float32 scalars on the device (exact up to 2**24): skipped = non-finite losses, G and D together
        # (train/skipped_steps); void = labeled batches without a labelled pixel (train/void_batches); g, d = skips
        # in a row, apart (a finite D step must not hide G's endless skips); stopped = 1 (G) or 2 (D) once one hit
        # the stop rule, when the counts freeze; collapse = D's stuck streak; collapse_warn = 1 (wins) or 2 (guesses)
        self.counts: dict[str, torch.Tensor] = {}

    def _counts(self, device: torch.device) -> dict[str, torch.Tensor]:
        if not self.counts:
            self.counts = {name: torch.zeros((), device=device) for name in self.COUNTS}
            self.check_every = self.check_every or (1 if device.type == "cpu" else 50)
        return self.counts

    @property
    def skipped_steps(self) -> torch.Tensor | int:
        return self.counts.get("skipped", 0)

    @property
    def void_batches(self) -> torch.Tensor | int:
        return self.counts.get("void", 0)

    def skip(self, which: str, loss: torch.Tensor, batch: int, strategy: Strategy, optimizer) -> bool:
        """Whether the host skips network `which`'s ('g' or 'd') step on `loss` (a scalar); on the device path it
        returns False and sets `optimizer.found_inf` (`optimizer`: the torch optimizer) for the fused step.

        Raises:
            TrainingDiverged: `max_consecutive_skips` skips in a row for `which` (at once, or at the next check).
        """
        counts = self._counts(loss.device)
        on_device = self.check_every > 1 and all(group.get("fused") for group in optimizer.param_groups)
        if on_device:  # any process's non-finite loss skips everywhere: summed over processes, on the device
            nonfinite = strategy.reduce(torch.isfinite(loss.detach()).logical_not().float(), reduce_op="sum") > 0
            optimizer.found_inf, host_skip = nonfinite.float(), False
        else:
            host_skip = not strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
            nonfinite = torch.tensor(host_skip, device=loss.device)
            optimizer.__dict__.pop("found_inf", None)
        live = counts["stopped"] == 0  # after the stop rule the counts stay as they were at the K-th skip
        streak = torch.where(nonfinite, counts[which] + 1, 0)
        counts[which] = torch.where(live, streak, counts[which])
        counts["skipped"] += (live & nonfinite).float()
        hit = live & (counts[which] >= self.max_consecutive_skips)
        counts["stopped"] = torch.where(hit, 1.0 if which == "g" else 2.0, counts["stopped"])
        counts["stop_batch"] = torch.where(hit, float(batch), counts["stop_batch"])
        if not on_device or (batch % self.check_every == 0 and batch != self.checked_batch):
            self.check(batch)
        return host_skip

    def count_void_batch(self, all_void: torch.Tensor) -> None:
        """`all_void`: bool scalar tensor, the labeled batch has no labelled pixel."""
        self._counts(all_void.device)["void"] += all_void.float()

    def watch_discriminator(self, d_accuracy: torch.Tensor) -> None:
        """`d_accuracy`: scalar tensor, D's accuracy on this batch's real and fake maps."""
        counts = self._counts(d_accuracy.device)
        wins = d_accuracy > 0.99
        counts["collapse"] = torch.where(wins | ((d_accuracy - 0.5).abs() < 0.02), counts["collapse"] + 1, 0)
        fired = counts["collapse"] == self.collapse_patience  # once per streak, as it reaches the patience
        counts["collapse_warn"] = torch.where(fired, torch.where(wins, 1.0, 2.0), counts["collapse_warn"])

    def check(self, batch: int | None = None) -> None:
        """Read the counts (one host-device synchronisation): raise if a network hit the stop rule, warn once
        per streak if D has been stuck for `collapse_patience` batches.

        Raises:
            TrainingDiverged: as in `skip`.
        """
        if not self.counts:
            return
        self.checked_batch = self.checked_batch if batch is None else batch
        stopped, stop_batch, collapse_warn = torch.stack(
            [self.counts[name] for name in ("stopped", "stop_batch", "collapse_warn")]
        ).tolist()
        if stopped:
            which = "G" if stopped == 1 else "D"
            raise TrainingDiverged(
                f"training stopped: {self.max_consecutive_skips} {which} optimizer steps in a row had a non-finite "
                f"loss (the last at batch {int(stop_batch)}). Expected finite losses: lower the learning rates, set "
                "model.gradient_clip_val, or try trainer.precision 32 (model.max_consecutive_skips sets the patience)."
            )
        if collapse_warn:
            self.counts["collapse_warn"].zero_()
            state = "wins every pixel (accuracy > 99%)" if collapse_warn == 1 else "is guessing (accuracy ~50%)"
            rank_zero_warn(
                f"the discriminator {state} for {self.collapse_patience} batches in a row: the adversarial "
                "signal may be useless; consider instance_noise, spectral_norm, label_flip, d_every_n_batches "
                "or d_lr."
            )


def check_options(hp) -> None:
    """UserError naming the first model option outside its range (`hp`: the model's hyperparameters)."""
    for name in [
        "lambda_adv",
        "lambda_semi_adv",
        "lambda_semi",
        "lambda_fm",
        "semi_start",
        "g_weight_decay",
        "poly_power",
        "instance_noise",
    ]:
        require(hp[name] >= 0, f"model.{name}: {hp[name]} is below zero; expected a value >= 0.")
    for name in ["g_lr", "d_lr", "num_classes"]:
        require(hp[name] > 0, f"model.{name}: {hp[name]} must be positive.")
    for name in ["max_consecutive_skips", "d_every_n_batches", "g_every_n_batches", "collapse_patience"]:
        require(hp[name] >= 1, f"model.{name}: {hp[name]} must be at least 1.")
    require(
        0 <= hp["mask_threshold"] <= 1,
        f"model.mask_threshold: {hp['mask_threshold']} is outside [0, 1]; expected a D confidence.",
    )
    require(
        0 <= hp["label_flip"] < 0.5,
        f"model.label_flip: {hp['label_flip']} is outside [0, 0.5); expected a small probability.",
    )
    require(
        min(hp["window"]) > 0 and min(hp["stride"]) > 0,
        f"model.window {list(hp['window'])} and model.stride {list(hp['stride'])} must be positive.",
    )
    require(
        hp["gradient_clip_val"] is None or hp["gradient_clip_val"] > 0,
        f"model.gradient_clip_val: {hp['gradient_clip_val']} must be positive or null.",
    )


def prepare_strategy(strategy: Strategy) -> None:
    """Before the model is wrapped: DDP must find unused parameters (each batch's D step leaves G without
    gradients and the G step leaves D without), however Lightning arrived at DDP (`auto` with several
    devices, `ddp`, `ddp_spawn`, `ddp_fork`, `ddp_notebook`, a `DDPStrategy` by class path, multi-node).

    Raises:
        UserError: another parallel strategy (FSDP, DeepSpeed, ...), which manual optimisation of two
            optimizers does not support.
    """
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy):
        find_unused_parameters(strategy)
    elif isinstance(strategy, ParallelStrategy):
        raise UserError(
            f"trainer.strategy: {type(strategy).__name__} is not supported: SegGAN alternates two optimizers "
            "with manual optimisation. Expected a DDP strategy for several devices or nodes (ddp, ddp_spawn, "
            "ddp_fork, ddp_notebook, or strategy auto with devices > 1)."
        )

"""What keeps a run sane: options checked when the model is built, non-finite losses skipped (and a
run that keeps producing them stopped), and a warning when D wins or guesses for too long."""

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_warn

from seg_gan.errors import UserError, require
from seg_gan.lightning_private import find_unused_parameters


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row: reported like a bad input, without a traceback."""


class StabilityGuard:
    """Counts for the GAN-health logs and the stop rule.

    Args:
        max_consecutive_skips: this many skipped steps in a row of one network (G or D) stop the run.
        collapse_patience: warn when D's accuracy stays above 99% or within 2 points of 50% for this
            many batches in a row.
    """

    def __init__(self, max_consecutive_skips: int = 10, collapse_patience: int = 500):
        self.max_consecutive_skips, self.collapse_patience = max_consecutive_skips, collapse_patience
        self.skipped_steps = 0  # non-finite losses, G and D together (train/skipped_steps)
        self.consecutive = {"g": 0, "d": 0}  # apart: a finite D step must not hide G's endless skips
        self.void_batches = 0  # labeled batches without a labelled pixel (they add no cross-entropy)
        self.collapse_streak = 0

    def allow_step(self, which: str, finite: bool, batch: int) -> bool:
        """True if network `which` ('g' or 'd') may step; counts a skip otherwise.

        Raises:
            TrainingDiverged: `max_consecutive_skips` skips in a row for `which`.
        """
        if finite:
            self.consecutive[which] = 0
            return True
        self.skipped_steps += 1
        self.consecutive[which] += 1
        if self.consecutive[which] >= self.max_consecutive_skips:
            raise TrainingDiverged(
                f"training stopped: {self.consecutive[which]} {which.upper()} optimizer steps in a row had a "
                f"non-finite loss (the last at batch {batch}). Expected finite losses: lower the learning rates, "
                "set model.gradient_clip_val, or try trainer.precision 32 (model.max_consecutive_skips sets "
                "the patience)."
            )
        return False

    def count_void_batch(self, all_void: bool) -> None:
        self.void_batches += int(all_void)

    def watch_discriminator(self, d_accuracy: float) -> None:
        stuck = d_accuracy > 0.99 or abs(d_accuracy - 0.5) < 0.02
        self.collapse_streak = self.collapse_streak + 1 if stuck else 0
        if self.collapse_streak == self.collapse_patience:
            state = "wins every pixel (accuracy > 99%)" if d_accuracy > 0.99 else "is guessing (accuracy ~50%)"
            rank_zero_warn(
                f"the discriminator {state} for {self.collapse_streak} batches in a row: the adversarial "
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

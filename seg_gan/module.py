"""The LightningModule: generator G, discriminator D, the alternating D/G steps and the metrics.

One training batch, in this order (manual optimisation, Lightning's GAN pattern):
  1. G forward once:               logits [B, C, H, W], probs = softmax(logits)
  2. D step (skipped if lambda_adv == 0, where D does not exist):
     real = encode_real(mask), fake = probs.detach(); one batched D forward on [real; fake];
     void pixels masked out of the loss; only D's parameters change.
  3. G step: cross-entropy(logits, mask) + lambda_adv * adversarial(D(probs)), with D frozen
     through `toggled_optimizer`; only G's parameters change.
  4. Poly learning-rate schedules stepped by hand, once per batch.
Semi-supervised (Hung et al. 2018), when the batch also holds unlabeled images (data.unlabeled_stream):
  G also runs on the unlabeled images; D's fake batch includes those predictions; G gets
  lambda_semi_adv x adversarial loss on them, and from batch `semi_start` on lambda_semi x
  cross-entropy against its own argmax where D's confidence sigmoid(D) > mask_threshold.
  semi_method "s4gan" (Mittal et al. 2019) replaces the unlabeled adversarial term by feature matching
  (lambda_fm x |mean D features of real labeled maps - mean D features of unlabeled predictions|) with the
  image-level D, whose per-image score then picks the unlabeled images that self-train as a whole.
With two optimizers Lightning's `global_step` advances twice per batch; schedules count batches.
"""

import math
from collections.abc import Callable
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ParallelStrategy
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from seg_gan.errors import UserError
from seg_gan.inference import InferenceMode, predict_logits, whole
from seg_gan.lightning_private import find_unused_parameters
from seg_gan.losses import (
    AdversarialLoss,
    RealEncoding,
    cross_entropy,
    discriminator_loss,
    encode_real,
    generator_adversarial_loss,
    valid_mask,
)
from seg_gan.metrics import iou_table, scores
from seg_gan.models import build_discriminator, build_generator
from seg_gan.models.discriminators import DiscriminatorName
from seg_gan.models.generator import Arch


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row: reported like a bad input, without a traceback."""


class SegGAN(pl.LightningModule):
    """Adversarial semantic segmentation (Luc et al. 2016; Hung et al. 2018).

    Args:
        num_classes: number of classes (linked from the data module).
        ignore_index: void label, ignored by loss, D and metrics (linked from the data module).
        class_names: class names for logs and the IoU table (linked from the data module).
        arch: segmentation-models-pytorch architecture of the generator.
        encoder_name: smp encoder, e.g. resnet18, resnet50, efficientnet-b0.
        encoder_weights: null (random init), 'imagenet' (downloaded by smp) or a local state-dict
            file for the encoder.
        discriminator: 'fcn' (Hung et al., per pixel), 'image' (one score per image, sees the RGB
            image), 'patch' (PatchGAN, sees the RGB image), or your own class via class_path; it is
            built as cls(num_classes, **init_args) and called as D(probs, image).
        spectral_norm: spectral normalisation in the built-in discriminators.
        adversarial_loss: 'bce' (non-saturating), 'lsgan' or 'hinge'.
        real_encoding: D's real samples: 'onehot' ground truth or Luc et al.'s 'scaling'.
        lambda_adv: weight of the adversarial term in G's loss; 0 = supervised baseline, no D built.
        g_optimizer: optimizer of G.
        g_lr: learning rate of G.
        g_momentum: SGD momentum of G (ignored by Adam/AdamW).
        g_weight_decay: weight decay of G.
        d_lr: learning rate of D (Adam).
        d_betas: Adam betas of D.
        lambda_semi_adv: weight of the adversarial loss on unlabeled images (semi-supervised).
        lambda_semi: weight of the self-training loss on unlabeled images (semi-supervised).
        mask_threshold: D confidence above which an unlabeled pixel's own argmax is a target (with an
            image-level D, as in s4GAN, the whole image's).
        semi_method: 'hung' (Hung et al. 2018: adversarial loss on unlabeled predictions, per-pixel
            confidence mask) or 's4gan' (Mittal et al. 2019: feature matching instead, with the 'image'
            D; paper values: mask_threshold 0.6, lambda_semi 1.0, lambda_fm 0.1).
        lambda_fm: weight of s4GAN's feature-matching loss (semi_method 's4gan' only).
        semi_start: training batch (not optimizer step) from which the self-training loss is on.
        poly_power: poly schedule lr = base * (1 - batch / total_batches) ** power, for G and D.
        gradient_clip_val: clip G's and D's gradient norm to this value (null = off).
        channels_last: run G and D in the channels_last memory format (faster convolutions on
            recent GPUs and some CPUs).
        compile_models: torch.compile G and D (in place: checkpoint keys do not change). Measured slower
            than eager on an H100 (README, Benchmarks: gpu), so off by default.
        inference: validation/test/predict on the 'whole' image, or a sliding window ('slide') for
            models trained on crops.
        window: sliding window (height, width).
        stride: sliding window stride (height, width); overlapping logits are averaged.
        flip_tta: also run on the horizontally flipped image and average the logits.
        max_consecutive_skips: a non-finite G or D loss skips that optimizer step (counted in
            train/skipped_steps); this many skips in a row of G's steps, or of D's steps, stop the run
            with a message (the two are counted apart, so D's finite steps do not hide G's failures).
        d_every_n_batches: update D on every N-th batch only (1 = every batch).
        g_every_n_batches: update G on every N-th batch only (1 = every batch); with D every batch this
            is the "several D steps per G step" ratio. Other batches run G without gradients.
        label_flip: probability that a labeled image's real and fake maps swap roles in D's loss (noisy
            labels, a stabiliser when D wins too easily; 0 = off).
        instance_noise: std of Gaussian noise added to everything D sees (real and fake maps), a
            common stabiliser when D wins too easily (0 = off).
        collapse_patience: warn when D's accuracy on real vs fake stays above 99% or within 2
            points of 50% for this many batches in a row.
    """

    def __init__(
        self,
        num_classes: int = 19,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        arch: Arch = "Unet",
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        discriminator: DiscriminatorName | Callable[[int], nn.Module] = "fcn",
        spectral_norm: bool = False,
        adversarial_loss: AdversarialLoss = "bce",
        real_encoding: RealEncoding = "onehot",
        lambda_adv: float = 0.01,
        g_optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        g_lr: float = 2.5e-4,
        g_momentum: float = 0.9,
        g_weight_decay: float = 5e-4,
        d_lr: float = 1e-4,
        d_betas: tuple[float, float] = (0.9, 0.99),
        lambda_semi_adv: float = 0.001,
        lambda_semi: float = 0.1,
        mask_threshold: float = 0.2,
        semi_method: Literal["hung", "s4gan"] = "hung",
        lambda_fm: float = 0.1,
        semi_start: int = 5000,
        poly_power: float = 0.9,
        gradient_clip_val: float | None = None,
        channels_last: bool = False,
        compile_models: bool = False,
        inference: InferenceMode = "whole",
        window: tuple[int, int] = (512, 1024),
        stride: tuple[int, int] = (341, 683),
        flip_tta: bool = False,
        max_consecutive_skips: int = 10,
        d_every_n_batches: int = 1,
        g_every_n_batches: int = 1,
        label_flip: float = 0.0,
        instance_noise: float = 0.0,
        collapse_patience: int = 500,
    ):
        super().__init__()
        non_negative = {
            "lambda_adv": lambda_adv,
            "lambda_semi_adv": lambda_semi_adv,
            "lambda_semi": lambda_semi,
            "lambda_fm": lambda_fm,
            "semi_start": semi_start,
            "g_weight_decay": g_weight_decay,
            "poly_power": poly_power,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise UserError(f"model.{name}: {value} is below zero; expected a value >= 0.")
        for name, value in [("g_lr", g_lr), ("d_lr", d_lr), ("num_classes", num_classes)]:
            if value <= 0:
                raise UserError(f"model.{name}: {value} must be positive.")
        if not 0 <= mask_threshold <= 1:
            raise UserError(f"model.mask_threshold: {mask_threshold} is outside [0, 1]; expected a D confidence.")
        at_least_one = {"max_consecutive_skips": max_consecutive_skips, "d_every_n_batches": d_every_n_batches,
                        "g_every_n_batches": g_every_n_batches, "collapse_patience": collapse_patience}  # fmt: skip
        for name, value in at_least_one.items():
            if value < 1:
                raise UserError(f"model.{name}: {value} must be at least 1.")
        if not 0 <= label_flip < 0.5:
            raise UserError(f"model.label_flip: {label_flip} is outside [0, 0.5); expected a small probability.")
        if instance_noise < 0:
            raise UserError(f"model.instance_noise: {instance_noise} is below zero; expected a std >= 0.")
        if min(window) <= 0 or min(stride) <= 0:
            raise UserError(f"model.window {list(window)} and model.stride {list(stride)} must be positive.")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise UserError(f"model.gradient_clip_val: {gradient_clip_val} must be positive or null.")
        self.save_hyperparameters(ignore=[] if isinstance(discriminator, str) else ["discriminator"])
        self.automatic_optimization = False
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.lambda_adv, self.adversarial_loss, self.real_encoding = lambda_adv, adversarial_loss, real_encoding
        self.generator = build_generator(arch, encoder_name, encoder_weights, num_classes)
        # The supervised baseline has no D at all: same code path, nothing built, nothing run.
        self.discriminator: nn.Module | None = None
        if lambda_adv > 0:
            if isinstance(discriminator, str):
                self.discriminator = build_discriminator(discriminator, num_classes, spectral_norm)
            else:
                self.discriminator = discriminator(num_classes)
        if semi_method == "s4gan" and self.discriminator is not None and not hasattr(self.discriminator, "features"):
            raise UserError(
                "model.semi_method: 's4gan' matches D's features, but this discriminator has no "
                "features(probs, image) method; expected model.discriminator 'image' (or a class with one)."
            )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.generator.to(memory_format=torch.channels_last)
            if self.discriminator is not None:
                self.discriminator.to(memory_format=torch.channels_last)
        if compile_models:  # nn.Module.compile wraps the call only; parameters and state_dict keys stay
            self.generator.compile()
            if self.discriminator is not None:
                self.discriminator.compile()
        self.val_confmat = self._confmat()
        self.test_confmat = self._confmat()
        self.last_result: tuple[str, dict[str, torch.Tensor]] | None = None
        self.skipped_steps = 0  # non-finite losses (stability guard)
        self.consecutive_skips = {"g": 0, "d": 0}  # apart: a finite D step must not reset G's count
        self.void_batches = 0  # labeled batches without a single labelled pixel (no cross-entropy)
        self.collapse_streak = 0  # batches in a row with D at ~100% or ~50% accuracy

    def _confmat(self) -> MulticlassConfusionMatrix:
        return MulticlassConfusionMatrix(self.num_classes, ignore_index=self.ignore_index, validate_args=False)

    # ---- inference -------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised image -> [B, C, H, W] logits."""
        return self.generator(image)

    def predict_logits(self, image: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits for whole images of any size at `out_size` (default: the image size), with the
        configured inference mode (whole / sliding window) and flip averaging."""
        hp = self.hparams
        return predict_logits(self.generator, image, out_size, hp.inference, hp.window, hp.stride, hp.flip_tta,
                              self.memory_format)  # fmt: skip

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        # a plain batch, or {"labeled": batch, "unlabeled": batch} with the unlabeled stream
        labeled, unlabeled = (batch["labeled"], batch["unlabeled"]) if "labeled" in batch else (batch, None)
        if self.discriminator is None:
            unlabeled = None  # the semi-supervised losses need D
        image, target = labeled["image"], labeled["mask"]  # [B, 3, H, W] float, [B, H, W] int64
        if not (target != self.ignore_index).any():  # its cross-entropy is 0 (see losses.cross_entropy)
            self.void_batches += 1
        self.log("train/void_batches", float(self.void_batches))
        image = image.contiguous(memory_format=self.memory_format)
        optimizers = self.optimizers()
        g_opt, *d_opt = optimizers if isinstance(optimizers, list) else [optimizers]
        g_steps = self.discriminator is None or batch_idx % self.hparams.g_every_n_batches == 0
        with torch.set_grad_enabled(g_steps):  # no G step on this batch: D's fakes need no graph
            logits = whole(self.generator, image, self.memory_format)  # [B, C, H, W], once for both steps
            probs = logits.softmax(1)
            u_image = u_logits = u_probs = None
            if unlabeled is not None:
                u_image = unlabeled["image"].contiguous(memory_format=self.memory_format)  # [Bu, 3, H, W]
                u_logits = whole(self.generator, u_image, self.memory_format)  # [Bu, C, H, W]
                u_probs = u_logits.softmax(1)
        if self.discriminator is not None and batch_idx % self.hparams.d_every_n_batches == 0:
            u_fake = None if u_probs is None else u_probs.detach()
            self.discriminator_step(d_opt[0], image, target, probs.detach(), u_image, u_fake)
        if g_steps:
            self.generator_step(g_opt, image, target, logits, probs, u_image, u_logits, u_probs)
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    def discriminator_step(self, d_opt, image, target, fake, u_image=None, u_fake=None) -> None:
        """real = encoded labels; fake = G's labeled predictions (+ unlabeled ones), all detached."""
        with self.toggled_optimizer(d_opt):  # G's parameters need no gradient here
            real = encode_real(target, fake, self.ignore_index, self.real_encoding)  # [B, C, H, W]
            maps, images = [real, fake], [image, image]
            if u_fake is not None:
                maps.append(u_fake)
                images.append(u_image)
            d_logits = self.discriminator(
                self._noisy(torch.cat(maps)), torch.cat(images)
            )  # one forward: [2B+Bu, 1, ...]
            real_logits, fake_logits = d_logits[: len(image)], d_logits[len(image) :]
            weight = valid_mask(target, self.ignore_index, real_logits)  # void pixels of the labeled images
            fake_weight = torch.cat([weight, torch.ones_like(fake_logits[len(image) :])])
            loss_real, loss_fake = self._flip_labels(real_logits, fake_logits)
            loss_d = discriminator_loss(loss_real, loss_fake, self.adversarial_loss, weight, fake_weight)
            self._update(d_opt, loss_d, self.discriminator, "d")
        with torch.no_grad():
            d_real = (torch.sigmoid(real_logits) * weight).sum() / weight.sum().clamp(min=1)
            d_fake = (torch.sigmoid(fake_logits) * fake_weight).sum() / fake_weight.sum().clamp(min=1)
            right = ((real_logits > 0) * weight).sum() + ((fake_logits < 0) * fake_weight).sum()
            d_accuracy = right / (weight.sum() + fake_weight.sum()).clamp(min=1)
        self._watch_collapse(float(d_accuracy))
        self.log_dict({"train/loss_d": loss_d.detach(), "train/d_real": d_real, "train/d_fake": d_fake,
                       "train/d_accuracy": d_accuracy})  # fmt: skip

    def generator_step(self, g_opt, image, target, logits, probs, u_image=None, u_logits=None, u_probs=None):
        with self.toggled_optimizer(g_opt):  # D's parameters are frozen: gradients flow to G only
            loss_ce = cross_entropy(logits, target, self.ignore_index)  # 0, not NaN, on an all-void batch
            loss_g = loss_ce
            if self.discriminator is not None:
                fake_logits = self.discriminator(self._noisy(probs), image)
                weight = valid_mask(target, self.ignore_index, fake_logits)
                loss_adv = generator_adversarial_loss(fake_logits, self.adversarial_loss, weight)
                loss_g = loss_g + self.lambda_adv * loss_adv
                self.log("train/loss_adv", loss_adv.detach())
            if u_logits is not None:
                loss_g = loss_g + self.semi_supervised_loss(u_image, u_logits, u_probs, image, target, probs)
            self._update(g_opt, loss_g, self.generator, "g")
        self.log("train/loss_ce", loss_ce.detach(), prog_bar=True)
        self.log("train/loss_g", loss_g.detach())

    def semi_supervised_loss(self, u_image, u_logits, u_probs, image, target, probs) -> torch.Tensor:
        """Unlabeled images: an adversarial term (Hung) or feature matching (s4GAN), and self-training
        on the argmax where D is confident. image/target/probs: the labeled batch (real maps for s4GAN)."""
        hp = self.hparams
        u_d = self.discriminator(u_probs, u_image)  # [Bu, 1, H, W] (or [Bu, 1, 1, 1] for an image D)
        if hp.semi_method == "s4gan":
            real = encode_real(target, probs.detach(), self.ignore_index, self.real_encoding)  # [B, C, H, W]
            real_features = self.discriminator.features(real, image).mean(0)  # [F]
            fake_features = self.discriminator.features(u_probs, u_image).mean(0)  # [F]
            loss_unlabeled = (real_features.detach() - fake_features).abs().mean()
            weight, name = hp.lambda_fm, "train/loss_fm"
        else:
            loss_unlabeled = generator_adversarial_loss(u_d, self.adversarial_loss, torch.ones_like(u_d))
            weight, name = hp.lambda_semi_adv, "train/loss_semi_adv"
        with torch.no_grad():
            confident = torch.sigmoid(u_d) > hp.mask_threshold  # D says "looks like ground truth"
            if confident.shape[-2:] != u_logits.shape[-2:]:  # patch/image D: spread over the pixels
                confident = F.interpolate(confident.float(), size=u_logits.shape[-2:], mode="nearest").bool()
            confident = confident[:, 0]  # [Bu, H, W]
            pseudo = torch.where(confident, u_logits.argmax(1), self.ignore_index)  # [Bu, H, W]
        batches_done = self.trainer.fit_loop.epoch_loop.total_batch_idx  # batches, not optimizer steps
        if batches_done >= hp.semi_start:  # 0 where D trusts no pixel
            loss_semi = cross_entropy(u_logits, pseudo, self.ignore_index)
        else:
            loss_semi = u_logits.new_zeros(())
        self.log_dict(
            {
                name: loss_unlabeled.detach(),
                "train/loss_semi": loss_semi.detach(),
                "train/semi_mask_ratio": confident.float().mean(),
            }
        )
        return weight * loss_unlabeled + hp.lambda_semi * loss_semi

    def _update(self, optimizer, loss: torch.Tensor, module: nn.Module, which: str) -> None:
        """Backward, clip, step; a non-finite loss skips the step (on every process alike)."""
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if finite:
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            self.log(f"train/grad_norm_{which}", self._clip(optimizer, module))
            optimizer.step()
            self.consecutive_skips[which] = 0
        else:
            self.skipped_steps += 1
            self.consecutive_skips[which] += 1
            if self.consecutive_skips[which] >= self.hparams.max_consecutive_skips:
                raise TrainingDiverged(
                    f"training stopped: {self.consecutive_skips[which]} {which.upper()} optimizer steps in a row "
                    "had a non-finite loss (the last at batch "
                    f"{self.trainer.fit_loop.epoch_loop.total_batch_idx}). Expected finite losses: lower the "
                    "learning rates, set model.gradient_clip_val, or try trainer.precision 32 "
                    "(model.max_consecutive_skips sets the patience)."
                )
        self.log("train/skipped_steps", float(self.skipped_steps))

    def _flip_labels(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With probability label_flip per labeled image, its real and fake logits swap places in D's
        loss (same image, same valid pixels, so the weights stay put). Unlabeled fakes never flip."""
        if self.hparams.label_flip == 0:
            return real_logits, fake_logits
        count = len(real_logits)
        flip = torch.rand(count, device=real_logits.device) < self.hparams.label_flip  # [B]
        flip = flip.view(-1, *[1] * (real_logits.dim() - 1))
        labeled_fake = fake_logits[:count]
        swapped_fake = torch.cat([torch.where(flip, real_logits, labeled_fake), fake_logits[count:]])
        return torch.where(flip, labeled_fake, real_logits), swapped_fake

    def _noisy(self, maps: torch.Tensor) -> torch.Tensor:
        std = self.hparams.instance_noise
        return maps + std * torch.randn_like(maps) if std > 0 and self.training else maps

    def _watch_collapse(self, d_accuracy: float) -> None:
        stuck = d_accuracy > 0.99 or abs(d_accuracy - 0.5) < 0.02
        self.collapse_streak = self.collapse_streak + 1 if stuck else 0
        if self.collapse_streak == self.hparams.collapse_patience:
            state = "wins every pixel (accuracy > 99%)" if d_accuracy > 0.99 else "is guessing (accuracy ~50%)"
            rank_zero_warn(
                f"the discriminator {state} for {self.collapse_streak} batches in a row: the adversarial "
                "signal may be useless; consider instance_noise, spectral_norm, d_every_n_batches or d_lr."
            )

    def _clip(self, optimizer, module: nn.Module) -> torch.Tensor:
        """Clip (if configured) and return the gradient norm before clipping, for the GAN-health plots."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if self.hparams.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")  # fmt: skip
        return norm.detach()

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy):
            find_unused_parameters(strategy)  # however Lightning arrived at DDP (auto, ddp_spawn, class path...)
        elif isinstance(strategy, ParallelStrategy):
            raise UserError(
                f"trainer.strategy: {type(strategy).__name__} is not supported: SegGAN alternates two optimizers "
                "with manual optimisation. Expected a DDP strategy for several devices or nodes (ddp, ddp_spawn, "
                "ddp_fork, ddp_notebook, or strategy auto with devices > 1)."
            )

    # Options whose change alters the stored tensors (names or shapes); the rest only change evaluation or
    # training and are taken from the run's own configuration, never from the checkpoint.
    STRUCTURE = ("arch", "encoder_name", "num_classes", "discriminator", "spectral_norm", "lambda_adv")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint whose tensors do not fit this model, naming the option that differs."""
        stored, own = checkpoint.get("state_dict", {}), self.state_dict()
        misfit = sorted(set(stored) ^ set(own)) + [k for k in own if k in stored and stored[k].shape != own[k].shape]
        saved = checkpoint.get("hyper_parameters", {})
        if saved.get("num_classes", self.num_classes) != self.num_classes:
            raise UserError(f"ckpt_path: the checkpoint was trained for {saved['num_classes']} classes, but the data "
                            f"has {self.num_classes}. Expected a checkpoint trained on this dataset.")  # fmt: skip
        if not misfit:
            if self._trainer is not None and self.trainer.state.fn == "fit":
                self._check_resume(saved)
            return
        differs = []
        for name in self.STRUCTURE:
            theirs, ours = saved.get(name), self.hparams.get(name)
            if name == "lambda_adv" and theirs is not None and (theirs > 0) != (ours > 0):
                differs.append(f"model.lambda_adv is {ours} here but {theirs} in the checkpoint (which "
                               f"{'has' if theirs > 0 else 'has no'} discriminator)")  # fmt: skip
            elif name != "lambda_adv" and name in saved and theirs != ours:
                differs.append(f"model.{name} is {ours!r} here but {theirs!r} in the checkpoint")
        found = "; ".join(differs) or f"{len(misfit)} tensors differ in name or shape (e.g. {misfit[:3]})"
        raise UserError(
            f"ckpt_path: the checkpoint's weights do not fit this model: {found}. Expected the options the "
            "checkpoint was trained with (its run folder holds them in config.yaml: --config <run folder>/config.yaml)."
        )

    # Options a resumed run may change: evaluation, speed and guards. Any other difference would be silently
    # undone by the restored optimizer and scheduler states, or would make a different experiment.
    FREE_ON_RESUME = ("inference", "window", "stride", "flip_tta", "channels_last", "compile_models", "encoder_weights",
                      "max_consecutive_skips", "collapse_patience", "class_names")  # fmt: skip

    def _check_resume(self, saved: dict) -> None:
        def plain(value):
            return list(value) if isinstance(value, tuple) else value

        changed = []
        for name, value in saved.items():
            if name in self.hparams and name not in self.FREE_ON_RESUME and plain(value) != plain(self.hparams[name]):
                changed.append(f"model.{name} is {self.hparams[name]!r} here but {value!r} in the checkpoint")
        if changed:
            raise UserError(
                f"ckpt_path: resuming a run with other training options: {'; '.join(changed)}. Expected the options "
                "the run was trained with (evaluation and speed options may differ); to fine-tune from these "
                "weights with new options, start a new run from them instead."
            )

    def configure_optimizers(self):
        hp = self.hparams
        g_params = self.generator.parameters()
        if hp.g_optimizer == "sgd":
            g_opt = torch.optim.SGD(g_params, lr=hp.g_lr, momentum=hp.g_momentum, weight_decay=hp.g_weight_decay)
        else:
            g_cls = torch.optim.Adam if hp.g_optimizer == "adam" else torch.optim.AdamW
            g_opt = g_cls(g_params, lr=hp.g_lr, weight_decay=hp.g_weight_decay)
        optimizers = [g_opt]
        if self.discriminator is not None:
            optimizers.append(torch.optim.Adam(self.discriminator.parameters(), lr=hp.d_lr, betas=tuple(hp.d_betas)))
        total = self.total_batches()

        def poly(batch: int) -> float:
            return (1 - min(batch, total) / total) ** hp.poly_power if math.isfinite(total) else 1.0

        return optimizers, [torch.optim.lr_scheduler.LambdaLR(opt, poly) for opt in optimizers]

    def total_batches(self) -> float:
        """Training batches in the whole run (what the poly schedule counts).

        `trainer.max_steps` counts optimizer steps, two per batch for a GAN, so it is halved.
        """
        if self._trainer is None:
            return math.inf
        total = self.trainer.estimated_stepping_batches
        if self.trainer.max_steps > 0:
            total = min(total, math.ceil(self.trainer.max_steps / (2 if self.discriminator is not None else 1)))
        return max(1, total)

    # ---- evaluation ------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.predict_logits(batch["image"], batch["mask"].shape[-2:])
        self.val_confmat.update(logits.argmax(1), batch["mask"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.predict_logits(batch["image"], batch["mask"].shape[-2:])
        self.test_confmat.update(logits.argmax(1), batch["mask"])

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # the mask of a prediction item is all void but has the original image size
        return self.predict_logits(batch["image"], batch["mask"].shape[-2:]).argmax(1)  # [B, H, W] train ids

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_confmat)
        if self.trainer.state.fn == "validate":
            self.print_table()

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_confmat)
        self.print_table()

    def on_fit_end(self) -> None:
        self.print_table()

    def _log_scores(self, split: str, confmat: MulticlassConfusionMatrix) -> None:
        counts = confmat.compute()  # [C, C], summed over processes under DDP
        confmat.reset()
        result = scores(counts) | {"confmat": counts.cpu()}
        if self.trainer.sanity_checking:
            return
        metrics = {f"{split}/mIoU": result["miou"], f"{split}/pixel_acc": result["pixel_acc"]}
        for name, iou in zip(self.class_names, result["iou"], strict=True):
            if not iou.isnan():  # a class absent from labels and predictions has no IoU
                metrics[f"{split}/IoU/{name}"] = iou
        self.log_dict({k: v.float() for k, v in metrics.items()})
        self.last_result = (f"{split}, epoch {self.current_epoch}", result)

    @rank_zero_only
    def print_table(self) -> None:
        if self.last_result is None:
            print("\nNo validation ran, so there is no per-class IoU table (see trainer.check_val_every_n_epoch).")
        else:
            where, result = self.last_result
            print("\n" + iou_table(self.class_names, result, f"Per-class IoU ({where})"), flush=True)

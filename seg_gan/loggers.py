"""Experiment tracking: Lightning's W&B logger, made to record offline instead of prompting or failing.

Without an API key (or when going online fails) the run is recorded offline in
`<save_dir>/wandb/offline-run-*` (upload later with `wandb sync`); `val/mIoU` is summarised as its max;
the run is finished at the end, so a second run in the same process or folder starts clean.
"""

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from seg_gan.lightning_private import forget_wandb_run, wandb_init_settings, wandb_run


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger (same arguments) that records offline instead of prompting or failing.

    Offline (no API key, going online failed, `offline`, `mode: offline`), `log_model` still logs the
    checkpoints: as artifacts of the offline run, copied into `$WANDB_DATA_DIR/artifacts/staging` until
    `wandb sync` uploads them (one warning says so).

    Args:
        name: run name shown in W&B.
        save_dir: folder for W&B's files and the run folders (checkpoints, config.yaml).
        project: W&B project.
        group: W&B group (e.g. one per experiment arm).
        tags: W&B tags.
        offline: record offline (upload later with `wandb sync <save_dir>/wandb/offline-run-*`).
        log_model: log checkpoints as W&B artifacts (`true`: at the end, `all`: as saved).
        **kwargs: Lightning's (`id`, `prefix`, ...) and `wandb.init`'s (`entity`, `resume`, `mode`, ...).
    """

    def __init__(self, name: str | None = None, save_dir: str = "runs", project: str = "seg_gan",
                 group: str | None = None, tags: list[str] | None = None, offline: bool = False,
                 log_model: bool | str = False, **kwargs):  # fmt: skip
        mode = "offline" if offline else kwargs.get("mode") or os.environ.get("WANDB_MODE")
        reason = "offline=True" if offline else f"mode {mode!r}"
        if mode in (None, "online") and not has_wandb_credentials():
            mode, reason = "offline", "no W&B API key found"  # no account here: record locally, never prompt
        if mode == "disabled" and log_model:  # W&B would still copy every checkpoint into its staging folder
            rank_zero_warn(f"W&B is disabled (mode 'disabled'): log_model={log_model!r} is ignored.")
            log_model = False
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        # W&B's own `mode`, not Lightning's `offline`: that refuses log_model (W&B keeps artifacts of offline
        # runs) and sets WANDB_MODE for the rest of the process. (Set in place: jsonargparse reads the
        # accepted **kwargs from how they are passed on.)
        kwargs["mode"] = mode
        super().__init__(name=name, save_dir=save_dir, project=project, log_model=log_model, group=group, tags=tags,
                         **kwargs)  # fmt: skip
        self.logs_models = log_model
        if mode in ("offline", "dryrun"):
            self._warn_artifacts_offline(reason)

    def _warn_artifacts_offline(self, reason: str) -> None:
        if self.logs_models:
            from wandb.env import get_data_dir

            rank_zero_warn(f"W&B records this run offline ({reason}); log_model={self.logs_models!r} keeps the "
                           f"checkpoints as artifacts of the offline run, copied into {get_data_dir()}/artifacts/"
                           f"staging (WANDB_DATA_DIR) until `wandb sync {self.save_dir}/wandb/offline-run-*` "
                           "uploads them.")  # fmt: skip

    @property
    @rank_zero_experiment
    def experiment(self):
        if wandb_run(self) is None:
            try:
                run = super().experiment  # creates the run
            except Exception as error:  # no network, server down, bad key: keep training, offline
                rank_zero_warn(f"W&B could not start online ({error}); recording offline instead.")
                wandb_init_settings(self)["mode"] = "offline"
                self._warn_artifacts_offline("going online failed")
                run = super().experiment
            if hasattr(run, "define_metric"):
                run.define_metric("val/mIoU", summary="max")
        return wandb_run(self)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if wandb_run(self) is not None:
            wandb_run(self).finish()
            forget_wandb_run(self)  # a later fit/validate in this process starts a new run

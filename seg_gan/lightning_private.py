"""Every use of a private Lightning name, in one place.

Lightning offers no public way to do these things; `tests/test_lightning_private.py` fails loudly
when a Lightning upgrade renames or changes what they rely on.

- `DDPStrategy._ddp_kwargs`: the keyword arguments DDP wraps the model with. Each training batch runs
  two backward passes (D step, G step), each leaving the other network without gradients, so DDP must
  find unused parameters whichever way the strategy was chosen (`auto` with several devices, `ddp`,
  `ddp_spawn`, `ddp_fork`, `ddp_notebook`, a `DDPStrategy` given by class path). Lightning's registered
  `*_find_unused_parameters_true` names cover strings only.
- `LightningCLI._parse_ckpt_path`: Lightning replaces the model options given on the command line or in
  a config with the hyperparameters stored in the checkpoint. `seg_gan.cli.SegGANCLI` overrides it, so
  what the user gives wins, and `SegGAN.on_load_checkpoint` refuses options that do not fit the weights.
- `WandbLogger._experiment` and `._wandb_init`: the W&B run Lightning's logger made (None until then) and
  the settings it makes it with. `seg_gan.loggers.WandbLogger` finishes the run at the end (a second fit
  in one process then starts a new run) and, when going online fails, makes it offline instead.
"""

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy

CLI_HPARAMS_HOOK = "_parse_ckpt_path"  # the LightningCLI method that applies a checkpoint's hyperparameters


def find_unused_parameters(strategy: DDPStrategy) -> None:
    """Make `strategy` wrap the model with DDP(find_unused_parameters=True) (before it wraps it)."""
    strategy._ddp_kwargs["find_unused_parameters"] = True


def cli_applies_checkpoint_hparams() -> bool:
    """True while LightningCLI still has the hook that `SegGANCLI` overrides."""
    return callable(getattr(LightningCLI, CLI_HPARAMS_HOOK, None))


def wandb_run(logger: WandbLogger):
    """The logger's W&B run, or None before it was made (reading `logger.experiment` would make it)."""
    return logger._experiment


def forget_wandb_run(logger: WandbLogger) -> None:
    """The next `logger.experiment` makes a new run."""
    logger._experiment = None


def wandb_init_settings(logger: WandbLogger) -> dict:
    """The keyword arguments the logger passes to `wandb.init` (mutable until the run is made)."""
    return logger._wandb_init

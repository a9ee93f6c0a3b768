"""The private Lightning names seg_gan relies on (seg_gan/lightning_private.py) still mean what they did.

When one of these fails after a Lightning upgrade, fix seg_gan/lightning_private.py before anything else:
the behaviour tests that depend on it are test_ddp_fit_keeps_g_and_d_identical_on_both_processes,
test_evaluation_options_given_with_a_checkpoint_win and the W&B tests in test_loggers.py.
"""

import inspect

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.strategies import DDPStrategy

from seg_gan.cli import SegGANCLI
from seg_gan.lightning_private import (
    CLI_HPARAMS_HOOK,
    cli_applies_checkpoint_hparams,
    find_unused_parameters,
    forget_wandb_run,
    wandb_init_settings,
    wandb_run,
)


def test_ddp_strategy_wraps_the_model_with_its_ddp_kwargs():
    strategy = DDPStrategy(find_unused_parameters=False)
    find_unused_parameters(strategy)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True}
    assert "DistributedDataParallel(module=model, device_ids=device_ids, **self._ddp_kwargs)" in inspect.getsource(
        DDPStrategy._setup_model
    )


def test_lightning_cli_still_applies_checkpoint_hparams_through_the_overridden_hook():
    assert cli_applies_checkpoint_hparams()
    source = inspect.getsource(LightningCLI)
    assert f"self.{CLI_HPARAMS_HOOK}()" in source  # called while parsing
    assert "hyper_parameters" in inspect.getsource(getattr(LightningCLI, CLI_HPARAMS_HOOK))
    assert CLI_HPARAMS_HOOK in vars(SegGANCLI)  # seg_gan's override is in place


def test_wandb_logger_keeps_its_run_and_init_settings_where_seg_gan_reads_them(tmp_path):
    logger = LightningWandbLogger(save_dir=str(tmp_path), project="p", mode="disabled")
    assert wandb_run(logger) is None and wandb_init_settings(logger)["project"] == "p"
    source = inspect.getsource(LightningWandbLogger.experiment.fget)
    assert "self._experiment = wandb.init(**self._wandb_init)" in source
    logger._experiment = object()
    forget_wandb_run(logger)
    assert logger._experiment is None

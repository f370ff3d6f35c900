"""`DsumCLI`: LightningCLI with dsum's links, defaults, run directory, W&B fallback and config saving."""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from dsum.callbacks import RUN_RECORD, OptionalEarlyStopping, RunOutputs, SubmissionWriter
from dsum.data import DialogueDataModule
from dsum.files import atomic_write_text, read_json
from dsum.models import SummarizerBase
from dsum.secrets import redact
from dsum.sweep.pruning import pruning_callbacks
from dsum.tracking import default_wandb_logger, ensure_wandb_mode

CONFIG_NAME = "config.yaml"


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config as ``<run dir>/config.yaml`` (overwriting a reused directory) with
    secrets masked, and logs the same config to the logger. Rank 0 only."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            config = redact(self.parser.dump(self.config, skip_none=False, format="yaml"))
            atomic_write_text(Path(trainer.default_root_dir) / CONFIG_NAME, config)
            for logger in trainer.loggers:
                logger.log_hyperparams(redact(yaml.safe_load(config)))
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class DsumCLI(LightningCLI):
    """``python main.py {fit,validate,test,predict} --config configs/<model>.yaml [--key=value ...]``."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        # main.py always passes the (rewritten) argv explicitly; LightningCLI's warning about that would
        # also echo the raw command line, credentials included.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        super().__init__(
            model_class=SummarizerBase,
            subclass_mode_model=True,
            datamodule_class=DialogueDataModule,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=42,
            trainer_defaults={
                "default_root_dir": "outputs/run",
                # dsum's batch sampler shards for DDP itself (equal batch counts on every rank).
                "use_distributed_sampler": False,
                "log_every_n_steps": 10,
            },
            auto_configure_optimizers=False,
            parser_kwargs={"default_env": False},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/rouge_mean",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-epoch{epoch}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(OptionalEarlyStopping, "early_stopping")
        parser.add_lightning_class_args(RunOutputs, "outputs")
        parser.add_lightning_class_args(SubmissionWriter, "submission")
        # One tokenizer: named by the model, built (with the data's masks) by the data, given to the model.
        parser.link_arguments("model.init_args.pretrained", "data.tokenizer_name")
        parser.link_arguments("data.tokenizer", "model.init_args.tokenizer", apply_on="instantiate")
        parser.link_arguments("model.init_args.trust_remote_code", "data.trust_remote_code")
        # One seed: batch shuffling follows `seed_everything` (a sweep's `seed` changes both).
        parser.link_arguments("seed_everything", "data.seed", compute_fn=lambda seed: seed if type(seed) is int else 42)
        parser.link_arguments(
            "trainer.default_root_dir", "checkpoint.dirpath", compute_fn=lambda d: str(Path(d) / "checkpoints")
        )

    def before_instantiate_classes(self) -> None:
        ensure_wandb_mode()
        self.run_id, self.resuming = self._run_identity(self._subcommand_config())

    def _subcommand_config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    @staticmethod
    def _run_identity(config: Namespace) -> tuple[str, bool]:
        """The run id: the sweep agent's, the interrupted run's when resuming, or a new one."""
        record_path = Path(config.trainer.default_root_dir) / RUN_RECORD
        resuming = bool(config.get("ckpt_path")) and record_path.is_file()
        previous = read_json(record_path).get("run_id") if resuming else None
        return os.environ.get("WANDB_RUN_ID") or previous or uuid.uuid4().hex[:8], resuming

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Trainer:
        if config.get("logger") in (None, True):  # Lightning's own default would be TensorBoard/CSV
            config["logger"] = default_wandb_logger(config["default_root_dir"], self.run_id, self.resuming)
        callbacks = [*callbacks, *pruning_callbacks()]  # reports to a local sweep's study, when in one
        trainer = super()._instantiate_trainer(config, callbacks)
        for callback in trainer.callbacks:
            if isinstance(callback, RunOutputs):
                callback.run_id = self.run_id
        return trainer

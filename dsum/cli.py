"""`DsumCLI`: LightningCLI with dsum's links, defaults, run directory, W&B fallback and config saving."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
import warnings
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from dsum.callbacks.divergence import NonFiniteLossGuard
from dsum.callbacks.early_stopping import OptionalEarlyStopping
from dsum.callbacks.export import BestModelExport
from dsum.callbacks.interrupt import InterruptHandler, take_slurm_requeue_signal
from dsum.callbacks.last import LastCheckpoint
from dsum.callbacks.record import RUN_RECORD, RunRecord
from dsum.callbacks.rng import RandomStateCheckpoint
from dsum.callbacks.submission import SubmissionWriter
from dsum.constants import LAST_NAME, MONITOR
from dsum.data import DialogueDataModule
from dsum.infra.checkpoint_io import AtomicCheckpointIO
from dsum.infra.files import atomic_write_text, read_json
from dsum.models import SummarizerBase
from dsum.eval.inference_settings import (
    INFERENCE_FILE, apply_saved_settings, given_keys, saved_inference_settings,
)
from dsum.infra.run_checks import check_checkpoint_fits, check_run_dir, resolve_ckpt_path
from dsum.infra.secrets import redact
from dsum.infra.tracking import default_wandb_logger, ensure_wandb_mode

CONFIG_NAME = "config.yaml"
INPUT_LAYOUT = ("encoder_max_len", "decoder_max_len", "source_prefix", "source_suffix")


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
    """``python main.py {fit,validate,test,predict} --config configs/<model>.yaml [--key=value ...]``.

    Args:
        args: The command line (without the program name).
        run: Run the subcommand after instantiating (LightningCLI's ``run``).
        extra_callbacks: Callbacks added to the trainer's own (the entry point adds a sweep trial's here).
        config_hooks: Functions called on the parsed, typed config of the subcommand before any class is
            instantiated; they may change it in place (the entry point adds a sweep trial's rules here).
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, extra_callbacks: Sequence[Callback] = (),
                 config_hooks: Sequence[Callable[[Namespace], None]] = ()) -> None:
        self.extra_callbacks = list(extra_callbacks)
        self.config_hooks = list(config_hooks)
        # What the command line sets beats what an export carries.
        self.given_args = list(args) if args is not None else sys.argv[1:]
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
                # One device unless asked: Lightning's `auto` would start DDP on every visible GPU, multiplying the
                # effective batch under the same learning rate. Several: --trainer.devices=N.
                "devices": 1,
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
            "checkpoint.monitor": MONITOR,
            "checkpoint.mode": "max",
            "checkpoint.save_last": False,  # last.ckpt is `last_checkpoint`'s, written whatever the metric does
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-epoch{epoch}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(OptionalEarlyStopping, "early_stopping")
        parser.add_lightning_class_args(NonFiniteLossGuard, "divergence")
        parser.add_lightning_class_args(BestModelExport, "outputs")
        parser.add_lightning_class_args(SubmissionWriter, "submission")
        # One tokenizer: named by the model, built (with the data's masks) by the data, given to the model.
        parser.link_arguments("model.init_args.pretrained", "data.tokenizer_name")
        parser.link_arguments("data.tokenizer", "model.init_args.tokenizer", apply_on="instantiate")
        parser.link_arguments("model.init_args.trust_remote_code", "data.trust_remote_code")
        # The data's lengths and affixes, so the model checks its limits when it is built.
        parser.link_arguments(tuple(f"data.{name}" for name in INPUT_LAYOUT), "model.init_args.input_layout",
                              compute_fn=_input_layout)
        # One seed: batch shuffling follows `seed_everything` (a sweep's `seed` changes both).
        parser.link_arguments("seed_everything", "data.seed", compute_fn=lambda seed: seed if type(seed) is int else 42)
        for target in ("checkpoint.dirpath", "last_checkpoint.dirpath"):
            parser.link_arguments("trainer.default_root_dir", target, compute_fn=lambda d: str(Path(d) / "checkpoints"))

    def before_instantiate_classes(self) -> None:
        ensure_wandb_mode()
        config = self.config[self.subcommand] if self.subcommand else self.config
        for hook in self.config_hooks:
            hook(config)
        # The data's layout follows the model family, set once here from the model class.
        module_name, _, class_name = config.model.class_path.rpartition(".")
        model_class = getattr(importlib.import_module(module_name), class_name)
        config.data.decoder_only = bool(getattr(model_class, "decoder_only", False))
        # Before anything is written: a usable run directory, and the checkpoint named by --ckpt_path.
        check_run_dir(config.trainer.default_root_dir)
        take_slurm_requeue_signal()  # under SLURM: before the model loads, so no stage is left to Lightning's
        if self.subcommand == "fit" and requeued_slurm_resume(config):
            config.ckpt_path = "last"
        self.checkpoint_file = resolve_ckpt_path(config.get("ckpt_path"), config.trainer.default_root_dir)
        if self.subcommand in ("validate", "test", "predict"):
            _use_export_settings(config, given_keys(self.given_args))
        self.run_id, self.resuming = self._run_identity(config)

    def _check_checkpoint(self) -> None:
        """A checkpoint of another family, size or LoRA setting stops the run before its record is touched."""
        if self.checkpoint_file is not None:
            check_checkpoint_fits(self.checkpoint_file, self.model)

    before_fit = before_validate = before_test = before_predict = _check_checkpoint

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
        callbacks = [*callbacks, RunRecord(self.run_id, self.resuming), InterruptHandler(), RandomStateCheckpoint(),
                     *self.extra_callbacks]
        config["plugins"] = _with_atomic_checkpoints(config.get("plugins"))
        return super()._instantiate_trainer(config, callbacks)


def _use_export_settings(config: Namespace, given: set[str]) -> None:
    """An export's inference settings (``dsum_inference.json``), except those ``given`` on the command line."""
    saved = saved_inference_settings(config.model.init_args.pretrained) or {}
    taken = apply_saved_settings(config.model.init_args, saved, given)
    if taken:
        rank_zero_info(f"dsum: from {config.model.init_args.pretrained}/{INFERENCE_FILE}: {', '.join(taken)}")


def requeued_slurm_resume(config: Namespace) -> bool:
    """Whether this is a requeued SLURM job (``SLURM_RESTART_COUNT`` >= 1) of a ``fit`` whose run directory holds
    ``last.ckpt``, to resume from (the requeue's ``--ckpt_path``, if any, is where the first attempt started)."""
    if "ckpt_path" not in config or config.ckpt_path == "last":
        return False
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1 or not os.environ.get("SLURM_JOB_ID"):
        return False
    last = Path(config.trainer.default_root_dir) / "checkpoints" / LAST_NAME
    if not last.is_file():
        return False
    rank_zero_info(f"dsum: requeued SLURM job (restart {os.environ['SLURM_RESTART_COUNT']}): resuming from {last}"
                   + (f" instead of --ckpt_path {config.ckpt_path}" if config.ckpt_path else ""))
    return True


def _with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The trainer's plugins plus :class:`AtomicCheckpointIO`, unless a config chose its own CheckpointIO."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def _input_layout(*values: Any) -> dict[str, Any]:
    """``model.input_layout`` from the ``data.*`` options (a mapping, which jsonargparse types as InputLayout)."""
    return dict(zip(INPUT_LAYOUT, values))

"""Instruction / chat LLM summarizer: LoRA and QLoRA fine-tuning through peft (SOLAR, Qwen2.5, EXAONE, Llama)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers.optimization import get_scheduler

from dsum.data.prompts import saved_template, stop_token_ids
from dsum.data.text import MASK_PATTERN
from dsum.models.base import InputLayout, SummarizerBase
from dsum.models.causal import CausalLMSummarizer

Quantization = Literal["nf4", "fp4", "int8"]
ComputeDtype = Literal["bfloat16", "float16", "float32"]
InstructOptimizer = Literal["adamw", "adafactor", "paged_adamw_8bit"]
ADAPTER_CONFIG = "adapter_config.json"
PROMPT_FILE = "prompt_template.json"
MERGED_DIR = "merged"


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft ``LoraConfig``).

    Args:
        r: Rank of the update matrices.
        alpha: Scaling numerator (``lora_alpha``); the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter's input.
        target_modules: Module names to adapt, or ``all-linear``: every linear projection (q/k/v/o,
            gate/up/down) except the output head.
        bias: Train no biases (``none``), all (``all``) or the adapted layers' (``lora_only``).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"


def is_adapter_dir(path: str) -> bool:
    """Whether ``path`` is a local peft adapter directory (it holds ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def check_bitsandbytes(quantization: str | None, optimizer: str, lora: LoraSettings | None) -> None:
    """Refuse, before any weights load, a setting bitsandbytes cannot run here, saying why and what to do.

    Raises:
        ValueError: quantization without LoRA (a quantized base cannot be fully fine-tuned).
        RuntimeError: no CUDA device, or bitsandbytes not installed.
    """
    if quantization is not None and lora is None:
        raise ValueError(f"model.quantization={quantization} needs model.lora: a quantized base model cannot be "
                         "fully fine-tuned; set model.lora (QLoRA) or model.quantization=null")
    wanted = [f"model.quantization={quantization}"] if quantization else []
    if optimizer == "paged_adamw_8bit":
        wanted.append("model.optimizer=paged_adamw_8bit")
    if not wanted:
        return
    what = " and ".join(wanted)
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{what} needs bitsandbytes on a CUDA GPU, and this machine has no CUDA device "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). Run this config on a machine with "
            "an NVIDIA GPU and a CUDA build of torch, or train without bitsandbytes here: "
            "--model.quantization=null --model.optimizer=adamw (LoRA on the unquantized base)."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"{what} needs bitsandbytes, which is not installed: pip install 'dsum[qlora]' "
                           "(bitsandbytes>=0.43), or set --model.quantization=null --model.optimizer=adamw.")


class InstructSummarizer(CausalLMSummarizer):
    """Instruction/chat LLM summarizer with LoRA or QLoRA (peft), for SOLAR, Qwen2.5, EXAONE, Llama-style models.

    Examples are instruction prompts built by the data module (``data.prompt_template``: the tokenizer's chat
    template or a plain ``### Instruction`` template); the loss covers the summary and its end-of-turn token.
    Generation stops at eos or the end-of-turn token.

    With ``lora`` set, only the adapter is trained; masks that dsum adds to the tokenizer (``#Person1#``) get
    trainable embedding rows (and output-head rows when the head is untied) through peft's
    ``trainable_token_indices``. Checkpoints then hold only the trainable weights (plus optimizer state); the
    frozen base is reloaded from ``pretrained``. The best model is exported as a peft adapter directory
    (``adapter_config.json``, adapter weights, tokenizer, generation config, ``prompt_template.json``), which
    ``--model.pretrained`` accepts for ``validate``/``predict``.

    Args:
        pretrained: Hugging Face id or local directory of the base model, or a dsum adapter export
            (its ``adapter_config.json`` names the base, which is loaded first).
        optimizer: ``adamw``, ``adafactor`` or ``paged_adamw_8bit`` (bitsandbytes, CUDA only).
        lora: LoRA settings; ``null`` fully fine-tunes the model.
        quantization: Load the base through bitsandbytes: ``nf4`` or ``fp4`` (4-bit, double quantization)
            or ``int8``; ``null`` loads it unquantized. Needs CUDA and ``pip install 'dsum[qlora]'``.
        compute_dtype: Compute dtype of the quantized layers (and the dtype the base is loaded in when quantized).
        gradient_checkpointing: Recompute activations in the backward pass (less memory, ~30% slower).
        merge_on_export: Also write the adapter merged into the base as a full model (``best_model/merged``).
        **kwargs: The other settings of :class:`~dsum.models.base.SummarizerBase`.
    """

    decoder_only = True

    def __init__(
        self,
        pretrained: str,
        optimizer: InstructOptimizer = "adamw",
        lora: LoraSettings | None = LoraSettings(),
        quantization: Quantization | None = None,
        compute_dtype: ComputeDtype = "bfloat16",
        gradient_checkpointing: bool = False,
        merge_on_export: bool = False,
        **kwargs: Any,
    ) -> None:
        check_bitsandbytes(quantization, optimizer, lora)
        if merge_on_export and quantization is not None:
            raise ValueError("model.merge_on_export with model.quantization: merging into a quantized base loses "
                             "precision; export the adapter, then merge it into the bf16 base offline")
        self._lora = lora
        self._quantization = quantization
        self._compute_dtype = compute_dtype
        self._gradient_checkpointing = gradient_checkpointing
        self.parameter_counts: tuple[int, int] = (0, 0)
        super().__init__(pretrained, optimizer=optimizer, **kwargs)  # type: ignore[arg-type]
        # Wrapped after the base class has resized the embeddings and set the generation config.
        self.model = self._with_adapter(self.model, pretrained)
        self.parameter_counts = self._count_parameters(self.model)
        trainable, total = self.parameter_counts
        rank_zero_info(f"dsum: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")
        # peft's wrapper keeps its own attribute; generate() reads the base model's generation config.
        self._base().generation_config = self.generation_config()

    # --------------------------------------------------------------------------------- loading
    @property
    def adapter_only(self) -> bool:
        """Whether only an adapter (and token rows) is trained, so checkpoints hold only those."""
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def _base(self) -> PreTrainedModel:
        return self.model.get_base_model() if self.adapter_only else self.model

    def load_model(self, pretrained: str, trust_remote_code: bool) -> PreTrainedModel:
        adapter = is_adapter_dir(pretrained)
        base_name = pretrained
        if adapter:
            base_name = json.loads((Path(pretrained) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
            rank_zero_info(f"dsum: {pretrained} is an adapter; loading its base model {base_name}")
        model = AutoModelForCausalLM.from_pretrained(base_name, trust_remote_code=trust_remote_code,
                                                     **self.loading_kwargs(), **self._quantized_loading())
        base_rows = model.get_input_embeddings().num_embeddings
        if base_rows < len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        if self._quantization is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=self._gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif self._gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._base_rows, self._base_name = base_rows, base_name
        return model

    def _with_adapter(self, model: PreTrainedModel, pretrained: str) -> torch.nn.Module:
        """``model`` with the adapter of ``pretrained`` loaded (an adapter export), or a new LoRA adapter."""
        if is_adapter_dir(pretrained):
            from peft import PeftModel

            if self._lora is not None:
                rank_zero_info(f"dsum: continuing the adapter of {pretrained}; model.lora settings are not used")
            return PeftModel.from_pretrained(model, pretrained, is_trainable=True)
        if self._lora is None:
            return model
        from peft import get_peft_model

        wrapped = get_peft_model(model, self._lora_config(model, self._base_rows))
        if Path(self._base_name).is_dir():  # the adapter must find its base from any working directory
            wrapped.peft_config["default"].base_model_name_or_path = str(Path(self._base_name).resolve())
        return wrapped

    def _quantized_loading(self) -> dict[str, Any]:
        """``from_pretrained`` arguments for a bitsandbytes-quantized base, one copy per GPU (DDP rank)."""
        if self._quantization is None:
            return {}
        from transformers import BitsAndBytesConfig

        dtype = getattr(torch, self._compute_dtype)
        if self._quantization == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self._quantization,
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        return {"quantization_config": config, "dtype": dtype,
                "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}

    def new_token_ids(self, base_rows: int) -> list[int]:
        """Token ids whose rows dsum trains under LoRA: the data's masks and every row added by resizing."""
        added = self.tokenizer.get_added_vocab()
        masks = {i for token, i in added.items() if MASK_PATTERN.fullmatch(token)}
        return sorted(masks | set(range(base_rows, len(self.tokenizer))))

    def _lora_config(self, model: PreTrainedModel, base_rows: int):
        from peft import LoraConfig, TaskType

        lora = self._lora
        assert lora is not None
        ids = self.new_token_ids(base_rows)
        token_rows: dict[str, list[int]] | None = None
        if ids:
            names = {id(m): n for n, m in model.named_modules()}
            token_rows = {names[id(model.get_input_embeddings())]: ids}
            head = model.get_output_embeddings()
            tied = head is not None and head.weight is model.get_input_embeddings().weight
            if head is not None and not tied:
                token_rows[names[id(head)]] = ids  # an untied head needs the new tokens' output rows too
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, bias=lora.bias, trainable_token_indices=token_rows,
        )

    @staticmethod
    def _count_parameters(model: torch.nn.Module) -> tuple[int, int]:
        if hasattr(model, "get_nb_trainable_parameters"):
            return tuple(model.get_nb_trainable_parameters())  # type: ignore[return-value]
        params = list(model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def check_layout(self, layout: InputLayout) -> None:
        # The prompt template is the separator: no data.source_suffix needed (CausalLMSummarizer's check).
        SummarizerBase.check_layout(self, layout)

    def generation_config(self) -> GenerationConfig:
        """The base generation config, also stopping at the chat template's end-of-turn token."""
        config = super().generation_config()
        configured = config.eos_token_id
        stops = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        stops = list(dict.fromkeys(stops + stop_token_ids(self.tokenizer)))
        config.eos_token_id = stops[0] if len(stops) == 1 else (stops or None)
        return config

    def on_fit_start(self) -> None:
        trainable, total = self.parameter_counts
        for logger in self.loggers:
            logger.log_hyperparams({"trainable_params": trainable, "total_params": total})

    # ----------------------------------------------------------------------------- checkpoints
    def _trainable_keys(self) -> set[str]:
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Under LoRA keep only trainable weights (adapter, token rows) and non-model state (metrics)."""
        if not self.adapter_only:
            return
        keep = self._trainable_keys()
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in keep or not k.startswith("model.")}
        checkpoint["dsum_adapter_only"] = True

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """Under LoRA a checkpoint holds only the trainable weights: the frozen base (loaded from ``pretrained``)
        may be missing from it, nothing else."""
        if not self.adapter_only:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict:
            trainable = self._trainable_keys()
            missing = [k for k in result.missing_keys if k in trainable or not k.startswith("model.")]
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"checkpoint does not fit this model (base {self.hparams.pretrained}, LoRA {self._lora}): "
                    f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
                )
        return result

    # ---------------------------------------------------------------------------------- export
    def export(self, directory: str | Path) -> Path:
        """Save the adapter (or, without LoRA, the full model), tokenizer, generation config and prompt template;
        with ``merge_on_export`` also the merged full model under ``merged/``."""
        directory = Path(directory)
        generation = self.generation_config()
        self._base().generation_config = generation
        if self.adapter_only:
            # Token rows are saved as trainable-token values, not as whole (resized) embedding matrices.
            self.model.save_pretrained(directory, save_embedding_layers=False)
            generation.save_pretrained(directory)
        else:
            self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        template = saved_template(self.tokenizer)
        if template is not None:
            (directory / PROMPT_FILE).write_text(json.dumps(template, ensure_ascii=False, indent=2) + "\n",
                                                 encoding="utf-8")
        if self.hparams.merge_on_export and self.adapter_only:
            merged = copy.deepcopy(self.model).merge_and_unload()
            merged.generation_config = generation
            merged.save_pretrained(directory / MERGED_DIR)
            self.tokenizer.save_pretrained(directory / MERGED_DIR)
        return directory

    # ------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        if hp.optimizer != "paged_adamw_8bit":
            return super().configure_optimizers()
        import bitsandbytes as bnb

        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        optimizer = bnb.optim.PagedAdamW8bit(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.learning_rate,
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(
            "constant_with_warmup" if hp.lr_scheduler == "constant" else hp.lr_scheduler, optimizer,
            num_warmup_steps=int(hp.warmup_ratio * total), num_training_steps=total,
            scheduler_specific_kwargs=(
                {"num_cycles": hp.num_cycles} if hp.lr_scheduler == "cosine_with_restarts" else None
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

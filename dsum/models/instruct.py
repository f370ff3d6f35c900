"""Instruction / chat LLM summarizer: LoRA and QLoRA fine-tuning through peft (SOLAR, Qwen2.5, EXAONE, Llama)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from dsum.data.prompts import saved_template, stop_token_ids
from dsum.data.text import MASK_PATTERN
from dsum.eval.inference_settings import save_inference_settings
from dsum.models.base import InputLayout, SummarizerBase
from dsum.models.causal import CausalLMSummarizer

Quantization = Literal["nf4", "fp4", "int8"]
ComputeDtype = Literal["bfloat16", "float16", "float32"]
InstructOptimizer = Literal["adamw", "adafactor", "paged_adamw_8bit"]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
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
        use_dora: DoRA: weight-decomposed LoRA (a learned magnitude per output; slower per step).
        use_rslora: rsLoRA: scale the update by ``alpha / sqrt(r)`` instead of ``alpha / r`` (stable at high ranks).
        init: Initialisation of the adapter: ``default`` (B = 0), ``gaussian``, ``pissa`` (principal singular
            vectors of each weight), ``olora`` (QR of each weight), or ``loftq`` (fits the quantization error of
            an unquantized base; peft's LoftQ).
        plus_lr_ratio: LoRA+: the B matrices learn this many times faster than ``model.learning_rate``
            (the paper suggests 16); ``null`` trains A and B alike.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    use_dora: bool = False
    use_rslora: bool = False
    init: Literal["default", "gaussian", "pissa", "olora", "loftq"] = "default"
    plus_lr_ratio: float | None = None


def check_lora(lora: LoraSettings | None) -> None:
    """Refuse LoRA settings peft would reject deep inside (``r``) or accept silently (a negative ``alpha``).

    Raises:
        ValueError: naming the key and its value.
    """
    if lora is None:
        return
    if isinstance(lora.r, bool) or not isinstance(lora.r, int) or lora.r < 1:
        raise ValueError(f"model.lora.r must be a positive integer, got {lora.r!r}")
    if isinstance(lora.alpha, bool) or not isinstance(lora.alpha, (int, float)) or not lora.alpha > 0 \
            or not math.isfinite(lora.alpha):
        raise ValueError(f"model.lora.alpha must be a positive number, got {lora.alpha!r}")
    if isinstance(lora.dropout, bool) or not isinstance(lora.dropout, (int, float)) or not 0 <= lora.dropout < 1:
        raise ValueError(f"model.lora.dropout must be in [0, 1), got {lora.dropout!r}")
    if not lora.target_modules:
        raise ValueError(f"model.lora.target_modules must name at least one module, got {lora.target_modules!r}")
    if lora.init == "loftq" and importlib.util.find_spec("scipy") is None:
        raise ValueError("model.lora.init=loftq needs scipy (peft's LoftQ uses it): pip install scipy")
    if lora.plus_lr_ratio is not None and not (math.isfinite(lora.plus_lr_ratio) and lora.plus_lr_ratio > 0):
        raise ValueError(f"model.lora.plus_lr_ratio must be a positive number, got {lora.plus_lr_ratio!r}")


def add_neftune(model: PreTrainedModel, alpha: float) -> None:
    """NEFTune noise on ``model``'s input embeddings, through transformers' own hook, which adds it only while the
    embedding module is in training mode (Lightning puts it in eval mode for validation and prediction)."""
    from transformers.integrations.neftune import activate_neftune

    activate_neftune(model, alpha)


def is_adapter_dir(path: str) -> bool:
    """Whether ``path`` is a local peft adapter directory (it holds ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, not a Hugging Face id (``name`` or ``org/name``)."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def adapter_base(adapter: str) -> str:
    """The base model an adapter export names (``base_model_name_or_path`` of its ``adapter_config.json``).

    Raises:
        ValueError: the config cannot be read or names no base.
        FileNotFoundError: the base is a local directory that is gone, naming its path.
    """
    config_file = Path(adapter) / ADAPTER_CONFIG
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{config_file} is not a readable adapter config: {error}") from None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{config_file} names no base model (base_model_name_or_path is {base!r})")
    if not Path(base).exists() and _looks_like_path(base):
        raise FileNotFoundError(
            f"the base model of adapter {adapter} is missing: {base} does not exist (base_model_name_or_path in "
            f"{config_file}); put the base model back there, or set that key to its new directory or Hub id"
        )
    return base


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass (non-reentrant), through transformers' current name for it
    (``gradient_checkpointing_enable`` is its deprecated alias)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextmanager
def _peft_deprecations_quiet() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model: a warning
    for peft's authors, not for dsum's users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def device_map_for(device: torch.device) -> dict[str, int | str]:
    """``from_pretrained``'s ``device_map`` that puts the whole model on ``device`` (a CUDA index when there is one)."""
    if device.type == "cuda":
        return {"": device.index if device.index is not None else torch.cuda.current_device()}
    return {"": str(device)}


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
                           "(bitsandbytes>=0.46.1), or set --model.quantization=null --model.optimizer=adamw.")


def load_adapter(model: PreTrainedModel, adapter: str) -> torch.nn.Module:
    """``model`` with the trainable adapter of the export ``adapter`` loaded.

    Raises:
        ValueError: the adapter's weights file is missing, damaged or truncated, naming it.
    """
    from peft import PeftModel
    from safetensors import SafetensorError, safe_open

    weights = Path(adapter) / ADAPTER_WEIGHTS
    if weights.is_file():
        try:  # reads the header and checks it against the file's size; no tensor is loaded
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{weights} is damaged or truncated ({error}); export the adapter again") from None
    try:
        with _peft_deprecations_quiet():
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    except SafetensorError as error:
        raise ValueError(f"{weights} is damaged or truncated ({error}); export the adapter again") from None


def trainable_in_float32(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every trainable floating-point parameter in float32 (peft keeps e.g. trainable token rows in
    the half-precision base's dtype); frozen weights keep theirs."""
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


class InstructSummarizer(CausalLMSummarizer):
    """Instruction/chat LLM summarizer with LoRA or QLoRA (peft), for SOLAR, Qwen2.5, EXAONE, Llama-style models.

    Examples are instruction prompts built by the data module (``data.prompt_template``: the tokenizer's chat
    template or a plain ``### Instruction`` template); the loss covers the summary and its end-of-turn token.
    Generation stops at eos or the end-of-turn token.

    Weights that are trained are loaded in float32: the whole model without LoRA, the adapter with it. A frozen
    base keeps its checkpoint's dtype (``compute_dtype`` when quantized).

    A quantized base is loaded in :meth:`configure_model`, onto the GPU of Lightning's strategy
    (``trainer.strategy.root_device``: right under SLURM and with ``--trainer.devices=[2,3]``), not when the module is
    built; until then ``model`` is ``None``.

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
        neftune_alpha: NEFTune: uniform noise of scale ``alpha / sqrt(tokens x width)`` on the input embeddings,
            in training steps only (the paper uses 5); ``null`` is off.
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
        neftune_alpha: float | None = None,
        **kwargs: Any,
    ) -> None:
        check_lora(lora)
        if neftune_alpha is not None and not (math.isfinite(neftune_alpha) and neftune_alpha > 0):
            raise ValueError(f"model.neftune_alpha must be a positive number, got {neftune_alpha!r}")
        self._neftune_alpha = neftune_alpha
        check_bitsandbytes(quantization, optimizer, lora)
        if merge_on_export and quantization is not None:
            raise ValueError("model.merge_on_export with model.quantization: merging into a quantized base loses "
                             "precision; export the adapter, then merge it into the bf16 base offline")
        self._lora = lora
        self._quantization = quantization
        self._compute_dtype = compute_dtype
        self._gradient_checkpointing = gradient_checkpointing
        self._device_map: dict[str, int | str] | None = None
        self.parameter_counts: tuple[int, int] = (0, 0)
        self._base_name = adapter_base(pretrained) if is_adapter_dir(pretrained) else pretrained
        super().__init__(pretrained, optimizer=optimizer, **kwargs)  # type: ignore[arg-type]

    def setup_model(self) -> None:
        """Load the base and wrap it with its adapter; a quantized base waits for :meth:`configure_model`."""
        if self._quantization is not None and self._device_map is None:
            self.model = None  # type: ignore[assignment]
            return
        super().setup_model()
        # Wrapped after the base class has resized the embeddings and set the generation config.
        self.model = self._with_adapter(self.model, self._pretrained)
        self.parameter_counts = self._count_parameters(self.model)
        trainable, total = self.parameter_counts
        rank_zero_info(f"dsum: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")
        # peft's wrapper keeps its own attribute; generate() reads the base model's generation config.
        self._base().generation_config = self.generation_config()
        if self._neftune_alpha is not None:
            add_neftune(self._base(), self._neftune_alpha)

    def configure_model(self) -> None:
        """Load a quantized base onto this process's GPU, as Lightning assigned it, then compile if asked."""
        if self.model is None:
            self._device_map = device_map_for(self.trainer.strategy.root_device)
            self.setup_model()
        super().configure_model()

    def model_config(self) -> Any:
        """The base model's config (read from ``pretrained`` while a quantized base is not loaded yet)."""
        if self.model is not None:
            return super().model_config()
        return AutoConfig.from_pretrained(self._base_name, trust_remote_code=self._trust_remote_code)

    # --------------------------------------------------------------------------------- loading
    @property
    def adapter_only(self) -> bool:
        """Whether only an adapter (and token rows) is trained, so checkpoints hold only those."""
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def _base(self) -> PreTrainedModel:
        return self.model.get_base_model() if self.adapter_only else self.model

    def load_model(self, pretrained: str, trust_remote_code: bool) -> PreTrainedModel:
        base_name = self._base_name
        if base_name != pretrained:
            rank_zero_info(f"dsum: {pretrained} is an adapter; loading its base model {base_name}")
        model = AutoModelForCausalLM.from_pretrained(base_name, trust_remote_code=trust_remote_code,
                                                     **self.loading_kwargs())
        base_rows = model.get_input_embeddings().num_embeddings
        if base_rows < len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        if self._quantization is not None:
            from peft import prepare_model_for_kbit_training

            # Checkpointing is enabled below: peft would call transformers' deprecated name for it.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if self._gradient_checkpointing:
            enable_activation_checkpointing(model)
        self._base_rows = base_rows
        return model

    def loading_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` arguments: float32 without LoRA (every weight is trained); under LoRA the frozen
        base keeps its checkpoint's dtype (the adapter is float32, see :meth:`_with_adapter`), or is quantized."""
        kwargs = super().loading_kwargs()
        if self._lora is not None or is_adapter_dir(self._pretrained):
            kwargs["dtype"] = "auto"
        kwargs.update(self._quantized_loading())
        return kwargs

    def _with_adapter(self, model: PreTrainedModel, pretrained: str) -> torch.nn.Module:
        """``model`` with the adapter of ``pretrained`` loaded (an adapter export), or a new LoRA adapter."""
        if is_adapter_dir(pretrained):
            if self._lora is not None:
                rank_zero_info(f"dsum: continuing the adapter of {pretrained}; model.lora settings are not used")
            return trainable_in_float32(load_adapter(model, pretrained))
        if self._lora is None:
            return model
        from peft import get_peft_model

        with _peft_deprecations_quiet():
            wrapped = get_peft_model(model, self._lora_config(model, self._base_rows))
        if Path(self._base_name).is_dir():  # the adapter must find its base from any working directory
            wrapped.peft_config["default"].base_model_name_or_path = str(Path(self._base_name).resolve())
        return trainable_in_float32(wrapped)

    def _quantized_loading(self) -> dict[str, Any]:
        """``from_pretrained`` arguments for a bitsandbytes-quantized base, one copy per GPU (DDP rank): on the
        device of :meth:`configure_model`."""
        if self._quantization is None:
            return {}
        from transformers import BitsAndBytesConfig

        dtype = getattr(torch, self._compute_dtype)
        if self._quantization == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self._quantization,
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        if self._device_map is None:
            raise RuntimeError("a quantized base is loaded in configure_model, once Lightning has chosen the device")
        return {"quantization_config": config, "dtype": dtype, "device_map": self._device_map}

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
        init: bool | str = True if lora.init == "default" else lora.init
        loftq = None
        if lora.init == "loftq":
            from peft import LoftQConfig

            if self._quantization is not None:
                raise ValueError("model.lora.init=loftq quantizes an unquantized base itself; drop model.quantization")
            loftq = LoftQConfig(loftq_bits=4)
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, bias=lora.bias, trainable_token_indices=token_rows,
            use_dora=lora.use_dora, use_rslora=lora.use_rslora, init_lora_weights=init,
            **({"loftq_config": loftq} if loftq is not None else {}),
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
        """Save the adapter (or, without LoRA, the full model), tokenizer, generation config, prompt template and
        inference settings; with ``merge_on_export`` also the merged full model under ``merged/``."""
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
        save_inference_settings(self, directory)
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
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The base class's groups; with LoRA+ (``lora.plus_lr_ratio``) the B matrices get their own, faster
        learning rate."""
        groups = super().parameter_groups()
        ratio = self._lora.plus_lr_ratio if self._lora is not None else None
        if not ratio:
            return groups
        split = []
        for group in groups:
            names = group.pop("names")
            b_params = [p for n, p in zip(names, group["params"]) if ".lora_B." in n or ".lora_embedding_B." in n]
            others = [p for n, p in zip(names, group["params"]) if not (".lora_B." in n or ".lora_embedding_B." in n)]
            split += [{**group, "params": others},
                      {**group, "params": b_params, "lr": self.hparams.learning_rate * ratio}]
        return [{**g, "names": []} for g in split if g["params"]]

    def build_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """``paged_adamw_8bit`` (bitsandbytes), else the base class's optimizers."""
        if self.hparams.optimizer != "paged_adamw_8bit":
            return super().build_optimizer(groups)
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(groups, lr=self.hparams.learning_rate)

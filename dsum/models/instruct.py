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
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from dsum.data.prompts import saved_template, stop_token_ids
from dsum.data.text import MASK_PATTERN
from dsum.eval.inference_settings import save_inference_settings
from dsum.models.causal import CausalLMSummarizer

Quantization = Literal["nf4", "fp4", "int8"]
ComputeDtype = Literal["bfloat16", "float16", "float32"]
InstructOptimizer = Literal["adamw", "adafactor", "paged_adamw_8bit"]
ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = "merged"


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft ``LoraConfig``).

    Args:
        r: Rank of the update matrices.
        alpha: Scaling numerator (``lora_alpha``); the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter's input.
        target_modules: Module names to adapt, or ``all-linear``: every linear projection except the output head.
        bias: Train no biases (``none``), all (``all``) or the adapted layers' (``lora_only``).
        use_dora: DoRA: weight-decomposed LoRA (a learned magnitude per output; slower per step).
        use_rslora: rsLoRA: scale the update by ``alpha / sqrt(r)`` instead of ``alpha / r`` (stable at high ranks).
        init: Initialisation of the adapter: ``default`` (B = 0), ``gaussian``, ``pissa`` (principal singular vectors
            of each weight), ``olora`` (QR of each weight), or ``loftq`` (peft's LoftQ, on an unquantized base).
        plus_lr_ratio: LoRA+: the B matrices learn this many times faster (the paper suggests 16); ``null``: alike.
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
    """Raise ValueError, naming the key and value, for LoRA settings peft would reject deep inside (``r``) or
    accept silently (a negative ``alpha``)."""
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


def is_adapter_dir(path: str) -> bool:
    """Whether ``path`` is a local peft adapter directory (it holds ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter: str) -> str:
    """The base model an adapter export names (``base_model_name_or_path`` of its ``adapter_config.json``).
    Raises ValueError when the config cannot be read or names no base, FileNotFoundError when the base is a local
    directory that is gone."""
    config_file = Path(adapter) / ADAPTER_CONFIG
    try:
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{config_file} is not a readable adapter config: {error}") from None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{config_file} names no base model (base_model_name_or_path is {base!r})")
    # Only a local path can be missing here; a Hugging Face id (``name`` or ``org/name``) is looked up later.
    looks_like_path = Path(base).is_absolute() or base.startswith((".", "~")) or "\\" in base or base.count("/") > 1
    if not Path(base).exists() and looks_like_path:
        raise FileNotFoundError(f"the base model of adapter {adapter} is missing: {base} does not exist "
                                f"(base_model_name_or_path in {config_file}); put the base model back there, or set "
                                "that key to its new directory or Hub id")
    return base


@contextmanager
def _peft_deprecations_quiet() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model: a warning
    for peft's authors, not for dsum's users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def check_bitsandbytes(quantization: str | None, optimizer: str, lora: LoraSettings | None) -> None:
    """Refuse, before any weights load, a setting bitsandbytes cannot run here, saying why and what to do:
    ValueError for quantization without LoRA, RuntimeError without CUDA or bitsandbytes."""
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
        raise RuntimeError(f"{what} needs bitsandbytes on a CUDA GPU, and this machine has no CUDA device (torch "
                           f"{torch.__version__}, torch.cuda.is_available() is False). Run this config on a machine "
                           "with an NVIDIA GPU and a CUDA build of torch, or train without bitsandbytes here: "
                           "--model.quantization=null --model.optimizer=adamw (LoRA on the unquantized base).")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"{what} needs bitsandbytes, which is not installed: pip install 'dsum[qlora]' "
                           "(bitsandbytes>=0.46.1), or set --model.quantization=null --model.optimizer=adamw.")


def load_adapter(model: PreTrainedModel, adapter: str) -> torch.nn.Module:
    """``model`` with the trainable adapter of the export ``adapter`` loaded; ValueError, naming the weights file,
    when it is damaged or truncated."""
    from peft import PeftModel
    from safetensors import SafetensorError, safe_open

    weights = Path(adapter) / "adapter_model.safetensors"
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

    Examples are prompts built by the data module (``data.prompt_template``); the loss covers the summary and its
    end-of-turn token, where generation stops too. A quantized base is loaded in :meth:`configure_model`, onto
    Lightning's ``trainer.strategy.root_device``; until then ``model`` is ``None``. With ``lora``, only the adapter
    and the rows of dsum's masks (peft's ``trainable_token_indices``) are trained, checkpointed and exported (a peft
    adapter directory, which ``--model.pretrained`` accepts); the frozen base is reloaded from ``pretrained``.
    Trained weights load in float32 (the whole model without LoRA, the adapter with it); a frozen base keeps its
    checkpoint's dtype (``compute_dtype`` when quantized). An export holds ``adapter_config.json``, the adapter
    weights, tokenizer, generation config and ``prompt_template.json``.

    Args:
        pretrained: Hugging Face id or local directory of the base model, or a dsum adapter export (its
            ``adapter_config.json`` names the base, which is loaded first).
        optimizer: ``adamw``, ``adafactor`` or ``paged_adamw_8bit`` (bitsandbytes, CUDA only).
        lora: LoRA settings; ``null`` fully fine-tunes the model.
        quantization: Load the base through bitsandbytes (CUDA, ``pip install 'dsum[qlora]'``): ``nf4`` or ``fp4``
            (4-bit, double quantization) or ``int8``; ``null`` loads it unquantized.
        compute_dtype: Compute dtype of the quantized layers (and the dtype the base is loaded in when quantized).
        gradient_checkpointing: Recompute activations in the backward pass (less memory, ~30% slower).
        merge_on_export: Also write the adapter merged into the base as a full model (``best_model/merged``).
        neftune_alpha: NEFTune: noise of scale ``alpha / sqrt(tokens x width)`` on the input embeddings in training
            (the paper uses 5); ``null`` is off.
        **kwargs: The other settings of :class:`~dsum.models.base.SummarizerBase`.
    """

    needs_separator = False  # the prompt template separates dialogue and summary

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
        if self.adapter_only:
            self.parameter_counts = tuple(self.model.get_nb_trainable_parameters())
        else:
            self.parameter_counts = (self.model.num_parameters(only_trainable=True), self.model.num_parameters())
        trainable, total = self.parameter_counts
        rank_zero_info(f"dsum: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3f}%)")
        # peft's wrapper keeps its own attribute; generate() reads the base model's generation config.
        self._base().generation_config = self.generation_config()
        if self._neftune_alpha is not None:
            from transformers.integrations.neftune import activate_neftune

            # transformers' hook adds the noise only while the embeddings are in training mode (not in evaluation).
            activate_neftune(self._base(), self._neftune_alpha)

    def configure_model(self) -> None:
        """Load a quantized base onto this process's GPU, as Lightning assigned it, then compile if asked."""
        if self.model is None:
            device = self.trainer.strategy.root_device
            if device.type == "cuda":
                self._device_map = {"": device.index if device.index is not None else torch.cuda.current_device()}
            else:
                self._device_map = {"": str(device)}
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
        if self._base_name != pretrained:
            rank_zero_info(f"dsum: {pretrained} is an adapter; loading its base model {self._base_name}")
        model = AutoModelForCausalLM.from_pretrained(self._base_name, trust_remote_code=trust_remote_code,
                                                     **self.loading_kwargs())
        self._base_rows = model.get_input_embeddings().num_embeddings
        if self._base_rows < len(self.tokenizer):
            model.resize_token_embeddings(len(self.tokenizer))
        if self._quantization is not None:
            from peft import prepare_model_for_kbit_training

            # Checkpointing is enabled below: peft would call transformers' deprecated name for it.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if self._gradient_checkpointing:  # non-reentrant; gradient_checkpointing_enable is the deprecated name
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def loading_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` arguments: float32 without LoRA (every weight is trained); under LoRA the frozen
        base keeps its checkpoint's dtype (the adapter is float32, see :meth:`_with_adapter`), or is quantized
        through bitsandbytes, one copy per GPU (DDP rank) on the device of :meth:`configure_model`."""
        kwargs = super().loading_kwargs()
        if self._lora is not None or is_adapter_dir(self._pretrained):
            kwargs["dtype"] = "auto"
        if self._quantization is None:
            return kwargs
        from transformers import BitsAndBytesConfig

        dtype = getattr(torch, self._compute_dtype)
        if self._quantization == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self._quantization,
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        if self._device_map is None:
            raise RuntimeError("a quantized base is loaded in configure_model, once Lightning has chosen the device")
        return {**kwargs, "quantization_config": config, "dtype": dtype, "device_map": self._device_map}

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
            embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
            token_rows = {names[id(embeddings)]: ids}
            if head is not None and head.weight is not embeddings.weight:
                token_rows[names[id(head)]] = ids  # an untied head needs the new tokens' output rows too
        loftq = {}
        if lora.init == "loftq":
            from peft import LoftQConfig

            if self._quantization is not None:
                raise ValueError("model.lora.init=loftq quantizes an unquantized base itself; drop model.quantization")
            loftq = {"loftq_config": LoftQConfig(loftq_bits=4)}
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, bias=lora.bias, trainable_token_indices=token_rows,
            use_dora=lora.use_dora, use_rslora=lora.use_rslora,
            init_lora_weights=True if lora.init == "default" else lora.init, **loftq,
        )

    def stop_ids(self) -> list[int]:
        """Eos and the chat template's end-of-turn token."""
        return stop_token_ids(self.tokenizer)

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
                raise RuntimeError(f"checkpoint does not fit this model (base {self.hparams.pretrained}, LoRA "
                                   f"{self._lora}): missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
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
            text = json.dumps(template, ensure_ascii=False, indent=2) + "\n"
            (directory / "prompt_template.json").write_text(text, encoding="utf-8")
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

"""What every summarizer shares: optimiser, schedule, generation settings, ROUGE validation, export."""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from torchmetrics import MaxMetric
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.optimization import Adafactor, get_scheduler

from dsum.constants import MONITOR
from dsum.eval.fidelity import FidelityMetrics
from dsum.eval.inference_settings import save_inference_settings
from dsum.eval.metrics import KoreanRouge, PooledMean, ReferenceRule
from dsum.eval.postprocess import PostprocessSettings
from dsum.eval.tokenizers import TokenizerName
from dsum.infra.secrets import redact

OptimizerName = Literal["adamw", "adafactor"]
SchedulerName = Literal["cosine", "linear", "cosine_with_restarts", "constant"]
AttentionName = Literal["sdpa", "eager", "flash_attention_2"]
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rouge_mean")


@dataclass
class GenerationSettings:
    """Decoding settings shared by validation, test and prediction, and saved with the exported model.

    Args:
        num_beams: Beam width (1 = greedy).
        no_repeat_ngram_size: Forbid repeating n-grams of this size (0 = off).
        length_penalty: Exponent on length for beam scores (>1 favours longer summaries).
        max_new_tokens: Maximum generated summary tokens.
        min_new_tokens: Minimum generated summary tokens.
        early_stopping: Stop beam search when ``num_beams`` finished candidates exist.
        do_sample: Sample instead of searching.
        top_p: Nucleus sampling mass (only with ``do_sample``).
        temperature: Sampling temperature (only with ``do_sample``).
    """

    num_beams: int = 4
    no_repeat_ngram_size: int = 2
    length_penalty: float = 1.0
    max_new_tokens: int = 100
    min_new_tokens: int = 0
    early_stopping: bool = True
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        """Arguments for ``model.generate``; sampling knobs only when sampling, so HF does not warn."""
        kwargs = asdict(self)
        if not self.do_sample:
            del kwargs["top_p"], kwargs["temperature"]
        if self.num_beams == 1:
            del kwargs["early_stopping"], kwargs["length_penalty"]
        return kwargs


@dataclass(frozen=True)
class InputLayout:
    """What the data module feeds the model, linked from ``data.*`` by ``main.py``: the model checks its limits when
    it is built, before any data is read.

    Args:
        encoder_max_len: Longest dialogue in tokens (``data.encoder_max_len``).
        decoder_max_len: Longest summary in tokens (``data.decoder_max_len``).
        source_prefix: Text before every dialogue (``data.source_prefix``).
        source_suffix: Text after every dialogue (``data.source_suffix``).
    """

    encoder_max_len: int = 512
    decoder_max_len: int = 100
    source_prefix: str = ""
    source_suffix: str = ""


class EvalMetrics(torch.nn.Module):
    """One evaluation stage's metrics, each de-duplicated by dataset index: ``loss`` (per summary token), ``gen_len``
    (generated tokens per example), ``rouge`` and ``fidelity`` (:mod:`dsum.eval.fidelity`)."""

    def __init__(self, rouge_tokenizer: str, rouge_references: str = "mean") -> None:
        super().__init__()
        self.loss = PooledMean()
        self.gen_len = PooledMean()
        self.rouge = KoreanRouge(tokenizer=rouge_tokenizer, references=rouge_references)
        self.fidelity = FidelityMetrics()

    def compute(self) -> dict[str, float]:
        """Loss, ROUGE, ``gen_len`` and the fidelity metrics, synced across ranks."""
        scores = self.rouge.compute()
        return {"loss": self.loss.compute(), **{k: float(scores[k]) for k in ROUGE_KEYS},
                "gen_len": self.gen_len.compute(), **self.fidelity.compute()}

    def reset(self) -> None:
        for metric in (self.loss, self.gen_len, self.rouge, self.fidelity):
            metric.reset()


class SummarizerBase(L.LightningModule, ABC):
    """Shared base of :class:`Seq2SeqSummarizer` and :class:`CausalLMSummarizer`.

    Args:
        pretrained: Hugging Face id or local directory of the model (and its tokenizer).
        tokenizer: The data module's tokenizer with the data's masks (linked by ``main.py``); ``None`` loads
            ``pretrained``'s.
        optimizer: ``adamw`` (torch AdamW) or ``adafactor`` (fixed learning rate, no relative step).
        learning_rate: Peak learning rate.
        weight_decay: Decoupled weight decay (not applied to biases and norms).
        lr_scheduler: Schedule after warmup: ``cosine``, ``linear``, ``cosine_with_restarts``, ``constant``.
        warmup_ratio: Fraction of all optimiser steps spent warming up linearly.
        num_cycles: Restarts for ``cosine_with_restarts``.
        label_smoothing: Label smoothing of the cross-entropy loss.
        generation: Decoding settings for validation, test and prediction.
        rouge_tokenizer: ``mecab`` (Mecab-ko morphemes, the official-style default), ``kiwi`` (Kiwi
            morphemes; ``morpheme`` is its former name) or ``whitespace`` (Unicode words); masks are one token.
        rouge_references: With several references per example: ``mean`` (the organizers' rule) or ``max``.
        postprocess: Clean-ups of every generated summary (mask spacing, repeats, an unfinished last sentence).
        remove_tokens: Strings removed from generated summaries besides the special tokens (e.g. ``<usr>``); masks
            such as ``#Person1#`` are always kept.
        trust_remote_code: Allow a hub model to run its own code. Off unless a config opts in.
        input_layout: The data's lengths and affixes (linked from ``data.*`` by ``main.py``); ``None`` skips the
            checks that need it.
        compile: ``torch.compile`` every transformer layer (dynamic shapes), once per process; see
            ``tests/benchmarks/README.md`` for when it pays.
        attn_implementation: Attention kernels for ``from_pretrained``: ``sdpa``, ``eager`` or ``flash_attention_2``
            (CUDA, needs ``flash-attn``); ``None`` keeps transformers' choice.
    """

    decoder_only = False
    auto_class: type | None = None  # the family's ``AutoModelFor...`` class (or override load_model)

    def __init__(
        self,
        pretrained: str,
        tokenizer: Any = None,
        optimizer: OptimizerName = "adamw",
        learning_rate: float = 1e-5,
        weight_decay: float = 0.01,
        lr_scheduler: SchedulerName = "cosine",
        warmup_ratio: float = 0.1,
        num_cycles: int = 1,
        label_smoothing: float = 0.0,
        generation: GenerationSettings = GenerationSettings(),
        rouge_tokenizer: TokenizerName = "mecab",
        rouge_references: ReferenceRule = "mean",
        postprocess: PostprocessSettings = PostprocessSettings(),
        remove_tokens: list[str] = [],
        trust_remote_code: bool = False,
        input_layout: InputLayout | None = None,
        compile: bool = False,
        attn_implementation: AttentionName | None = None,
    ) -> None:
        super().__init__()
        self._check_settings(learning_rate, weight_decay, warmup_ratio, label_smoothing, generation)
        self.save_hyperparameters(ignore=["tokenizer", "input_layout"])
        # hparams go into checkpoints and logger configs: never with a credential in them.
        self.hparams.update({key: redact(value) for key, value in self.hparams.items()})
        self._hparams_initial = copy.deepcopy(self._hparams)  # what Lightning logs to W&B
        self.tokenizer: PreTrainedTokenizerBase = tokenizer or AutoTokenizer.from_pretrained(
            pretrained, trust_remote_code=trust_remote_code
        )
        self.generation = generation
        self.remove_tokens = list(remove_tokens)
        self._pretrained, self._trust_remote_code = pretrained, trust_remote_code
        self.setup_model()
        self.input_layout = input_layout  # saved with exports (dsum_inference.json)
        if input_layout is not None:
            self.check_layout(input_layout)
        self.val_metrics = EvalMetrics(rouge_tokenizer, rouge_references)
        self.test_metrics = EvalMetrics(rouge_tokenizer, rouge_references)
        self.postprocess = postprocess
        self.val_rouge_best = MaxMetric()
        # Best-so-far survives a resume: its state is saved in checkpoints with the weights.
        self.val_rouge_best.persistent(True)

    @staticmethod
    def _check_settings(learning_rate: float, weight_decay: float, warmup_ratio: float,
                        label_smoothing: float, generation: GenerationSettings) -> None:
        checks = [
            ("model.learning_rate", learning_rate > 0, learning_rate),
            ("model.weight_decay", weight_decay >= 0, weight_decay),
            ("model.warmup_ratio", 0 <= warmup_ratio < 1, warmup_ratio),
            ("model.label_smoothing", 0 <= label_smoothing < 1, label_smoothing),
            ("model.generation.num_beams", generation.num_beams >= 1, generation.num_beams),
            ("model.generation.max_new_tokens", generation.max_new_tokens >= 1, generation.max_new_tokens),
            ("model.generation.min_new_tokens", 0 <= generation.min_new_tokens <= generation.max_new_tokens,
             generation.min_new_tokens),
        ]
        for key, ok, value in checks:
            if not ok:
                raise ValueError(f"{key}={value} is out of range")

    def setup_model(self) -> None:
        """Load the model (``self.model``) in training mode, with embedding rows for the tokenizer's added masks and
        this run's generation config."""
        # from_pretrained returns eval mode; Lightning keeps module modes, so dropout would stay off.
        self.model = self.load_model(self._pretrained, self._trust_remote_code).train()
        if self.model.get_input_embeddings().num_embeddings < len(self.tokenizer):
            self.model.resize_token_embeddings(len(self.tokenizer))
        self.model.generation_config = self.generation_config()

    def model_config(self) -> Any:
        """The Hugging Face config of the model."""
        return self.model.config

    # ------------------------------------------------------------------------- family specifics
    def load_model(self, pretrained: str, trust_remote_code: bool) -> PreTrainedModel:
        """Load the family's Hugging Face model."""
        if self.auto_class is None:
            raise TypeError(f"{type(self).__name__} sets no auto_class and does not override load_model")
        return self.auto_class.from_pretrained(pretrained, trust_remote_code=trust_remote_code,
                                               **self.loading_kwargs())

    @abstractmethod
    def logits_and_labels(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and aligned labels for one batch: ``(positions, vocab)`` at labelled positions only
        (:func:`dsum.models.heads.output_head_only_at`), or ``(batch, length, vocab)`` with -100 labels."""

    @abstractmethod
    def generate_ids(self, batch: dict[str, Any]) -> torch.Tensor:
        """Generated summary token ids (continuation only, padded with the pad id) for one batch."""

    def loading_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments: ``attn_implementation`` when set, and float32 weights whatever the
        checkpoint's dtype, since every weight is trained (a bf16 weight rounds small updates away; fp16 gradients
        cannot be unscaled); mixed precision casts the computation."""
        attention = self.hparams.get("attn_implementation")
        return {"dtype": torch.float32, **({"attn_implementation": attention} if attention else {})}

    def _generate(self, batch: dict[str, Any]) -> torch.Tensor:
        """:meth:`generate_ids`, with compiled layers run eagerly: each decoding step's longer cache would
        recompile them (torch's recompile limit is hit within one batch)."""
        if not getattr(self, "_layers_compiled", False):
            return self.generate_ids(batch)
        with torch.compiler.set_stance("force_eager"):
            return self.generate_ids(batch)

    def configure_model(self) -> None:
        """With ``compile``: compile each transformer layer (regional compilation) in place, once."""
        if self.hparams.get("compile") and not getattr(self, "_layers_compiled", False):
            compile_layers(self.model)
            self._layers_compiled = True

    # ------------------------------------------------------------------------------ checks
    def check_layout(self, layout: InputLayout) -> None:
        """Raise ValueError, naming the options to lower, for lengths the model's positions cannot hold (decoder-only:
        prompt plus the longer of the summary and ``generation.max_new_tokens``)."""
        length, what = layout.encoder_max_len, f"data.encoder_max_len={layout.encoder_max_len}"
        if self.decoder_only:
            summary = max(layout.decoder_max_len, self.generation.max_new_tokens)
            what += (f" + data.decoder_max_len={layout.decoder_max_len}" if summary == layout.decoder_max_len
                     else f" + model.generation.max_new_tokens={self.generation.max_new_tokens}")
            length += summary
        limit = self.position_limit()
        if limit is not None and length > limit:
            raise ValueError(f"{what} exceeds the model's position limit {limit} ({self.hparams.pretrained}); lower it")

    def position_limit(self) -> int | None:
        """Longest input the model's position embeddings allow, or None when unbounded (T5)."""
        config = self.model_config()
        if getattr(config, "relative_attention_num_buckets", None):
            return None  # T5-style relative positions; a legacy `n_positions` in the config is no limit
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return None

    def generation_config(self) -> GenerationConfig:
        """The model's generation config with this run's decoding settings applied."""
        config = GenerationConfig.from_model_config(self.model.config)
        base = getattr(self.model, "generation_config", None)
        if base is not None:
            config = GenerationConfig(**base.to_dict())
        config.update(**self.generation.generate_kwargs())
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        # Training labels end with the tokenizer's eos, so generation must stop there too, also when the
        # checkpoint's config names another id (a GPT-2 config's 50256 under a Korean tokenizer).
        configured = config.eos_token_id
        stops = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        stops = list(dict.fromkeys(stops + self.stop_ids()))
        config.eos_token_id = stops[0] if len(stops) == 1 else (stops or None)
        return config

    def stop_ids(self) -> list[int]:
        """Token ids generation stops at besides the config's: the tokenizer's eos."""
        return [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The training objective (fp32, label smoothing, -100 ignored), ``mean`` or per label (``none``)."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
                               label_smoothing=self.hparams.label_smoothing, reduction=reduction)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._cross_entropy(*self.logits_and_labels(batch))

    def example_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: the summed token losses and the number of summary tokens (``totals.sum() / counts.sum()``
        is :meth:`loss`)."""
        logits, labels = self.logits_and_labels(batch)
        token_losses = self._cross_entropy(logits, labels, reduction="none")
        counts = (batch["labels"] != -100).sum(dim=1)
        if labels.ndim == 1:  # gathered head: one row per summary token, examples in order
            if int(counts.sum()) != labels.numel():
                raise RuntimeError(f"{labels.numel()} gathered label rows for {int(counts.sum())} summary tokens")
            owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
            totals = token_losses.new_zeros(len(counts)).index_add_(0, owner, token_losses)
        else:
            totals = token_losses.view(labels.shape).sum(dim=1)
        return totals, counts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        return loss

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Generated ids to clean summaries: special tokens and `remove_tokens` gone, masks kept, then
        ``postprocess`` applied."""
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=False)
        drop = [t for t in self.tokenizer.all_special_tokens if not re.fullmatch(r"#\w+#", t)] + self.remove_tokens
        cleaned = []
        for text in texts:
            for token in drop:
                text = text.replace(token, " ")
            # One line per summary: a generated newline would split the submission's CSV field.
            cleaned.append(self.postprocess(re.sub(r"\s+", " ", text).strip()))
        return cleaned

    def _evaluate(self, batch: dict[str, Any], metrics: EvalMetrics) -> None:
        totals, counts = self.example_losses(batch)
        metrics.loss.update(totals, batch["index"], counts)
        generated = self._generate(batch)
        metrics.gen_len.update((generated != self.tokenizer.pad_token_id).sum(dim=1), batch["index"])
        summaries = self.decode(generated)
        metrics.rouge.update(summaries, batch["references"], batch["index"])
        metrics.fidelity.update(summaries, batch["references"], batch["index"])

    def _log_eval(self, prefix: str, metrics: EvalMetrics) -> dict[str, float]:
        values = {f"{prefix}/{name}": value for name, value in metrics.compute().items()}
        metrics.reset()
        for name, value in values.items():
            self.log(name, value, prog_bar=name.endswith("rouge_mean"))
        return values

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            # Sanity batches are a subset: they must not become the best score.
            self.val_metrics.reset()
            return
        values = self._log_eval("val", self.val_metrics)
        self.val_rouge_best.update(values[MONITOR])
        self.log("val/rouge_mean_best", self.val_rouge_best.compute())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before the best-so-far state was saved: start it afresh, as they did.
        state = checkpoint.get("state_dict", {})
        for name, value in self.val_rouge_best.state_dict(prefix="val_rouge_best.").items():
            state.setdefault(name, value)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[tuple[int, str, str]]:
        summaries = self.decode(self._generate(batch))
        return list(zip(batch["index"].tolist(), batch["fname"], summaries))

    # ------------------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: with weight decay, and without (biases and norms). Each group
        also lists its parameters' ``names`` (dropped before the optimizer sees them)."""
        decay: dict[str, list] = {"params": [], "names": []}
        no_decay: dict[str, list] = {"params": [], "names": []}
        for name, param in self.named_parameters():
            if param.requires_grad:
                target = no_decay if param.ndim < 2 or "norm" in name.lower() else decay
                target["params"].append(param)
                target["names"].append(name)
        return [{**decay, "weight_decay": self.hparams.weight_decay}, {**no_decay, "weight_decay": 0.0}]

    def build_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        """``model.optimizer`` over ``groups``: AdamW (the fused kernel where Lightning allows it) or Adafactor."""
        hp = self.hparams
        if hp.optimizer == "adafactor":
            return Adafactor(groups, lr=hp.learning_rate, scale_parameter=False, relative_step=False,
                             warmup_init=False)
        try:  # the fused kernel (CPU and CUDA) does the whole update in one pass
            return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=self._can_fuse_optimizer())
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(groups, lr=hp.learning_rate)

    def configure_optimizers(self) -> dict[str, Any]:
        """:meth:`build_optimizer` over :meth:`parameter_groups`, with warmup then ``model.lr_scheduler``, stepped
        every optimizer step (one place for every family)."""
        hp = self.hparams
        groups = [{k: v for k, v in group.items() if k != "names"} for group in self.parameter_groups()]
        optimizer = self.build_optimizer(groups)
        total = int(self.trainer.estimated_stepping_batches)
        restarts = {"num_cycles": hp.num_cycles} if hp.lr_scheduler == "cosine_with_restarts" else None
        scheduler = get_scheduler("constant_with_warmup" if hp.lr_scheduler == "constant" else hp.lr_scheduler,
                                  optimizer, num_warmup_steps=int(hp.warmup_ratio * total), num_training_steps=total,
                                  scheduler_specific_kwargs=restarts)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _can_fuse_optimizer(self) -> bool:
        """False when Lightning clips gradients under mixed precision: it unscales them before clipping and
        refuses an optimizer that unscales on its own, as fused AdamW does."""
        trainer = self._trainer
        clips = trainer is not None and bool(trainer.gradient_clip_val)
        return not (clips and isinstance(trainer.precision_plugin, MixedPrecision))

    # ----------------------------------------------------------------------------------- export
    def export(self, directory: str | Path) -> Path:
        """Save model, tokenizer, generation config and inference settings (``dsum_inference.json``) to a directory."""
        directory = Path(directory)
        self.model.generation_config = self.generation_config()
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        save_inference_settings(self, directory)
        return directory


def compile_layers(model: torch.nn.Module) -> int:
    """``torch.compile(dynamic=True)`` every layer of ``model``'s layer stacks (``ModuleList``s of one class: BART's
    ``layers``, GPT-2's ``h``), in place; returns how many. Layers of one class share their compiled code; the parts
    that do not compile well (the gathered output head, generation's Python loop) stay eager."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            for layer in module:
                if next(layer.parameters(), None) is not None:
                    layer.compile(dynamic=True)
                    count += 1
    return count

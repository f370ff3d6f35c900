"""`DialogueDataModule`: competition CSVs -> normalised text -> cached token ids -> batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as L
import numpy as np
import torch
from datasets import Dataset
from datasets.fingerprint import Hasher
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from dsum.data.batching import LENGTH_NOISE, DialogueBatchSampler, ResumableDataLoader
from dsum.data.io import BadRowPolicy, DialogueTable, read_dialogue_csv
from dsum.data.prompts import PromptBuilder, record_template, resolve_template, saved_template
from dsum.data.text import DEFAULT_MASKS, TextNormalization, find_masks
from dsum.data.tokenizer import TokenizerLoader, check_round_trip, load_tokenizer

Split = Literal["train", "val", "test", "predict"]
# Bump when the cached features' layout changes, so old caches are not trusted.
CACHE_FORMAT_VERSION = 1
# The fixed subset used by `val_subset` does not move with the training seed, so trials compare.
VAL_SUBSET_SEED = 0


@dataclass(frozen=True)
class SplitData:
    """A split's validated text and, after `setup`, its cached features."""

    table: DialogueTable
    dialogues: list[str]
    references: list[list[str]]
    features: Dataset | None = None


@dataclass
class TruncationReport:
    """How many examples of each split lost tokens to `encoder_max_len` / `decoder_max_len`."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after a single sequence (`<s>`…`</s>` for BART)."""
    probe = "가"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def column(features: Dataset, name: str) -> np.ndarray:
    """One numeric column of ``features`` as an array, read in one piece (not row by row, as ``np.asarray`` would)."""
    return np.asarray(features.with_format("numpy", columns=[name])[name][:])


class DialogueDataModule(L.LightningDataModule):
    """Dialogue CSVs in the competition format (``fname,dialogue[,summary,topic]``) as model batches.

    The files are read and validated when the module is built, before training starts. Every ``#...#`` mask in the
    data (plus ``extra_special_tokens``) becomes a special token of the tokenizer the model then receives.

    Args:
        tokenizer_name: Hugging Face id or local directory of the tokenizer (``main.py``: ``model.pretrained``).
        train_file: Labelled CSV for ``fit``.
        val_file: Labelled CSV for validation during ``fit`` and for ``validate``.
        test_file: Labelled CSV for ``test``.
        predict_file: CSV (``fname,dialogue``) for ``predict``; its rows are written back in file order.
        batch_size: Training examples per batch (per device). Ignored with ``batching=token_budget``.
        eval_batch_size: Examples per batch for validation, test and prediction (per device).
        batching: ``length_grouped`` (default: similar lengths together, shuffled between groups),
            ``token_budget`` (batches of up to ``max_tokens`` padded tokens) or ``random`` (plain shuffling).
        max_tokens: Padded encoder + decoder tokens per training batch for ``batching=token_budget``.
        length_noise: ``length_grouped`` and ``token_budget`` sort training examples by their lengths times a
            random factor in ``[1 - length_noise, 1 + length_noise]``, drawn every epoch, so batches mix
            differently each epoch. 0 (default): exact lengths (0.1 cost 8% of speed for no dev-loss gain).
        encoder_max_len: Source tokens kept per dialogue (the rest is truncated and counted).
        decoder_max_len: Summary tokens kept per target (the rest is truncated and counted).
        source_prefix: Text put before every dialogue, e.g. ``"summarize: "`` for T5.
        source_suffix: Text put after every dialogue; the separator of decoder-only models, e.g. ``"\\n요약: "``.
        decoder_only: Lay out examples for a decoder-only model (``main.py`` sets it from the model class).
        prompt_template: Instruction-prompt layout for decoder-only LLMs: ``chat`` (the tokenizer's chat
            template), ``chat_system``, ``alpaca`` (``### Instruction / ### Input / ### Output``), ``plain_ko`` or a
            template text with a ``{dialogue}`` slot. The target is the summary plus the end-of-turn token;
            truncation shortens the dialogue only. ``None``: the template saved with the tokenizer, else
            ``source_prefix + dialogue + source_suffix``.
        normalization: Text clean-up applied to dialogues and summaries.
        extra_special_tokens: Masks added as special tokens even when the data does not contain them.
        val_subset: Validate on a fixed subset of this many dev examples, the same for every run (``None``: all):
            trades accuracy of the metric for speed in sweeps.
        on_bad_rows: ``error`` stops on empty text or duplicate ids; ``skip`` drops such rows and logs how many.
        num_workers: DataLoader worker processes.
        cache_dir: Cache of tokenized splits, keyed by file content, tokenizer, lengths, normalisation and layout;
            a second run with the same key skips tokenization.
        seed: Seed for batch shuffling (combined with the epoch).
        trust_remote_code: Allow a hub tokenizer to run its own code. Off unless a config opts in.
        tokenizer_loader: ``auto`` (``AutoTokenizer``) or ``tokenizer_json`` (the checkpoint's ``tokenizer.json``
            as saved, for when transformers rebuilds a tokenizer wrongly). A tokenizer that loses the data's
            characters stops the run with a message saying so.
        tokenizer_kwargs: Extra ``from_pretrained`` arguments for the tokenizer, e.g. the special tokens a
            checkpoint does not declare (``configs/kogpt2.yaml``).
    """

    def __init__(
        self,
        tokenizer_name: str,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        batching: Literal["length_grouped", "token_budget", "random"] = "length_grouped",
        max_tokens: int | None = None,
        length_noise: float = LENGTH_NOISE,
        encoder_max_len: int = 512,
        decoder_max_len: int = 100,
        source_prefix: str = "",
        source_suffix: str = "",
        decoder_only: bool = False,
        prompt_template: str | None = None,
        normalization: TextNormalization = TextNormalization(),
        extra_special_tokens: list[str] = list(DEFAULT_MASKS),
        val_subset: int | None = None,
        on_bad_rows: BadRowPolicy = "error",
        num_workers: int = 0,
        cache_dir: str = ".cache/dsum",
        seed: int = 42,
        trust_remote_code: bool = False,
        tokenizer_loader: TokenizerLoader = "auto",
        tokenizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.files: dict[Split, str | None] = {
            "train": train_file, "val": val_file, "test": test_file, "predict": predict_file,
        }
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.batching = batching
        self.max_tokens = max_tokens
        self.length_noise = length_noise
        self.encoder_max_len = encoder_max_len
        self.decoder_max_len = decoder_max_len
        self.source_prefix = source_prefix
        self.source_suffix = source_suffix
        self.decoder_only = decoder_only
        self.normalization = normalization
        self.val_subset = val_subset
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self._check_settings()
        # The training loader's position within its epoch: saved in checkpoints, restored on resume.
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict[str, int] | None = None

        self.splits: dict[Split, SplitData] = {
            split: self._read_split(split, path, on_bad_rows)
            for split, path in self.files.items()
            if path is not None
        }
        tokenizer = load_tokenizer(tokenizer_name, tokenizer_loader, tokenizer_kwargs, trust_remote_code)
        self.tokenizer = self._prepare_tokenizer(tokenizer_name, extra_special_tokens, tokenizer)
        self.prompt = self._prompt_builder(prompt_template)
        self.truncation = TruncationReport()

    # ----------------------------------------------------------------------------------- settings
    def _check_settings(self) -> None:
        for key in ("batch_size", "eval_batch_size", "encoder_max_len", "decoder_max_len", "max_tokens", "val_subset"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"data.{key} must be a positive integer, got {value}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.batching == "token_budget":
            if self.max_tokens is None:
                raise ValueError("data.batching=token_budget needs data.max_tokens (padded tokens per batch)")
            full = self.encoder_max_len + self.decoder_max_len
            if self.max_tokens < full:
                raise ValueError(
                    f"data.max_tokens={self.max_tokens} is smaller than one full-length example "
                    f"(data.encoder_max_len + data.decoder_max_len = {full}); "
                    "raise max_tokens or lower the max lengths"
                )
        if not 0 <= self.length_noise < 1:
            raise ValueError(f"data.length_noise={self.length_noise} must be in [0, 1).")

    # ------------------------------------------------------------------------------ text and vocab
    def _read_split(self, split: Split, path: str, on_bad_rows: BadRowPolicy) -> SplitData:
        table = read_dialogue_csv(path, labelled=split != "predict", on_bad_rows=on_bad_rows)
        if table.skipped:
            rank_zero_warn(f"{path}: {table.skipped} bad row(s) skipped (data.on_bad_rows=skip)")
        return SplitData(
            table=table,
            dialogues=[self.normalization(d) for d in table.dialogues],
            references=[[self.normalization(r) for r in refs] for refs in table.references],
        )

    def _texts(self) -> Iterator[str]:
        """Every dialogue and reference of every split, split by split."""
        return (t for s in self.splits.values() for t in [*s.dialogues, *(r for rs in s.references for r in rs)])

    def _prepare_tokenizer(self, name: str, extra: list[str],
                           tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        """``tokenizer`` with the data's masks added as special tokens, and a pad token; checked on the data."""
        masks = sorted(set(find_masks(self._texts())) | set(extra))
        existing = set(tokenizer.all_special_tokens)
        new = [m for m in masks if m not in existing]
        if new:
            # Special tokens are never split and never normalised, so a mask is always one id.
            tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
        self.masks = masks
        if tokenizer.pad_token is None:
            # Decoder-only models (GPT-2) ship without a pad token; pads are masked out, so eos serves.
            tokenizer.pad_token = tokenizer.eos_token
            rank_zero_info(f"{name}: tokenizer has no pad token; using eos {tokenizer.eos_token!r} for padding")
        check_round_trip(tokenizer, self._texts(), name)
        return tokenizer

    # ---------------------------------------------------------------------------------- features
    def _cache_key(self, split: Split) -> str:
        data = self.splits[split]
        parts = {
            "version": CACHE_FORMAT_VERSION,
            "file_sha256": data.table.sha256,
            "tokenizer": Hasher.hash(self.tokenizer),
            "encoder_max_len": self.encoder_max_len,
            "decoder_max_len": self.decoder_max_len,
            "normalization": asdict(self.normalization),
            "source_prefix": self.source_prefix,
            "source_suffix": self.source_suffix,
            "decoder_only": self.decoder_only,
            **({"prompt": self.prompt.fingerprint()} if self.prompt is not None else {}),
            "labelled": split != "predict",
        }
        return Hasher.hash(parts)

    def _encode(self, texts: list[str], max_len: int, head: list[int], tail: list[int],
                suffix: list[int]) -> tuple[list[list[int]], list[bool]]:
        """Tokenize and truncate the body, never the special tokens or the suffix."""
        bodies = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        budget = max_len - len(head) - len(tail) - len(suffix)
        if budget <= 0:
            raise ValueError(f"max length {max_len} leaves no room for text after special tokens and affixes")
        return [head + b[:budget] + suffix + tail for b in bodies], [len(b) > budget for b in bodies]

    def _tokenize(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        labelled = "summary" in batch
        if self.prompt is not None:
            sources, src_cut = self.prompt.encode_prompts(batch["dialogue"], self.encoder_max_len)
            if labelled:
                targets, tgt_cut = self.prompt.encode_targets(batch["summary"], self.decoder_max_len)
        else:
            tok = self.tokenizer
            head, tail = special_affixes(tok)
            suffix = tok(self.source_suffix, add_special_tokens=False)["input_ids"] if self.source_suffix else []
            sources, src_cut = self._encode(
                [self.source_prefix + d for d in batch["dialogue"]], self.encoder_max_len,
                head, [] if self.decoder_only else tail, suffix,
            )
            if labelled:
                target_head = [] if self.decoder_only else head
                target_tail = tail if tok.eos_token_id in tail else tail + [tok.eos_token_id]
                targets, tgt_cut = self._encode(batch["summary"], self.decoder_max_len, target_head, target_tail, [])
        out: dict[str, list[Any]] = {
            "input_ids": sources, "source_length": [len(s) for s in sources], "source_truncated": src_cut,
        }
        if labelled:
            out.update(labels=targets, target_length=[len(t) for t in targets], target_truncated=tgt_cut)
        return out

    def _prompt_builder(self, value: str | None) -> PromptBuilder | None:
        """The instruction-prompt layout, recorded in the tokenizer (saved with exports), or None."""
        saved = saved_template(self.tokenizer)
        if value is None and saved is None:
            if self.decoder_only and not self.source_suffix:
                raise ValueError(
                    "a decoder-only model needs a separator between dialogue and summary: set data.source_suffix "
                    "(configs/kogpt2.yaml uses '\\n요약: '), or data.prompt_template for an instruction LLM"
                )
            return None
        if not self.decoder_only:
            raise ValueError(
                f"data.prompt_template={value or saved.get('name')!r} lays out prompts for decoder-only models, "
                "but data.decoder_only is false (the model class is not decoder-only)"
            )
        if self.source_prefix or self.source_suffix:
            raise ValueError("data.source_prefix / data.source_suffix are not used with data.prompt_template; "
                             "put the text into the template instead")
        template = resolve_template(value if value is not None else saved, self.tokenizer)
        record_template(self.tokenizer, template)
        rank_zero_info(f"dsum: prompt template {template.name!r}")
        return PromptBuilder(self.tokenizer, template)

    def _features(self, split: Split) -> Dataset:
        data = self.splits[split]
        columns: dict[str, list[Any]] = {"index": list(range(len(data.dialogues))), "dialogue": data.dialogues}
        if split != "predict":
            # The first reference is the training target; all references are used for ROUGE.
            columns["summary"] = [refs[0] for refs in data.references]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = self._cache_key(split)
        return Dataset.from_dict(columns).map(
            self._tokenize,
            batched=True,
            remove_columns=[c for c in columns if c != "index"],
            cache_file_name=str(self.cache_dir / f"{split}-{key}.arrow"),
            new_fingerprint=key,
            desc=f"Tokenizing {split}",
        )

    def _stages(self, stage: str | None) -> list[Split]:
        wanted: dict[str, list[Split]] = {
            "fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"],
        }
        splits = wanted.get(stage or "", list(self.files))
        missing = [s for s in splits if s not in self.splits]
        if missing and stage is not None:
            keys = ", ".join(f"data.{s}_file" for s in missing)
            raise ValueError(f"`{stage}` needs {keys}; set it in the config or on the command line")
        return [s for s in splits if s in self.splits]

    def prepare_data(self) -> None:
        """Tokenize into the on-disk cache once per node, before `setup` runs on every rank."""
        stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else None
        for split in self._stages(stage):
            self._features(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self._stages(stage):
            data = self.splits[split]
            if data.features is not None:
                continue
            features = self._features(split)
            cut_src = int(column(features, "source_truncated").sum())
            cut_tgt = int(column(features, "target_truncated").sum()) if "labels" in features.column_names else 0
            self.splits[split] = replace(data, features=features)
            self.truncation.counts[split] = {"source": cut_src, "target": cut_tgt, "examples": len(features)}
            if cut_src or cut_tgt:
                rank_zero_info(
                    f"{data.table.path}: truncated {cut_src}/{len(features)} dialogues to "
                    f"encoder_max_len={self.encoder_max_len} and {cut_tgt} summaries to "
                    f"decoder_max_len={self.decoder_max_len}"
                )

    # -------------------------------------------------------------------------------- dataloaders
    def _indices(self, split: Split) -> list[int]:
        count = len(self.splits[split].dialogues)
        if split == "val" and self.val_subset is not None and self.val_subset < count:
            rng = np.random.default_rng(VAL_SUBSET_SEED)
            return sorted(rng.choice(count, size=self.val_subset, replace=False).tolist())
        return list(range(count))

    def _loader(self, split: Split, train: bool) -> DataLoader:
        if split not in self.splits or self.splits[split].features is None:
            self.setup(None)
        data = self.splits[split]
        assert data.features is not None
        features = data.features.select(self._indices(split))
        src = column(features, "source_length")
        tgt = column(features, "target_length") if "target_length" in features.column_names else None
        trainer = self.trainer
        sampler = DialogueBatchSampler(
            src, tgt,
            mode=self.batching if train else "sorted",
            batch_size=self.batch_size if train else self.eval_batch_size,
            max_tokens=self.max_tokens,
            shuffle=train,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            concatenated=self.decoder_only,
            length_noise=self.length_noise,
        )
        keep = ["index", "input_ids"] + (["labels"] if "labels" in features.column_names else [])
        loader_class = ResumableDataLoader if train else DataLoader
        return loader_class(
            features.select_columns(keep),
            batch_sampler=sampler,
            collate_fn=DialogueCollator(
                pad_id=self.tokenizer.pad_token_id,
                fnames=data.table.fnames,
                references=data.references if split != "predict" else None,
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Page-locked batches on CUDA, so host-to-device copies are asynchronous.
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            # Its own generator: making an iterator then draws nothing from the global torch RNG, so training's
            # random numbers do not depend on when an epoch's iterator is made (a resumed run makes it earlier).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", train=True)
        assert isinstance(loader, ResumableDataLoader)
        if self._train_loader_state is not None:
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the training loader's position within its epoch (``train_loader``)."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training loader's position: now if the loader exists, else when it is made (Lightning
        restores the data module before it asks for the loader, and skips loader states when
        ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``, as dsum's does)."""
        state = state_dict.get("train_loader")
        if state is None:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state)
        else:
            self._train_loader_state = dict(state)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", train=False)


class DialogueCollator:
    """Pads a list of examples into tensors: inputs with the pad id, labels with -100. Batches also carry each
    example's ``index``, ``fname`` and references, so metrics and submissions match rows back under DDP."""

    def __init__(self, pad_id: int, fnames: list[str], references: list[list[str]] | None) -> None:
        self.pad_id = pad_id
        self.fnames = fnames
        self.references = references

    @staticmethod
    def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
        return pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        input_ids = self._pad([e["input_ids"] for e in examples], self.pad_id)
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long(),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
            "fname": [self.fnames[e["index"]] for e in examples],
        }
        if "labels" in examples[0]:
            batch["labels"] = self._pad([e["labels"] for e in examples], -100)
        if self.references is not None:
            batch["references"] = [self.references[e["index"]] for e in examples]
        return batch

"""Batch samplers: random, length-grouped and token-budget batching, sharded for DDP.

Every rank builds the same global list of batches from (seed, epoch) and takes every ``num_replicas``-th one. The
list is padded by repeating its first batches, so all ranks run the same number of steps; evaluation de-duplicates
by example index (:class:`dsum.eval.metrics.KoreanRouge`). :class:`ResumableDataLoader` lets an interrupted epoch
resume exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader, Sampler

BatchingMode = Literal["random", "length_grouped", "token_budget", "sorted"]

# Length-grouped batching sorts within windows of this many batches (HF's LengthGroupedSampler uses 50).
GROUP_WINDOW_BATCHES = 50
# Encoder-decoder batches are cut from the encoder-length order in runs of this many batches, each then sorted by
# summary length: the two lengths correlate loosely (r = 0.72-0.75 on dev), so one order by their sum pads 31% of
# decoder positions; two runs keep encoder padding under 10% and bring decoder padding to about 24%.
DECODER_SORT_RUN_BATCHES = 2
# Default of ``length_noise`` (AllenNLP's ``padding_noise``). Off: on the sample 0.1 did not lower the dev loss and
# cost 8% of training speed (tests/benchmarks/README.md, "Does batching cost quality?").
LENGTH_NOISE = 0.0


class DialogueBatchSampler(Sampler[list[int]]):
    """Yields lists of example indices for one rank.

    Args:
        source_lengths: Encoder (or prompt) tokens per example.
        target_lengths: Decoder (or summary) tokens per example; zeros for unlabelled data.
        mode: ``random`` (shuffle, fixed batch size), ``length_grouped`` (shuffle, sort within windows of 50
            batches, shuffle the batches), ``token_budget`` (sort by length, pack up to ``max_tokens`` padded
            tokens, shuffle the batches), ``sorted`` (longest first, no shuffling: evaluation and prediction).
        batch_size: Examples per batch (all modes but ``token_budget``).
        max_tokens: Padded tokens per batch, ``n * (max source + max target)``, for ``token_budget``.
        shuffle: Shuffle (training) or keep a fixed order (evaluation).
        seed: Base seed; the epoch is added so every epoch differs but is reproducible.
        num_replicas: World size.
        rank: This process's rank.
        length_noise: When shuffling, sort by lengths scaled by a random factor in ``[1 - length_noise,
            1 + length_noise]`` drawn every epoch; 0 (and ``sorted``) sorts by exact lengths.
        concatenated: Source and target form one sequence (decoder-only models): group by their sum. Otherwise
            sort by source length, then by target length within runs of :data:`DECODER_SORT_RUN_BATCHES` batches.
    """

    def __init__(
        self,
        source_lengths: Sequence[int],
        target_lengths: Sequence[int] | None = None,
        mode: BatchingMode = "length_grouped",
        batch_size: int = 16,
        max_tokens: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        concatenated: bool = False,
        length_noise: float = LENGTH_NOISE,
    ) -> None:
        if not 0 <= length_noise < 1:
            raise ValueError(f"length_noise must be in [0, 1), got {length_noise}")
        if mode == "token_budget":
            if max_tokens is None or max_tokens <= 0:
                raise ValueError(f"token_budget batching needs a positive max_tokens, got {max_tokens}")
        elif batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside world size {num_replicas}")
        self.source_lengths = np.asarray(source_lengths, dtype=np.int64)
        targets = np.zeros_like(self.source_lengths) if target_lengths is None else target_lengths
        self.target_lengths = np.asarray(targets, dtype=np.int64)
        self.mode = mode
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.concatenated = concatenated
        self.length_noise = length_noise
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next iteration over ``epoch`` start after its first ``batches`` batches (this rank's), which a
        resumed run has already trained on. Iterations over other epochs are unaffected; it applies once."""
        if batches < 0:
            raise ValueError(f"cannot resume after a negative number of batches ({batches})")
        self._resume = (epoch, batches)

    def batches_in_epoch(self, epoch: int) -> int:
        """This rank's number of batches in ``epoch`` (``token_budget`` packing can differ between epochs)."""
        current, self.epoch = self.epoch, epoch
        try:
            return len(self)
        finally:
            self.epoch = current

    def start_batch(self) -> int:
        """How many of the current epoch's batches the next iteration skips (see :meth:`resume_at`)."""
        if self._resume is not None and self._resume[0] == self.epoch:
            return min(self._resume[1], len(self))
        return 0

    def _length_order(self, indices: np.ndarray) -> np.ndarray:
        """`indices` sorted longest first by total length; ties keep the incoming (shuffled) order."""
        keys = self._source_keys[indices] + self._target_keys[indices]
        return indices[np.argsort(-keys, kind="stable")]

    def _source_order(self, indices: np.ndarray) -> np.ndarray:
        """`indices` sorted longest source first, then longest target; other ties keep the incoming order."""
        order = indices[np.argsort(-self._target_keys[indices], kind="stable")]
        return order[np.argsort(-self._source_keys[order], kind="stable")]

    def _by_target(self, run: np.ndarray | list[int]) -> np.ndarray:
        run = np.asarray(run, dtype=np.int64)
        return run[np.argsort(-self._target_keys[run], kind="stable")]

    def _chunks(self, order: np.ndarray) -> list[list[int]]:
        return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]

    def _grouped_batches(self, indices: np.ndarray) -> list[list[int]]:
        """Fixed-size batches of similar length (``length_grouped``, for one window of examples)."""
        if self.concatenated:
            return self._chunks(self._length_order(indices))
        order = self._source_order(indices)
        run = self.batch_size * DECODER_SORT_RUN_BATCHES
        return [batch for start in range(0, len(order), run)
                for batch in self._chunks(self._by_target(order[start : start + run]))]

    def _budget_batches(self, indices: np.ndarray) -> list[list[int]]:
        """Batches of at most ``max_tokens`` padded tokens (``token_budget``)."""
        if self.concatenated:
            return self._token_budget_batches(self._length_order(indices))
        # Runs of about DECODER_SORT_RUN_BATCHES batches by source length, each re-packed by target length.
        runs = self._token_budget_batches(self._source_order(indices), self.max_tokens * DECODER_SORT_RUN_BATCHES)
        return [batch for run in runs for batch in self._token_budget_batches(self._by_target(run))]

    def _token_budget_batches(self, order: np.ndarray, max_tokens: int | None = None) -> list[list[int]]:
        """Pack ``order`` greedily into batches whose ``n * (max source + max target)`` fits ``max_tokens``."""
        budget = max_tokens or self.max_tokens
        batches: list[list[int]] = []
        current: list[int] = []
        max_src = max_tgt = 0
        for index in order.tolist():
            src, tgt = int(self.source_lengths[index]), int(self.target_lengths[index])
            new_src, new_tgt = max(max_src, src), max(max_tgt, tgt)
            if current and (len(current) + 1) * (new_src + new_tgt) > budget:
                batches.append(current)
                current, new_src, new_tgt = [], src, tgt
            current.append(index)
            max_src, max_tgt = new_src, new_tgt
        if current:
            batches.append(current)
        return batches

    def global_batches(self) -> list[list[int]]:
        """All batches of this epoch, for every rank, before sharding and padding."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        indices = np.arange(len(self.source_lengths))
        if self.shuffle:
            indices = rng.permutation(indices)
        # The lengths that order examples this epoch: exact, or scaled by the epoch's random factors.
        self._source_keys, self._target_keys = self.source_lengths, self.target_lengths
        if self.shuffle and self.length_noise > 0 and self.mode in ("length_grouped", "token_budget"):
            low, high, count = 1 - self.length_noise, 1 + self.length_noise, len(indices)
            self._source_keys = self.source_lengths * rng.uniform(low, high, count)
            self._target_keys = self.target_lengths * rng.uniform(low, high, count)
        if self.mode == "random":
            batches = self._chunks(indices)
        elif self.mode == "sorted":
            batches = self._chunks(self._length_order(indices))
        elif self.mode == "length_grouped":
            window = self.batch_size * GROUP_WINDOW_BATCHES
            batches = [
                batch
                for start in range(0, len(indices), window)
                for batch in self._grouped_batches(indices[start : start + window])
            ]
        elif self.mode == "token_budget":
            batches = self._budget_batches(indices)
        else:
            raise ValueError(f"unknown batching mode {self.mode!r}")
        if self.shuffle and self.mode != "random":
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        start = self.start_batch()
        self._resume = None
        batches = self.global_batches()
        total = len(self) * self.num_replicas
        padded = batches + [batches[i % len(batches)] for i in range(total - len(batches))] if batches else []
        yield from padded[self.rank :: self.num_replicas][start:]

    def __len__(self) -> int:
        return math.ceil(len(self.global_batches()) / self.num_replicas)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`DialogueBatchSampler` that knows its position within the epoch.

    It counts the batches of the current epoch it has handed out (not those its workers prepared ahead); restoring
    that count makes the next iteration over the same epoch skip them, so a resumed run sees the batches an
    uninterrupted one sees. ``len()`` stays the full epoch, as Lightning's progress counters expect.
    """

    batch_sampler: DialogueBatchSampler

    def __iter__(self) -> Iterator[Any]:
        # A generator: the sampler is read at the first batch, after Lightning's `set_epoch`.
        sampler = self.batch_sampler
        if not isinstance(sampler, DialogueBatchSampler):  # replaced by Lightning (e.g. overfit_batches)
            yield from super().__iter__()
            return
        self._position = (sampler.epoch, sampler.start_batch())
        for batch in super().__iter__():
            self._position = (self._position[0], self._position[1] + 1)
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``epoch`` and ``batches``: how many of that epoch's batches were handed out (0 before the first)."""
        if not isinstance(self.batch_sampler, DialogueBatchSampler):
            return {}
        epoch, batches = getattr(self, "_position", (self.batch_sampler.epoch, 0))
        return {"epoch": epoch, "batches": batches, "num_batches": self.batch_sampler.batches_in_epoch(epoch)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume within ``state["epoch"]`` after ``state["batches"]`` batches; ValueError when that epoch had another
        number of batches (other data, batch size or world size)."""
        if not state or not isinstance(self.batch_sampler, DialogueBatchSampler):
            return
        expected = self.batch_sampler.batches_in_epoch(int(state["epoch"]))
        if state.get("num_batches", expected) != expected:
            raise ValueError(
                f"the checkpoint's training epoch {state['epoch']} had {state['num_batches']} batches, this run's "
                f"has {expected}: resume with the same data.train_file, data.batching, data.batch_size, "
                "data.max_tokens, seed and devices"
            )
        self.batch_sampler.resume_at(int(state["epoch"]), int(state["batches"]))
        self._position = (int(state["epoch"]), int(state["batches"]))

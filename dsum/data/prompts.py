"""Instruction prompts for decoder-only LLMs: named templates, rendered and tokenized with exact truncation.

A prompt is ``prefix + dialogue + suffix``: for a **chat** template, the tokenizer's ``apply_chat_template`` of an
optional system message and one user message (instruction and dialogue) plus the generation prompt, with the summary
and the end-of-turn token as target; for a **plain** template (a text with ``{instruction}`` and ``{dialogue}``
slots), the summary and eos. Truncation shortens the dialogue only.

User text is encoded as plain text, so a dialogue or summary holding a control token's text (``<|im_end|>``) cannot
end or open a turn; the data's ``#...#`` masks stay one id each. The template used is recorded in the tokenizer's
config (:data:`TOKENIZER_KEY`), so an exported model carries it to ``validate`` and ``predict``.
"""

from __future__ import annotations

import re
from contextlib import suppress
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from jinja2.exceptions import TemplateError
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerBase

from dsum.data.text import MASK_PATTERN

TOKENIZER_KEY = "dsum_prompt_template"
"""Key under which the prompt template used is saved in ``tokenizer_config.json``."""

_DIALOGUE = "\u2063DSUM_DIALOGUE\u2063"
_SUMMARY = "\u2063DSUM_SUMMARY\u2063"
# Put before a piece of user text encoded on its own, so the tokenizer treats it as text in mid-prompt (a
# SentencePiece-style "prepend to the first word" does not apply); its id is dropped.
_SENTINEL = "\u2063DSUM_TEXT\u2063"

INSTRUCTION_KO = "다음 대화를 요약하세요."
SYSTEM_KO = "당신은 한국어 대화를 정확하고 간결하게 요약하는 도우미입니다."
ALPACA = "### Instruction:\n{instruction}\n\n### Input:\n{dialogue}\n\n### Output:\n"


@dataclass(frozen=True)
class PromptTemplate:
    """One named prompt: an instruction put before the dialogue, an optional system message (chat templates), and
    a ``plain`` text with ``{instruction}`` and ``{dialogue}`` slots, or ``None`` for the tokenizer's chat template."""

    name: str
    instruction: str = INSTRUCTION_KO
    system: str | None = None
    plain: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        # The tokenizer's chat template, user message "instruction\n\ndialogue" (falls back to `alpaca`
        # for a tokenizer without a chat template).
        PromptTemplate("chat"),
        PromptTemplate("chat_system", system=SYSTEM_KO),
        # The layout the winning SOLAR teams used.
        PromptTemplate("alpaca", plain=ALPACA),
        PromptTemplate("plain_ko", plain="{instruction}\n\n대화:\n{dialogue}\n\n요약:\n"),
    )
}
"""Templates selectable by name with ``data.prompt_template``."""


def resolve_template(value: str | dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> PromptTemplate:
    """The :class:`PromptTemplate` for a ``data.prompt_template`` value: a name from :data:`PROMPT_TEMPLATES`, a
    plain template text containing ``{dialogue}``, or a saved :meth:`PromptTemplate.to_dict`. Without a chat
    template in ``tokenizer``, ``chat`` falls back to ``alpaca`` and ``chat_system`` is refused."""
    if isinstance(value, dict):
        template = PromptTemplate(**value)
    elif "{dialogue}" in value:
        template = PromptTemplate("custom", plain=value)
    elif value in PROMPT_TEMPLATES:
        template = PROMPT_TEMPLATES[value]
    else:
        raise ValueError(
            f"data.prompt_template={value!r} is not a template name ({', '.join(PROMPT_TEMPLATES)}) "
            "and has no {dialogue} slot"
        )
    if template.plain is not None:
        check_dialogue_slot(template.name, template.plain.count("{dialogue}"), template.plain)
        return template
    if getattr(tokenizer, "chat_template", None):
        return template
    if template.system is None:
        return PromptTemplate(f"{template.name}->alpaca", instruction=template.instruction, plain=ALPACA)
    raise ValueError(
        f"data.prompt_template={template.name!r} needs a tokenizer with a chat template, and this one has none; "
        "choose a plain template (alpaca, plain_ko) or a tokenizer that has one"
    )


def check_dialogue_slot(name: str, count: int, text: str) -> None:
    """Raise ValueError unless the prompt has exactly one ``{dialogue}`` slot (the span truncation shortens)."""
    if count != 1:
        what = "has no {dialogue} slot" if count == 0 else f"has the {{dialogue}} placeholder {count} times"
        raise ValueError(f"data.prompt_template {name!r} {what}; it must appear exactly once: {text[:200]!r}")


class PromptBuilder:
    """Token ids of prompts and targets for a fast tokenizer (its character offsets locate the dialogue in the
    rendered prompt) and a :class:`PromptTemplate`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"data.prompt_template needs a fast tokenizer (got {type(tokenizer).__name__}); "
                "try data.tokenizer_loader=tokenizer_json"
            )
        self.tokenizer = tokenizer
        self.template = template
        rendered = self._render(with_summary=False)
        check_dialogue_slot(template.name, rendered.count(_DIALOGUE), template.plain or "(chat template)")
        self.before, self.after = rendered.split(_DIALOGUE)
        # Masks keep their one id in user text; the text of any other special token is encoded as plain text.
        added = tokenizer.added_tokens_decoder
        self.mask_ids = {t.content: i for i, t in added.items() if MASK_PATTERN.fullmatch(t.content)}
        control = {t.content for t in added.values() if t.special} | set(tokenizer.all_special_tokens)
        control = {c for c in control if c and c not in self.mask_ids}
        self._control = _alternation(control)
        self._masks = _alternation(set(self.mask_ids), group=True)
        self.end_of_turn_id = self._end_of_turn()
        # Special ids a plain prompt starts with (a Llama-2 style <s>); chat templates write their own.
        self.head: list[int] = []
        if template.plain is not None:
            probe = tokenizer("가")["input_ids"]
            plain = tokenizer("가", add_special_tokens=False)["input_ids"]
            if probe[len(probe) - len(plain):] == plain:
                self.head = probe[: len(probe) - len(plain)]

    def _render(self, with_summary: bool) -> str:
        template = self.template
        if template.plain is not None:
            text = template.plain.replace("{instruction}", template.instruction).replace("{dialogue}", _DIALOGUE)
            return text + (_SUMMARY if with_summary else "")
        messages = [{"role": "system", "content": template.system}] if template.system else []
        messages.append({"role": "user", "content": f"{template.instruction}\n\n{_DIALOGUE}"})
        if with_summary:
            messages.append({"role": "assistant", "content": _SUMMARY})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not with_summary)

    def _end_of_turn(self) -> int:
        """The token the chat template writes right after an assistant message when it is special, else eos."""
        eos = self.tokenizer.eos_token_id
        if self.template.plain is not None:
            if eos is None:
                raise ValueError("the tokenizer has no eos token to end the summary with")
            return eos
        tail = self._render(with_summary=True).partition(_SUMMARY)[2]
        ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        if ids and ids[0] in self.tokenizer.all_special_ids:
            return ids[0]
        if eos is None:
            raise ValueError("the chat template ends an assistant turn with no special token and there is no eos")
        return eos

    def prompt_text(self, dialogue: str) -> str:
        """The full prompt for one dialogue, as text (what :meth:`encode_prompts` tokenizes)."""
        return self.before + dialogue + self.after

    def fixed_length(self) -> int:
        """Prompt tokens besides the dialogue (instruction, chat markup, generation prompt)."""
        return len(self.encode_prompts([""], 10**9)[0][0])

    def encode_prompts(self, dialogues: list[str], max_len: int) -> tuple[list[list[int]], list[bool]]:
        """Prompt ids per dialogue, at most ``max_len`` long (only dialogue tokens are cut), and whether each was cut;
        ValueError when the instruction and markup alone do not fit."""
        texts = [self.prompt_text(d) for d in dialogues]
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        start = len(self.before)
        out, cut = [], []
        for text, dialogue, ids, offsets in zip(texts, dialogues, encoded["input_ids"], encoded["offset_mapping"]):
            end = start + len(dialogue)
            # Leading tokens wholly before the dialogue, trailing ones wholly after it; the rest is dialogue
            # (a token straddling a boundary counts as dialogue, so markup is never cut).
            prefix_end = 0
            while prefix_end < len(ids) and offsets[prefix_end][1] <= start:
                prefix_end += 1
            suffix_from = len(ids)
            while suffix_from > prefix_end and offsets[suffix_from - 1][0] >= end:
                suffix_from -= 1
            prefix, body, suffix = ids[:prefix_end], ids[prefix_end:suffix_from], ids[suffix_from:]
            if self._control is not None and self._control.search(dialogue) and body:
                body = self.plain_ids(text[offsets[prefix_end][0]: offsets[suffix_from - 1][1]], first=False)
            fixed = len(self.head) + len(prefix) + len(suffix)
            budget = max_len - fixed
            if budget <= 0:
                raise ValueError(
                    f"data.encoder_max_len={max_len} leaves no room for the dialogue: prompt template "
                    f"{self.template.name!r} takes {fixed} tokens; raise data.encoder_max_len"
                )
            out.append(self.head + prefix + body[:budget] + suffix)
            cut.append(len(body) > budget)
        return out, cut

    def encode_targets(self, summaries: list[str], max_len: int) -> tuple[list[list[int]], list[bool]]:
        """Summary ids followed by the end-of-turn id, at most ``max_len`` long (the end-of-turn is kept)."""
        if max_len < 2:
            raise ValueError(f"data.decoder_max_len={max_len} leaves no room for a summary and its end-of-turn")
        bodies = self.tokenizer(summaries, add_special_tokens=False)["input_ids"]
        if self._control is not None:
            bodies = [self.plain_ids(text, first=True) if self._control.search(text) else ids
                      for text, ids in zip(summaries, bodies)]
        budget = max_len - 1
        return [b[:budget] + [self.end_of_turn_id] for b in bodies], [len(b) > budget for b in bodies]

    @cached_property
    def _plain_tokenizer(self) -> Tokenizer:
        """The backend tokenizer, encoding special tokens' text as plain text, with :data:`_SENTINEL` added."""
        backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        backend.encode_special_tokens = True
        backend.add_tokens([AddedToken(_SENTINEL, special=False, normalized=False)])
        return backend

    def plain_ids(self, text: str, first: bool) -> list[int]:
        """User ``text`` encoded as plain text (masks one id each); ``first``: it starts the input (a summary)
        rather than following markup (a dialogue)."""
        pieces = self._masks.split(text) if self._masks is not None else [text]
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2:  # the split's captured group: a mask
                ids.append(self.mask_ids[piece])
            elif piece:
                at_start = first and i == 0
                encoded = self._plain_tokenizer.encode(piece if at_start else _SENTINEL + piece,
                                                       add_special_tokens=False).ids
                ids.extend(encoded if at_start else encoded[1:])
        return ids

    def fingerprint(self) -> dict[str, Any]:
        """What the cached features depend on: the template, its rendered markup, and how user text is encoded."""
        return {**self.template.to_dict(), "before": self.before, "after": self.after,
                "end_of_turn": self.end_of_turn_id, "head": self.head, "user_text": "plain"}


def _alternation(strings: set[str], group: bool = False) -> re.Pattern[str] | None:
    """A regex matching any of ``strings`` (longest first; captured when ``group``), or None for none."""
    if not strings:
        return None
    body = "|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True))
    return re.compile(f"({body})" if group else body)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids generation must stop at: eos, and the chat template's end-of-turn token when there is one."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if getattr(tokenizer, "chat_template", None):
        with suppress(TemplateError, ValueError):  # a template that renders no plain user turn: eos alone then
            ids.append(PromptBuilder(tokenizer, PROMPT_TEMPLATES["chat"]).end_of_turn_id)
    return list(dict.fromkeys(ids))


def saved_template(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
    """The prompt template recorded in the tokenizer's config by :func:`record_template`, if any."""
    value = getattr(tokenizer, "init_kwargs", {}).get(TOKENIZER_KEY)
    return dict(value) if isinstance(value, dict) else None


def record_template(tokenizer: PreTrainedTokenizerBase, template: PromptTemplate) -> None:
    """Record ``template`` in the tokenizer's config, so ``save_pretrained`` writes it with the model."""
    tokenizer.init_kwargs[TOKENIZER_KEY] = template.to_dict()

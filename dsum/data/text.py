"""Text normalisation and discovery of `#...#` mask tokens."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# `#Person1#`, `#PhoneNumber#`, ...: anonymisation masks that must stay single tokens.
MASK_PATTERN = re.compile(r"#[A-Za-z][A-Za-z0-9]*#")

# Masks listed for the competition's train/dev/test splits; the data adds whatever else it contains.
DEFAULT_MASKS: tuple[str, ...] = (
    *(f"#Person{i}#" for i in range(1, 8)),
    "#PhoneNumber#",
    "#Address#",
    "#DateOfBirth#",
    "#PassportNumber#",
    "#SSN#",
    "#CardNumber#",
    "#CarNumber#",
    "#Email#",
)

_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)


@dataclass(frozen=True)
class TextNormalization:
    """How dialogue and summary text is cleaned before tokenization.

    Args:
        literal_newlines: Turn the two characters backslash + n into a real newline.
        br_tags: Turn `<br>` / `<br/>` tags into a real newline.
        strip_trailing_spaces: Strip spaces and tabs at the end of every line.
    """

    literal_newlines: bool = True
    br_tags: bool = True
    strip_trailing_spaces: bool = True

    def __call__(self, text: str) -> str:
        """Return `text` normalised; CRLF and lone CR always become LF."""
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.literal_newlines:
            text = text.replace("\\n", "\n")
        if self.br_tags:
            text = _BR_TAG.sub("\n", text)
        if self.strip_trailing_spaces:
            text = _TRAILING_SPACE.sub("", text).strip()
        return text


# Characters that show nothing: format characters (zero-width space/joiners, BOM, word joiner, soft hyphen),
# controls, separators, and the Hangul fillers (letters by category, blank on screen).
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})
_HANGUL_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: empty, whitespace, or only invisible characters such as zero-width
    spaces (U+200B), joiners, byte-order marks or Hangul fillers."""
    return all(ch.isspace() or ch in _HANGUL_FILLERS or unicodedata.category(ch) in _INVISIBLE_CATEGORIES
               for ch in text)


def find_masks(texts: Iterable[str]) -> list[str]:
    """Every distinct `#...#` mask in `texts`, sorted."""
    return sorted({mask for text in texts for mask in MASK_PATTERN.findall(text)})

"""The values that cross stage boundaries: what the engine recognised, in file time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Token:
    """One SentencePiece piece with its time in the file.

    `text` is the piece's surface form: a piece that starts a word carries its leading space
    (SentencePiece's "▁" decoded), CJK characters and punctuation carry none.
    """

    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Segment:
    """The recognition of one speech span: text, SenseVoice's rich tags, token times."""

    start_s: float
    end_s: float
    text: str
    language: str  # "zh", "en", "yue", "ja", "ko", "nospeech", ... lower-case, no brackets
    emotion: str  # "neutral", "happy", ... ; "unknown" for <|EMO_UNKNOWN|>
    event: str  # "speech", "bgm", "laughter", ...
    itn: bool
    tokens: tuple[Token, ...]


@dataclass(frozen=True)
class Transcript:
    """Everything the sidecar writers need for one source file."""

    file: Path
    duration_s: float
    model: str
    device: str
    precision: str
    language: str  # the language of most speech, "" when there was none
    segments: tuple[Segment, ...]

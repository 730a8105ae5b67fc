"""Cues and sidecar text from a transcript: pure functions, no I/O, no clock.

Times are rounded once to integer milliseconds (`_ms`) and kept so inside this module; `Cue` carries
float seconds that are exact millisecond multiples, so SRT, VTT and JSON all show the same millisecond.

Decisions a reader may look for:
- A line never breaks inside a word of a spaced script (Latin, Hangul); Han and Kana may break between
  any two tokens, never inside one. A single word longer than the line limit stands alone on its own line
  (it is not hard-wrapped), and a single word is never split in time either.
- Reading speed counts every character on screen, spaces included, line breaks not (Netflix's rule).
- A cue may join consecutive segments when the pause between them is under `split_gap_s`, they have the
  same language and the later one carries no SDH label.
- The JSON sidecar and the TXT list only segments with text: a transcript without speech gives
  `segments: []` and an empty `.txt`, as the contract asks for empty results.
- Every renderer returns text that encodes as UTF-8: lone surrogates (from `os.fsdecode` of a file name
  that is not UTF-8) become U+FFFD, one per undecodable byte, so the sidecar write cannot crash on them.
- Text is shown as text in every format. Special tokens never get here (the engine drops them where the
  text is made). WebVTT escapes `&`, `<` and `>`. SRT has no escapes, and players read markup in it:
  FFmpeg (mpv, and players built on it) and VLC take `<b>`, `<i>`, `<u>`, `<s>`, `<font>` as styles and
  hide other `<tag>`s; they hide `{\\...}` and `{X:...}` or apply them (`{\\an8}` moves the cue), libass
  hides any `{...}` FFmpeg passes on, and `\\N`, `\\n`, `\\h` become breaks and spaces. So SRT shows `<`,
  `{` and `\\` as their full-width forms (＜ ｛ ＼), which nothing parses; `&` needs nothing (no SRT
  reader decodes entities, so `&amp;` would show as is). TXT and JSON keep the text as recognised.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from svdaemon.transcript import Segment, Token, Transcript


class SubtitleStyleLike(Protocol):
    """The settings cue building reads (config's `SubtitleStyle`)."""

    @property
    def max_chars_per_line(self) -> int: ...
    @property
    def max_chars_per_line_cjk(self) -> int: ...
    @property
    def max_lines(self) -> int: ...
    @property
    def min_duration_s(self) -> float: ...
    @property
    def max_duration_s(self) -> float: ...
    @property
    def max_cps(self) -> float: ...
    @property
    def split_gap_s(self) -> float: ...
    @property
    def sdh_events(self) -> bool: ...


@dataclass(frozen=True)
class Cue:
    """One subtitle on screen."""

    start_s: float
    end_s: float
    lines: tuple[str, ...]


SDH_LABELS = {
    "bgm": "[music]",
    "laughter": "[laughter]",
    "applause": "[applause]",
    "cry": "[crying]",
    "sneeze": "[sneeze]",
    "cough": "[cough]",
    "breath": "[breath]",
}  # SenseVoice's events; "speech" and "event_unk" get no label

_SENTENCE_END = frozenset(".!?…。！？")
_CLAUSE_END = frozenset(",;:，、；：")
_CLINGS_LEFT = frozenset({"Pe", "Pf", "Po", "Lm"})  # closing punctuation, 々 and ー never start a line
_CLINGS_RIGHT = frozenset({"Ps", "Pi"})  # opening brackets and quotes never end one
_HAN_KANA = (  # 々〆〇, kana, Han (all extensions, compatibility), half-width katakana
    (0x3005, 0x3007), (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF), (0xFF66, 0xFF9F), (0x20000, 0x3FFFF),
)  # fmt: skip
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF))
_HAN_KANA_CLASS = "".join(f"{chr(low)}-{chr(high)}" for low, high in _HAN_KANA)
_TEXT_PIECE = re.compile(rf"\s*(?:[{_HAN_KANA_CLASS}]|[^\s{_HAN_KANA_CLASS}]+)")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SRT_MARKUP_FREE = str.maketrans({"<": "\uff1c", "{": "\uff5b", "\\": "\uff3c"})  # ＜ ｛ ＼

# Costs of a way to cut a run of words into cues, in units of "one more cue on screen".
_CUE_COST = 1.0
_BREAK_COST = {"sentence": 0.0, "clause": 1.5, "word": 3.0}  # cutting after such a word
_SHORT_CUE_COST = 2.0  # a cue that cannot stay min_duration_s on screen
_CPS_COST = 0.2  # per character per second over max_cps
_EMPTY_COST = 1.0  # times the squared unused share of the cue's room: prefer full, even cues
_LINE_BREAK_BONUS = {"sentence": 1 / 4, "clause": 1 / 6}  # times limit², see _layout


@dataclass(frozen=True)
class _Word:
    """The smallest piece line and cue breaks keep whole: a spaced word, or one Han/Kana token."""

    text: str  # no surrounding whitespace
    spaced: bool  # a space separates it from the word before on the same line
    start_ms: int
    end_ms: int
    holds_next: bool = False  # an SDH label: no cue ends right after it


def build_cues(source: Transcript | Sequence[Segment], style: SubtitleStyleLike) -> list[Cue]:
    """Sorted, non-overlapping cues that respect the style wherever the speech timing allows."""
    segments = source.segments if isinstance(source, Transcript) else tuple(source)
    runs = _runs(segments, style)
    if not runs:
        return []
    speech_end_ms = max(max(_ms(s.end_s) for s in segments), runs[-1][-1].end_ms)
    known_duration = isinstance(source, Transcript) and source.duration_s > 0
    end_of_file_ms = _ms(source.duration_s) if known_duration else speech_end_ms
    groups: list[tuple[tuple[str, ...], int, int]] = []
    for run, next_run in zip(runs, [*runs[1:], None], strict=True):
        limit = _line_limit(run, style)
        room_end_ms = next_run[0].start_ms if next_run else max(end_of_file_ms, run[-1].end_ms)
        for words in _split_run(run, room_end_ms, limit, style):
            lines = _layout(words, limit, style.max_lines)
            groups.append((lines, words[0].start_ms, max(w.end_ms for w in words)))
    return _timed(groups, end_of_file_ms, style)


def _runs(segments: Sequence[Segment], style: SubtitleStyleLike) -> list[list[_Word]]:
    """Words that may share a cue: cut at pauses >= split_gap_s, language changes and SDH labels."""
    gap_ms = _ms(style.split_gap_s)
    runs: list[list[_Word]] = []
    language = None
    for segment in sorted((s for s in segments if s.text.strip()), key=lambda s: s.start_s):
        label = SDH_LABELS.get(segment.event.lower()) if style.sdh_events else None
        starts_run = label is not None or segment.language != language
        for word in _segment_words(segment, label):
            if starts_run or (word.start_ms - runs[-1][-1].end_ms >= gap_ms and not runs[-1][-1].holds_next):
                runs.append([])
                starts_run = False
            runs[-1].append(word)
        language = segment.language
    return runs


def _segment_words(segment: Segment, label: str | None) -> list[_Word]:
    """A segment's words: the first set apart from the segment before, after the SDH label if any."""
    words = _words(segment.tokens) or _words(_spread_tokens(segment))
    first = words[0]
    words[0] = replace(first, spaced=label is not None or not _breaks_anywhere(first.text[0]))
    if label:
        words.insert(0, _Word(label, True, first.start_ms, first.start_ms, holds_next=True))
    return words


def _words(tokens: Sequence[Token]) -> list[_Word]:
    """Tokens glued into words: a token joins the word before unless a space or Han/Kana separates them."""
    words: list[_Word] = []
    space_pending = False
    for token in tokens:
        text = " ".join(token.text.split())
        if not text:
            space_pending = space_pending or bool(token.text)
            continue
        spaced = space_pending or token.text[0].isspace()
        space_pending = False
        start_ms, end_ms = _ms(token.start_s), _ms(token.end_s)
        if words and not spaced and _joins(words[-1].text[-1], text[0]):
            last = words[-1]
            words[-1] = _Word(last.text + text, last.spaced, last.start_ms, max(last.end_ms, end_ms))
        else:
            words.append(_Word(text, spaced, start_ms, max(start_ms, end_ms)))
    return words


def _spread_tokens(segment: Segment) -> tuple[Token, ...]:
    """Tokens for a segment that came without token times: its text spread evenly over its span."""
    pieces = _TEXT_PIECE.findall(segment.text)
    total = sum(len(piece.strip()) for piece in pieces)
    span_s = segment.end_s - segment.start_s
    tokens, done = [], 0
    for piece in pieces:
        start_s = segment.start_s + span_s * done / total
        done += len(piece.strip())
        tokens.append(Token(piece, start_s, segment.start_s + span_s * done / total))
    return tuple(tokens)


def _split_run(
    words: list[_Word], room_end_ms: int, limit: int, style: SubtitleStyleLike
) -> list[list[_Word]]:
    """The cheapest cut of a run into cues that fit the lines and max_duration_s (dynamic programming)."""
    max_ms, min_ms, gap_ms = _ms(style.max_duration_s), _ms(style.min_duration_s), _ms(style.split_gap_s)
    room_chars = limit * style.max_lines
    count = len(words)
    break_costs = [
        _BREAK_COST[_break_kind(word, (following.start_ms - word.end_ms) * 2 >= gap_ms)]
        for word, following in itertools.pairwise(words)
    ] + [0.0]  # ending a cue where the run ends costs nothing
    best = [0.0] + [math.inf] * count
    cut_from = [0] * (count + 1)
    for first in range(count):
        lines, line_len, chars = 1, 0, 0
        for stop in range(first + 1, count + 1):
            word = words[stop - 1]
            space = 1 if word.spaced else 0
            if line_len == 0:
                line_len = len(word.text)
            elif line_len + space + len(word.text) <= limit:
                line_len += space + len(word.text)
                chars += space
            else:
                lines, line_len = lines + 1, len(word.text)
            chars += len(word.text)
            too_big = lines > style.max_lines or word.end_ms - words[first].start_ms > max_ms
            if too_big and not _unbreakable(words, first, stop):
                break
            if word.holds_next and stop < count:
                continue
            room_ms = min(
                (words[stop].start_ms if stop < count else room_end_ms) - words[first].start_ms, max_ms
            )
            cost = best[first] + _CUE_COST + break_costs[stop - 1]
            cost += _EMPTY_COST * max(0.0, 1 - chars / room_chars) ** 2
            cost += _CPS_COST * max(0.0, chars * 1000 / max(room_ms, 1) - style.max_cps)
            cost += _SHORT_CUE_COST if room_ms < min_ms else 0.0
            if cost < best[stop]:
                best[stop], cut_from[stop] = cost, first
    cuts, stop = [], count
    while stop:
        cuts.append(words[cut_from[stop] : stop])
        stop = cut_from[stop]
    return cuts[::-1]


def _layout(words: list[_Word], limit: int, max_lines: int) -> tuple[str, ...]:
    """One line when it fits, else the fewest lines, as even as possible, preferring breaks at punctuation.

    A line of L characters costs L², so two lines unequal by d cost d²/2 more than equal ones; the
    bonuses let a break after a sentence (clause) leave lines unequal by up to 0.7 (0.6) of the limit.
    """
    count = len(words)
    chars = [0]
    for word in words:
        chars.append(chars[-1] + len(word.text) + (1 if word.spaced else 0))
    bonuses = [_LINE_BREAK_BONUS.get(_break_kind(word), 0.0) * limit**2 for word in words[:-1]] + [0.0]
    best = [0.0] + [math.inf] * count  # best[stop]: words[:stop] set in the lines so far
    lines_cut: list[list[int]] = [[] for _ in range(count + 1)]
    for _ in range(max(max_lines, 1)):
        if best[count] < math.inf:
            break
        new_best, new_cut = [math.inf] * (count + 1), [[] for _ in range(count + 1)]
        for stop in range(1, count + 1):
            for first in range(stop - 1, -1, -1):
                length = chars[stop] - chars[first] - (1 if words[first].spaced else 0)
                if length > limit and stop - first > 1:
                    break
                cost = best[first] + length**2 - bonuses[stop - 1]
                if cost < new_best[stop]:
                    new_best[stop], new_cut[stop] = cost, [*lines_cut[first], first]
        best, lines_cut = new_best, new_cut
    if best[count] == math.inf:  # an SDH label and its word where max_lines is 1
        return (_join(words),)
    bounds = [*lines_cut[count], count]
    return tuple(_join(words[first:stop]) for first, stop in itertools.pairwise(bounds))


def _timed(
    groups: list[tuple[tuple[str, ...], int, int]], end_of_file_ms: int, style: SubtitleStyleLike
) -> list[Cue]:
    """Cue times: speech times, ends stretched into the silence after for min_duration_s and max_cps."""
    min_ms, max_ms = _ms(style.min_duration_s), _ms(style.max_duration_s)
    cues: list[Cue] = []
    previous_end_ms = 0
    for index, (lines, speech_start_ms, speech_end_ms) in enumerate(groups):
        start_ms = max(speech_start_ms, previous_end_ms)
        natural_end_ms = max(speech_end_ms, start_ms + 1)
        next_start_ms = groups[index + 1][1] if index + 1 < len(groups) else math.inf
        ceiling_ms = min(next_start_ms, max(end_of_file_ms, natural_end_ms))
        reading_ms = math.ceil(sum(map(len, lines)) * 1000 / style.max_cps)
        wanted_ms = max(natural_end_ms, start_ms + min(max(min_ms, reading_ms), max_ms))
        end_ms = max(start_ms + 1, min(wanted_ms, ceiling_ms))
        cues.append(Cue(start_ms / 1000, end_ms / 1000, lines))
        previous_end_ms = end_ms
    return cues


def _unbreakable(words: list[_Word], first: int, stop: int) -> bool:
    """A single word, or an SDH label with its word: may overflow a line, or last past max_duration_s."""
    return stop - first == 1 or (stop - first == 2 and words[first].holds_next)


def _break_kind(word: _Word, pause_follows: bool = False) -> str:
    """How good a place the end of this word is to break at: after a sentence, a clause or a pause."""
    text = word.text.rstrip("\"'”’」』）)]")
    if text and text[-1] in _SENTENCE_END:
        return "sentence"
    if (text and text[-1] in _CLAUSE_END) or pause_follows:
        return "clause"
    return "word"


def _line_limit(words: list[_Word], style: SubtitleStyleLike) -> int:
    """The CJK line limit when at least half the letters (SDH labels aside) are Han, Kana or Hangul."""
    letters = [ch for word in words if not word.holds_next for ch in word.text if ch.isalnum()]
    wide = sum(1 for ch in letters if _breaks_anywhere(ch) or _in_ranges(ch, _HANGUL))
    return style.max_chars_per_line_cjk if letters and wide * 2 >= len(letters) else style.max_chars_per_line


def _joins(left: str, right: str) -> bool:
    """Whether two unspaced tokens stay together: yes, except beside Han or Kana (not punctuation)."""
    if unicodedata.category(right) in _CLINGS_LEFT or unicodedata.category(left) in _CLINGS_RIGHT:
        return True
    return not (_breaks_anywhere(left) or _breaks_anywhere(right))


def _breaks_anywhere(ch: str) -> bool:
    return _in_ranges(ch, _HAN_KANA)


def _in_ranges(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= ord(ch) <= high for low, high in ranges)


def _join(words: Sequence[_Word]) -> str:
    return words[0].text + "".join((" " if w.spaced else "") + w.text for w in words[1:])


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _timestamp(seconds: float, ms_separator: str) -> str:
    hours, rest = divmod(_ms(seconds), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{ms_separator}{rest % 1000:03d}"


def _utf8_safe(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)


def render_srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered blocks, text that no player reads as markup; no cues give an empty file."""
    blocks = (
        f"{number}\n{_timestamp(c.start_s, ',')} --> {_timestamp(c.end_s, ',')}\n"
        + "\n".join(line.translate(_SRT_MARKUP_FREE) for line in c.lines)
        + "\n\n"
        for number, c in enumerate(cues, 1)
    )
    return _utf8_safe("".join(blocks))


def render_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT with &, < and > escaped (so no cue text can read as a tag or a "-->")."""
    blocks = (
        f"{_timestamp(c.start_s, '.')} --> {_timestamp(c.end_s, '.')}\n"
        + "\n".join(line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for line in c.lines)
        + "\n\n"
        for c in cues
    )
    return _utf8_safe("WEBVTT\n\n" + "".join(blocks))


def render_txt(transcript: Transcript) -> str:
    """The text as recognised, one paragraph per segment; no speech gives an empty file."""
    paragraphs = [s.text.strip() for s in transcript.segments if s.text.strip()]
    return _utf8_safe("\n\n".join(paragraphs) + "\n" if paragraphs else "")


def render_json(transcript: Transcript) -> str:
    """contract.md's schema 1, keys in its order, times rounded to the millisecond."""
    document = {
        "schema": 1,
        "file": os.fsdecode(transcript.file),
        "duration_s": _ms(transcript.duration_s) / 1000,
        "model": transcript.model,
        "device": transcript.device,
        "precision": transcript.precision,
        "language": _tag(transcript.language),
        "segments": [
            {
                "start_s": _ms(s.start_s) / 1000,
                "end_s": _ms(s.end_s) / 1000,
                "text": s.text.strip(),
                "language": _tag(s.language),
                "emotion": _tag(s.emotion),
                "event": _tag(s.event),
                "itn": bool(s.itn),
                "tokens": [
                    {"text": t.text, "start_s": _ms(t.start_s) / 1000, "end_s": _ms(t.end_s) / 1000}
                    for t in s.tokens
                ],
            }
            for s in transcript.segments
            if s.text.strip()
        ],
    }
    return _utf8_safe(json.dumps(document, ensure_ascii=False, indent=2) + "\n")


def _tag(tag: str) -> str:
    return tag.strip("<|>").lower()


RENDERERS: dict[str, Callable[[Transcript, SubtitleStyleLike], str]] = {
    "txt": lambda transcript, style: render_txt(transcript),
    "srt": lambda transcript, style: render_srt(build_cues(transcript, style)),
    "vtt": lambda transcript, style: render_vtt(build_cues(transcript, style)),
    "json": lambda transcript, style: render_json(transcript),
}


def render(fmt: str, transcript: Transcript, style: SubtitleStyleLike) -> str:
    """The sidecar text of one format ("txt", "srt", "vtt", "json")."""
    return RENDERERS[fmt](transcript, style)

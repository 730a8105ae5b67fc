"""Cue building and the four sidecar formats, checked with the real `srt` and `webvtt` parsers."""

from __future__ import annotations

import bisect
import html
import io
import json
import os
import random
import re
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
import srt
import webvtt

from svdaemon.config import SubtitleStyle
from svdaemon.subtitles import (
    RENDERERS,
    Cue,
    build_cues,
    render,
    render_json,
    render_srt,
    render_txt,
    render_vtt,
)
from svdaemon.transcript import Segment, Token, Transcript

STYLE = SubtitleStyle()
LONG_WORD = "Pneumonoultramicroscopicsilicovolcanoconiosis"  # 45 letters, over the 42 limit
SDH_LABEL = re.compile(r"\[[a-z]+\] ")

LECTURE = (
    "So today we are going to talk about the history of the printing press, which changed how people "
    "shared ideas. It started in Germany around 1440. Johannes Gutenberg built a machine that used movable "
    "type! Did it change everything? Many historians think so; others are not sure: they say it was slow."
)
CHINESE = "今天我们讨论印刷术的历史，它改变了人们分享思想的方式。它起源于中国，后来传到欧洲。你知道吗？"
MONOLOGUE = " ".join(["and then we went down to the river and looked at the boats for a while"] * 20)


def en_pieces(text: str) -> list[str]:
    """English as SentencePiece pieces: "▁" words (long ones cut in two), punctuation on its own."""
    pieces = []
    for piece in re.findall(r" ?[\w']+|[^\w\s]", " " + text):
        pieces += [piece[:5], piece[5:]] if len(piece) > 8 else [piece]
    return pieces


def spoken(pieces, start_s, step_s=0.3, *, language="en", event="speech", token_s=None) -> Segment:
    """A segment whose tokens come one every step_s seconds, each token_s long."""
    token_s = step_s * 0.8 if token_s is None else token_s
    tokens = tuple(
        Token(p, start_s + i * step_s, start_s + i * step_s + token_s) for i, p in enumerate(pieces)
    )
    end_s = tokens[-1].end_s if tokens else start_s
    return Segment(start_s, end_s, "".join(pieces).strip(), language, "neutral", event, True, tokens)


def transcript(*segments: Segment, duration_s: float | None = None) -> Transcript:
    if duration_s is None:
        duration_s = max((s.end_s for s in segments), default=0.0) + 5
    language = segments[0].language if segments else ""
    return Transcript(
        Path("/media/talk.mp4"), duration_s, "iic/SenseVoiceSmall", "cpu", "fp32", language, segments
    )


def is_cjk(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(("CJK UNIFIED", "HIRAGANA", "KATAKANA", "HANGUL"))


def is_han_or_kana(ch: str) -> bool:
    """A letter before which a line may break without a space (ー and 々 are marks, not letters)."""
    letter = unicodedata.category(ch) == "Lo" if ch else False
    return letter and unicodedata.name(ch).startswith(("CJK UNIFIED", "HIRAGANA", "KATAKANA"))


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def check_cues(tr: Transcript, style: SubtitleStyle, cues: list[Cue]) -> None:
    """Every rule a viewer would notice, on every cue; exceptions only where the timing forbids the rule."""
    tokens = sorted((ms(t.start_s), t.text) for s in tr.segments for t in s.tokens)
    token_starts = [start for start, _ in tokens]
    speech_ends = [ms(s.end_s) for s in tr.segments] + [ms(t.end_s) for s in tr.segments for t in s.tokens]
    file_end_ms = max([ms(tr.duration_s), *speech_ends])
    for index, cue in enumerate(cues):
        following = cues[index + 1] if index + 1 < len(cues) else None
        start_ms, end_ms = ms(cue.start_s), ms(cue.end_s)
        assert start_ms / 1000 == cue.start_s and end_ms / 1000 == cue.end_s, "times are whole milliseconds"
        assert 0 <= start_ms < end_ms <= file_end_ms
        first = bisect.bisect_left(token_starts, start_ms)
        assert token_starts[first] == start_ms or start_ms == ms(cues[index - 1].end_s), "starts with speech"
        if following:
            assert end_ms <= ms(following.start_s), "no overlap, sorted"
        assert 1 <= len(cue.lines) <= style.max_lines
        letters = [ch for ch in SDH_LABEL.sub("", "".join(cue.lines)) if ch.isalnum()]
        mostly_cjk = bool(letters) and sum(map(is_cjk, letters)) * 2 >= len(letters)
        limit = style.max_chars_per_line_cjk if mostly_cjk else style.max_chars_per_line
        for line in cue.lines:
            assert line and line == line.strip()
            one_word = " " not in line and not any(map(is_han_or_kana, line[1:]))
            unlabelled = SDH_LABEL.sub("", line)
            label_without_room = style.max_lines == 1 and unlabelled != line and len(unlabelled) <= limit
            assert len(line) <= limit or one_word or label_without_room, (
                f"only a single word overflows: {line!r}"
            )
        at_ceiling = end_ms == file_end_ms or (following is not None and end_ms == ms(following.start_s))
        duration_ms = end_ms - start_ms
        covered = tokens[first + 1 : bisect.bisect_left(token_starts, end_ms)]
        one_word = not any(text[:1].isspace() or is_han_or_kana(text.strip()[:1]) for _, text in covered)
        assert duration_ms <= ms(style.max_duration_s) or one_word, (
            f"only a single word outlasts max_duration_s: {cue}"
        )
        assert duration_ms >= ms(style.min_duration_s) or at_ceiling, cue
        cps = sum(map(len, cue.lines)) * 1000 / duration_ms
        assert cps <= style.max_cps or at_ceiling or duration_ms >= ms(style.max_duration_s), (cue, cps)
    shown = "".join(SDH_LABEL.sub("", " ".join(c.lines)) for c in cues)
    spoken_text = "".join(s.text for s in sorted(tr.segments, key=lambda s: s.start_s))
    assert "".join(shown.split()) == "".join(spoken_text.split()), "nothing lost, nothing doubled"


def assert_breaks_between_tokens(cues: list[Cue], pieces: list[str]) -> None:
    """Every line and cue break falls between two tokens, never inside one."""
    token_ends, end = set(), 0
    for piece in pieces:
        end += len("".join(piece.split()))
        token_ends.add(end)
    line_end = 0
    for line in (line for c in cues for line in c.lines):
        line_end += len("".join(line.split()))
        assert line_end in token_ends, line


def cues_checked(tr: Transcript, style: SubtitleStyle = STYLE) -> list[Cue]:
    cues = build_cues(tr, style)
    check_cues(tr, style, cues)
    return cues


def test_english_lecture_breaks_at_punctuation_with_balanced_lines():
    cues = cues_checked(transcript(spoken(en_pieces(LECTURE), 1.0)))
    assert len(cues) >= 4
    ends = [c.lines[-1][-1] for c in cues]
    assert sum(ch in ".!?;:," for ch in ends) >= len(cues) - 1, "cues end at punctuation where there is some"
    assert "printing" in " ".join(line for c in cues for line in c.lines), "word pieces are glued into words"
    for cue in cues:
        if len(cue.lines) == 2 and cue.lines[0][-1] not in ".!?;:,":
            assert abs(len(cue.lines[0]) - len(cue.lines[1])) <= 12, cue.lines


def test_one_line_when_it_fits():
    cues = cues_checked(transcript(spoken([" Good", " morning", " everyone", "."], 2.0, 0.1)))
    assert cues == [Cue(2.0, 3.1, ("Good morning everyone.",))]  # stretched to 1.1 s to read 22 characters


def test_chinese_uses_the_cjk_limit_and_breaks_at_punctuation():
    cues = cues_checked(transcript(spoken(list(CHINESE), 0.5, 0.2, language="zh")))
    assert all(len(line) <= 16 for c in cues for line in c.lines)
    assert all(c.lines[-1][-1] in "，。？" for c in cues)


def test_japanese_keeps_multi_character_tokens_whole():
    pieces = [
        "こんにちは",
        "。",
        "今日",
        "は",
        "いい",
        "天気",
        "です",
        "ね",
        "。",
        "明日",
        "も",
        "晴れる",
        "でしょう",
        "か",
        "？",
    ]
    pieces += ["ラーメン", "を", "食べ", "に", "行き", "ましょう", "。"] * 3
    cues = cues_checked(transcript(spoken(pieces, 0.0, 0.25, language="ja")))
    assert_breaks_between_tokens(cues, pieces)
    assert not any(line[0] in "。？ー" for c in cues for line in c.lines), "punctuation never starts a line"


def test_japanese_quotes_cling_to_their_words():
    pieces = ["彼", "は", "「", "はい", "、", "そう", "です", "」", "と", "言", "っ", "た", "。"] * 2
    cues = cues_checked(
        transcript(spoken(pieces, 0.0, 0.3, language="ja")), replace(STYLE, max_chars_per_line_cjk=5)
    )
    lines = [line for c in cues for line in c.lines]
    assert not any(line.endswith("「") or line.startswith(("」", "、", "。")) for line in lines), lines


def test_mixed_chinese_and_english_never_splits_a_latin_word():
    pieces = [
        "我",
        "们",
        "用",
        " Py",
        "thon",
        "写",
        "代",
        "码",
        "，",
        "然",
        "后",
        "用",
        " Java",
        "Script",
        "做",
        "前",
    ]
    pieces += ["端", "界", "面", "，", "最", "后", "部", "署", "到", " Kuber", "netes", "上", "。"]
    cues = cues_checked(transcript(spoken(pieces, 0.0, 0.25, language="zh")))
    assert_breaks_between_tokens(cues, pieces)
    words = re.findall(r"[A-Za-z]+", " ".join(line for c in cues for line in c.lines))
    assert words == ["Python", "JavaScript", "Kubernetes"]


def test_korean_breaks_only_at_spaces():
    pieces = [" 안녕", "하세요", ".", " 오늘", "은", " 날씨", "가", " 정말", " 좋네요", ".", " 우리", " 같이"]
    pieces += [" 공원", "에", " 산책", "하러", " 갈까요", "?"]
    cues = cues_checked(transcript(spoken(pieces, 0.0, 0.3, language="ko")))
    spaced_words = set("".join(pieces).split())
    for cue in cues:
        assert all(word in spaced_words for line in cue.lines for word in line.split())


def test_monologue_without_punctuation_over_many_close_segments():
    pieces = [" " + w for w in MONOLOGUE.split()]
    segments = [spoken(pieces[i : i + 40], i * 0.3 + i // 40 * 0.1, 0.3) for i in range(0, len(pieces), 40)]
    cues = cues_checked(transcript(*segments))
    assert len(cues) >= len(pieces) * 4 // 84, "cues are filled, not one per word"
    assert all(len(c.lines) == 2 for c in cues[:-1])


def test_fast_speech_stretches_into_silence_and_stays_honest_where_it_cannot():
    fast = spoken(en_pieces(LECTURE), 0.0, 0.09)  # about 45 characters a second
    cues = cues_checked(transcript(fast, spoken(en_pieces("Then silence."), 60.0)))
    assert ms(cues[-2].end_s) > ms(fast.end_s), "the last fast cue reads on into the pause"


def test_short_isolated_words_last_min_duration():
    words = [spoken([" Yes."], 1.0, token_s=0.15), spoken([" No."], 4.0, token_s=0.1), spoken([" OK"], 6.0)]
    cues = cues_checked(transcript(*words))
    assert [(c.start_s, c.end_s, c.lines) for c in cues] == [
        (1.0, 1.8, ("Yes.",)),
        (4.0, 4.8, ("No.",)),
        (6.0, 6.8, ("OK",)),
    ]


def test_short_cue_squeezed_by_its_neighbour_and_by_the_end_of_the_file():
    first = spoken([" Stop."], 1.0, token_s=0.1)
    second = spoken(
        [" Wait", " for", " me", " please."], 1.75, 0.1
    )  # speech ends at 2.13, reading needs 0.95 s
    cues = cues_checked(transcript(first, second, duration_s=2.5))
    assert cues[0].lines == ("Stop.",) and cues[0].end_s == cues[1].start_s == 1.75
    assert cues[-1].end_s == 2.5


def test_long_gaps_and_segment_gaps_split_cues():
    a = spoken([" one", " two", " three"], 0.0, 0.3)
    b = spoken([" four", " five"], a.end_s + 0.7, 0.3)  # gap >= split_gap_s: never one cue
    c = spoken([" six", " seven"], b.end_s + 0.2, 0.3)  # short gap, same language: may join
    cues = cues_checked(transcript(a, b, c))
    assert [c.lines for c in cues] == [("one two three",), ("four five six seven",)]


def test_max_duration_splits_slow_speech():
    cues = cues_checked(transcript(spoken(en_pieces("so we wait and wait and wait and wait"), 0.0, 1.2)))
    assert len(cues) >= 2


def test_a_word_longer_than_the_line_stands_alone():
    text = f"The longest word is {LONG_WORD} they say."
    pieces = [" The", " longest", " word", " is", " " + LONG_WORD, " they", " say", "."]
    cues = cues_checked(transcript(spoken(pieces, 0.0, 0.4)))
    assert LONG_WORD in [line for c in cues for line in c.lines]
    assert "".join("".join(c.lines) for c in cues).replace(" ", "") == text.replace(" ", "")


def test_sdh_labels_prefix_the_first_cue_of_event_segments():
    laughing = spoken(
        en_pieces("That is so funny. I cannot stop laughing at this whole thing today."), 3.0, 0.3
    )
    segments = (
        spoken(en_pieces("Here is the joke."), 0.0, 0.3),
        replace(laughing, event="laughter"),
        replace(spoken(en_pieces("la la la"), 30.0), event="bgm"),
        replace(spoken(en_pieces("what was that"), 40.0), event="event_unk"),
    )
    tr = transcript(*segments)
    labelled = cues_checked(tr, replace(STYLE, sdh_events=True))
    first_lines = [c.lines[0] for c in labelled]
    assert [line.split()[:2] for line in first_lines if line.startswith("[")] == [
        ["[laughter]", "That"],
        ["[music]", "la"],
    ]
    plain = cues_checked(tr)
    assert not any("[" in line for c in plain for line in c.lines)


def test_empty_segments_give_no_cues():
    empty = Segment(0.0, 2.0, "  ", "nospeech", "neutral", "bgm", True, (Token(" ", 0.5, 0.6),))
    tr = transcript(empty, spoken(en_pieces("Hello there."), 3.0))
    assert [c.lines for c in cues_checked(tr)] == [("Hello there.",)]


def test_segment_without_token_times_is_spread_over_its_span():
    bare = Segment(
        1.0, 5.0, "没有时间戳的文字，也要显示出来，一个字都不能少。", "zh", "neutral", "speech", True, ()
    )
    cues = build_cues(transcript(bare), STYLE)
    assert cues == [Cue(1.0, 5.0, ("没有时间戳的文字，", "也要显示出来，一个字都不能少。"))]
    assert "".join("".join(c.lines) for c in cues) == bare.text


def test_unsorted_segments_give_sorted_cues():
    a, b = spoken(en_pieces("First things first."), 0.0), spoken(en_pieces("Second things second."), 5.0)
    assert [c.lines for c in cues_checked(transcript(b, a))] == [
        ("First things first.",),
        ("Second things second.",),
    ]


def test_many_generated_transcripts_keep_every_rule():
    """Seeded random transcripts: scripts, speeds, gaps and styles a hand-written case would miss."""
    rng = random.Random(20240601)
    vocab = {
        "en": en_pieces(LECTURE),
        "zh": list(CHINESE),
        "ja": ["今日", "は", "いい", "天気", "です", "ね", "。", "ラーメン", "を", "食べ", "、"],
        "ko": [" 안녕", "하세요", ".", " 오늘", "은", " 날씨", "가", " 좋네요", ","],
    }
    for _ in range(120):
        style = SubtitleStyle(
            max_chars_per_line=rng.choice([20, 32, 42]),
            max_chars_per_line_cjk=rng.choice([10, 16]),
            max_lines=rng.choice([1, 2, 3]),
            max_duration_s=rng.choice([3.0, 7.0]),
            max_cps=rng.choice([12.0, 20.0]),
            sdh_events=rng.random() < 0.5,
        )
        segments, t = [], rng.random()
        for _ in range(rng.randint(0, 6)):
            language = rng.choice(list(vocab))
            pieces = [rng.choice(vocab[language]) for _ in range(rng.randint(1, 60))]
            if not "".join(pieces).strip():
                continue
            segment = spoken(pieces, t, rng.choice([0.05, 0.12, 0.25, 0.5, 0.9]), language=language)
            segments.append(replace(segment, event=rng.choice(["speech", "speech", "laughter", "bgm"])))
            t = segment.end_s + rng.choice([0.0, 0.1, 0.5, 0.6, 2.0])
        tr = transcript(*segments, duration_s=t + rng.choice([0.0, 0.3, 5.0]))
        check_cues(tr, style, build_cues(tr, style))


def lecture_transcript() -> Transcript:
    return transcript(
        spoken(en_pieces(LECTURE + " Use <b> & </b> > x."), 1.0),
        spoken(list(CHINESE), 3700.0, 0.2, language="zh"),
    )


# What FFmpeg's SRT decoder (mpv, and players built on FFmpeg), libass and VLC read as markup rather than
# text: a tag opening (`<b>`, `</i>`, `< font`), an override or MicroDVD block (`{\\an8}`, `{y:i}`, and
# any `{...}` libass receives), a backslash escape (`\\N`, `\\h`).
PLAYER_MARKUP = re.compile(r"<\s*/?\s*[A-Za-z]|[{\\]")
FULL_WIDTH_BACK = str.maketrans({"\uff1c": "<", "\uff5b": "{", "\uff3c": "\\"})


def srt_shown(content: str) -> str:
    """The text a viewer reads in an SRT cue: its full-width stand-ins read as the characters they show."""
    assert not PLAYER_MARKUP.search(content), f"a player would read markup in {content!r}"
    return content.translate(FULL_WIDTH_BACK)


def test_srt_parses_back_to_the_same_cues():
    cues = build_cues(lecture_transcript(), STYLE)
    parsed = list(srt.parse(render_srt(cues)))
    assert [s.index for s in parsed] == list(range(1, len(cues) + 1))
    for subtitle, cue in zip(parsed, cues, strict=True):
        assert ms(subtitle.start.total_seconds()) == ms(cue.start_s)
        assert ms(subtitle.end.total_seconds()) == ms(cue.end_s)
        assert srt_shown(subtitle.content) == "\n".join(cue.lines)
    assert "01:01:40,000 --> " in render_srt(cues)
    assert "Use＜b>&＜/b>> x." in render_srt(cues)


MARKUP_LIKE = ("<s> and </s> tokens", "<i>slanted</i>", "a < b & c", "{\\an8} on top", "a\\Nb")


def test_text_that_looks_like_markup_is_shown_as_text_in_every_format():
    tr = transcript(
        *(spoken([f" {w}" for w in text.split()], 10.0 * i) for i, text in enumerate(MARKUP_LIKE))
    )
    assert [s.text for s in tr.segments] == list(MARKUP_LIKE)
    cues = build_cues(tr, STYLE)
    said = ["\n".join(cue.lines) for cue in cues]
    assert "".join("".join(said).split()) == "".join("".join(MARKUP_LIKE).split())

    subtitles = list(srt.parse(render("srt", tr, STYLE)))
    assert [srt_shown(subtitle.content) for subtitle in subtitles] == said
    captions = webvtt.from_buffer(io.StringIO(render("vtt", tr, STYLE))).captions
    assert all("<" not in caption.raw_text for caption in captions)
    assert [html.unescape(caption.raw_text) for caption in captions] == said
    assert render("txt", tr, STYLE) == "\n\n".join(MARKUP_LIKE) + "\n"
    segments = json.loads(render("json", tr, STYLE))["segments"]
    assert [segment["text"] for segment in segments] == list(MARKUP_LIKE)


def vtt_ms(stamp: str) -> int:
    hours, minutes, seconds = stamp.split(":")
    return round((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000)


def test_vtt_parses_back_with_markup_escaped():
    cues = build_cues(lecture_transcript(), STYLE)
    text = render_vtt(cues)
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    assert len(captions) == len(cues)
    for caption, cue in zip(captions, cues, strict=True):
        assert (vtt_ms(caption.start), vtt_ms(caption.end)) == (ms(cue.start_s), ms(cue.end_s))
        assert "<" not in caption.raw_text and ">" not in caption.raw_text
        assert html.unescape(caption.raw_text) == "\n".join(cue.lines)
    assert "Use&lt;b&gt;&amp;&lt;/b&gt;&gt; x." in text


def test_txt_has_one_paragraph_per_segment():
    tr = transcript(
        spoken(en_pieces("Hello there."), 0.0),
        Segment(2.0, 3.0, "", "nospeech", "neutral", "bgm", True, ()),
        spoken(list("你好。"), 4.0, language="zh"),
    )
    assert render_txt(tr) == "Hello there.\n\n你好。\n"


def test_json_follows_schema_1_exactly():
    tr = transcript(spoken(en_pieces("Hello there."), 0.12345), spoken(list("你好。"), 4.0, language="zh"))
    text = render_json(tr)
    assert text.endswith("}\n") and "你好" in text, "UTF-8, not escaped"
    document = json.loads(text)
    assert list(document) == [
        "schema",
        "file",
        "duration_s",
        "model",
        "device",
        "precision",
        "language",
        "segments",
    ]
    assert document["schema"] == 1 and document["file"] == "/media/talk.mp4"
    assert (document["model"], document["device"], document["precision"], document["language"]) == (
        "iic/SenseVoiceSmall",
        "cpu",
        "fp32",
        "en",
    )
    segment_keys = ["start_s", "end_s", "text", "language", "emotion", "event", "itn", "tokens"]
    for segment, source in zip(document["segments"], tr.segments, strict=True):
        assert list(segment) == segment_keys
        assert segment["text"] == source.text and segment["itn"] is True
        assert (segment["language"], segment["emotion"], segment["event"]) == (
            source.language,
            "neutral",
            "speech",
        )
        assert [list(t) for t in segment["tokens"]] == [["text", "start_s", "end_s"]] * len(source.tokens)
        assert [t["text"] for t in segment["tokens"]] == [t.text for t in source.tokens]
        times = [segment["start_s"], segment["end_s"]] + [
            t[k] for t in segment["tokens"] for k in ("start_s", "end_s")
        ]
        assert all(isinstance(x, float) and x == round(x, 3) for x in times)
    assert document["segments"][0]["start_s"] == 0.123
    assert isinstance(document["duration_s"], float)


def test_json_survives_a_file_name_that_is_not_utf8():
    tr = replace(transcript(spoken(en_pieces("Hi."), 0.0)), file=Path(os.fsdecode(b"/media/caf\xe9.mp4")))
    text = render_json(tr)
    text.encode("utf-8")  # a lone surrogate would raise here
    assert json.loads(text)["file"] == "/media/caf\ufffd.mp4"


def test_empty_transcript_gives_the_contracts_empty_files():
    tr = transcript(Segment(0.0, 1.0, "", "nospeech", "unknown", "bgm", True, ()), duration_s=10.0)
    assert build_cues(tr, STYLE) == []
    assert render("srt", tr, STYLE) == ""
    assert render("txt", tr, STYLE) == ""
    assert render("vtt", tr, STYLE) == "WEBVTT\n\n"
    assert json.loads(render("json", tr, STYLE))["segments"] == []


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
def test_render_dispatches_to_each_format(fmt):
    tr = lecture_transcript()
    cues = build_cues(tr, STYLE)
    direct = {
        "txt": render_txt(tr),
        "srt": render_srt(cues),
        "vtt": render_vtt(cues),
        "json": render_json(tr),
    }
    assert render(fmt, tr, STYLE) == direct[fmt]

"""Randomly initialised SenseVoiceSmall model folders, for tests and benchmarks only.

Model weights cannot be downloaded where svdaemon is developed and tested, so tests load a tiny random
SenseVoiceSmall and `svdaemon bench` a full-size one, both through FunASR's own loader from a folder laid
out like the published model (config.yaml, am.mvn, a SentencePiece model with SenseVoice's special tokens,
model.pt). Their transcripts are noise: nothing here is ever used to transcribe a user's file.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger(__name__)

LANGUAGE_TAGS = ("zh", "en", "yue", "ja", "ko", "nospeech")
EMOTION_TAGS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN")
EVENT_TAGS = ("Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Event_UNK")
ITN_TAGS = ("withitn", "woitn")
SPECIAL_TOKENS = tuple(f"<|{t}|>" for t in LANGUAGE_TAGS + EMOTION_TAGS + EVENT_TAGS + ITN_TAGS)

FEATURE_DIM = 80 * 7  # 80 mel bins stacked by LFR 7

_CORPUS = """\
the quick brown fox jumps over the lazy dog while the meeting goes on
please send the quarterly report to everyone before friday afternoon
we recorded the lecture on speech recognition and subtitles yesterday
the weather today is sunny with a light breeze from the west
can you hear me now the connection seems to be a little unstable
今天的会议讨论了下一季度的计划和预算安排
我们需要在周五之前完成所有的测试工作
天气很好我们一起去公园散步吧
今日はいい天気ですね会議は午後三時からです
안녕하세요 오늘 회의는 오후 세 시에 시작합니다
"""


@dataclass(frozen=True)
class ModelShape:
    """Encoder and vocabulary sizes of a SenseVoiceSmall variant."""

    output_size: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    tp_blocks: int
    vocab_size: int


TINY = ModelShape(
    output_size=64, attention_heads=2, linear_units=128, num_blocks=3, tp_blocks=2, vocab_size=300
)
FULL = ModelShape(
    output_size=512, attention_heads=4, linear_units=2048, num_blocks=50, tp_blocks=20, vocab_size=25055
)


def model_config(shape: ModelShape) -> dict:
    """The config.yaml of a SenseVoiceSmall folder, as the published model has it but for the sizes."""
    return {
        "model": "SenseVoiceSmall",
        "model_conf": {"length_normalized_loss": True, "sos": 1, "eos": 2, "ignore_id": -1},
        "encoder": "SenseVoiceEncoderSmall",
        "encoder_conf": {
            "output_size": shape.output_size,
            "attention_heads": shape.attention_heads,
            "linear_units": shape.linear_units,
            "num_blocks": shape.num_blocks,
            "tp_blocks": shape.tp_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "tokenizer": "SentencepiecesTokenizer",
        "tokenizer_conf": {"bpemodel": None, "unk_symbol": "<unk>", "split_with_space": True},
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            "cmvn_file": None,
        },
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
    }


def write_tokenizer(path: Path, vocab_size: int) -> None:
    """Train a SentencePiece model with SenseVoice's special tokens and exactly `vocab_size` pieces.

    A small corpus yields a few hundred pieces; filler user-defined symbols make up the rest, so the
    CTC head (sized from the tokenizer by FunASR) has the published model's width.
    """
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(_CORPUS * 4, encoding="utf-8")
        base_pieces = 3 + len(SPECIAL_TOKENS)  # <unk> <s> </s> and the tags
        corpus_pieces = min(vocab_size - base_pieces, 280)
        fillers = [f"~f{i:05d}~" for i in range(vocab_size - base_pieces - corpus_pieces)]
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "bpe"),
            vocab_size=vocab_size,
            model_type="bpe",
            character_coverage=1.0,
            user_defined_symbols=list(SPECIAL_TOKENS) + fillers,
            hard_vocab_limit=True,
            minloglevel=2,
        )
        path.write_bytes((Path(tmp) / "bpe.model").read_bytes())


def write_cmvn(path: Path) -> None:
    """A Kaldi-nnet am.mvn with plausible global shift and scale for log-mel features."""
    shift = " ".join(["-8.0"] * FEATURE_DIM)
    scale = " ".join(["0.25"] * FEATURE_DIM)
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {FEATURE_DIM} {FEATURE_DIM}\n[ 0 ]\n"
        f"<AddShift> {FEATURE_DIM} {FEATURE_DIM}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {FEATURE_DIM} {FEATURE_DIM}\n<LearnRateCoef> 0 [ {scale} ]\n"
        "</Nnet>\n",
        encoding="utf-8",
    )


def build_model_dir(directory: Path, shape: ModelShape = TINY, seed: int = 0) -> Path:
    """Write a loadable random SenseVoiceSmall folder and return it."""
    import funasr.models.sense_voice.model  # noqa: F401  (registers SenseVoiceSmall)
    import torch
    from funasr.register import tables

    directory.mkdir(parents=True, exist_ok=True)
    write_tokenizer(directory / "bpe.model", shape.vocab_size)
    write_cmvn(directory / "am.mvn")
    config = model_config(shape)
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    torch.manual_seed(seed)
    np.random.seed(seed)
    model_class = tables.model_classes["SenseVoiceSmall"]
    model = model_class(
        **config["model_conf"],
        encoder=config["encoder"],
        encoder_conf=config["encoder_conf"],
        ctc_conf=config["ctc_conf"],
        input_size=FEATURE_DIM,
        vocab_size=shape.vocab_size,
    )
    torch.save(model.state_dict(), directory / "model.pt")
    log.info("random SenseVoiceSmall (%d parameters) written to %s", count_parameters(model), directory)
    return directory


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

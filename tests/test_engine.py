"""The engine against FunASR itself: same model folder, same audio, FunASR's inference as the reference."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from svdaemon.engine import (
    BLANK_ID,
    QUERY_FRAMES,
    CtcToken,
    EngineSettings,
    Recognition,
    SenseVoiceEngine,
    build_segment,
    collapse_ctc,
    compare_logits,
    encoder_frames,
    next_device,
    plan_batches,
    quietest_cut,
    split_tags,
)
from svdaemon.errors import EnvironmentFault, StartupError
from svdaemon.memory import BatchLimit


@dataclass(frozen=True)
class Piece:
    start_s: float
    samples: np.ndarray


def mixed_length_waves(count: int, seed: int) -> list[np.ndarray]:
    """Band-limited noise bursts with varied loudness, 0.2 s to 14 s long."""
    rng = np.random.default_rng(seed)
    waves = []
    for seconds in rng.uniform(0.2, 14.0, size=count):
        noise = rng.standard_normal(int(seconds * 16000)).astype(np.float32)
        smooth = np.convolve(noise, np.ones(8, dtype=np.float32) / 8, mode="same")
        waves.append((smooth * rng.uniform(0.02, 0.5)).astype(np.float32))
    return waves


def funasr_alone(
    engine: SenseVoiceEngine, wave: np.ndarray, monkeypatch
) -> tuple[list[int], torch.Tensor, str]:
    """FunASR's SenseVoiceSmall.inference on one waveform; a spy keeps the log-probs it decodes from."""
    seen = []
    real = engine.model.ctc.log_softmax

    def spy(hs_pad):
        out = real(hs_pad)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(engine.model.ctc, "log_softmax", spy)
    results, _ = engine.model.inference(
        data_in=[wave],
        key=["piece"],
        tokenizer=engine.tokenizer,
        frontend=engine.frontend,
        device="cpu",
        language=engine.settings.language,
        use_itn=engine.settings.use_itn,
    )
    monkeypatch.undo()
    log_probs = seen[0][0]
    # FunASR's own greedy decode of those log-probs (model.py, inference): argmax, collapse, drop blank.
    path = torch.unique_consecutive(log_probs.argmax(dim=-1))
    return path[path != BLANK_ID].tolist(), log_probs, results[0]["text"]


@pytest.mark.integration
def test_batched_path_gives_funasr_token_ids_and_logits(cpu_engine, monkeypatch):
    waves = mixed_length_waves(24, seed=1)
    lengths = [encoder_frames(len(w)) for w in waves]
    batches = plan_batches(lengths, BatchLimit(max_frames=900).fits)
    assert len(batches) >= 4 and max(len(b) for b in batches) >= 3, "the test must exercise real batches"

    checked = 0
    for batch in batches:
        ours = cpu_engine.recognize_raw([waves[i] for i in batch])
        our_logits = list(cpu_engine.ctc_logits([waves[i] for i in batch]))
        for index, recognition, logits in zip(batch, ours, our_logits, strict=True):
            ref_ids, ref_log_probs, ref_text = funasr_alone(cpu_engine, waves[index], monkeypatch)
            assert ref_ids, "the reference decoded nothing: the comparison would be empty"
            assert recognition.token_ids == ref_ids
            assert cpu_engine.tokenizer.decode(recognition.token_ids) == ref_text
            ours_log_probs = torch.log_softmax(logits, dim=-1)
            assert ours_log_probs.shape == ref_log_probs.shape
            assert torch.max(torch.abs(ours_log_probs - ref_log_probs)).item() < 1e-3
            checked += 1
    assert checked == 24


@pytest.mark.integration
def test_recognize_keeps_order_and_puts_tokens_in_file_time(cpu_engine):
    waves = mixed_length_waves(6, seed=2)
    pieces = [Piece(start_s=10.0 * i, samples=w) for i, w in enumerate(waves)]
    segments = cpu_engine.recognize(pieces)
    assert len(segments) == len(pieces)
    for piece, segment in zip(pieces, segments, strict=True):
        end_s = piece.start_s + len(piece.samples) / 16000
        assert segment.start_s == pytest.approx(piece.start_s)
        assert segment.end_s == pytest.approx(end_s, abs=1e-3)
        for token in segment.tokens:
            assert piece.start_s <= token.start_s <= token.end_s <= end_s + 1e-3
        starts = [t.start_s for t in segment.tokens]
        assert starts == sorted(starts)


@pytest.mark.integration
def test_recognize_is_deterministic_whatever_the_batch(cpu_engine):
    waves = mixed_length_waves(5, seed=3)
    target = Piece(0.0, waves[0])
    alone = cpu_engine.recognize([target])
    together = cpu_engine.recognize([target, *(Piece(1.0, w) for w in waves[1:])])
    assert alone[0] == together[0]


def out_of_memory_when(engine, monkeypatch, too_big) -> list[int]:
    """Simulates a GPU that runs out of memory on batches `too_big(waves)` picks (no GPU is used)."""
    real = engine.recognize_raw
    sizes = []

    def recognize_raw(waves, language=None):
        sizes.append(len(waves))
        if too_big(waves):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(waves, language)

    monkeypatch.setattr(engine, "recognize_raw", recognize_raw)
    monkeypatch.setattr(engine, "batch_limit", BatchLimit(max_frames=100_000))
    return sizes


@pytest.mark.integration
def test_out_of_memory_halves_the_batch_and_gives_the_same_segments(cpu_engine, monkeypatch):
    pieces = [Piece(3.0 * i, w) for i, w in enumerate(mixed_length_waves(6, seed=7))]
    expected = cpu_engine.recognize(pieces)
    sizes = out_of_memory_when(cpu_engine, monkeypatch, lambda waves: len(waves) > 2)
    assert cpu_engine.recognize(pieces) == expected
    assert max(sizes) > 2 and cpu_engine.batch_limit.max_frames < 100_000


@pytest.mark.integration
def test_a_lone_piece_out_of_memory_is_split_and_joined_in_time(cpu_engine, monkeypatch):
    speech = (0.1 * np.random.default_rng(8).standard_normal(16000 * 6)).astype(np.float32)
    pause = np.zeros(16000, dtype=np.float32)
    piece = Piece(20.0, np.concatenate([speech[: 16000 * 3], pause, speech[16000 * 3 :]]))
    out_of_memory_when(cpu_engine, monkeypatch, lambda waves: max(len(w) for w in waves) > 16000 * 4)
    (segment,) = cpu_engine.recognize([piece])
    assert segment.start_s == 20.0 and segment.end_s == pytest.approx(27.0)
    starts = [token.start_s for token in segment.tokens]
    assert starts == sorted(starts) and all(20.0 <= t <= 27.0 for t in starts)
    assert any(t > 24.0 for t in starts)  # the tail's tokens moved after the head's


@pytest.mark.integration
def test_a_piece_that_cannot_shrink_further_is_an_environment_fault(cpu_engine, monkeypatch):
    out_of_memory_when(cpu_engine, monkeypatch, lambda waves: True)
    with pytest.raises(EnvironmentFault, match=r"cpu: out of memory even for one 1\.\d s piece"):
        cpu_engine.recognize(
            [Piece(0.0, (0.1 * np.random.default_rng(9).standard_normal(16000 * 5)).astype(np.float32))]
        )


def test_the_quietest_cut_lies_in_the_pause_of_the_middle_third():
    loud = np.ones(16000 * 9, dtype=np.float32)
    loud[16000 * 4 : 16000 * 4 + 3200] = 0.0
    assert 16000 * 4 <= quietest_cut(loud) <= 16000 * 4 + 3200


@pytest.mark.integration
def test_bf16_autocast_on_cpu_stays_close_to_fp32(tiny_model_dir, cpu_engine):
    """Half precision checked on the CPU (bf16 autocast) since CI has no GPU."""
    bf16 = SenseVoiceEngine(
        EngineSettings(model_dir=tiny_model_dir, model_name="tiny", device="cpu", precision="bf16")
    )
    assert bf16.precision == "bf16"
    waves = mixed_length_waves(4, seed=4)
    agree = total = 0
    for full, half in zip(cpu_engine.ctc_logits(waves), bf16.ctc_logits(waves), strict=True):
        assert half.dtype == torch.float32  # the CTC step runs in fp32 whatever the precision
        assert torch.isfinite(half).all()
        agree += int((full.argmax(-1) == half.argmax(-1)).sum())
        total += full.shape[0]
    assert agree / total > 0.9
    check = bf16.precision_check
    assert check is not None and check.finite and check.safe(0.05), check


@pytest.mark.integration
def test_half_precision_past_the_error_limit_falls_back_to_fp32_with_a_warning(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="svdaemon.engine"):
        engine = SenseVoiceEngine(
            EngineSettings(
                model_dir=tiny_model_dir,
                model_name="tiny",
                device="cpu",
                precision="bf16",
                half_max_rel_error=1e-9,
            )
        )
    assert engine.precision == "fp32"
    assert engine.precision_check.precision == "bf16" and engine.precision_check.max_rel_error > 1e-9
    assert "bf16 on cpu is unsafe for this model" in caplog.text and "running in fp32" in caplog.text
    assert next(engine.ctc_logits(mixed_length_waves(1, seed=6))).dtype == torch.float32


def test_non_finite_half_logits_are_never_safe():
    full = [torch.ones(5, 3)]
    check = compare_logits("fp16", [torch.tensor([[float("nan"), 0, 0]] * 5)], full)
    assert not check.finite and not check.safe(1e9)
    close = compare_logits("fp16", [torch.ones(5, 3) * 1.01], full)
    assert (
        close.finite and close.max_rel_error == pytest.approx(0.01, rel=1e-3) and close.token_agreement == 1.0
    )


def test_collapse_ctc_merges_runs_and_drops_blanks():
    tokens = collapse_ctc(np.array([5, 5, 0, 0, 7, 7, 7, 0, 7, 3]))
    assert [(t.token_id, t.first_frame, t.last_frame) for t in tokens] == [
        (5, 0, 1),
        (7, 4, 6),
        (7, 8, 8),
        (3, 9, 9),
    ]
    assert collapse_ctc(np.array([], dtype=np.int64)) == []


def test_plan_batches_sorts_longest_first_within_budget():
    lengths = [10, 50, 20, 50, 5]
    batches = plan_batches(lengths, BatchLimit(max_frames=100).fits)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 100 or len(batch) == 1
    assert batches[0] == [1, 3]


def test_split_tags_reads_the_four_leading_tags():
    tags, count = split_tags(["<|en|>", "<|NEUTRAL|>", "<|Speech|>", "<|withitn|>", "\u2581hi"])
    assert count == 4
    assert tags == {"language": "en", "emotion": "neutral", "event": "speech", "itn": True}
    assert split_tags(["\u2581hi", "<|en|>"]) == ({}, 0)


def test_special_pieces_never_reach_the_text_or_the_tokens(cpu_engine):
    """`<s>`, `</s>`, `<unk>` and SenseVoice tags after the leading four, from the real tokenizer."""
    sp = cpu_engine.tokenizer.sp
    pieces = [
        "<|en|>", "<|NEUTRAL|>", "<|Speech|>", "<|withitn|>",
        "\u2581the", "<s>", "\u2581a", "</s>", "<|zh|>", "<unk>", "\u2581b", "<|BGM|>",
    ]  # fmt: skip
    ids = [sp.PieceToId(piece) for piece in pieces]
    assert [sp.IdToPiece(i) for i in ids] == pieces, "each is a piece of the tiny model's vocabulary"
    frames = [(QUERY_FRAMES + 2 * k, QUERY_FRAMES + 2 * k + 1) for k in range(len(ids))]
    recognition = Recognition(tuple(CtcToken(i, *span) for i, span in zip(ids, frames, strict=True)))
    segment = build_segment(sp, Piece(10.0, np.zeros(32000, np.float32)), recognition, default_itn=False)
    assert (segment.language, segment.emotion, segment.event, segment.itn) == (
        "en",
        "neutral",
        "speech",
        True,
    )
    assert segment.text == "the a b"
    assert [token.text for token in segment.tokens] == [" the", " a", " b"]
    # each keeps its own frames: piece k starts at frame 2k after the queries, less half a 60 ms frame
    assert [token.start_s for token in segment.tokens] == [10.45, 10.69, 11.17]


def test_missing_model_files_are_a_startup_error(tmp_path):
    (tmp_path / "config.yaml").write_text("model: SenseVoiceSmall\n")
    with pytest.raises(StartupError, match=r"missing model\.pt, am\.mvn"):
        SenseVoiceEngine(EngineSettings(model_dir=tmp_path, model_name="x", device="cpu"))


@pytest.mark.integration
def test_weights_that_do_not_load_are_a_startup_error(broken_model_dir, tiny_model_dir):
    state = torch.load(tiny_model_dir / "model.pt", weights_only=True)
    dropped = sum(k.startswith("encoder.tp_encoders.0.") for k in state)
    with pytest.raises(StartupError, match=rf"{dropped} of {len(state)} weights did not load"):
        SenseVoiceEngine(EngineSettings(model_dir=broken_model_dir, model_name="x", device="cpu"))


def test_cuda_without_cuda_is_a_startup_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(StartupError, match='device: "cuda" — CUDA is not available'):
        SenseVoiceEngine(EngineSettings(model_dir=tiny_model_dir, model_name="x", device="cuda"))


@pytest.mark.gpu
def test_cuda_fp16_matches_fp32_on_the_same_batch(tiny_model_dir, cpu_engine):
    """Real CUDA (skipped without it): fp16 autocast keeps the CTC step fp32 and agrees with fp32."""
    half = SenseVoiceEngine(
        EngineSettings(model_dir=tiny_model_dir, model_name="tiny", device="cuda", precision="fp16")
    )
    full = SenseVoiceEngine(
        EngineSettings(model_dir=tiny_model_dir, model_name="tiny", device="cuda", precision="fp32")
    )
    assert half.device == "cuda:0" and half.precision == "fp16"
    waves = mixed_length_waves(8, seed=5)
    agree = total = 0
    for reference, fp32, fp16 in zip(
        cpu_engine.ctc_logits(waves), full.ctc_logits(waves), half.ctc_logits(waves), strict=True
    ):
        assert fp16.dtype == torch.float32 and torch.isfinite(fp16).all()
        assert torch.max(torch.abs(fp32.cpu() - reference)).item() < 1e-3
        agree += int((fp32.argmax(-1) == fp16.argmax(-1)).sum())
        total += fp32.shape[0]
    assert agree / total > 0.95


@pytest.mark.gpu
def test_auto_device_picks_a_gpu_when_there_is_one():
    from svdaemon.engine import resolve_device

    assert resolve_device("auto").startswith("cuda:")
    count = torch.cuda.device_count()
    with pytest.raises(StartupError, match=f'device: "cuda:{count}" — only {count} GPU'):
        resolve_device(f"cuda:{count}")


def test_after_a_gpu_fails_the_next_device_is_the_freest_other_gpu_or_the_cpu_if_allowed():
    gib = 2**30
    assert next_device("cuda:0", [8 * gib, 3 * gib, 6 * gib], fallback_to_cpu=False) == "cuda:2"
    assert next_device("cuda:0", [8 * gib], fallback_to_cpu=True) == "cpu"
    assert next_device("cuda:0", [8 * gib], fallback_to_cpu=False) is None
    assert next_device("cuda:0", [], fallback_to_cpu=False) is None  # the card vanished from the bus


@pytest.mark.gpu
def test_release_unload_and_move_on_a_real_gpu(tiny_model_dir):
    """Real CUDA (skipped without it): cache back after release, 0 MB after unload, same ids after a move."""
    engine = SenseVoiceEngine(
        EngineSettings(model_dir=tiny_model_dir, model_name="tiny", device="cuda", precision="fp16")
    )
    waves = mixed_length_waves(4, seed=10)
    before = [r.token_ids for r in engine.recognize_raw(waves)]
    engine.release_cache()
    assert engine.vram().used_mb <= torch.cuda.memory_allocated() // 2**20 + 2
    engine.unload()
    assert torch.cuda.memory_allocated() == 0 and engine.vram().used_mb == 0
    engine.ensure_loaded()
    engine.move_to(f"cuda:{torch.cuda.device_count() - 1}")
    assert [r.token_ids for r in engine.recognize_raw(waves)] == before
    assert engine.batch_limit.cost is not None and engine.batch_limit.allowance > 0

"""Shared fixtures: real things built once per session (the tiny random SenseVoiceSmall, the engine)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from svdaemon.engine import EngineSettings, SenseVoiceEngine
from svdaemon.synthetic_model import TINY, build_model_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run where CUDA is, and are skipped, saying why, everywhere else (CI has no GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SenseVoiceSmall folder, loadable by FunASR's own AutoModel."""
    return build_model_dir(tmp_path_factory.mktemp("tiny-sensevoice"), TINY, seed=0)


@pytest.fixture(scope="session")
def broken_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its first post-norm encoder block missing from model.pt: FunASR loads it quietly."""
    import torch

    broken = tmp_path_factory.mktemp("broken-sensevoice")
    for name in ("config.yaml", "am.mvn", "bpe.model"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    state = torch.load(tiny_model_dir / "model.pt", weights_only=True)
    torch.save(
        {k: v for k, v in state.items() if not k.startswith("encoder.tp_encoders.0.")}, broken / "model.pt"
    )
    return broken


@pytest.fixture(scope="session")
def make_tiny_pipeline(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Loads the real pipeline on the tiny model (CPU, one thread, its own state folder, no watch roots)
    with the given settings on top."""
    from svdaemon.config import load_config
    from svdaemon.pipeline import Pipeline

    def make(**settings: object) -> Pipeline:
        base = {"model": str(tiny_model_dir), "device": "cpu", "watch": []}
        state = {"state_dir": str(tmp_path_factory.mktemp("pipeline-state"))}
        return Pipeline.load(load_config(None, {**base, **state, **settings}), threads=1)

    return make


@pytest.fixture(scope="session")
def cpu_engine(tiny_model_dir: Path) -> SenseVoiceEngine:
    return SenseVoiceEngine(
        EngineSettings(
            model_dir=tiny_model_dir, model_name=str(tiny_model_dir), device="cpu", precision="fp32"
        )
    )


@pytest.fixture(autouse=True)
def restore_root_logging():
    """`cli.main` run in-process puts a handler on the root logger that writes to this test's captured
    stderr; left there, a later test's thread logging through it writes to a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


PROCESS_LIFETIME_THREAD = "svdaemon-decoder-spawn"


@pytest.fixture(autouse=True)
def no_thread_leaks():
    """A test that leaves a Python thread running fails: the daemon must stop what it starts.

    Exempt: the thread that starts decode processes, which lives as long as the process by design
    (`svdaemon.decoder._die_with_parent`).
    """
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(PROCESS_LIFETIME_THREAD)
    ]
    for thread in leaked:
        thread.join(timeout=2)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads leaked: {still}"

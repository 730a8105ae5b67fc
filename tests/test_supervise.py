"""The tray's supervision with real child processes: crash → restart after a pause, then headless."""

from __future__ import annotations

import logging
import sys
import time

from svdaemon.supervise import FIRST_PAUSE_S, STABLE_S, Supervised

from doubles import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def exiting_with(code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


def run_until_exit(child: Supervised) -> None:
    assert wait_for(lambda: not child.running, 30)
    child.poll()


def test_a_crashing_child_is_restarted_with_growing_pauses_then_given_up(caplog):
    clock = Clock()
    child = Supervised("the tray icon", exiting_with(1), max_restarts=2, clock=clock)
    child.start()
    with caplog.at_level(logging.WARNING, "svdaemon.supervise"):
        for restart in range(2):
            run_until_exit(child)
            assert child.given_up is None and not child.running
            clock.now += FIRST_PAUSE_S * 2**restart - 0.01
            child.poll()
            assert child.restarts == restart  # still pausing
            clock.now += 0.02
            child.poll()
            assert child.restarts == restart + 1
        run_until_exit(child)
    assert child.given_up == "it crashed 3 times (exit code 1)"
    assert "starting it again in 1 s" in caplog.text and "starting it again in 2 s" in caplog.text
    assert "svdaemon goes on without it" in caplog.text


def test_a_clean_exit_or_exit_2_is_an_answer_not_a_crash():
    for code, why in ((0, "it ended"), (2, "it cannot run here (no display or no tray support)")):
        child = Supervised("the tray icon", exiting_with(code))
        child.start()
        run_until_exit(child)
        assert child.given_up == why and child.restarts == 0


def test_stop_ends_a_running_child_and_it_never_comes_back():
    child = Supervised("the tray icon", [sys.executable, "-c", "import time; time.sleep(60)"])
    child.start()
    assert child.running
    started = time.monotonic()
    child.stop()
    assert not child.running and time.monotonic() - started < 5
    child.poll()
    assert not child.running and child.given_up == "the daemon stopped"


def test_a_command_that_cannot_start_is_given_up_with_the_cause():
    child = Supervised("the tray icon", ["/nonexistent/svdaemon", "tray"])
    child.start()
    assert child.given_up is not None and "cannot start" in child.given_up


def test_a_crash_after_a_long_run_starts_the_count_again():
    clock = Clock()
    child = Supervised("the tray icon", exiting_with(1), max_restarts=1, clock=clock)
    child.start()
    run_until_exit(child)  # crash 1: restart after a pause
    clock.now += FIRST_PAUSE_S
    child.poll()
    assert child.restarts == 1
    clock.now += STABLE_S  # this run lasted a minute before it crashed: not a crash loop
    run_until_exit(child)
    assert child.given_up is None and child.restarts == 0

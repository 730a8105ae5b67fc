"""When the worker counts as stuck: pure arithmetic over its beats, on an injected clock."""

from __future__ import annotations

from svdaemon.heartbeat import STUCK_FACTOR, STUCK_FLOOR_S, Heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_worker_beating_every_second_is_never_stuck():
    clock = Clock()
    heartbeat = Heartbeat(clock)
    for _ in range(10_000):
        clock.now += 1.0
        heartbeat.beat()
        assert heartbeat.stuck() is None


def test_a_silent_worker_is_stuck_after_the_floor():
    clock = Clock()
    heartbeat = Heartbeat(clock)
    clock.now += STUCK_FLOOR_S
    assert heartbeat.stuck() is None
    clock.now += 1.0
    assert "has not moved for 301 s (limit 300 s)" in heartbeat.stuck()
    heartbeat.beat()
    assert heartbeat.stuck() is None


def test_long_batches_raise_the_limit_so_a_slow_machine_is_not_a_hung_one():
    clock = Clock()
    heartbeat = Heartbeat(clock)
    for _ in range(3):
        clock.now += 45.0  # a CPU batch of 45 s
        heartbeat.beat()
    assert heartbeat.limit_s() == STUCK_FACTOR * 45.0
    clock.now += 400.0
    assert heartbeat.stuck() is None
    clock.now += 51.0
    assert heartbeat.stuck() is not None

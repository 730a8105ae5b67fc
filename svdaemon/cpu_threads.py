"""How many CPU threads torch may use at each place that computes, so that the cores are never oversubscribed.

torch's intra-op thread count belongs to the calling thread (OpenMP keeps it per thread; a new thread starts
from the last count set anywhere), so each place that computes says its own count:
- the engine: the cores this process may run on, less one for each decode process working beside it.
- VAD: in the daemon it runs on other threads at the same time as the engine, so on one thread of its own
  (silero steps through 32 ms windows on small tensors: it gains least from more). In `transcribe` it runs
  in turn with the engine, on the same thread, with the engine's count.
docs/benchmarks.md ("CPU threads") has the measurements.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

VAD_THREADS_BESIDE_ENGINE = 1


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or `taskset` narrows)."""
    return len(os.sched_getaffinity(0))


def engine_threads(requested: int | None, beside: int = 0, cores: int | None = None) -> int:
    """`requested` if given, else the cores less the `beside` processes (decoders) working alongside; >= 1."""
    if requested:
        return requested
    return max(1, (cores or available_cores()) - beside)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads on this thread, then restore the count it had."""
    import torch

    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

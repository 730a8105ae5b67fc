"""How many CPU threads torch may use at each place that computes, so that the cores are never oversubscribed.

torch's intra-op thread count belongs to the calling thread (OpenMP keeps it per thread; a new thread starts
from the last count set anywhere), so each place that computes says its own count:
- the engine: the cores this process may run on, less one for each decode process working beside it.
- VAD: in the daemon it runs on other threads at the same time as the engine, so on one thread of its own
  (silero steps through 32 ms windows on small tensors: it gains least from more). In `transcribe` it runs
  in turn with the engine, on the same thread, with the engine's count.
And OpenMP's threads wait for each other passively (they sleep rather than spin): a desktop's other
programs share the cores, and a spinning thread then burns the time slice the thread it waits for needs.
docs/benchmarks.md ("CPU threads") has the measurements that chose all this.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, MutableMapping

VAD_THREADS_BESIDE_ENGINE = 1
WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_waits(environ: MutableMapping[str, str] = os.environ) -> bool:
    """`OMP_WAIT_POLICY=PASSIVE` unless the user chose a policy; True when set. OpenMP reads it once, when
    torch loads it, so this must run before torch is imported (it does nothing after)."""
    if WAIT_POLICY in environ or "torch" in sys.modules:
        return False
    environ[WAIT_POLICY] = "PASSIVE"
    return True


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

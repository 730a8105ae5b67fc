"""One long MP3 decoded whole and in seek-split pieces on several decode processes: x-realtime of each.

    python bench/split_decode.py --minutes 30 --decoders 1,2,4

The MP3 (a tone under noise, 44.1 kHz mono) is written once into --work-dir and reused. Each count is timed
as the best of --repeats runs through `decoder_pool.PooledDecoder`, with the decode processes started
before the clock; one decode process decodes the file whole.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import av
import numpy as np

from svdaemon.audio import SAMPLE_RATE
from svdaemon.decoder import DecoderProcess
from svdaemon.decoder_pool import DecoderPool, PooledDecoder

SOURCE_RATE = 44100


def write_mp3(path: Path, minutes: float) -> Path:
    """A tone under noise, encoded a second at a time (every sample differs, as in speech)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=SOURCE_RATE, layout="mono")
        for second in range(round(minutes * 60)):
            t = np.arange(second * SOURCE_RATE, (second + 1) * SOURCE_RATE) / SOURCE_RATE
            signal = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(SOURCE_RATE)
            frame = av.AudioFrame.from_ndarray(
                signal.astype(np.float32)[np.newaxis], format="fltp", layout="mono"
            )
            frame.sample_rate = SOURCE_RATE
            frame.pts = second * SOURCE_RATE
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def best_wall_s(path: Path, decoders: int, repeats: int) -> tuple[float, float]:
    """(audio seconds, best wall seconds) of decoding `path` with this many decode processes."""
    processes = [DecoderProcess(block_s=30.0) for _ in range(decoders)]
    try:
        for process in processes:
            process.probe(path)  # started before the clock
        pool = DecoderPool(processes)
        walls, audio_s = [], 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            audio_s = sum(len(block) for block in PooledDecoder(pool).blocks(path)) / SAMPLE_RATE
            walls.append(time.perf_counter() - started)
        return audio_s, min(walls)
    finally:
        for process in processes:
            process.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--decoders", default="1,2", help="comma list of decode process counts")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/svdaemon-split-decode"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    path = args.work_dir / f"tone-{args.minutes:g}min.mp3"
    if not path.exists():
        write_mp3(path, args.minutes)
    for count in (int(n) for n in args.decoders.split(",")):
        audio_s, wall_s = best_wall_s(path, count, args.repeats)
        print(
            f"decoders={count}: {audio_s:.0f} s of audio in {wall_s:.2f} s = {audio_s / wall_s:.0f}x realtime"
        )


if __name__ == "__main__":
    main()

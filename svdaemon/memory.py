"""The VRAM budget: how much svdaemon may hold, how big a batch fits, when to yield the card, how to back off.

Every rule here is a pure function of measured numbers (free and total bytes, the peak allocation of a
few batch shapes), so each is tested with injected readings; `engine` takes the measurements on the
device and asks this module what to do. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from svdaemon.errors import StartupError

MB = 2**20
# Room left inside the budget for the allocator's rounding and the CTC projection of the longest item,
# which the cost model's shapes do not see.
HEADROOM = 0.10
# Free memory must come back this far above the floor before a yielded daemon resumes, so that a game
# hovering at the floor does not flip it on and off.
RESUME_MARGIN_MB = 256
# After an out-of-memory error the activation allowance shrinks to this share of what it was.
OOM_SHRINK = 0.75


@dataclass(frozen=True)
class BudgetSettings:
    """The contract's keys: `vram_budget_mb`, or `vram_fraction` of free memory; `vram_floor_mb`."""

    budget_mb: int = 2048
    fraction: float | None = None
    floor_mb: int = 1024


def budget_bytes(settings: BudgetSettings, free_bytes: int, held_bytes: int = 0) -> int:
    """All of svdaemon's VRAM, weights included: the fixed budget, or a fraction of what is free to us.

    `held_bytes` (what we already hold) counts as free to us: re-reading the budget after loading must not
    shrink it by our own weights.
    """
    if settings.fraction is not None:
        return int(settings.fraction * (free_bytes + held_bytes))
    return settings.budget_mb * MB


def activation_allowance(budget: int, weights_bytes: int, device: str) -> int:
    """Bytes left for a batch's activations; StartupError when the weights alone do not fit."""
    allowance = int(budget * (1 - HEADROOM)) - weights_bytes
    if allowance <= 0:
        raise StartupError(
            f"{device}: the model's weights take {weights_bytes / MB:.0f} MB, more than the VRAM budget of "
            f"{budget / MB:.0f} MB allows with {HEADROOM:.0%} headroom; raise vram_budget_mb"
        )
    return allowance


@dataclass(frozen=True)
class ShapeSample:
    """One measured encoder call: `batch` items padded to `frames`, peak activation bytes above the weights."""

    batch: int
    frames: int
    peak_bytes: int


@dataclass(frozen=True)
class CostModel:
    """Activation bytes of one encoder call: linear·B·T + quadratic·B·T² (attention is quadratic in T)."""

    linear: float
    quadratic: float

    def bytes_for(self, batch: int, frames: int) -> float:
        return batch * frames * (self.linear + self.quadratic * frames)

    def fits(self, batch: int, frames: int, allowance: int) -> bool:
        return self.bytes_for(batch, frames) <= allowance

    def longest_single(self, allowance: int) -> int:
        """The most frames one item may have and still fit alone (for splitting a segment after an OOM)."""
        a, b = self.quadratic, self.linear
        if a <= 0:
            return int(allowance / b) if b > 0 else 2**31
        return int((-b + math.sqrt(b * b + 4 * a * allowance)) / (2 * a))


def fit_cost_model(samples: Sequence[ShapeSample]) -> CostModel:
    """Least-squares fit of peak_bytes ≈ a·B·T + b·B·T² through the origin, coefficients kept ≥ 0.

    Needs at least three shapes with at least two different lengths, or the two terms cannot be told
    apart. Each sample is weighted by 1/peak so that small shapes count as much as large ones.
    """
    lengths = {sample.frames for sample in samples}
    if len(samples) < 3 or len(lengths) < 2:
        raise ValueError("the cost model needs ≥ 3 measured shapes with ≥ 2 different lengths")
    # Normal equations of the weighted problem min Σ ((a·x1 + b·x2 − y) / y)², x1 = B·T, x2 = B·T².
    s11 = s12 = s22 = r1 = r2 = 0.0
    for sample in samples:
        weight = 1.0 / max(sample.peak_bytes, 1) ** 2
        x1 = sample.batch * sample.frames
        x2 = x1 * sample.frames
        y = sample.peak_bytes
        s11 += weight * x1 * x1
        s12 += weight * x1 * x2
        s22 += weight * x2 * x2
        r1 += weight * x1 * y
        r2 += weight * x2 * y
    determinant = s11 * s22 - s12 * s12
    linear = (r1 * s22 - r2 * s12) / determinant
    quadratic = (s11 * r2 - s12 * r1) / determinant
    if quadratic < 0:  # noise made the square term negative: a line through the origin instead
        return CostModel(linear=r1 / s11, quadratic=0.0)
    if linear < 0:
        return CostModel(linear=0.0, quadratic=r2 / s22)
    return CostModel(linear=linear, quadratic=quadratic)


@dataclass(frozen=True)
class BatchLimit:
    """Which padded shapes (items × frames) one encoder call may take.

    On the CPU a count of padded frames (speed, not memory, sets it); on CUDA the measured cost model
    against the activation allowance left inside the VRAM budget.
    """

    max_frames: int | None = None
    cost: CostModel | None = None
    allowance: int = 0

    def fits(self, batch: int, frames: int) -> bool:
        if self.cost is not None:
            return self.cost.fits(batch, frames, self.allowance)
        return self.max_frames is None or batch * frames <= self.max_frames

    def longest_single(self) -> int:
        if self.cost is not None:
            return self.cost.longest_single(self.allowance)
        return self.max_frames or 2**31

    def after_oom(self) -> BatchLimit:
        """The limit after an out-of-memory error: whatever estimate allowed that batch was too generous."""
        if self.cost is not None:
            return BatchLimit(cost=self.cost, allowance=int(self.allowance * OOM_SHRINK))
        return BatchLimit(max_frames=int((self.max_frames or 2**31) * OOM_SHRINK))


def should_yield(free_bytes: int, floor_mb: int, yielded: bool) -> bool:
    """Whether to stay out of the card's way now that it has `free_bytes` free.

    Yield below the floor; once yielded, resume only when free memory is back above the floor plus a margin.
    """
    threshold = floor_mb + (RESUME_MARGIN_MB if yielded else 0)
    return free_bytes < threshold * MB


def halves(items: Sequence[int]) -> list[list[int]]:
    """A batch split in two for the retry after an out-of-memory error (longest items stay first)."""
    middle = (len(items) + 1) // 2
    return [list(items[:middle]), list(items[middle:])]

"""The VRAM rules as pure functions of injected readings: no GPU is used here (the numbers stand for one)."""

from __future__ import annotations

import pytest

from svdaemon.errors import StartupError
from svdaemon.memory import (
    MB,
    BatchLimit,
    BudgetSettings,
    CostModel,
    ShapeSample,
    activation_allowance,
    budget_bytes,
    fit_cost_model,
    halves,
    should_yield,
)


def test_budget_is_fixed_or_a_fraction_of_what_is_free_to_us():
    assert budget_bytes(BudgetSettings(budget_mb=2048), free_bytes=20_000 * MB) == 2048 * MB
    fraction = BudgetSettings(fraction=0.5)
    assert budget_bytes(fraction, free_bytes=6000 * MB, held_bytes=1000 * MB) == 3500 * MB


def test_weights_that_do_not_fit_the_budget_are_refused_with_the_numbers():
    assert activation_allowance(2048 * MB, 900 * MB, "cuda:0") == int(2048 * MB * 0.9) - 900 * MB
    with pytest.raises(StartupError, match=r"cuda:0: the model's weights take 1900 MB.*2048 MB"):
        activation_allowance(2048 * MB, 1900 * MB, "cuda:0")


def test_the_cost_model_recovers_linear_and_quadratic_terms():
    truth = CostModel(linear=40_000.0, quadratic=9.0)
    shapes = [(1, 300), (4, 300), (2, 1000), (8, 150), (1, 2500)]
    samples = [ShapeSample(b, t, int(truth.bytes_for(b, t))) for b, t in shapes]
    fitted = fit_cost_model(samples)
    assert fitted.linear == pytest.approx(truth.linear, rel=1e-3)
    assert fitted.quadratic == pytest.approx(truth.quadratic, rel=1e-3)


def test_noisy_measurements_never_give_a_negative_term():
    samples = [
        ShapeSample(1, 100, 5_000_000),
        ShapeSample(2, 100, 10_100_000),
        ShapeSample(1, 400, 19_000_000),
    ]
    fitted = fit_cost_model(samples)
    assert fitted.linear >= 0 and fitted.quadratic >= 0
    for sample in samples:
        assert fitted.bytes_for(sample.batch, sample.frames) == pytest.approx(sample.peak_bytes, rel=0.1)


def test_the_cost_model_needs_three_shapes_of_two_lengths():
    with pytest.raises(ValueError, match="≥ 3 measured shapes"):
        fit_cost_model([ShapeSample(1, 100, 10), ShapeSample(2, 100, 20), ShapeSample(4, 100, 40)])


def test_fits_and_the_longest_single_item():
    model = CostModel(linear=1000.0, quadratic=2.0)
    allowance = 100 * MB
    longest = model.longest_single(allowance)
    assert model.fits(1, longest, allowance) and not model.fits(1, longest + 1, allowance)
    assert model.fits(10, 1000, allowance) != model.fits(1000, 1000, allowance)


def test_yield_below_the_floor_and_resume_only_above_it_with_a_margin():
    floor = 1024
    assert should_yield(900 * MB, floor, yielded=False)
    assert not should_yield(1100 * MB, floor, yielded=False)
    assert should_yield(1100 * MB, floor, yielded=True)  # hovering at the floor: stay out
    assert not should_yield((floor + 300) * MB, floor, yielded=True)


def test_back_off_halves_the_batch_and_shrinks_the_limit():
    assert halves([5, 3, 8, 1, 2]) == [[5, 3, 8], [1, 2]]
    assert halves([7]) == [[7], []]
    measured = BatchLimit(cost=CostModel(linear=1000.0, quadratic=0.0), allowance=1000 * 1000)
    assert measured.fits(10, 100) and not measured.after_oom().fits(10, 100)
    assert measured.after_oom().allowance == 750_000
    assert BatchLimit(max_frames=1000).after_oom().max_frames == 750


def test_a_cpu_limit_counts_padded_frames():
    limit = BatchLimit(max_frames=2400)
    assert limit.fits(4, 600) and not limit.fits(5, 600)
    assert limit.longest_single() == 2400

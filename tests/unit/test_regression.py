"""Mann-Whitney and the large-and-significant regression test, as tables."""

import random

import pytest

from orchestrator.monitoring.regression import detect_regression, mann_whitney_u


def noise(n, seed, mu=100.0, sigma=5.0):
    rng = random.Random(seed)
    return [mu + rng.gauss(0, sigma) for _ in range(n)]


def test_mann_whitney_textbook_value():
    u, z, p = mann_whitney_u([4, 5, 6], [1, 2, 3])
    assert (u, z, p) == pytest.approx((9.0, 1.7457, 0.04043), abs=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_mann_whitney_u_is_complementary(seed):
    x, y = noise(30, seed), noise(40, seed + 100)
    ux, zx, px = mann_whitney_u(x, y)
    uy, zy, py = mann_whitney_u(y, x)
    assert ux + uy == 30 * 40 and zx == pytest.approx(-zy) and px + py == pytest.approx(1)


def test_mann_whitney_all_ties():
    assert mann_whitney_u([1, 1, 1], [1, 1]) == (3.0, 0.0, 0.5)


def lognormal(n, seed, factor=1.0):
    rng = random.Random(seed)
    return [factor * rng.lognormvariate(4.6, 0.3) for _ in range(n)]


@pytest.mark.parametrize(
    "baseline,recent,kwargs,found",
    [
        pytest.param(lognormal(50, 1), lognormal(50, 2, 1.5), {}, True, id="50% slowdown"),
        pytest.param(noise(50, 1), noise(50, 2, mu=150, sigma=7.5), {}, True, id="50%, normal"),
        pytest.param(lognormal(50, 1), lognormal(50, 2), {}, False, id="noise"),
        pytest.param(noise(50, 3), noise(50, 4, mu=105), {}, False, id="5% shift is not enough"),
        pytest.param(lognormal(50, 1), lognormal(50, 2, 0.5), {}, False, id="a speed-up"),
        pytest.param(
            noise(50, 5), noise(50, 6, mu=50), {"higher_is_worse": False}, True, id="throughput"
        ),
        pytest.param(lognormal(5, 1), lognormal(5, 2, 3), {}, False, id="too few samples"),
        pytest.param([0.0] * 20, [5.0] * 20, {}, False, id="baseline median 0"),
        pytest.param(
            list(range(1, 21)), list(range(4, 24)), {}, False, id="big shift, not significant"
        ),
        pytest.param(
            noise(50, 3),
            noise(50, 4, mu=105),
            {"min_shift": 0.01, "alpha": 0.05},
            True,
            id="5% shift found when asked for",
        ),
    ],
)
def test_detect_regression(baseline, recent, kwargs, found):
    result = detect_regression(baseline, recent, **kwargs)
    assert (result is not None) is found
    if result is not None:
        assert result.p_value < kwargs.get("alpha", 0.01)
        assert result.shift >= kwargs.get("min_shift", 0.2)
        assert (result.n_baseline, result.n_recent) == (len(baseline), len(recent))


def test_regression_reports_the_shift():
    result = detect_regression([100.0] * 25 + [110.0] * 25, [150.0] * 25 + [160.0] * 25)
    assert result is not None
    assert (result.baseline_median, result.recent_median) == (105.0, 155.0)
    assert result.shift == pytest.approx(50 / 105)
    assert result.u == 2500 and result.p_value < 1e-10

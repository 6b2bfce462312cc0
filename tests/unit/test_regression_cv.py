"""Leave-one-family-out evaluation of the regression rule.

Scoring a simulated run, the families, and the choice made without the held-out family."""

from bench.regression_sim import CASES, Case, scored_settings, simulate
from orchestrator.monitoring.anomaly_eval import Score
from orchestrator.monitoring.regression import (
    ALPHA,
    CLEAR_SHIFT,
    MIN_SHIFT,
    RECENT_MINUTES,
    RegressionParams,
    judge_regression,
)
from orchestrator.monitoring.regression_cv import (
    LATE_MINUTES,
    REGRESSION_GRID,
    leave_one_family_out,
    params_of,
    score_run,
)


def test_the_defaults_are_the_module_constants_and_the_grids_first_setting():
    p = RegressionParams()
    assert (p.recent_minutes, p.min_shift, p.alpha, p.clear_shift) == (
        RECENT_MINUTES,
        MIN_SHIFT,
        ALPHA,
        CLEAR_SHIFT,
    )
    assert params_of(REGRESSION_GRID[0]) == p
    assert len(REGRESSION_GRID) == len({tuple(sorted(g.items())) for g in REGRESSION_GRID})


def test_judge_regression_follows_its_params():
    medians = [100.0, 104.0] * 173 + [118.0, 122.0] * 7 + [120.0]  # +18 %: below 20 %
    assert judge_regression(medians, False) is None
    assert judge_regression(medians, False, RegressionParams(min_shift=0.15)) is not None


def test_a_run_that_got_slower_holds_one_window_up_to_an_hour_after_the_change():
    # change at 100, ramp 30: the window is (100, 190]
    end = 100 + 30 + LATE_MINUTES
    hit = score_run("x", [50, 120, 150], 400, 100, 30)
    assert (hit.windows, hit.hit, hit.false_flags, hit.flags) == (1, 1, 1, 3)
    late = score_run("x", [end + 1], 400, 100, 30)
    assert (late.hit, late.false_flags) == (0, 1)
    assert score_run("x", [end], 400, 100, 30).hit == 1
    assert score_run("x", [100], 400, 100, 30).hit == 0  # before the change's first minute
    assert score_run("x", [], 400, 100, 30).score == 0.0


def test_a_run_that_did_not_get_slower_has_only_false_flags():
    s = score_run("x", [10, 20], 400, None)
    assert (s.windows, s.hit, s.false_flags, s.score) == (0, 0, 2, None)


def test_families_group_the_cases():
    families = {c.name: c.family for c in CASES}
    assert families["step +20 %"] == families["step +50 %"] == "step"
    assert families["drift +50 % over 3 h"] == families["drift +50 % over 12 h"] == "drift"
    assert families["step -30 % (faster)"] == "faster"
    assert families["noisy, unchanged"] == families["noisy, step +50 %"] == "noisy"
    assert families["daily cycle +-15 %, unchanged"] == "cycle"


def _score(hit: int, windows: int = 1, false_flags: int = 0) -> Score:
    return Score(windows=windows, hit=hit, false_flags=false_flags, flags=hit + false_flags)


def test_each_family_is_scored_with_the_setting_chosen_without_it():
    settings = [{"min_shift": 0.2}, {"min_shift": 0.1}]
    families = ["step", "step", "drift", "cycle"]
    # setting 1 is better on step (and so chosen for the others), setting 0 on drift
    per_setting = [
        [_score(0), _score(0), _score(1), _score(0, 0, 0)],
        [_score(1), _score(1), _score(0), _score(0, 0, 3)],
    ]
    cv = leave_one_family_out(settings, per_setting, families)
    chosen = {g.group: g.setting for g in cv.groups}
    assert chosen["step"] == {"min_shift": 0.2}  # drift + cycle: setting 0 wins
    assert chosen["drift"] == {"min_shift": 0.1}  # step + cycle: 2 hits beat 3 false flags
    assert chosen["cycle"] == {"min_shift": 0.1}
    held = {g.group: g.held_out for g in cv.groups}
    assert held["step"].hit == 0 and held["drift"].hit == 0
    assert held["cycle"].false_flags == 3 and held["cycle"].score is None
    assert cv.mean == 0.0  # step 0.0 and drift 0.0; cycle has no score
    assert cv.in_sample.hit == 1


def test_the_defaults_replay_what_the_bench_simulates():
    case = Case("step +50 %", "step", 0.5)
    run = simulate(case, 3, 600, 400)
    (scored,) = scored_settings(case, 3, 600, 400, REGRESSION_GRID[:1])
    assert scored == score_run("step +50 % #3", run.onsets, 600, 400, 0)
    assert scored.hit == 1

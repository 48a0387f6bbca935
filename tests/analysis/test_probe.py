"""Statistics of the layer probe on synthetic data with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from messai.analysis.probe import ProbeResults, group_kfold, probe_layers
from messai.analysis.splits import inner_fold_pairs, permute_across_groups
from messai.errors import MessError


def _tracks(n_tracks: int, per_track: int) -> np.ndarray:
    return np.repeat(np.arange(n_tracks), per_track)


def _sklearn_oof(x, y, fold, make_model):
    """Out-of-fold predictions of ``make_model()`` on our outer folds."""
    pred = np.empty(y.shape, dtype=np.float64)
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        pred[test] = make_model().fit(x[train], y[train]).predict(x[test])
    return pred


@pytest.fixture(scope="module")
def linear_case():
    """Layer 1 carries a noisy linear signal; layers 0 and 2 are noise. 60 tracks x 8."""
    rng = np.random.default_rng(1)
    groups = _tracks(60, 8)
    n, dim = len(groups), 16
    features = rng.standard_normal((n, 3, dim)) * rng.uniform(0.5, 3.0, dim) + 4.0
    weights = rng.standard_normal(dim)
    signal = (features[:, 1] - 4.0) @ weights
    y = signal + rng.standard_normal(n) * signal.std() * 0.5  # R² ≈ 0.8
    vector = np.stack([signal, -signal], axis=1) + rng.standard_normal((n, 2)) * signal.std()
    return features.astype(np.float32), {"y": y, "vector": vector}, groups


def test_group_kfold_keeps_groups_whole_and_balanced():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(37), rng.integers(1, 9, size=37))
    fold = group_kfold(groups, 5, seed=3)
    for g in np.unique(groups):
        assert len(np.unique(fold[groups == g])) == 1
    sizes = np.bincount(fold, minlength=5)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 8
    assert not np.array_equal(fold, group_kfold(groups, 5, seed=4))
    assert np.array_equal(fold, group_kfold(groups, 5, seed=3))


def test_fewer_groups_than_folds_is_an_error():
    features = np.zeros((8, 2, 3), dtype=np.float32)
    with pytest.raises(MessError, match="groups"):
        probe_layers(features, {"y": np.arange(8.0)}, _tracks(4, 2), folds=5)


def test_no_leakage_from_near_copy_segments():
    """Segments of a track are near-copies and the target is random per track: a split by
    segment would let the probe look the answer up (R² ≈ 1); split by track it must not."""
    rng = np.random.default_rng(0)
    n_tracks, per_track, dim = 48, 6, 64
    groups = _tracks(n_tracks, per_track)
    track_vectors = rng.standard_normal((n_tracks, 2, dim))
    features = track_vectors[groups] + 0.01 * rng.standard_normal((len(groups), 2, dim))
    y = rng.standard_normal(n_tracks)[groups]

    results = probe_layers(features, {"y": y}, groups, n_bootstrap=50)
    assert all(r2 <= 0.1 for r2 in results.targets["y"].r2)

    leaky = cross_val_predict(
        make_pipeline(StandardScaler(), Ridge(alpha=1e-3)),
        features[:, 0],
        y,
        cv=KFold(5, shuffle=True, random_state=0),
    )
    assert r2_score(y, leaky) > 0.9


def test_test_fold_targets_never_reach_its_predictions(linear_case):
    """Scrambling the targets of fold 0 changes nothing predicted for fold 0: neither the fit
    nor the alpha search (nor the scaler) saw them."""
    features, targets, groups = linear_case
    fold = group_kfold(groups, 5, seed=0)
    scrambled = targets["y"].copy()
    scrambled[fold == 0] = np.random.default_rng(9).standard_normal((fold == 0).sum()) * 100
    runs = [
        probe_layers(features, {"y": y}, groups, n_bootstrap=0, return_predictions=True)
        for y in (targets["y"], scrambled)
    ]
    a, b = (r.predictions["y"][:, fold == 0] for r in runs)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(a).max())
    assert not np.allclose(runs[0].predictions["y"], runs[1].predictions["y"])


@pytest.mark.parametrize("folds", [3, 4, 5, 6])
@pytest.mark.parametrize("inner", [1, 2, 3, 4, 5])
def test_inner_search_validates_on_other_training_folds(folds, inner):
    pairs = inner_fold_pairs(folds, inner)
    for f in range(folds):
        validation = [b if a == f else a for a, b in pairs if f in (a, b)]
        assert f not in validation and len(set(validation)) == len(validation)
        assert len(validation) == min(inner + inner % 2, folds - 1)


def test_fixed_alpha_equals_sklearn_ridge_per_group_fold(linear_case):
    features, targets, groups = linear_case
    results = probe_layers(
        features, targets, groups, alphas=[1e-6], return_predictions=True, n_bootstrap=0
    )
    fold = group_kfold(groups, 5, seed=0)
    x64 = features.astype(np.float64)
    for name, y in targets.items():
        for layer in range(features.shape[1]):
            expected = _sklearn_oof(
                x64[:, layer], y, fold, lambda: make_pipeline(StandardScaler(), Ridge(alpha=1e-6))
            )
            got = results.predictions[name][layer]
            assert got.shape == y.shape
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
            assert results.targets[name].r2[layer] == pytest.approx(r2_score(y, expected), rel=1e-6)
            per_fold = [r2_score(y[fold == f], expected[fold == f]) for f in range(5)]
            assert results.targets[name].fold_r2[layer] == pytest.approx(per_fold, rel=1e-6)
    assert results.alpha_scale == "absolute" and results.inner_folds == 0
    assert results.targets["y"].alpha == [1e-6] * 3


def test_finds_the_layer_and_matches_sklearn_grouped_ridge_cv(linear_case):
    features, targets, groups = linear_case
    grid = np.logspace(-2, 5, 8)
    results = probe_layers(features, targets, groups, alphas=grid, n_bootstrap=200)
    target = results.targets["y"]
    assert target.best_layer == 1
    assert target.beats_runner_up is True and target.fold_wins_over_runner_up == 5
    assert target.margin_over_median > 0.5
    assert all(c <= 0.1 for c in target.control_r2)
    assert target.r2_ci_low[1] < target.r2[1] < target.r2_ci_high[1]

    fold = group_kfold(groups, 5, seed=0)
    x = features[:, 1].astype(np.float64)
    search = lambda: GridSearchCV(  # noqa: E731
        make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": grid}, cv=GroupKFold(4)
    )
    expected = np.empty_like(targets["y"])
    for f in range(5):
        train, test = fold != f, fold == f
        model = search().fit(x[train], targets["y"][train], groups=groups[train])
        expected[test] = model.predict(x[test])
    assert target.r2[1] == pytest.approx(r2_score(targets["y"], expected), abs=0.02)
    assert target.is_validated(1)
    assert target.validated_layers() == [1]
    assert not target.is_validated(0)


def test_default_relative_grid_and_multi_output(linear_case):
    features, targets, groups = linear_case
    results = probe_layers(features, targets, groups, n_bootstrap=100, return_predictions=True)
    assert results.alpha_scale == "relative" and results.inner_folds == 2
    vector = results.targets["vector"]
    assert vector.n_outputs == 2 and vector.best_layer == 1
    pred = results.predictions["vector"][1]
    assert pred.shape == targets["vector"].shape
    assert vector.r2[1] == pytest.approx(r2_score(targets["vector"], pred), rel=1e-9)
    assert vector.r2[1] > 0.3 and all(c <= 0.1 for c in vector.control_r2)
    assert results.targets["y"].r2[1] > 0.7


def test_missing_and_log_transformed_targets_drop_rows_for_that_target_only(linear_case):
    features, targets, groups = linear_case
    y = targets["y"].copy()
    y[::7] = np.nan
    y[3] = np.inf
    hz = np.exp(targets["y"] / targets["y"].std())
    hz[5] = 0.0  # not positive: missing on a log scale
    results = probe_layers(
        features,
        {"y": y, "full": targets["y"], "hz": hz},
        groups,
        alphas=[1e-6],
        target_transforms={"hz": "log"},
        return_predictions=True,
        n_bootstrap=0,
    )
    valid = np.isfinite(y)
    assert results.targets["y"].n_samples == valid.sum()
    assert np.isnan(results.predictions["y"][:, ~valid]).all()
    assert results.targets["hz"].n_samples == len(y) - 1
    assert results.targets["hz"].transform == "log"

    fold = group_kfold(groups, 5, seed=0)
    make = lambda: make_pipeline(StandardScaler(), Ridge(alpha=1e-6))  # noqa: E731
    x = features[:, 1].astype(np.float64)
    expected = _sklearn_oof(x[valid], y[valid], fold[valid], make)
    np.testing.assert_allclose(results.predictions["y"][1, valid], expected, rtol=1e-6)
    expected_full = _sklearn_oof(x, targets["y"], fold, make)
    np.testing.assert_allclose(results.predictions["full"][1], expected_full, rtol=1e-6)
    assert results.targets["hz"].r2[1] == pytest.approx(results.targets["full"].r2[1], abs=0.05)


def test_constant_target_gives_null_not_a_crash(linear_case):
    features, targets, groups = linear_case
    const = np.full(len(groups), 3.0)
    results = probe_layers(features, {"const": const, "y": targets["y"]}, groups, n_bootstrap=20)
    target = results.targets["const"]
    assert all(math.isnan(v) for v in target.r2) and target.best_layer is None
    d = json.loads(json.dumps(results.to_dict()))
    assert d["targets"]["const"]["r2"] == [None, None, None]
    assert d["targets"]["const"]["best_layer"] is None
    assert d["targets"]["y"]["best_layer"] == 1


def test_to_dict_round_trip(linear_case):
    features, targets, groups = linear_case
    random_model = np.random.default_rng(5).standard_normal(features.shape).astype(np.float16)
    results = probe_layers(
        features, targets, groups, control_features=random_model, n_bootstrap=50, seed=2
    )
    d = results.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = ProbeResults.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back == results  # predictions are not compared
    for key in ("n_samples", "n_groups", "n_layers", "folds", "seed", "alphas", "targets"):
        assert key in d
    t = d["targets"]["y"]
    for key in (
        "r2",
        "r2_std",
        "control_r2",
        "r2_ci_low",
        "r2_ci_high",
        "alpha",
        "random_model_r2",
        "selectivity",
    ):
        assert len(t[key]) == 3, key
    assert t["selectivity_baseline"] == "random_model"
    assert t["selectivity"][1] == pytest.approx(t["r2"][1] - t["random_model_r2"][1])
    assert t["random_model_r2"][1] < 0.2 < t["r2"][1]


def test_results_do_not_depend_on_jobs(linear_case):
    features, targets, groups = linear_case
    one = probe_layers(features, targets, groups, n_jobs=1, n_bootstrap=30)
    two = probe_layers(features, targets, groups, n_jobs=2, n_bootstrap=30)
    assert one.to_dict() == two.to_dict()


def test_control_moves_targets_between_groups_of_unequal_size():
    rng = np.random.default_rng(0)
    group_index = np.repeat(np.arange(6), [1, 2, 3, 4, 5, 6])
    y = np.arange(len(group_index), dtype=float)[:, None] + 100 * group_index[:, None]
    valid = np.ones(len(y), dtype=bool)
    valid[[0, 4]] = False  # group 0 has no valid row
    out = permute_across_groups(y, valid, group_index, rng.permutation(6))
    moved_from = (out[valid, 0] // 100).astype(int)
    assert np.all(moved_from != group_index[valid])  # no group keeps its own targets
    assert set(moved_from) == set(range(1, 6))  # each valid group donates
    assert np.all(out[~valid] == 0)
    for g in range(1, 6):  # a recipient gets one donor's values, in order, cycled
        assert len(np.unique(moved_from[group_index[valid] == g])) == 1


def _planted_arrays(fold_r2, r2, ci_low):
    n = len(r2)
    return {
        "r2": np.asarray(r2, dtype=float),
        "r2_ci_low": np.asarray(ci_low, dtype=float),
        "r2_ci_high": np.full(n, 1.0),
        "alpha": np.ones(n),
        "control_r2": np.zeros(n),
        "fold_r2": np.asarray(fold_r2, dtype=float),
    }


@pytest.mark.parametrize("bootstrap", [True, False])
def test_one_outlier_fold_cannot_carry_the_best_layer(bootstrap):
    """Issue 20.3: a layer whose pooled R² is carried by one fold (the others far below zero, as
    spectral flatness at layer 11 on real music: pooled 0.84, folds -9.1, -7.5, -9.9) is not
    chosen over a layer that every fold agrees on, and its cell is flagged unstable."""
    from messai.analysis.scores import summarise_target

    carried = [0.97, -9.1, -7.5, -9.9, 0.9]  # pooled 0.84: one big-variance fold dominates it
    steady = [0.62, 0.58, 0.66, 0.60, 0.64]
    noise = [0.05, -0.04, 0.02, -0.03, 0.01]
    arrays = _planted_arrays(
        [noise, carried, steady],
        r2=[0.01, 0.84, 0.62],
        ci_low=[-0.2, -1.5, 0.48] if bootstrap else [math.nan] * 3,
    )
    meta = {"n_outputs": 1, "n_samples": 100, "transform": "none"}
    res = summarise_target("spectral_flatness", meta, arrays, None, has_control=True)
    assert int(np.argmax(arrays["r2"])) == 1  # what the pooled choice took
    assert res.best_layer == 2 and res.runner_up_layer == 0  # the carried layer ranks last
    assert res.unstable == [True, True, False]  # noise flips sign; the carried layer spreads
    assert res.fold_r2_median[1] == pytest.approx(-7.5)
    d = res.to_dict()
    assert d["unstable"] == [True, True, False] and d["fold_r2_median"][2] == pytest.approx(0.62)


def test_unstable_cells_by_sign_or_spread():
    from messai.analysis.scores import unstable_cells

    rows = np.array(
        [
            [0.5, 0.6, 0.7],  # agree
            [0.2, -0.1, 0.3],  # sign
            [0.9, 0.2, 0.5],  # spread 0.7
            [-2.0, -0.5, -1.0],  # all below zero, spread 1.5
            [0.4, np.nan, np.nan],  # one fold: undecidable
        ]
    )
    assert unstable_cells(rows, max_spread=1.0) == [False, True, False, True, False]
    assert unstable_cells(rows, max_spread=0.5) == [False, True, True, True, False]


def test_probe_records_grouping_statistic_and_flags(linear_case):
    x, targets, groups = linear_case
    y = targets["y"]
    res = probe_layers(x, {"t": y}, groups, folds=4, n_bootstrap=50, group_by="work")
    d = res.to_dict()
    assert d["group_by"] == "work" and d["best_layer_statistic"] == "r2_ci_low"
    t = d["targets"]["t"]
    assert len(t["unstable"]) == x.shape[1] and len(t["fold_r2_median"]) == x.shape[1]
    ci_low = np.array([np.nan if v is None else v for v in t["r2_ci_low"]])
    assert t["best_layer"] == int(np.nanargmax(ci_low))
    back = ProbeResults.from_dict(json.loads(json.dumps(d)))
    assert back.group_by == "work" and back.targets["t"].unstable == t["unstable"]
    none = probe_layers(x, {"t": y}, groups, folds=4, n_bootstrap=0)
    assert none.best_layer_statistic == "median_fold_r2"

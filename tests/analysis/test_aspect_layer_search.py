"""Issue 21 item 5: the layer search of ``mess aspects fit`` (no ``--layers``) reports its
progress and fits no space it does not keep: for a label, one shrinkage LDA in all (the chosen
layer's projection), the per-layer scores from the same classifier without its projection."""

from __future__ import annotations

import numpy as np
import pytest

from messai.analysis.aspect_fit import fit_aspect_space, lda_cv_accuracy
from messai.analysis.aspect_space import _folds, _standardise, fit_shrinkage_lda
from messai.bench.synthetic import planted_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("planted"), n_layers=3, dim=24)


@pytest.mark.parametrize("n_classes,dim,seed", [(2, 10, 0), (3, 40, 1), (5, 60, 2)])
def test_lda_cv_accuracy_matches_the_sklearn_classifier(n_classes, dim, seed):
    """Hard, noisy data (accuracies well inside (chance, 1)), fewer windows than features too."""
    rng = np.random.default_rng(seed)
    n = 90
    labels = rng.integers(0, n_classes, n).astype(str)
    X = rng.normal(size=(n, dim)) + 0.4 * rng.normal(size=(n_classes, dim))[labels.astype(int)]
    X[:, 0] *= 50.0  # features on different scales
    groups = np.arange(n) // 3
    mx, ix = _standardise(X)
    splits = _folds(groups, 5, seed)
    _, _, evidence = fit_shrinkage_lda(X, labels, groups, folds=5, seed=seed)
    ours = lda_cv_accuracy((X - mx) * ix, labels, splits)
    assert ours == evidence["cv_accuracy"]
    assert 1 / n_classes < ours < 1.0  # a meaningful comparison, not two perfect scores


def test_label_search_fits_one_lda_reports_progress_and_the_same_scores(planted, monkeypatch):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from messai.analysis.aspect_fit import _window_matrix

    # the scores the search must give: each layer's own fit, as before the change
    data = planted.read_windows(track_ids=planted.track_ids())
    n_seg = data["n_segments"]
    labels = np.repeat([planted.labels(t)["fa"] for t in planted.track_ids()], n_seg)
    groups = np.repeat(planted.track_ids(), n_seg)
    expected = {
        layer: fit_shrinkage_lda(
            _window_matrix(data["segments"], [layer]), labels, groups, folds=4, seed=0
        )[2]["cv_accuracy"]
        for layer in range(planted.n_layers)
    }
    fits = []
    real_fit = LinearDiscriminantAnalysis.fit
    monkeypatch.setattr(
        LinearDiscriminantAnalysis,
        "fit",
        lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k),
    )
    seen = []
    space = fit_aspect_space(
        planted, "fa", folds=4, progress=lambda step, done, total: seen.append((step, done, total))
    )
    assert len(fits) == 1  # the kept space only (it was 6 per layer and 6 more)
    assert space.evidence["layer_scores"] == {str(k): v for k, v in expected.items()}
    assert space.layers == [1]  # the planted layer
    assert space.evidence["cv_accuracy"] == expected[1] and space.evidence["folds"] == 4
    n = planted.n_layers
    assert seen == [("searching layers", i, n) for i in range(1, n + 1)] + [
        ("fitting the space", 0, 1),
        ("fitting the space", 1, 1),
    ]


def test_target_search_reports_progress_and_keeps_its_scores(planted):
    seen = []
    space = fit_aspect_space(
        planted,
        "bright",
        sources=["target:spectral_centroid"],
        folds=4,
        progress=lambda step, done, total: seen.append((step, done)),
    )
    assert [s for s in seen if s[0] == "searching layers"] == [
        ("searching layers", i) for i in range(1, planted.n_layers + 1)
    ]
    scores = space.evidence["layer_scores"]
    assert space.layers == [1] and scores["1"] == max(scores.values())
    assert space.evidence["cv_r2"]["spectral_centroid"] == scores["1"]


@pytest.mark.parametrize("n,dim", [(40, 100), (200, 30), (60, 60)])
def test_shrinkage_lda_coef_equals_sklearn(n, dim):
    """Fewer windows than features (the Woodbury path), more, and as many; a constant feature."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from messai.analysis.aspect_fit import shrinkage_lda_coef

    rng = np.random.default_rng(n + dim)
    y = np.repeat(["a", "b", "c", "d"], n // 4)
    X = (
        rng.normal(size=(len(y), dim)) * rng.uniform(0.1, 10, dim)
        + rng.normal(size=(4, dim))[np.searchsorted(["a", "b", "c", "d"], y)]
    )
    X[:, 3] = 2.0
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(X, y)
    coef, intercept = shrinkage_lda_coef(X, y)
    np.testing.assert_allclose(coef, lda.coef_, rtol=1e-7, atol=1e-9 * np.abs(lda.coef_).max())
    np.testing.assert_allclose(intercept, lda.intercept_, rtol=1e-7, atol=1e-9)

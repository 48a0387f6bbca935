"""Aspect spaces: planted factors are recovered on held-out tracks, aspects on one layer give
different lists, spaces are saved with the store and marked stale when it changes."""

import numpy as np
import pytest

from messai.analysis.aspect_fit import fit_aspect_space, load_spaces, save_space
from messai.bench.aspect_metrics import cosine_distances, euclidean_distances, triplet_accuracy
from messai.bench.synthetic import planted_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_store(tmp_path_factory.mktemp("planted"))


def _split(store):
    ids = store.track_ids()
    train = [t for t in ids if store.labels(t)["rep"] != "0"]  # 48 tracks
    held = [t for t in ids if store.labels(t)["rep"] == "0"]  # 16: every (fa, fb) once
    return train, held


def test_planted_factors_recovered_on_held_out_tracks(planted):
    train, held = _split(planted)
    _, X = planted.layer(1, track_ids=held)
    fa = [planted.labels(t)["fa"] for t in held]
    fb = [planted.labels(t)["fb"] for t in held]
    acc = {}
    for factor in ("fa", "fb"):
        space = fit_aspect_space(
            planted, factor, sources=[f"label:{factor}"], layers=[1], track_ids=train
        )
        assert space.method == "shrinkage_lda" and space.dim == 3
        D = euclidean_distances(space.transform(X))
        acc[factor] = (triplet_accuracy(D, fa), triplet_accuracy(D, fb))
    assert acc["fa"][0] >= 0.95 and acc["fa"][1] <= 0.60, acc
    assert acc["fb"][1] >= 0.95 and acc["fb"][0] <= 0.60, acc
    # the whole layer (centred cosine, as the index searches it) mixes both, separating neither
    D = cosine_distances(X, center=X.mean(0))
    whole = (triplet_accuracy(D, fa), triplet_accuracy(D, fb))
    assert all(0.4 < a < 0.75 for a in whole), whole
    assert abs(whole[0] - whole[1]) < 0.15, whole


def test_target_space_follows_its_own_target(planted):
    from messai.bench.aspect_metrics import fidelity
    from messai.bench.similarity import track_targets

    train, held = _split(planted)
    _, X = planted.layer(1, track_ids=held)
    values = track_targets(planted, held)
    space = fit_aspect_space(planted, "spectral_brightness", layers=[1], track_ids=train)
    assert space.method == "ridge_span" and space.dim == 1
    assert space.evidence["cv_r2"]["spectral_centroid"] > 0.8
    D = euclidean_distances(space.transform(X))
    assert fidelity(D, values["spectral_centroid"]) > 0.8
    assert abs(fidelity(D, values["rms_db_mean"])) < 0.3


def test_saved_with_the_store_and_stale_after_a_change(planted, tmp_path):
    space = fit_aspect_space(planted, "fa", sources=["label:fa"], layers=[1])
    save_space(planted, space)
    loaded, stale = load_spaces(planted)["fa"]
    assert not stale and loaded.layers == [1] and loaded.evidence["cv_accuracy"] > 0.9
    x = np.random.default_rng(0).normal(size=(2, planted.dim))
    assert np.allclose(loaded.transform(x), space.transform(x), atol=1e-3)
    with planted.writer():
        tid = planted.track_ids()[0]
        planted.set_labels(tid, {**planted.labels(tid), "extra": "1"})
    assert load_spaces(planted)["fa"][1] is True


@pytest.mark.parametrize("n,d", [(20, 50), (80, 30), (60, 200)])
def test_ridge_weights_match_sklearn(n, d):
    from sklearn.linear_model import Ridge

    from messai.analysis.aspect_space import ridge_weights

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
    for alpha, W in zip((0.1, 10.0), ridge_weights(X, Y, np.array([0.1, 10.0]))):
        ref = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky").fit(X, Y).coef_.T
        np.testing.assert_allclose(W, ref, atol=1e-9)

"""Tests for messai.search.layer_index (and its parts): normalisation, exact/approximate search, persistence, fusion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from messai.errors import ConfigError, SearchIndexError, TrackNotFoundError
from messai.search import index_io
from messai.search.fusion import fuse
from messai.search.layer_index import (
    Float16Reranker,
    LayerIndex,
    Normalizer,
    build_index,
    ivf_nlist,
)


def clustered(n: int, dim: int, *, clusters: int = 8, seed: int = 0, offset: float = 3.0):
    """[n, dim] float32 Gaussian mixture around a common offset (a narrow cone, like MERT)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    labels = rng.integers(0, clusters, n)
    X = offset + centres[labels] + 0.7 * rng.standard_normal((n, dim))
    return X.astype(np.float32)


def ids_for(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def brute_force(Xn: np.ndarray, q: int, k: int, exclude: set[int] = frozenset()):
    """Exact top-k by cosine of already-normalised rows (float64), query excluded."""
    sims = Xn @ Xn[q]
    banned = set(exclude) | {q}
    order = [i for i in np.lexsort((np.arange(len(sims)), -sims)) if i not in banned]
    return sims, order[:k]


def unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)


def assert_valid_topk(index: LayerIndex, Xn: np.ndarray, q: int, k: int, *, exclude=()):
    """search_track(q) is a correct top-k of the brute force, ties allowed at the boundary."""
    banned = {index.position(t) for t in exclude}
    sims_bf, expected = brute_force(Xn, q, k, banned)
    got_sims, got_ids = index.search_track(index.track_ids[q], k, exclude_ids=exclude)
    got = [index.position(t) for t in got_ids]
    assert len(got) == k
    assert q not in got and not (banned & set(got))
    np.testing.assert_allclose(got_sims, sims_bf[got], atol=1e-5)
    np.testing.assert_allclose(got_sims, sims_bf[expected], atol=1e-5)
    assert np.all(np.diff(got_sims) <= 1e-7), "similarities must be sorted, best first"
    # identical wherever the brute force has no near-tie with its neighbours in the ranking
    _, ranking = brute_force(Xn, q, k + 1, banned)
    for rank in range(k):
        near = [ranking[j] for j in (rank - 1, rank + 1) if 0 <= j < len(ranking)]
        if np.all(np.abs(sims_bf[near] - sims_bf[ranking[rank]]) > 1e-5):
            assert got[rank] == ranking[rank]


# --------------------------------------------------------------------------------------------
# exactness of flat search


@pytest.fixture(params=["plain", "fp16-shadow"])
def shadow(request, monkeypatch):
    """Run a flat test twice: plain IndexFlatIP search, and the float16 two-stage path."""
    if request.param == "fp16-shadow":
        monkeypatch.setattr(Float16Reranker, "min_elements", 0)
    return request.param == "fp16-shadow"


@pytest.mark.parametrize("normalize", ["l2", "center", "zscore"])
def test_flat_matches_brute_force(normalize, shadow):
    X = clustered(400, 24)
    X[:, 3] = 5.0  # a constant dimension: zscore must not blow it up
    index = build_index(X, ids_for(400), normalize=normalize)
    X64 = X.astype(np.float64)
    if normalize == "l2":
        Xn = unit(X64)
    elif normalize == "center":
        Xn = unit(X64 - X64.mean(axis=0))
    else:
        std = X64.std(axis=0)
        std = np.maximum(std, 1e-2 * np.sqrt(np.mean(std**2)))
        Xn = unit((X64 - X64.mean(axis=0)) / std)
    for q in range(0, 400, 37):
        assert_valid_topk(index, Xn, q, 10)
    np.testing.assert_allclose(index.normalized_vectors(), Xn, atol=1e-6)
    assert (index.float16_reranker is not None) == shadow


def test_fp16_shadow_is_not_built_by_a_one_shot_query(monkeypatch):
    monkeypatch.setattr(Float16Reranker, "min_elements", 0)
    index = build_index(clustered(100, 8), ids_for(100))
    first = index.search_track("t00003", 5)
    assert index.float16_reranker is None  # a cold `mess recommend` does one query: no copy
    second = index.search_track("t00003", 5)
    assert index.float16_reranker is not None
    assert first[1] == second[1]
    np.testing.assert_allclose(first[0], second[0], atol=1e-6)
    index.search(clustered(10, 8), 3)  # batches use IndexFlatIP directly


def test_fp16_shadow_stays_exact_among_near_ties(monkeypatch):
    """Hundreds of tracks within the float16 error of each other force the shortlist wider."""
    monkeypatch.setattr(Float16Reranker, "min_elements", 0)
    rng = np.random.default_rng(5)
    X = np.vstack([clustered(200, 32), 1.0 + 1e-5 * rng.standard_normal((300, 32))])
    X = X.astype(np.float32)
    index = build_index(X, ids_for(500), normalize="l2")
    Xn = unit(X.astype(np.float64))
    for q in (210, 333, 499):
        assert_valid_topk(index, Xn, q, 10)
    assert index.float16_reranker.largest_shortlist > 2 * 11 + 16  # it did widen
    monkeypatch.setattr(Float16Reranker, "min_elements", 10**12)
    plain = build_index(X, ids_for(500), normalize="l2")
    for q in ("t00210", "t00333", "t00001"):
        assert index.search_track(q, 10)[1] == plain.search_track(q, 10)[1]


def test_float16_reranker_alone_is_exact():
    Xn = unit(clustered(300, 16).astype(np.float64)).astype(np.float32)
    reranker = Float16Reranker(Xn)
    sims, positions = reranker.topk(Xn[[3, 7]], 5, [{3}, {7, 8}])
    for row, (q, banned) in enumerate(((3, {3}), (7, {7, 8}))):
        _, expected = brute_force(Xn.astype(np.float64), q, 5, banned)
        assert positions[row].tolist() == expected
        np.testing.assert_allclose(sims[row], Xn[expected] @ Xn[q], atol=1e-6)
    assert len(reranker) == 300 and reranker.memory_bytes == 300 * 16 * 2


def test_l2_is_raw_cosine_and_center_removes_the_cone():
    X = clustered(300, 16, offset=6.0)
    raw = build_index(X, ids_for(300), normalize="l2")
    centred = build_index(X, ids_for(300), normalize="center")
    raw_sims, _ = raw.search_track("t00000", 50)
    centred_sims, _ = centred.search_track("t00000", 50)
    assert raw_sims.mean() > 0.9  # the prototype's everything-is-similar cone
    assert centred_sims.mean() < raw_sims.mean() - 0.2


def test_ties_are_broken_by_position(shadow):
    X = clustered(50, 8)
    X[10] = X[20] = X[30] = X[5]  # three exact copies of track 5
    index = build_index(X, ids_for(50), normalize="l2")
    sims, ids = index.search_track("t00005", 4)
    assert ids[:3] == ["t00010", "t00020", "t00030"]
    assert np.all(sims[:3] == sims[0]) and sims[0] == pytest.approx(1.0, abs=1e-6)
    sims, ids = index.search_track("t00020", 2)
    assert ids == ["t00005", "t00010"]


def test_search_with_raw_queries_and_padding():
    X = clustered(30, 8)
    index = build_index(X, ids_for(30))
    sims, pos = index.search(X[:3], 5)
    assert sims.shape == pos.shape == (3, 5) and sims.dtype == np.float32
    assert list(pos[:, 0]) == [0, 1, 2]  # each raw vector finds itself
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-6)
    sims, pos = index.search(X[0], 40)  # [dim] works; more than n asked
    assert pos.shape == (1, 40)
    assert (pos[0, :30] >= 0).all() and (pos[0, 30:] == -1).all()
    assert np.isneginf(sims[0, 30:]).all() and (np.abs(sims[0, :30]) <= 1).all()
    assert sorted(pos[0, :30]) == list(range(30))


def test_exclusion_sets_and_ids():
    X = clustered(200, 16)
    for kind in ("flat", "hnsw"):
        index = build_index(X, ids_for(200), kind=kind)
        _, full = index.search(X[7], 20)
        banned = set(full[0, :15].tolist())  # exclude the 15 nearest: forces a wider search
        sims, pos = index.search(X[7], 10, exclude=[banned])
        assert not banned & set(pos[0].tolist())
        assert (pos[0] >= 0).all() and np.all(np.diff(sims[0]) <= 1e-7)
        _, exact = build_index(X, ids_for(200)).search(X[7], 25)
        expected = [p for p in exact[0] if p not in banned][:10]
        assert len(set(pos[0].tolist()) & set(expected)) >= 9
        excluded_ids = [index.track_ids[p] for p in full[0, 1:6]]
        _, ids = index.search_track("t00007", 5, exclude_ids=[*excluded_ids, "not-indexed"])
        assert "t00007" not in ids and not set(excluded_ids) & set(ids) and len(ids) == 5


def test_exclusion_of_almost_everything(shadow):
    X = clustered(20, 8)
    index = build_index(X, ids_for(20))
    sims, ids = index.search_track("t00000", 5, exclude_ids=ids_for(20)[1:18])
    assert sorted(ids) == ["t00018", "t00019"] and len(sims) == 2 and sims[0] >= sims[1]
    assert ids[0] == (
        "t00018"
        if index.vector_of("t00018") @ index.vector_of("t00000")
        >= index.vector_of("t00019") @ index.vector_of("t00000")
        else "t00019"
    )


def test_single_query_search_restores_faiss_threads():
    import faiss

    before = faiss.omp_get_max_threads()
    index = build_index(clustered(50, 8), ids_for(50), kind="hnsw")
    index.search_track("t00001", 3)
    assert faiss.omp_get_max_threads() == before


def test_unknown_track_and_bad_inputs():
    X = clustered(20, 8)
    index = build_index(X, ids_for(20))
    with pytest.raises(TrackNotFoundError):
        index.search_track("nope", 3)
    with pytest.raises(ConfigError):
        index.search(np.zeros((1, 9)), 3)
    with pytest.raises(ConfigError):
        index.search(np.full((1, 8), np.nan), 3)
    with pytest.raises(ConfigError):
        index.search(X[:1], 0)
    with pytest.raises(ConfigError):
        build_index(X, ids_for(19))
    with pytest.raises(ConfigError):
        build_index(X, ["same"] * 20)
    with pytest.raises(ConfigError):
        build_index(X, ids_for(20), kind="annoy")
    with pytest.raises(ConfigError):
        build_index(X, ids_for(20), normalize="pca")
    with pytest.raises(ConfigError):
        build_index(X, ids_for(20), kind="hnsw", params={"nprobe": 3})
    with pytest.raises(ConfigError):
        build_index(X, ids_for(20), meta={"bad": object()})


# --------------------------------------------------------------------------------------------
# zero vectors and normaliser


@pytest.mark.parametrize("normalize", ["l2", "center", "zscore"])
def test_zero_vectors_never_give_nan(normalize, shadow):
    X = clustered(50, 8)
    X[3] = 0.0
    index = build_index(X, ids_for(50), normalize=normalize)
    for query in (np.zeros(8), X[3], X.mean(axis=0)):
        sims, pos = index.search(query, 10)
        assert np.isfinite(sims).all() and (pos >= 0).all()
    sims, _ = index.search_track("t00003", 10)
    assert np.isfinite(sims).all()
    assert np.isfinite(index.normalized_vectors()).all()
    if normalize == "l2":
        assert not index.vector_of("t00003").any()


def test_single_track_and_identical_corpus():
    one = build_index(np.ones((1, 4)), ["only"])  # centred: the one vector is the mean
    assert not one.vector_of("only").any()
    sims, ids = one.search_track("only", 3)
    assert ids == [] and len(sims) == 0
    same = build_index(np.ones((3, 4)), ["a", "b", "c"], normalize="zscore")
    sims, ids = same.search_track("a", 2)
    assert ids == ["b", "c"] and np.all(sims == 0)


def test_normalizer_is_an_estimator():
    X = clustered(100, 6)
    X[:, 0] = 2.0
    norm = Normalizer("zscore").fit(X)
    np.testing.assert_allclose(norm.mean_, X.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert norm.scale_.shape == (6,) and norm.n_fit_ == 100
    assert norm.scale_[0] > 0  # constant dimension floored, not zero
    Y = norm.transform(X)
    assert Y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, atol=1e-6)
    assert Normalizer("l2").fit(X).mean_.tolist() == [0.0] * 6
    with pytest.raises(ConfigError):
        Normalizer("whiten")


# --------------------------------------------------------------------------------------------
# approximate indices


def recall_at_10(index: LayerIndex, exact: LayerIndex, queries: range) -> float:
    hits = 0
    for q in queries:
        _, got = index.search_track(index.track_ids[q], 10)
        _, want = exact.search_track(exact.track_ids[q], 10)
        hits += len(set(got) & set(want))
    return hits / (10 * len(queries))


def test_hnsw_recall_and_params():
    X = clustered(3000, 32, clusters=20, seed=1)
    exact = build_index(X, ids_for(3000))
    hnsw = build_index(X, ids_for(3000), kind="hnsw")
    assert hnsw.params == {"M": 32, "efConstruction": 100, "efSearch": 64}
    assert recall_at_10(hnsw, exact, range(0, 3000, 15)) >= 0.95
    hnsw.set_search_params(ef_search=128)
    assert hnsw.params["efSearch"] == 128 and hnsw.faiss_index.hnsw.efSearch == 128
    with pytest.raises(ConfigError):
        hnsw.set_search_params(nprobe=4)


def test_ivf_refuses_tiny_corpora():
    X = clustered(300, 8)
    with pytest.raises(SearchIndexError, match="flat"):
        build_index(X, ids_for(300), kind="ivf")
    with pytest.raises(SearchIndexError):
        build_index(clustered(1000, 8), ids_for(1000), kind="ivf", params={"nlist": 100})


def test_ivf_builds_with_recorded_params():
    X = clustered(2000, 16, clusters=10)
    index = build_index(X, ids_for(2000), kind="ivf")
    assert index.params["nlist"] == ivf_nlist(2000) == 51
    assert 1 <= index.params["nprobe"] <= index.params["nlist"]
    exact = build_index(X, ids_for(2000))
    assert recall_at_10(index, exact, range(0, 2000, 50)) >= 0.8
    np.testing.assert_allclose(index.vector_of("t00007"), exact.vector_of("t00007"), atol=1e-6)
    index.add(clustered(10, 16, seed=5), ids_for(10, "new"))  # no retraining
    assert index.n_total == 2010 and "new00003" in index


# --------------------------------------------------------------------------------------------
# incremental adds


def test_incremental_add_equals_fresh_build_for_flat_l2(shadow):
    X = clustered(300, 16)
    ids = ids_for(300)
    grown = build_index(X[:200], ids[:200], normalize="l2", fingerprint="old")
    for _ in range(2):
        grown.search_track("t00000", 5)  # the 2nd builds the float16 copy; add() must drop it
    assert (grown.float16_reranker is not None) == shadow
    grown.add(X[200:], ids[200:], fingerprint="new")
    fresh = build_index(X, ids, normalize="l2", fingerprint="new")
    assert grown.track_ids == fresh.track_ids and grown.fingerprint == "new"
    assert grown.n_fit == 200 and grown.n_total == 300
    for query in ("t00000", "t00250"):
        a, b = grown.search_track(query, 10), fresh.search_track(query, 10)
        assert a[1] == b[1]
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)  # float16 path rescoring: ulps
    np.testing.assert_array_equal(grown.normalized_vectors(), fresh.normalized_vectors())


def test_add_keeps_the_old_mean_and_refuses_duplicates():
    X = clustered(120, 8)
    index = build_index(X[:100], ids_for(100))
    index.add(X[100:], ids_for(20, "x"))
    assert index.n_fit == 100 and index.n_total == 120
    old_mean = X[:100].astype(np.float64).mean(0)
    np.testing.assert_allclose(index.normalizer.mean_, old_mean, rtol=1e-6)
    with pytest.raises(ConfigError):
        index.add(X[:1], ["t00001"])
    _, ids = index.search_track("x00003", 5)
    assert "x00003" not in ids


# --------------------------------------------------------------------------------------------
# persistence


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    n = 1000
    X = clustered(n, 16)
    meta = {"layer": 3, "model": "m-a-p/MERT-v1-95M"}
    index = build_index(X, ids_for(n), kind=kind, normalize="zscore", fingerprint="fp1", meta=meta)
    index.save(tmp_path / "layer3")
    loaded = LayerIndex.load(tmp_path / "layer3")
    assert (loaded.kind, loaded.normalize, loaded.fingerprint, loaded.meta) == (
        kind,
        "zscore",
        "fp1",
        meta,
    )
    assert loaded.params == index.params and loaded.track_ids == index.track_ids
    assert loaded.n_fit == n and loaded.dim == 16
    np.testing.assert_array_equal(loaded.normalizer.mean_, index.normalizer.mean_)
    np.testing.assert_array_equal(loaded.normalizer.scale_, index.normalizer.scale_)
    for a, b in zip(index.search(X[:20], 10), loaded.search(X[:20], 10)):
        np.testing.assert_array_equal(a, b)
    assert index.search_track("t00042", 7)[1] == loaded.search_track("t00042", 7)[1]
    names = sorted(p.name for p in (tmp_path / "layer3").iterdir())
    assert names == ["index.faiss", "mean.npy", "meta.json", "scale.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer3"]  # no temp dirs left


def test_save_replaces_atomically(tmp_path, monkeypatch):
    X = clustered(100, 8)
    target = tmp_path / "idx"
    build_index(X, ids_for(100), fingerprint="v1").save(target)
    build_index(X[:50], ids_for(50), fingerprint="v2").save(target)
    assert LayerIndex.load(target).fingerprint == "v2" and len(LayerIndex.load(target)) == 50

    def crash(index: LayerIndex, directory: Path) -> None:
        (directory / "index.faiss").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(index_io, "write_index_dir", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(X, ids_for(100), fingerprint="v3").save(target)
    assert LayerIndex.load(target).fingerprint == "v2"  # the old index is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def _saved(tmp_path: Path) -> Path:
    build_index(clustered(60, 8), ids_for(60)).save(tmp_path / "idx")
    return tmp_path / "idx"


def _edit_meta(path: Path, **changes) -> None:
    record = json.loads((path / "meta.json").read_text())
    record.update(changes)
    (path / "meta.json").write_text(json.dumps(record))


CORRUPTIONS = {
    "missing directory": lambda p: __import__("shutil").rmtree(p),
    "missing meta": lambda p: (p / "meta.json").unlink(),
    "missing faiss": lambda p: (p / "index.faiss").unlink(),
    "missing mean": lambda p: (p / "mean.npy").unlink(),
    "truncated faiss": lambda p: os.truncate(p / "index.faiss", 100),
    "garbage faiss": lambda p: (p / "index.faiss").write_bytes(
        b"\0" * (p / "index.faiss").stat().st_size
    ),
    "bad json": lambda p: (p / "meta.json").write_text("{not json"),
    "future version": lambda p: _edit_meta(p, format_version=99),
    "ids vs vectors": lambda p: _edit_meta(
        p, n=59, track_ids=json.loads((p / "meta.json").read_text())["track_ids"][:59]
    ),
    "wrong dim": lambda p: _edit_meta(p, dim=9),
    "wrong kind": lambda p: _edit_meta(p, kind="hnsw"),
    "missing field": lambda p: _edit_meta(p, fingerprint=None),
    "pickled mean": lambda p: _rewrite_same_size(p / "mean.npy", np.array([object()] * 1)),
}


def _rewrite_same_size(path: Path, array: np.ndarray) -> None:
    size = path.stat().st_size
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=True)
    os.truncate(path, size) if path.stat().st_size > size else None
    with open(path, "ab") as fh:
        fh.write(b"\0" * (size - path.stat().st_size))


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_broken_index_raises_search_index_error(tmp_path, corruption):
    path = _saved(tmp_path)
    CORRUPTIONS[corruption](path)
    with pytest.raises(SearchIndexError) as info:
        LayerIndex.load(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------
# fusion


def test_fusion_equals_hand_computation():
    n = 150
    layer_a, layer_b = clustered(n, 12, seed=1), clustered(n, 20, seed=2)
    a = build_index(layer_a, ids_for(n), meta={"layer": 1})
    b = build_index(layer_b, ids_for(n), normalize="l2", meta={"layer": 7})
    result = fuse(
        [(1.0, a, "t00004"), (0.5, b, "t00004")], 8, exclude_ids=["t00009"], n_candidates=n
    )

    def cos(X, centre):
        X = X.astype(np.float64) - (X.astype(np.float64).mean(0) if centre else 0)
        Xn = unit(X)
        return Xn @ Xn[4]

    fused = (cos(layer_a, True) + 0.5 * cos(layer_b, False)) / 1.5
    fused[[4, 9]] = -np.inf
    expected = [f"t{i:05d}" for i in np.argsort(-fused, kind="stable")[:8]]
    assert result.track_ids == expected
    np.testing.assert_allclose(
        result.similarities, fused[np.argsort(-fused, kind="stable")[:8]], atol=1e-5
    )
    pos = [int(t[1:]) for t in result.track_ids]
    np.testing.assert_allclose(result.layer_similarities[:, 0], cos(layer_a, True)[pos], atol=1e-5)
    np.testing.assert_allclose(result.layer_similarities[:, 1], cos(layer_b, False)[pos], atol=1e-5)
    record = result.to_dict()
    assert record["weights"] == [1.0, 0.5] and record["results"][0]["rank"] == 1
    json.dumps(record)


def test_fusion_with_default_candidates_and_raw_queries():
    n = 400
    layer_a, layer_b = clustered(n, 12, seed=3), clustered(n, 12, seed=4)
    a, b = build_index(layer_a, ids_for(n)), build_index(layer_b, ids_for(n))
    by_id = fuse([(2.0, a, "t00010"), (1.0, b, "t00010")], 5)
    assert "t00010" not in by_id.track_ids and len(by_id.track_ids) == 5
    assert np.all(np.diff(by_id.similarities) <= 1e-7)
    by_vec = fuse([(2.0, a, layer_a[10]), (1.0, b, layer_b[10])], 6)
    assert by_vec.track_ids[0] == "t00010"  # a raw vector is not excluded: it finds itself
    assert by_vec.track_ids[1:] == by_id.track_ids
    single = fuse([(1.0, a, "t00010")], 5)
    assert single.track_ids == a.search_track("t00010", 5)[1]
    with pytest.raises(ConfigError):
        fuse([(0.0, a, "t00010")], 5)
    other = build_index(layer_b[:300], ids_for(300))
    with pytest.raises(SearchIndexError):
        fuse([(1.0, a, "t00010"), (1.0, other, "t00010")], 5, n_candidates=n)


# --------------------------------------------------------------------------------------------
# start-up cost


def test_import_is_light():
    code = (
        "import sys, messai.search.layer_index\n"
        "heavy = {'torch', 'sklearn', 'scipy', 'transformers', 'librosa'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

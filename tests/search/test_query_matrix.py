"""One query path for every space (issue 18): space type × index kind × option, against a
brute-force reference over the matching tracks (flat exactly; approximate kinds recall ≥ 0.95).

Space types: a whole layer, fused layers, a label space, a target space. Options: none,
``--where``, ``--max-per``, ``--exclude-same`` (and the query itself), removed tracks,
``--audio`` (raw vectors), a stdin batch, ``--explain``, examples with paging. The store is
``messai.bench.synthetic.planted_store`` (tiny; fitted once per module).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.analysis.aspect_fit import fit_aspect_space, load_spaces, save_space
from messai.analysis.aspect_space import similarity_from_distance
from messai.bench.synthetic import planted_store
from messai.errors import ConfigError
from messai.features.store import FeatureStore
from messai.search.cache import build_layer_index, build_source_index
from messai.search.recommend import LayerBasedRecommender
from messai.search.spaces import FittedSpaceSource

KINDS = ("flat", "hnsw", "ivfpq", "hnsw-sq8")
#: (space mode, aspects) per space type
TYPES = {
    "layer": ("layer", ["timbral_texture"]),  # layer 1 (no probe: the prototype's default)
    "fused": ("layer", ["spectral_brightness:2", "timbral_texture"]),  # layers 0 and 1
    "label": ("aspect", ["fa"]),
    "target": ("aspect", ["spectral_brightness"]),
    "fused_spaces": ("aspect", ["fa:2", "fb"]),
}
QUERIES = ["a1-b2-r0", "a3-b0-r2", "a0-b3-r5", "a2-b1-r7"]
K = 6


@pytest.fixture(scope="module")
def fitted_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("matrix")
    store = planted_store(home, replicates=40)  # 640 tracks: enough to train ivfpq
    save_space(store, fit_aspect_space(store, "fa", sources=["label:fa"], layers=[1]))
    save_space(store, fit_aspect_space(store, "fb", sources=["label:fb"], layers=[1]))
    save_space(store, fit_aspect_space(store, "spectral_brightness", layers=[1]))
    return home


_BUILT: set[tuple[str, str]] = set()


def _copy(fitted_home: Path, tmp_path: Path) -> Path:
    """A private copy of the fitted store (for cases that remove tracks)."""
    target = tmp_path / "home"
    shutil.copytree(fitted_home, target)
    return target


def _store(home: Path):
    return FeatureStore.open("planted", home=home)


def _build(home: Path, kind: str, space_type: str) -> None:
    """What 'mess index' does for the indices a query needs (flat ones build on the fly)."""
    if kind == "flat":
        return
    store = _store(home)
    for layer in range(store.n_layers):
        build_layer_index(home, store, layer, kind=kind)
    for space, _ in load_spaces(store).values():
        build_source_index(home, FittedSpaceSource(store, space), normalize="none", kind=kind)


def _rec(home: Path, kind: str, mode: str, **kw) -> LayerBasedRecommender:
    return LayerBasedRecommender(
        "planted", home=home, kind=kind, space=mode, on_notice=lambda m: None, **kw
    )


_DATA: dict[str, tuple] = {}


def _data(store):
    """(ids, {layer: [n, dim] float64}, labels, spaces) of the store, read once per state."""
    key = store.fingerprint()
    if key not in _DATA:
        ids = store.track_ids()
        layers = {la: store.layer(la, track_ids=ids)[1].astype(np.float64) for la in (0, 1)}
        labels = {t: store.labels(t) for t in ids}
        spaces = {n: s for n, (s, _) in load_spaces(store).items()}
        _DATA[key] = (ids, layers, labels, spaces)
    return _DATA[key]


def reference_similarities(store, aspects: list[str], mode: str, query) -> tuple[list, np.ndarray]:
    """(ids, fused similarity of every stored track) computed from the store directly.

    ``query`` is a track id or raw vectors ``[n_layers, dim]``."""
    from messai.search.recommend import parse_aspect_spec

    ids, layers, _, spaces = _data(store)
    total, weights = np.zeros(len(ids)), 0.0
    for spec in aspects:
        name, w = parse_aspect_spec(spec)
        if mode == "layer":
            layer = {"spectral_brightness": 0, "timbral_texture": 1}[name]
            X = layers[layer]
            mean = X.mean(0)
            Xn = (X - mean) / np.linalg.norm(X - mean, axis=1, keepdims=True)
            if isinstance(query, str):
                q = Xn[ids.index(query)]
            else:
                q = np.asarray(query[layer], dtype=np.float64) - mean
                q /= np.linalg.norm(q)
            sims = Xn @ q
        else:
            s = spaces[name]
            Z = s.transform(layers[s.layers[0]])
            z = (
                Z[ids.index(query)]
                if isinstance(query, str)
                else s.transform(query[s.layers[0]][None])[0]
            )
            sims = similarity_from_distance(((Z - z) ** 2).sum(1), s.dim)
        total += w * sims
        weights += w
    return ids, total / weights


def reference(store, aspects, mode, query, k, *, allowed=None, excluded=(), max_per=None):
    """Top-k ids by brute force over the matching tracks."""
    ids, sims = reference_similarities(store, aspects, mode, query)
    out, counts = [], {}
    for i in np.lexsort((np.arange(len(ids)), -sims)):
        t = ids[i]
        if t in excluded or (allowed is not None and t not in allowed):
            continue
        if max_per is not None:
            v = _data(store)[2][t][max_per[0]]
            if counts.get(v, 0) >= max_per[1]:
                continue
            counts[v] = counts.get(v, 0) + 1
        out.append(t)
    return out[:k], dict(zip(ids, sims))


def _check(kind: str, got: list[list[str]], want: list[list[str]]) -> None:
    if kind == "flat":
        assert got == want
    else:
        hits = sum(len(set(g) & set(w)) for g, w in zip(got, want))
        assert hits / sum(len(w) for w in want) >= 0.95, (got, want)


OPTIONS = ("plain", "where", "max_per", "exclude_same", "removed", "audio", "explain")


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("space_type", list(TYPES))
def test_matrix(fitted_home, tmp_path, space_type, kind, option):
    mode, aspects = TYPES[space_type]
    home = _copy(fitted_home, tmp_path) if option == "removed" else fitted_home
    store = _store(home)
    removed: set[str] = set()
    if option == "removed":
        from messai.search.updates import remove_tracks

        ids0, sims0 = reference_similarities(store, aspects, mode, QUERIES[0])
        order = [ids0[i] for i in np.argsort(-sims0, kind="stable") if ids0[i] not in QUERIES]
        removed = set(order[:5])  # the nearest ones: they would be returned
        _build(home, kind, space_type)
        _ = _rec(home, kind, mode).recommend_by_id(QUERIES[0], aspects, 1)  # flat: cached now
        cached = {
            name
            for name, space in _data(store)[3].items()
            if (
                FittedSpaceSource(store, space).folder(home, normalize="none", kind=kind)
                / "meta.json"
            ).is_file()
        }
        report = remove_tracks(home, store, sorted(removed))  # updates every cached index
        if mode == "aspect":  # every cached space index is brought up to date
            assert cached >= {a.split(":")[0] for a in aspects}
            assert {r.get("space") for r in report.indices} - {None} == cached
            if kind != "flat":
                assert {r["action"] for r in report.indices if r.get("space")} == {"updated"}
        store = _store(home)
    elif (str(home), kind) not in _BUILT:
        _build(home, kind, space_type)
        _BUILT.add((str(home), kind))
    rec = _rec(home, kind, mode)
    got, want = [], []
    for q in QUERIES:
        kw, allowed, excluded = {}, None, {q}
        labels = _data(store)[2]
        max_per = None
        if option == "where":
            kw["where"] = "fa IN ('a0', 'a1', 'a3') AND fb != 'b2'"
            allowed = {
                t
                for t, lab in labels.items()
                if lab["fa"] in ("a0", "a1", "a3") and lab["fb"] != "b2"
            }
        elif option == "max_per":
            kw["max_per"] = max_per = ("fb", 2)
        elif option == "exclude_same":
            kw["exclude_same"] = ["rep"]
            excluded |= {t for t, lab in labels.items() if lab["rep"] == labels[q]["rep"]}
        if option == "audio":
            raw = store.load(q)["aggregated"]  # what --audio extracts from the file itself
            res = rec.recommend_by_vector(raw, aspects, K, exclude_ids={q})
            ref, sims = reference(store, aspects, mode, raw, K, excluded=excluded)
        else:
            res = rec.recommend_by_id(q, aspects, K, explain=option == "explain", **kw)
            ref, sims = reference(
                store, aspects, mode, q, K, allowed=allowed, excluded=excluded, max_per=max_per
            )
        ids = [r.track_id for r in res.recommendations]
        assert not (set(ids) & removed) and q not in ids
        if allowed is not None:
            assert set(ids) <= allowed
        if kind == "flat":
            np.testing.assert_allclose(
                [r.similarity for r in res.recommendations], [sims[t] for t in ids], atol=2e-5
            )
        if option == "explain":
            spaces = _data(store)[3]
            for r in res.recommendations:
                ex = r.explanation["aspect_similarities"]
                for name in spaces:
                    expected = dict(zip(*reference_similarities(store, [name], "aspect", q)))
                    assert abs(ex[name] - expected[r.track_id]) < 2e-5
        got.append(ids)
        want.append(ref)
    _check(kind, got, want)


@pytest.mark.parametrize("space_type", list(TYPES))
def test_stdin_batch_equals_single_queries(fitted_home, space_type):
    home = fitted_home
    from messai.cli import app

    mode, aspects = TYPES[space_type]
    args = ["recommend", "-d", "planted", "-t", "-", "--space", mode, "-k", str(K), "-f", "json"]
    for a in aspects:
        args += ["-a", a]
    r = CliRunner().invoke(app, args, input="\n".join(QUERIES) + "\n", env={"MESS_HOME": str(home)})
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    store = _store(home)
    for q, line in zip(QUERIES, lines):
        ref, _ = reference(store, aspects, mode, q, K, excluded={q})
        assert [x["track_id"] for x in line["recommendations"]] == ref


@pytest.mark.parametrize("space_type", list(TYPES))
def test_examples_and_paging(fitted_home, space_type):
    home = fitted_home
    mode, aspects = TYPES[space_type]
    rec = _rec(home, "flat", mode)
    store = _store(home)
    one = rec.recommend_by_examples([QUERIES[0]], aspect=aspects, n_recommendations=K)
    assert [r.track_id for r in one.recommendations] == reference(
        store, aspects, mode, QUERIES[0], K, excluded={QUERIES[0]}
    )[0]
    pos, neg = QUERIES[:2], QUERIES[2:3]
    first = rec.recommend_by_examples(pos, neg, aspects, 4, where="fb != 'b3'")
    more = rec.recommend_by_examples(pos, neg, aspects, 4, where="fb != 'b3'", offset=4)
    both = rec.recommend_by_examples(pos, neg, aspects, 8, where="fb != 'b3'")
    assert [r.track_id for r in first.recommendations + more.recommendations] == [
        r.track_id for r in both.recommendations
    ]
    assert [r.rank for r in more.recommendations] == [5, 6, 7, 8]
    ids = {r.track_id for r in both.recommendations}
    assert not ids & set(pos + neg)
    assert all(store.labels(t)["fb"] != "b3" for t in ids)


def test_examples_query_is_mean_of_positives_minus_negatives(fitted_home):
    home = fitted_home
    """In a fitted space the examples' query is mean(positives) − mean(negatives)."""
    rec = _rec(home, "flat", "aspect")
    store = _store(home)
    ((space, _),) = [v for n, v in load_spaces(store).items() if n == "fa"]
    ids, X = store.layer(1)
    Z = space.transform(X)
    pos, neg = QUERIES[:2], QUERIES[2:]
    z = Z[[ids.index(t) for t in pos]].mean(0) - Z[[ids.index(t) for t in neg]].mean(0)
    sims = similarity_from_distance(((Z - z) ** 2).sum(1), space.dim)
    order = [ids[i] for i in np.lexsort((np.arange(len(ids)), -sims)) if ids[i] not in QUERIES]
    res = rec.recommend_by_examples(pos, neg, "fa", 5)
    assert [r.track_id for r in res.recommendations] == order[:5]
    with pytest.raises(ConfigError, match="both a positive and a negative"):
        rec.recommend_by_examples(pos, pos[:1], "fa", 5)


def test_lancedb_layer_and_spaces(fitted_home, tmp_path):
    home = _copy(fitted_home, tmp_path)
    """The LanceDB backend serves whole layers with the same options; a fitted space is a
    one-line error naming what to do."""
    pytest.importorskip("lancedb")
    from messai.search.lancedb_backend import build_lancedb_index

    store = _store(home)
    build_lancedb_index(store, 1, kind="flat", normalize="center")
    rec = _rec(home, "flat", "layer", backend="lancedb")
    q = QUERIES[0]
    res = rec.recommend_by_id(q, "timbral_texture", K, where="fa != 'a1'", max_per=("fb", 2))
    allowed = {t for t in store.track_ids() if store.labels(t)["fa"] != "a1"}
    ref, _ = reference(
        store, ["timbral_texture"], "layer", q, K, allowed=allowed, excluded={q}, max_per=("fb", 2)
    )
    assert [r.track_id for r in res.recommendations] == ref
    with pytest.raises(ConfigError, match="lancedb backend searches whole layers only"):
        _rec(home, "flat", "aspect", backend="lancedb").recommend_by_id(q, "fa", K)

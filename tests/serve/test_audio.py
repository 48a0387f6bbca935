"""Audio for listening: byte ranges, and only files inside the store's source root."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from messai.serve.audio import RangeNotSatisfiable, parse_range, source_path
from tests.serve.conftest import make_client


def test_ranges(client, home):
    path = home / "lib" / "a" / "t1.wav"
    data = path.read_bytes()
    size = len(data)
    r = client.get("/v1/tracks/a%2Ft1/audio")
    assert r.status_code == 200 and r.content == data
    assert r.headers["accept-ranges"] == "bytes" and r.headers["content-type"] == "audio/wav"
    r = client.get("/v1/tracks/a/t1/audio", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{size}"
    assert r.headers["content-length"] == "10"
    r = client.get("/v1/tracks/a/t1/audio", headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = client.get("/v1/tracks/a/t1/audio", headers={"Range": "bytes=0-"})
    assert r.status_code == 206 and r.content == data
    r = client.get("/v1/tracks/a/t1/audio", headers={"Range": f"bytes={size - 3}-{size + 100}"})
    assert r.status_code == 206 and r.content == data[-3:]
    r = client.get("/v1/tracks/a/t1/audio", headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    assert "range not satisfiable" in r.json()["error"]
    r = client.get("/v1/tracks/a/t1/audio", headers={"Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and r.content == data  # several ranges: the whole file
    r = client.head("/v1/tracks/a/t1/audio", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["content-length"] == "100" and not r.content


def test_parse_range_unit():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("bytes=8-100", 10) == (8, 9)
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("bytes=a-b", 10) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=10-", 10)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-0", 10)


@pytest.mark.parametrize(
    "url",
    [
        "/v1/tracks/..%2F..%2F..%2Fetc%2Fpasswd/audio",
        "/v1/tracks/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/audio",
        "/v1/tracks/%252e%252e%252fetc%252fpasswd/audio",
        "/v1/tracks/%2Fetc%2Fpasswd/audio",
        "/v1/tracks/a%2F..%2F..%2Flib%2Fa%2Ft1.wav/audio",
        "/v1/tracks/a%2Ft1.wav/audio",
        "/v1/tracks/a%5Ct1/audio",
        "/v1/tracks/a%00t1/audio",
    ],
)
def test_traversal_ids_are_404(client, url):
    r = client.get(url)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"


def test_raw_dot_segments_are_404(client):
    # sent as they are (no client-side normalisation of the path)
    import httpx

    req = client.build_request("GET", "http://testserver/v1/tracks/x/audio")
    req.url = httpx.URL("http://testserver/v1/tracks/../../../../etc/passwd/audio")
    r = client.send(req)
    assert r.status_code == 404


def tampered_store(home: Path, root: Path, outside: Path):
    """A store whose source paths try every way out of ``root``."""
    from messai.bench.synthetic import synthetic_entry, synthetic_identity, synthetic_settings
    from messai.features.records import track_arrays
    from messai.features.store import FeatureStore
    from tests.conftest import write_audio

    root.mkdir(parents=True)
    write_audio(root / "ok.wav", 1.0)
    (root / "inner.wav").symlink_to(root / "ok.wav")  # a link inside the root: fine
    (root / "link.wav").symlink_to(outside)  # a link leading out: never
    (root / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    (root / "x.aiff").write_bytes(b"FORM0000AIFF")
    store = FeatureStore.create(
        home / "stores" / "tamper" / "synthetic--model",
        dataset="tamper",
        model=synthetic_identity("model", n_layers=1, dim=4),
        settings=synthetic_settings("float32"),
    )
    sources = {
        "ok": "ok.wav",
        "inner": "inner.wav",
        "link": "link.wav",
        "dirlink": f"dirlink/{outside.name}",
        "dotdot": f"../{outside.name}",
        "absolute": str(outside),
        "aiff": "x.aiff",
        "gone": "gone.wav",
    }
    rng = np.random.default_rng(0)
    with store.writer():
        for tid, src in sources.items():
            e = synthetic_entry(tid, 1)
            e = e.with_changes(source=src, content_hash=hashlib.md5(tid.encode()).hexdigest())
            arrays = track_arrays(
                rng.normal(size=(1, 1, 4)).astype(np.float32),
                np.zeros(1),
                np.full(1, 24000),
                {},
                store_dtype="float32",
            )
            store.put(e, arrays)
        store.set_source(root, "folder")
    return store


def test_only_files_inside_the_source_root(tmp_path, isolated_env):
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"RIFF secret")
    tampered_store(isolated_env, tmp_path / "music", outside)
    with make_client(isolated_env) as c:
        ok = c.get("/v1/tracks/ok/audio", params={"dataset": "tamper"})
        assert ok.status_code == 200 and ok.content[:4] == b"RIFF"
        assert c.get("/v1/tracks/inner/audio", params={"dataset": "tamper"}).status_code == 200
        for tid in ("link", "dirlink", "dotdot", "absolute", "gone", "unknown"):
            r = c.get(f"/v1/tracks/{tid}/audio", params={"dataset": "tamper"})
            assert r.status_code == 404, tid
            assert b"secret" not in r.content
        r = c.get("/v1/tracks/aiff/audio", params={"dataset": "tamper"})
        assert r.status_code == 415 and "not playable in a browser" in r.json()["error"]
        info = c.get("/v1/tracks/aiff", params={"dataset": "tamper"}).json()
        assert info["audio"] == {
            "available": True,
            "playable": False,
            "format": "aiff",
            "url": None,
        }
        info = c.get("/v1/tracks/link", params={"dataset": "tamper"}).json()
        assert info["status"] == "missing" and info["audio"]["available"] is False


def test_source_path_unit(tmp_path):
    root = tmp_path / "r"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.wav").write_bytes(b"x")
    assert source_path(root, "d/f.wav") == (root / "d" / "f.wav").resolve()
    for bad in ("", "../r/d/f.wav", "d/../d/f.wav", "/etc/passwd", "d\\f.wav", "d", "d/f.wav\x00"):
        assert source_path(root, bad) is None, bad
    assert source_path(None, "d/f.wav") is None
    os.symlink(root / "d", tmp_path / "alias")
    assert source_path(tmp_path / "alias", "f.wav") == (root / "d" / "f.wav").resolve()

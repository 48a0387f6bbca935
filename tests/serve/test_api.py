"""The HTTP API against a small real store, in process (FastAPI's TestClient): answers equal to
the CLI's, paging, track search, errors as one-line JSON, limits, token, CORS, logging."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from messai.cli import app
from tests.serve.conftest import make_client

runner = CliRunner()


def cli_json(*args: str) -> dict:
    r = runner.invoke(app, ["recommend", "-d", "lib", *args, "-f", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


SAME = ("query", "aspect", "layer", "normalize", "validated", "caveat", "recommendations")


@pytest.mark.parametrize(
    ("params", "cli"),
    [
        ({"k": 4}, ["-k", "4"]),
        ({"k": 3, "aspect": "timbral_texture"}, ["-k", "3", "-a", "timbral_texture"]),
        (
            {"k": 5, "aspect": ["spectral_brightness:2", "timbral_texture"]},
            ["-k", "5", "-a", "spectral_brightness:2", "-a", "timbral_texture"],
        ),
        ({"k": 3, "layer": 2}, ["-k", "3", "--layer", "2"]),
        ({"k": 3, "explain": "true"}, ["-k", "3", "--explain"]),
        ({"k": 2, "space": "layer"}, ["-k", "2", "--space", "layer"]),
    ],
)
def test_similar_is_the_cli_answer(client, params, cli):
    r = client.get("/v1/tracks/a%2Ft1/similar", params=params)
    assert r.status_code == 200, r.text
    api = r.json()
    want = cli_json("--track", "a/t1", *cli)
    assert {k: api[k] for k in SAME} == {k: want[k] for k in SAME}
    assert api["recommendations"] and "validated" in api and "caveat" in api
    assert api["validated"] is (api["caveat"] is None)


def test_similar_pages_are_the_deeper_cli_answer(client):
    first = client.get("/v1/tracks/b/t0/similar", params={"k": 3}).json()
    assert first["next_cursor"]
    second = client.get(
        "/v1/tracks/b/t0/similar", params={"k": 3, "cursor": first["next_cursor"]}
    ).json()
    want = cli_json("--track", "b/t0", "-k", "6")["recommendations"]
    got = first["recommendations"] + second["recommendations"]
    assert [(r["rank"], r["track_id"], r["similarity"]) for r in got] == [
        (r["rank"], r["track_id"], r["similarity"]) for r in want
    ]
    last = client.get("/v1/tracks/b/t0/similar", params={"k": 9}).json()
    assert len(last["recommendations"]) == 9 and last["next_cursor"] is None  # 10 tracks - query


def test_recommend_with_one_positive_is_similar(client):
    a = client.get("/v1/tracks/a/t3/similar", params={"k": 4}).json()
    b = client.post("/v1/recommend", json={"positive": ["a/t3"], "k": 4}).json()
    assert b["recommendations"] == a["recommendations"]
    assert b["validated"] == a["validated"] and b["caveat"] == a["caveat"]


def test_recommend_excludes_examples_and_moves_away_from_negatives(client):
    base = client.post("/v1/recommend", json={"positive": ["a/t3"], "k": 9, "space": "layer"})
    ids = [r["track_id"] for r in base.json()["recommendations"]]
    neg = ids[0]
    r = client.post(
        "/v1/recommend",
        json={"positive": ["a/t3", ids[1]], "negative": [neg], "k": 7, "space": "layer"},
    )
    assert r.status_code == 200, r.text
    d = r.json()
    got = [x["track_id"] for x in d["recommendations"]]
    assert not {"a/t3", ids[1], neg} & set(got)
    assert d["query"]["positive"] == ["a/t3", ids[1]] and d["query"]["negative"] == [neg]
    assert "validated" in d and "caveat" in d


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"positive": []}, "positive"),
        ({"positive": ["a/t1"], "negative": ["a/t1"]}, "both"),
        ({"positive": ["nope"]}, "unknown track"),
        ({"positive": ["a/t1"], "k": 0}, "k must be"),
        ({"positive": ["a/t1"], "k": 101}, "k must be"),
        ({"positive": ["a/t1"], "bogus": 1}, "unknown field"),
        ({"positive": "a/t1", "k": "3"}, "k must be int"),
        ([1, 2], "JSON object"),
    ],
)
def test_recommend_bad_bodies_are_one_line(client, body, needle):
    r = client.post("/v1/recommend", json=body)
    assert r.status_code in (400, 404), r.text
    msg = r.json()["error"]
    assert needle in msg and "\n" not in msg


def test_tracks_search_and_paging(client):
    all_ids = []
    cursor = None
    while True:
        d = client.get(
            "/v1/tracks", params={"limit": 3, **({"cursor": cursor} if cursor else {})}
        ).json()
        all_ids += [t["track_id"] for t in d["tracks"]]
        cursor = d["next_cursor"]
        if not cursor:
            break
    assert all_ids == sorted(all_ids) and len(all_ids) == 10
    d = client.get("/v1/tracks", params={"q": "A/T"}).json()
    assert [t["track_id"] for t in d["tracks"]] == [t for t in all_ids if t.startswith("a/")]
    assert client.get("/v1/tracks", params={"cursor": "!!"}).status_code == 400
    assert client.get("/v1/tracks", params={"limit": 1000}).status_code == 400


def test_one_track(client, home):
    d = client.get("/v1/tracks/b%2Ft4").json()
    assert d["track_id"] == "b/t4" and d["status"] == "ok" and d["n_segments"] >= 1
    assert d["duration_seconds"] == pytest.approx(6.5, abs=0.01)
    assert d["audio"]["playable"] and d["audio"]["url"].startswith("/v1/tracks/b%2Ft4/audio")
    r = client.get("/v1/tracks/b%2Ft44")
    assert r.status_code == 404 and "unknown track 'b/t44'" in r.json()["error"]


def test_health_datasets_openapi_and_no_cdn_docs(client):
    assert client.get("/v1/health").json()["status"] == "ok"
    d = client.get("/v1/datasets").json()["datasets"]
    assert [x["dataset"] for x in d] == ["lib"] and d[0]["n_tracks"] == 10
    spec = client.get("/openapi.json").json()
    assert "/v1/tracks/{track_id}/similar" in spec["paths"] and "/v1/recommend" in spec["paths"]
    assert client.get("/docs").status_code == 404  # FastAPI's docs load a CDN: off
    assert client.get("/redoc").status_code == 404


def test_unknown_dataset_is_404(client):
    r = client.get("/v1/tracks", params={"dataset": "other"})
    assert r.status_code == 404 and "not served" in r.json()["error"]
    r = client.get("/v1/tracks", params={"dataset": "../x"})
    assert r.status_code == 400


def test_aspects_and_probe_carry_validation(client):
    a = client.get("/v1/aspects").json()
    assert a["aspects"] and all("validated" in x for x in a["aspects"])
    p = client.get("/v1/probe").json()
    assert p["validation"] and all(
        set(v) == {"best_layer", "validated", "caveat"} for v in p["validation"].values()
    )
    assert all(v["validated"] is (v["caveat"] is None) for v in p["validation"].values())
    png = client.get("/v1/probe/heatmap.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    svg = client.get("/v1/probe/heatmap.svg")
    assert svg.status_code == 200 and b"<svg" in svg.content[:2000]
    assert client.get("/v1/probe/heatmap.gif").status_code == 400


def test_a_bad_where_is_400_with_the_parsers_line(client):
    r = client.get("/v1/tracks/a/t1/similar", params={"where": "composer = ", "space": "layer"})
    assert r.status_code == 400
    msg = r.json()["error"]
    assert msg.startswith("--where:") and "\n" not in msg


@pytest.mark.parametrize(
    "params", [{"k": 0}, {"k": 101}, {"k": "x"}, {"layer": -1}, {"cursor": "eyJvIjotMX0"}]
)
def test_bounded_parameters(client, params):
    r = client.get("/v1/tracks/a/t1/similar", params=params)
    assert r.status_code == 400 and "\n" not in r.json()["error"]


def test_a_deep_cursor_is_refused(client):
    from messai.serve.queries import encode_cursor

    r = client.get("/v1/tracks/a/t1/similar", params={"cursor": encode_cursor(995), "k": 10})
    assert r.status_code == 400 and "at most result 1000" in r.json()["error"]


def test_bodies_are_bounded(client):
    big = {"positive": ["a/t1"] * 20000}
    r = client.post(
        "/v1/recommend", content=json.dumps(big), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "body over" in r.json()["error"]


def test_no_stack_trace_reaches_a_client(client, monkeypatch, caplog):
    from messai.serve import queries

    def boom(*a, **kw):
        raise RuntimeError("secret /internal/path")

    monkeypatch.setattr(queries, "similar", boom)
    with caplog.at_level(logging.INFO, logger="messai.serve"):
        r = client.get("/v1/tracks/a/t1/similar")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (the server log has the details)", "status": 500}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret /internal/path" in caplog.text  # the operator sees it


def test_every_request_is_one_log_line(client, caplog):
    with caplog.at_level(logging.INFO, logger="messai.serve"):
        client.get("/v1/health")
        client.get("/v1/tracks/zzz")
    lines = [r.getMessage() for r in caplog.records if r.name == "messai.serve"]
    assert len(lines) == 2
    import re

    assert re.fullmatch(r"GET /v1/health 200 \d+\.\dms", lines[0]), lines
    assert re.fullmatch(r"GET /v1/tracks/zzz 404 \d+\.\dms", lines[1]), lines


# ---------------------------------------------------------------------------- token, CORS
def test_token_guards_v1_but_not_health(home, monkeypatch):
    import messai.serve.app as serve_app

    calls = []
    real = serve_app.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(serve_app.hmac, "compare_digest", spy)
    with make_client(home, token="s3cret") as c:
        assert c.get("/v1/health").status_code == 200
        r = c.get("/v1/tracks")
        assert r.status_code == 401 and r.json()["error"].startswith(
            "missing or wrong bearer token"
        )
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/tracks", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/tracks", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/tracks", headers={"Authorization": "bearer s3cret"}).status_code == 200
        c.cookies.set("mess_token", "s3cret")
        assert c.get("/v1/tracks/a/t1/audio").status_code == 200  # <audio> sends the cookie
        c.cookies.clear()
        assert c.get("/v1/tracks/a/t1/audio").status_code == 401
        assert c.post("/v1/recommend", json={"positive": ["a/t1"]}).status_code == 401
        assert c.get("/").status_code == 200  # the page itself asks for the token
    assert (b"s3cret", b"s3cret") in calls  # compared in constant time


def test_cors_is_off_unless_asked(home):
    origin = {"Origin": "http://elsewhere.example"}
    with make_client(home) as c:
        r = c.get("/v1/tracks", headers=origin)
        assert "access-control-allow-origin" not in r.headers
    with make_client(home, cors=("http://elsewhere.example",)) as c:
        r = c.get("/v1/tracks", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://elsewhere.example"
        r = c.get("/v1/tracks", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "<title>mess" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "http" not in r.text.replace("http-equiv", "")  # nothing from another host
    for f in ("app.js", "style.css"):
        s = client.get(f"/static/{f}")
        assert s.status_code == 200 and "http://" not in s.text and "https://" not in s.text

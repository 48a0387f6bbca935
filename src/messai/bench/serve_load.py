"""Load on ``mess serve`` over loopback: many concurrent clients, a mix of requests, for a bounded
time (``mess benchmark serve``).

A synthetic store (``messai.bench.synthetic.benchmark_store``: one window per track, float16)
gets a source root where every track's file is a hard link to one short WAV, and its flat index
is built before the clock starts. The server is a real ``mess serve`` process on 127.0.0.1
(uvicorn, one worker, one log line per request written to a file); the clients are keep-alive
HTTP/1.1 connections of one asyncio loop in this process (a minimal client: a heavier one would
take the cores the server is measured on). Each client loops, until the deadline, over a random
mix of

- ``similar``: ``GET /v1/tracks/{id}/similar?k=10`` of a random track,
- ``tracks``: ``GET /v1/tracks?q=..&limit=20`` (a substring search over every id),
- ``audio``: ``GET /v1/tracks/{id}/audio`` with a random 64 KiB ``Range`` (answered 206).

Reported: requests/s, p50/p99 per kind and overall, errors (anything but 200/206, or a broken
connection), and the server's resident memory sampled every half second (after a warm-up with
every client, at the end, its maximum and the growth over the second half of the run). Nothing
but loopback is contacted. Client and server share the machine's cores: the figures are for both together.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_serve"]

MIX = (("similar", 0.6), ("tracks", 0.2), ("audio", 0.2))
GOALS = {"similar_p99_ms": 50.0, "requests_per_second": 300.0}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def prepare_store(home: Path, *, n_tracks: int, n_layers: int, dim: int, seconds: float = 2.0):
    """The synthetic store with a playable source per track, and its layer-0 flat index."""
    import soundfile as sf

    from messai.bench.synthetic import benchmark_store
    from messai.search.cache import build_layer_index

    store = benchmark_store(home, "serve", n_tracks=n_tracks, n_layers=n_layers, dim=dim)
    root = home / "audio"
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 24000)) / 24000
    master = root / ".master.wav"
    sf.write(str(master), (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24000)
    for tid in store.track_ids():
        os.link(master, root / f"{tid}.wav")  # synthetic sources are '<id>.wav'
    with store.writer():
        store.set_source(root, "folder")
    build_layer_index(home, store, 0)
    return store, master.stat().st_size


class _Client:
    """One keep-alive HTTP/1.1 connection (Content-Length bodies only, as the server sends)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, extra: str = "") -> tuple[int, int]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}\r\n".encode()
        )
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("closed")
        status = int(line.split()[1])
        length, close = 0, False
        while True:
            h = await self.reader.readline()
            if h in (b"\r\n", b""):
                break
            name, _, value = h.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, len(body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def _run_clients(
    host: str,
    port: int,
    ids: list[str],
    audio_size: int,
    *,
    clients: int,
    seconds: float,
    seed: int,
) -> list[tuple[str, int, float]]:
    """(kind, status or -1, milliseconds) of every request of every client."""
    out: list[tuple[str, int, float]] = []
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    deadline = time.perf_counter() + seconds

    async def one(i: int) -> None:
        rng = random.Random(seed + i)
        c = _Client(host, port)
        while time.perf_counter() < deadline:
            kind = rng.choices(kinds, weights)[0]
            tid = ids[rng.randrange(len(ids))]
            extra = ""
            if kind == "similar":
                path = f"/v1/tracks/{tid}/similar?k=10&space=layer"
            elif kind == "tracks":
                path = f"/v1/tracks?q={tid[-3:]}&limit=20"
            else:
                start = rng.randrange(0, max(1, audio_size - 65536))
                path = f"/v1/tracks/{tid}/audio"
                extra = f"Range: bytes={start}-{start + 65535}\r\n"
            t0 = time.perf_counter()
            try:
                status, _ = await c.request(path, extra)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                status = -1
                await c.close()
            out.append((kind, status, (time.perf_counter() - t0) * 1000))
        await c.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return out


def _summary(rows: list[tuple[str, int, float]], seconds: float) -> dict[str, Any]:
    def stats(sel):
        ms = np.asarray([r[2] for r in sel], dtype=np.float64)
        bad = sum(1 for r in sel if r[1] not in (200, 206))
        if not len(ms):
            return {"requests": 0, "errors": 0}
        return {
            "requests": len(sel),
            "errors": bad,
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2),
        }

    by_kind = {k: stats([r for r in rows if r[0] == k]) for k, _ in MIX}
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
    return {
        "requests": len(rows),
        "requests_per_second": round(len(rows) / seconds, 1),
        "errors": sum(1 for r in rows if r[1] not in (200, 206)),
        "statuses": statuses,
        "overall": stats(rows),
        "by_kind": by_kind,
    }


def bench_serve(
    *,
    n_tracks: int = 10_000,
    n_layers: int = 3,
    dim: int = 768,
    clients: int = 32,
    seconds: float = 20.0,
    seed: int = 0,
    warmup_seconds: float = 2.0,
) -> dict[str, Any]:
    """Run the load and return the report (see the module docstring)."""
    from messai.errors import MessError
    from messai.serve import check_extra

    check_extra()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mess-serve-bench-") as tmp:
        home = Path(tmp)
        (home / "config.toml").write_text("")
        t0 = time.perf_counter()
        store, audio_size = prepare_store(home, n_tracks=n_tracks, n_layers=n_layers, dim=dim)
        build_s = time.perf_counter() - t0
        ids = store.track_ids()
        port = _free_port()
        env = {
            **os.environ,
            "MESS_HOME": str(home),
            "MESS_CONFIG": str(home / "config.toml"),
            "MESS_TOKEN": "",
        }
        log_path = home / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "messai", "serve", "-d", "serve", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            _wait_up("127.0.0.1", port, proc, timeout=60)
            # warm-up with every client: index and catalogue loaded, code paths hot, and the
            # worker threads (with their allocator arenas) started, so RSS is then steady
            asyncio.run(
                _run_clients(
                    "127.0.0.1",
                    port,
                    ids,
                    audio_size,
                    clients=clients,
                    seconds=warmup_seconds,
                    seed=seed + 999,
                )
            )
            rss: list[tuple[float, float]] = []
            stop = {"now": False}

            async def sample():
                start = time.perf_counter()
                while not stop["now"]:
                    v = _rss_mb(proc.pid)
                    if v is not None:
                        rss.append((time.perf_counter() - start, v))
                    await asyncio.sleep(0.5)

            async def main():
                sampler = asyncio.create_task(sample())
                rows = await _run_clients(
                    "127.0.0.1", port, ids, audio_size, clients=clients, seconds=seconds, seed=seed
                )
                stop["now"] = True
                await sampler
                return rows

            t1 = time.perf_counter()
            rows = asyncio.run(main())
            elapsed = time.perf_counter() - t1
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_lines = log_path.read_text(errors="replace").splitlines()
        if proc.returncode not in (0, -15) and not rows:
            raise MessError(f"the server failed: {log_lines[-1] if log_lines else 'no output'}")
    report = _summary(rows, elapsed)
    values = [v for _, v in rss]
    half = [v for t, v in rss if t >= elapsed / 2]
    report["server_rss_mb"] = {
        "start": round(values[0], 1) if values else None,
        "end": round(values[-1], 1) if values else None,
        "max": round(max(values), 1) if values else None,
        "growth_second_half": round(half[-1] - half[0], 1) if len(half) > 1 else None,
        "every_2s": [round(v, 1) for t, v in rss if abs(t / 2 - round(t / 2)) < 0.13],
    }
    similar = report["by_kind"]["similar"]
    report["goals"] = {
        "zero_errors": report["errors"] == 0,
        "similar_p99_ms_le_50": similar.get("p99_ms", float("inf")) <= GOALS["similar_p99_ms"],
        "requests_per_second_ge_300": report["requests_per_second"] >= GOALS["requests_per_second"],
        "rss_flat": report["server_rss_mb"]["growth_second_half"] is not None
        and report["server_rss_mb"]["growth_second_half"] <= 5.0,
    }
    report["setup"] = {
        "tracks": n_tracks,
        "layers": n_layers,
        "dim": dim,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "mix": dict(MIX),
        "similar": "k=10, layer 0 (space=layer), flat index, centre-normalised",
        "audio": f"64 KiB ranges of a {audio_size}-byte WAV",
        "store_build_seconds": round(build_s, 1),
        "server_log_lines": len(log_lines),
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    return report


def _wait_up(host: str, port: int, proc: subprocess.Popen, *, timeout: float) -> None:
    from messai.errors import MessError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MessError(f"the server exited with status {proc.returncode} before answering")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(
                    f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise MessError(f"the server did not answer on {host}:{port} within {timeout:.0f} s")

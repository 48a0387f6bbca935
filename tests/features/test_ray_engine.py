"""``--engine ray`` on a real local Ray cluster (one per session: starting it takes ~10 s), with
the audio served from a local S3 server: same store as the local engine, bad files reported,
resumable after a killed worker or a killed driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_audio

pytestmark = pytest.mark.ray

BUCKET = "mess-audio"
N_GOOD = 18


# read when ray is first imported: workers run this interpreter, not `uv run` in a copy of the
# repository; a loopback test cluster needs no token (none is written to ~/.ray/auth_token)
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _have_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


if not _have_ray():
    pytest.skip("Ray Data is not installed (uv sync --extra ray)", allow_module_level=True)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields the AWS_* variables that reach it."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ALLOW_HTTP": "true",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    srv.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """``ray.init(num_cpus=2)`` once per session; temp and session dirs under TMPDIR, no token
    file in ~/.ray, workers see the S3 server's variables."""
    env, _ = s3_server
    import ray

    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit 107 bytes
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    yield ray.get_runtime_context().gcs_address, temp
    ray.shutdown()


@pytest.fixture(scope="session")
def audio(tmp_path_factory, s3_server):
    """18 good files (rates, channels, lengths with and without tails) and 2 bad ones, on
    disk and uploaded under s3://mess-audio/set/."""
    _, client = s3_server
    root = tmp_path_factory.mktemp("audio") / "set"
    for i in range(N_GOOD):
        write_audio(
            root / f"g{i % 3}" / f"t{i:02d}.wav",
            seconds=1.5 + 0.7 * (i % 5),
            sample_rate=(24000, 44100, 16000)[i % 3],
            channels=1 + i % 2,
            freq=200.0 + 35 * i,
            seed=i,
        )
    (root / "bad").mkdir()
    (root / "bad" / "empty.wav").write_bytes(b"")
    (root / "bad" / "text.wav").write_bytes(b"this is not audio at all" * 20)
    for path in sorted(root.rglob("*.wav")):
        client.upload_file(str(path), BUCKET, f"set/{path.relative_to(root).as_posix()}")
    return root


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    env, _ = s3_server
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _settings(ckpt):
    from messai.config import load_settings

    # one window per forward: batch composition changes float rounding (bit-identity needs it)
    return load_settings(model=str(ckpt), device="cpu", batch_size=1)


@pytest.fixture(scope="session")
def local_store(tmp_path_factory, audio, tiny_ckpt):
    """The local engine's store of the same files (the reference)."""
    import torch

    from messai.features.pipeline import extract_dataset
    from messai.features.store import FeatureStore

    # Ray gives each task and actor as many BLAS threads as CPUs it holds (1 here); summation
    # order, and so the last bit, follows the thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = extract_dataset(audio, dataset="ref", settings=_settings(tiny_ckpt))
    finally:
        torch.set_num_threads(threads)
    assert report.n_extracted == N_GOOD and len(report.failures) == 2
    return FeatureStore.at(report.store_path)


def _ray_extract(source, ckpt, dataset, **kw):
    from messai.features.engines.ray_engine import RayOptions, extract_with_ray

    return extract_with_ray(
        source, dataset=dataset, settings=_settings(ckpt), options=RayOptions(batch_size=1), **kw
    )


def assert_same_store(store, ref) -> None:
    assert sorted(store.track_ids()) == sorted(ref.track_ids())
    for tid in ref.track_ids():
        a, b = store.read_arrays(tid), ref.read_arrays(tid)
        assert sorted(a) == sorted(b)
        for name in b:
            assert a[name].dtype == b[name].dtype, (tid, name)
            # windows and proxy targets: bit-identical (the targets once differed in their last
            # bit after other tests: threadpoolctl had left the local decode thread unable to
            # limit BLAS, see messai.numeric.single_threaded_blas)
            assert np.array_equal(a[name], b[name]), (tid, name)
        ea, eb = store.entry(tid), ref.entry(tid)
        for f in ("source", "size", "content_hash", "duration_seconds", "n_segments", "targets"):
            assert getattr(ea, f) == getattr(eb, f), (tid, f)
    assert sorted(f.source for f in store.failures().values()) == sorted(
        f.source for f in ref.failures().values()
    )


def test_ray_from_s3_matches_local_engine(ray_cluster, s3_env, local_store, tiny_ckpt):
    from messai.features.store import FeatureStore

    report = _ray_extract(f"s3://{BUCKET}/set", tiny_ckpt, "viaray")
    assert report.n_extracted == N_GOOD
    failures = sorted(str(f) for f in report.failures)
    assert failures == [
        f"s3://{BUCKET}/set/bad/empty.wav: empty file",
        f"s3://{BUCKET}/set/bad/text.wav: not a readable audio file (Format not recognised.)",
    ] or all(f.startswith(f"s3://{BUCKET}/set/bad/") for f in failures)
    assert len(report.failures) == 2
    store = FeatureStore.at(report.store_path)
    assert_same_store(store, local_store)
    assert store.source_kind == "folder"

    again = _ray_extract(f"s3://{BUCKET}/set", tiny_ckpt, "viaray")
    assert again.n_extracted == 0 and again.n_skipped == N_GOOD  # no model work
    assert len(again.failures) + len(again.failed_earlier) == 2  # reported once


def test_ray_local_folder_with_a_killed_worker(ray_cluster, audio, local_store, tiny_ckpt):
    """SIGKILL a model actor after the first track arrives: Ray restarts it and retries."""
    import psutil

    from messai.features.listener import ExtractionListener
    from messai.features.store import FeatureStore

    killed = []

    class KillOnce(ExtractionListener):
        def on_track(self, result):
            if killed:
                return
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "MertWorker" in cmd and p.pid != os.getpid():
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                    return

    report = _ray_extract(audio, tiny_ckpt, "killworker", listener=KillOnce())
    assert killed, "no model worker process found to kill"
    assert len(report.failures) == 2
    assert report.n_extracted == N_GOOD  # the actor was restarted and its batch retried
    store = FeatureStore.at(report.store_path)
    assert_same_store(store, local_store)


def test_ray_killed_driver_then_rerun(ray_cluster, audio, local_store, tiny_ckpt):
    """SIGKILL the driver (a `mess extract --engine ray` process) once a batch is committed;
    the re-run completes the store."""
    from messai.features.pipeline import store_uri_for
    from messai.features.store import FeatureStore
    from messai.models.mert import resolve_checkpoint

    address, _ = ray_cluster
    uri = store_uri_for(
        _settings(tiny_ckpt), "killdriver", resolve_checkpoint(tiny_ckpt).identity()
    )
    env = dict(  # commit every 2 tracks, so there is something committed to kill after
        os.environ,
        RAY_ADDRESS=address,
        PYTHONPATH=str(Path(__file__).parents[2]),
        MESS_COMMIT_TRACKS="2",
    )
    script = "from messai.cli import main; main()"
    cmd = [sys.executable, "-c", script, "extract", str(audio), "--dataset", "killdriver"]
    cmd += ["--engine", "ray", "--model", str(tiny_ckpt), "--device", "cpu", "--batch-size", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    committed = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if FeatureStore.exists_at(uri):
                committed = len(FeatureStore.at(uri))
                if committed >= 2:
                    break
    finally:
        proc.kill()
        out = proc.communicate()[0].decode(errors="replace")
    assert 2 <= committed < N_GOOD, out[-2000:]
    report = _ray_extract(audio, tiny_ckpt, "killdriver")
    assert len(report.failures) + len(report.failed_earlier) == 2  # reported once
    assert report.n_skipped >= 2 and report.n_extracted == N_GOOD - report.n_skipped
    assert_same_store(FeatureStore.at(report.store_path), local_store)

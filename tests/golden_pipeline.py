"""The golden pipeline: the JSON that the demo gives through every stage, with a tiny random
checkpoint. ``python -m tests.golden_pipeline record`` rewrites the goldens (do that only for a
deliberate change of behaviour, and say so in the commit); the test compares against them."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).parent / "golden"
#: keys whose values depend on the run (times, paths, versions), not on the behaviour
VOLATILE = {
    "extracted_at",
    "targets_at",
    "created",
    "updated",
    "wall_seconds",
    "seconds",
    "store_path",
    "path",
    "source",
    "code_version",
    "realtime_factor",
    "audio_seconds_per_second",
    "at",
    "model",
    "model_id",
    "root",
}


def scrub(obj: Any) -> Any:
    """Drop volatile keys; keep everything else (numbers rounded later, in ``close``)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def close(a: Any, b: Any, where: str = "$") -> list[str]:
    """Differences between two JSON values; floats equal to 1e-5 relative (float32 math)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys {sorted(set(a) ^ set(b))}"] if set(a) != set(b) else []
        for k in sorted(set(a) & set(b)):
            out += close(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in close(x, y, f"{where}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        if numbers and math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6):
            return []
        return [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def run_pipeline(checkpoint: Path) -> dict[str, Any]:
    """extract → tracks, probe, aspects, recommend, benchmark similarity on the bundled demo."""
    from typer.testing import CliRunner

    from messai.cli import app
    from messai.demo import find_demo_folder

    runner = CliRunner()

    def call(*args: str) -> Any:
        r = runner.invoke(app, list(args))
        assert r.exit_code == 0, (args, r.output)
        return json.loads(r.stdout)

    demo = str(find_demo_folder())
    ckpt = str(checkpoint)
    out: dict[str, Any] = {}
    out["extract"] = call(
        "extract",
        demo,
        "--dataset",
        "gold",
        "--model",
        ckpt,
        "--device",
        "cpu",
        "--quiet",
        "--json",
    )
    out["tracks"] = call("tracks", "--dataset", "gold", "--format", "json")
    out["probe"] = call("probe", "--dataset", "gold", "--group-by", "work", "--format", "json")
    out["aspects"] = call("aspects", "--dataset", "gold", "--format", "json")
    out["recommend"] = call(
        "recommend",
        "--dataset",
        "gold",
        "--track",
        "piano/bach_bwv846_prelude",
        "--aspect",
        "spectral_brightness",
        "-k",
        "5",
        "--format",
        "json",
    )
    out["recommend_fused"] = call(
        "recommend",
        "--dataset",
        "gold",
        "--track",
        "organ/joplin_maple_leaf_rag",
        "--aspect",
        "spectral_brightness",
        "--aspect",
        "dynamics:0.5",
        "--format",
        "json",
    )
    out["benchmark_similarity"] = call(
        "benchmark",
        "similarity",
        "--dataset",
        "gold",
        "--label",
        "work",
        "-k",
        "3",
        "--format",
        "json",
    )
    return {k: scrub(v) for k, v in out.items()}


def main() -> None:
    import tempfile

    from tests.conftest import write_checkpoint

    if sys.argv[1:] != ["record"]:
        sys.exit("usage: python -m tests.golden_pipeline record")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MESS_HOME"] = str(Path(tmp) / "home")
        os.environ["MESS_CONFIG"] = os.devnull
        os.environ["HF_HUB_OFFLINE"] = "1"
        ckpt = write_checkpoint(Path(tmp) / "ckpt" / "tiny-95m", weights="bin")
        got = run_pipeline(ckpt)
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name, value in got.items():
        (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(got)} goldens in {GOLDEN_DIR}")


if __name__ == "__main__":
    main()

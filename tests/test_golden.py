"""The whole pipeline's JSON on the demo equals the recorded goldens (a refactor changes nothing)."""

from __future__ import annotations

import json

from tests.golden_pipeline import GOLDEN_DIR, close, run_pipeline


def test_pipeline_json_matches_goldens(tiny_ckpt):
    got = run_pipeline(tiny_ckpt)
    for name, value in got.items():
        want = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
        diffs = close(json.loads(json.dumps(value)), want, name)
        assert not diffs, "\n".join(diffs[:20])

"""The probe heat-map: clipped baselines, stability hatching, and plot paths checked before work."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from messai.analysis.results import ProbeResults, TargetProbeResult
from messai.cli import app
from messai.errors import ConfigError
from messai.plots import check_plot_path, heatmap_panels, probe_heatmap

runner = CliRunner()


def _results(control, random=None):
    t = TargetProbeResult(
        name="spectral_rolloff",
        n_outputs=1,
        n_samples=40,
        transform="log1p",
        r2=[0.5, 0.2],
        r2_std=[0.1, 0.1],
        r2_ci_low=[0.3, 0.0],
        r2_ci_high=[0.6, 0.4],
        fold_r2=[[0.5, 0.6, 0.4], [0.9, -0.5, 0.2]],
        alpha=[1.0, 1.0],
        control_r2=control,
        random_model_r2=random,
        selectivity=[0.5 - control[0], 0.2 - control[1]],
        selectivity_baseline="random_model" if random else "permuted",
        best_layer=0,
        runner_up_layer=1,
        margin_over_median=0.15,
        fold_wins_over_runner_up=2,
        beats_runner_up=False,
        unstable=[False, True],
    )
    return ProbeResults(
        targets={t.name: t},
        n_samples=40,
        n_groups=8,
        n_layers=2,
        folds=3,
        inner_folds=2,
        seed=0,
        alphas=[1.0],
        alpha_scale="relative",
        control="permute",
        random_model=random is not None,
        n_bootstrap=10,
        ci=0.95,
        group_by="work",
    )


def test_negative_control_is_clipped_at_zero_in_the_selectivity_panel(tmp_path):
    """Issue 21.4: R² 0.5 against a control of -37.1 was drawn as +37.6."""
    names, _r2, sel, unstable = heatmap_panels(_results([-37.1, 0.1]))
    assert names == ["spectral_rolloff"]
    np.testing.assert_allclose(sel, [[0.5, 0.1]])
    assert unstable.tolist() == [[False, True]]
    _, _, sel, _ = heatmap_panels(_results([0.0, 0.0], random=[-3.0, 0.15]))
    np.testing.assert_allclose(sel, [[0.5, 0.05]])
    out = probe_heatmap(_results([-37.1, 0.1]), tmp_path / "h.svg")
    svg = out.read_text()
    assert "clipped at 0" in svg and "37.6" not in svg and "unstable across folds" in svg


def test_plot_paths_are_checked(tmp_path):
    assert check_plot_path(tmp_path / "new" / "x.pdf").name == "x.pdf"
    for bad, msg in (
        (tmp_path / "x.jpg", "unsupported plot format 'jpg'"),
        (tmp_path, "is a folder"),
    ):
        with pytest.raises(ConfigError, match=msg):
            check_plot_path(bad)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        check_plot_path(tmp_path / "file" / "x.png")


@pytest.mark.parametrize(
    "cmd",
    [
        ["probe", "-d", "no-such-store"],
        ["benchmark", "similarity", "-d", "no-such-store"],
        ["benchmark", "aspects", "-d", "no-such-store"],
    ],
)
def test_a_bad_plot_path_fails_before_any_work(isolated_env, tmp_path, cmd):
    """Issue 21.10: 'mess probe --plot x.jpg' failed only after the whole probe. The store does
    not even exist here: the plot path is what the command must complain about, first."""
    r = runner.invoke(app, [*cmd, "--plot", str(tmp_path / "x.jpg")])
    assert r.exit_code == 2, r.output
    assert "unsupported plot format 'jpg'" in r.output and "no-such-store" not in r.output

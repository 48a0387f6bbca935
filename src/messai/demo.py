"""``mess demo``: extract → probe → index → recommend on the bundled demo set, as one report.

The demo set (``data/demo`` in a clone of the repository) is 24 short public-domain pieces:
6 works × 4 General-MIDI instruments, with composer / work / instrument labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from messai.errors import ConfigError
from messai.features.listener import ExtractionListener


def find_demo_folder() -> Path:
    """``data/demo`` of the source tree this package runs from (a clone or editable install)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "data" / "demo"
        if (candidate / "metadata.csv").is_file():
            return candidate
    raise ConfigError(
        "the demo audio (data/demo) is not next to this installation; run from a clone of the repository or pass --path"
    )


@dataclass
class DemoReport:
    dataset: str
    model: str
    extraction: dict[str, Any]
    aspects: list[dict[str, Any]]
    probe_summary: list[dict[str, Any]]
    recommendations: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: how the probe was run (the same defaults as 'mess probe', except group_by)
    probe_settings: dict[str, Any] = field(default_factory=dict)
    aspect_benchmark: dict[str, Any] | None = None  # messai.bench.aspects.evaluate_aspects
    #: trained vs untrained twin per target (`comparison_rows`); empty without a random control
    comparison: list[dict[str, Any]] = field(default_factory=list)
    family: str = "mert"

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def random_control_checkpoint(settings) -> Path:
    """The untrained twin of ``settings.model`` (any family: same architecture, random weights;
    its seed is derived from seed 1 and the model's weights, so it never equals the model, even
    when the model is itself a random checkpoint), written once under the data root and reused:
    the random-initialisation control of the probe."""
    import hashlib

    from messai.features.store import model_slug
    from messai.models import resolve_checkpoint, source_fingerprint, write_random_checkpoint

    source = resolve_checkpoint(settings.model, revision=settings.revision)
    weights = hashlib.sha256(source_fingerprint(source).encode()).hexdigest()[:8]
    name = f"{model_slug(source.identity())}-{source.config_hash}-{weights}"
    folder = settings.home / "random-controls" / name
    if (folder / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    like = source.directory if source.revision == "local" else source.model_id
    write_random_checkpoint(tmp, like=like, seed=1, revision=settings.revision)
    tmp.rename(folder)
    return folder


def comparison_rows(results, *, min_r2: float) -> list[dict[str, Any]]:
    """Per target: the model's best layer, its R² and CI, the untrained twin's R² and CI on the
    same layer, the gain, whether the folds agree, and the validation decision (which requires
    the CI's lower end to clear the twin's R² and the permuted control by the margin)."""

    def num(values, i):
        if values is None or i is None or not math.isfinite(values[i]):
            return None
        return round(float(values[i]), 3)

    rows = []
    for name, res in results.targets.items():
        b = res.best_layer
        r2, twin = num(res.r2, b), num(res.random_model_r2, b)
        rows.append(
            {
                "target": name,
                "layer": b,
                "r2": r2,
                "r2_ci_low": num(res.r2_ci_low, b),
                "r2_ci_high": num(res.r2_ci_high, b),
                "twin_r2": twin,
                "twin_ci_low": num(res.random_model_r2_ci_low, b),
                "twin_ci_high": num(res.random_model_r2_ci_high, b),
                "gain": None if r2 is None or twin is None else round(r2 - twin, 3),
                "stable": None if b is None else not res.is_unstable(b),
                "validated": b is not None and res.is_validated(b, min_r2=min_r2),
            }
        )
    return rows


def run_demo(
    settings,
    *,
    path: Path | None = None,
    dataset: str | None = None,
    query: str = "piano/bach_bwv846_prelude",
    aspect: str = "spectral_brightness",
    folds: int | None = None,
    n_bootstrap: int = 1000,
    random_control: bool = True,
    on_step: Callable[[str], None] | None = None,
    listener: ExtractionListener | None = None,
) -> DemoReport:
    """Run the whole tool on the demo set with ``settings`` (model, device, MESS_HOME ...).

    With ``random_control`` the audio is also extracted by the model's untrained twin (a
    random-weight model of the same architecture, never equal to it), a layer counts as
    validated only if it beats that too, and ``report.comparison`` gives trained vs twin per
    target. When the model is itself a random checkpoint the twin is another random draw:
    nothing should validate. The probe uses the settings of 'mess probe' (folds
    from ``settings.folds``, 1000 bootstrap resamples), so the probe it saves with the demo
    store is the one 'mess probe' would save; ``report.probe_settings`` says what was used."""
    from messai import datasets
    from messai.analysis.aspects import ASPECTS, aspect_map
    from messai.analysis.discovery import LayerDiscovery
    from messai.features.pipeline import default_dataset_name, extract_dataset
    from messai.search.recommend import LayerBasedRecommender

    step = on_step or (lambda s: None)
    folder = Path(path) if path else find_demo_folder()
    # another folder gets its own store: never mix it into the bundled demo's
    dataset = dataset or ("demo" if path is None else f"demo-{default_dataset_name(folder)}")
    tracks = datasets.scan(folder, kind="folder")
    if query not in {t.track_id for t in tracks}:
        raise ConfigError(
            f"--query {query!r} is not a track of {folder} (e.g. {tracks[0].track_id if tracks else 'none'})"
        )
    if aspect not in ASPECTS:
        raise ConfigError(f"--aspect {aspect!r} is unknown; known: {', '.join(ASPECTS)}")
    group_by = "work" if tracks and all(t.labels.get("work") for t in tracks) else "track"
    notes = []
    folds = folds or settings.folds
    checkpoint = _checkpoint_for_demo(settings)
    if checkpoint.config.get("mess_random_init"):
        notes.append(
            f"{settings.model} is a random-weight checkpoint: its numbers mean nothing musically"
            + (
                "; its twin is another random draw, so nothing should validate"
                if random_control
                else ""
            )
        )
    step(f"extracting {folder} with {settings.model}")
    report = extract_dataset(
        folder, dataset=dataset, settings=settings, layout="folder", listener=listener
    )
    if report.failures:
        notes.append(
            f"{len(report.failures)} files failed: {[str(f) for f in report.failures[:3]]}"
        )
    control = None
    if random_control:
        ckpt = random_control_checkpoint(settings)
        # one control store per twin (its folder ends with the model's weights tag): a demo run
        # with another model never finds the last run's twin under the same name
        control = f"{dataset[:110]}-random-{ckpt.name.rsplit('-', 1)[-1]}"
        step(
            f"extracting it again with its untrained twin, same architecture, random weights ({ckpt}): the control"
        )
        rand = extract_dataset(
            folder,
            dataset=control,
            settings=settings.model_copy(update={"model": str(ckpt), "revision": None}),
            layout="folder",
            listener=listener,
        )
        if rand.failures:
            notes.append(f"{len(rand.failures)} files failed for the random control")
    step(f"probing every layer (grouped by {group_by}: none on both sides of a split)")
    discovery = LayerDiscovery(
        dataset,
        settings.model,
        home=settings.home,
        stores=settings.stores_location,
        folds=folds,
        seed=settings.seed,
        group_by=group_by,
        control_store=control,
        min_r2=settings.r2_threshold,
        n_bootstrap=n_bootstrap,
    )
    results = discovery.run_full_discovery()
    summary = []
    for name, res in results.targets.items():
        b = res.best_layer
        summary.append(
            {
                "target": name,
                "best_layer": b,
                "r2": None if b is None or not math.isfinite(res.r2[b]) else round(res.r2[b], 3),
                "control_r2": None
                if b is None or not math.isfinite(res.control_r2[b])
                else round(res.control_r2[b], 3),
                "random_model_r2": None
                if b is None
                or res.random_model_r2 is None
                or not math.isfinite(res.random_model_r2[b])
                else round(res.random_model_r2[b], 3),
                "stable": None if b is None else not res.is_unstable(b),
                "validated": b is not None and res.is_validated(b, min_r2=settings.r2_threshold),
                "why_not": None
                if b is None
                else "; ".join(res.validation_failures(b, min_r2=settings.r2_threshold)) or None,
            }
        )
    mapping = aspect_map(discovery.store, min_r2=settings.r2_threshold)
    step("indexing and recommending")
    rec = LayerBasedRecommender(
        dataset,
        settings.model,
        home=settings.home,
        stores=settings.stores_location,
        normalize=settings.normalize,
        kind="flat",
        on_notice=lambda m: None,
    )
    for layer in range(discovery.store.n_layers):
        rec.index(layer)
    recs = rec.recommend(query, aspect, 5)
    step("aspect spaces on held-out works and instruments (mess benchmark aspects)")
    bench = _aspect_benchmark(discovery.store, discovery.control)
    return DemoReport(
        dataset,
        discovery.store.model_id,
        report.to_dict(),
        [e.to_dict() for e in mapping.values()],
        summary,
        recs,
        notes + bench["notes"],
        probe_settings={
            "folds": folds,
            "n_bootstrap": n_bootstrap,
            "group_by": group_by,
            "seed": settings.seed,
            "min_r2": settings.r2_threshold,
            "control_store": control,
        },
        aspect_benchmark=bench,
        comparison=comparison_rows(results, min_r2=settings.r2_threshold) if control else [],
        family=getattr(checkpoint, "family", "mert"),
    )


def _aspect_benchmark(store, control) -> dict[str, Any]:
    """`mess benchmark aspects` on the demo: instrument and work (they cross) and three built-in
    aspects, every aspect at the middle layer."""
    from messai.bench.aspects import evaluate_aspects, label_columns
    from messai.features.targets import ASPECTS_OF_TARGETS

    usable = label_columns(store, store.track_ids())
    stored = set.intersection(*(set(e.targets) for e in store.iter_entries()))
    have = {ASPECTS_OF_TARGETS[t] for t in stored if t in ASPECTS_OF_TARGETS}
    return evaluate_aspects(
        store,
        control=control,
        labels=[c for c in ("instrument", "work") if c in usable],
        aspects=[a for a in ("spectral_brightness", "timbral_texture", "harmony") if a in have],
    )


def _checkpoint_for_demo(settings):
    """The demo's model; offline without it, the error gives a command to copy."""
    from messai.errors import ModelError
    from messai.models import resolve_checkpoint

    try:
        return resolve_checkpoint(settings.model, revision=settings.revision)
    except ModelError as exc:
        if Path(str(settings.model)).expanduser().exists():
            raise
        import os
        import shlex

        run = "uv run mess" if os.environ.get("UV") else "mess"  # as this one was started
        folder = shlex.quote(str(settings.home.expanduser() / "models" / "mert-random"))
        raise ModelError(
            f"{exc}. To try the demo offline with a random-weight model (numbers mean nothing "
            f"musically): {run} model random {folder} --preset base && "
            f"{run} demo --model {folder}; or, with a trained model that ships offline, "
            f"uv sync --extra crepe && {run} demo --model crepe:tiny"
        ) from None

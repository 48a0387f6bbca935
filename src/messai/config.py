"""Settings shared by every command: defaults < config file < MESS_* environment < CLI flags.

The config file is TOML: ``$MESS_CONFIG`` if set, else ``config.toml`` in the platform config
dir for "mess". ``MESS_HOME`` (or ``home`` in the file) moves the whole data root: feature
stores, probe results and FAISS indices all live under it.

Every field is declared once, in :data:`FIELDS`; the pydantic model :class:`Settings` is built
from those declarations. ``resolve_settings`` validates everything through pydantic.
``resolve_fields`` validates only the fields a command reads, with the same declarations but
without importing pydantic: ``mess recommend`` uses it, because importing pydantic alone costs
a third of its start-up budget.
"""

from __future__ import annotations

import functools
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messai.errors import ConfigError

APP_NAME = "mess"
DEFAULT_MODEL = "m-a-p/MERT-v1-95M"
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_file_path() -> Path:
    """Where the config file is read from (it need not exist)."""
    env = os.environ.get("MESS_CONFIG")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def validate_dataset_name(name: str) -> str:
    """Dataset names become folder names: letters, digits, '.', '_', '-'; no leading dot."""
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' "
            "(not starting with '.' or '-', at most 128 characters)"
        )
    return name


@dataclass(frozen=True)
class FieldSpec:
    """One setting: its type, default, allowed values or bounds, and help text."""

    type: type
    default: Any = None
    description: str = ""
    choices: tuple[str, ...] | None = None
    optional: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    default_factory: Callable[[], Any] | None = None

    def get_default(self) -> Any:
        return self.default_factory() if self.default_factory else self.default

    def check(self, name: str, value: Any, source: str) -> Any:
        """Convert and check one value (the light path); ConfigError naming field and source."""

        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid setting {name} (from {source}): {msg}")

        if value is None:
            if self.optional:
                return None
            raise bad("a value is required")
        try:
            if self.type is Path:
                value = Path(value).expanduser()
            elif self.type is int and not isinstance(value, bool):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif self.type is float and not isinstance(value, bool):
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError
            elif self.type is str:
                if not isinstance(value, str):
                    raise ValueError
            else:
                raise ValueError
        except (TypeError, ValueError):
            raise bad(f"expected {self.type.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise bad(f"input should be {', '.join(repr(c) for c in self.choices)}")
        if self.ge is not None and value < self.ge:
            raise bad(f"input should be greater than or equal to {self.ge}")
        if self.gt is not None and value <= self.gt:
            raise bad(f"input should be greater than {self.gt}")
        if self.le is not None and value > self.le:
            raise bad(f"input should be less than or equal to {self.le}")
        return value


#: Every setting. Names are the config-file keys and, upper-cased with ``MESS_``, the env vars.
FIELDS: dict[str, FieldSpec] = {
    "home": FieldSpec(
        Path, default_factory=default_home, description="data root (stores, probe results, indices)"
    ),
    "stores": FieldSpec(
        str,
        None,
        "where feature stores live: a folder or a URI (s3://bucket/prefix, gs://, az://, "
        "file://); default <home>/stores",
        optional=True,
    ),
    "model": FieldSpec(str, DEFAULT_MODEL, "hub id or local checkpoint directory"),
    "revision": FieldSpec(str, None, "hub revision (branch, tag or commit)", optional=True),
    "device": FieldSpec(
        str, "auto", "auto prefers MPS, then CUDA, then CPU", choices=("auto", "cpu", "cuda", "mps")
    ),
    "precision": FieldSpec(
        str,
        "float32",
        "compute precision (int8: dynamic quantisation, CPU only)",
        choices=("float32", "bfloat16", "float16", "int8"),
    ),
    "batch_size": FieldSpec(
        int, None, "windows per forward (default per device)", optional=True, ge=1, le=4096
    ),
    "decode_workers": FieldSpec(
        int,
        None,
        "decode worker processes (0: one thread; default from the cores and the device)",
        optional=True,
        ge=0,
        le=64,
    ),
    "segment_seconds": FieldSpec(float, 5.0, "window length, seconds", gt=0.2, le=120.0),
    "hop_seconds": FieldSpec(float, 5.0, "window hop, seconds", gt=0.0, le=120.0),
    "min_seconds": FieldSpec(float, 1.0, "shortest tail window kept, seconds", gt=0.0, le=120.0),
    "store_dtype": FieldSpec(
        str, "float16", "dtype of stored features", choices=("float16", "float32")
    ),
    "commit_tracks": FieldSpec(
        int, 64, "while extracting, commit to the store at least every N tracks", ge=1
    ),
    "commit_seconds": FieldSpec(
        float, 10.0, "while extracting, commit to the store at least every N seconds", gt=0
    ),
    "folds": FieldSpec(int, 5, "outer group folds of the probe", ge=2, le=100),
    "seed": FieldSpec(int, 0, "seed of folds, controls and bootstrap"),
    # The library calls this threshold min_r2 (messai.analysis: TargetProbeResult.is_validated,
    # LayerDiscovery, aspect_map; default DEFAULT_MIN_R2); the CLI passes this setting as min_r2.
    "r2_threshold": FieldSpec(float, 0.5, "minimum R² for an aspect to count as validated"),
    "index_kind": FieldSpec(
        str, "flat", "index kind", choices=("flat", "hnsw", "ivf", "ivfpq", "hnsw-sq8")
    ),
    "normalize": FieldSpec(
        str, "center", "vector normalisation before cosine", choices=("center", "zscore", "l2")
    ),
}
_ALL_KEYS = (*FIELDS, "datasets")


@functools.cache
def _models():
    """Build the pydantic models from FIELDS (imports pydantic; cached)."""
    from typing import Annotated, Literal, Optional

    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

    class DatasetEntry(BaseModel):
        """``[datasets.NAME]`` in the config file: where a dataset lives and what kind it is."""

        model_config = ConfigDict(extra="forbid")
        path: Path
        kind: Optional[str] = None

    def not_a_bool(value: Any) -> Any:
        # pydantic's lax mode reads true as 1: a number setting set to true is a mistake
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value

    fields: dict[str, Any] = {}
    for name, spec in FIELDS.items():
        tp: Any = Literal[spec.choices] if spec.choices else spec.type  # type: ignore[valid-type]
        if spec.type in (int, float):
            tp = Annotated[tp, BeforeValidator(not_a_bool)]
        if spec.optional:
            tp = Optional[tp]
        kw: dict[str, Any] = {
            k: getattr(spec, k) for k in ("ge", "gt", "le") if getattr(spec, k) is not None
        }
        if spec.type is float:
            kw["allow_inf_nan"] = False
        field = (
            Field(default_factory=spec.default_factory, description=spec.description, **kw)
            if spec.default_factory
            else Field(spec.default, description=spec.description, **kw)
        )
        fields[name] = (tp, field)
    settings = create_model(
        "Settings",
        __config__=ConfigDict(extra="forbid", validate_assignment=True),
        __doc__="Every setting mess reads (see messai.config.FIELDS).",
        datasets=(dict[str, DatasetEntry], Field(default_factory=dict)),
        **fields,
    )
    settings.stores_dir = property(lambda self: self.home.expanduser() / "stores")
    settings.stores_location = property(
        lambda self: self.stores or str(self.home.expanduser() / "stores")
    )
    settings.indices_dir = property(lambda self: self.home.expanduser() / "indices")
    return settings, DatasetEntry


def __getattr__(name: str) -> Any:
    if name == "Settings":
        return _models()[0]
    if name == "DatasetEntry":
        return _models()[1]
    raise AttributeError(name)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        if os.environ.get("MESS_CONFIG"):
            raise ConfigError(f"MESS_CONFIG names {path}, which does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    for key in data:
        if key not in _ALL_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {', '.join(_ALL_KEYS)})")
    datasets = data.get("datasets", {})
    if not isinstance(datasets, dict):
        raise ConfigError(
            f"{path}: 'datasets' must be tables like [datasets.NAME] with path = ..., "
            f"not {datasets!r}"
        )
    for name, entry in datasets.items():
        validate_dataset_name(name)
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: [datasets.{name}] must be a table with 'path'")
        for key in entry:
            if key not in ("path", "kind"):
                raise ConfigError(f"{path}: unknown key {key!r} in [datasets.{name}]")
    return data


def _read_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = os.environ.get(f"MESS_{name.upper()}")
        if value is not None and value != "":
            out[name] = value
    return out


def _merge(overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    path = config_file_path()
    layers = [
        (_read_config_file(path), f"config file ({path})"),
        (_read_env(), "env"),
        ({k: v for k, v in (overrides or {}).items() if v is not None}, "flag"),
    ]
    merged: dict[str, Any] = {}
    sources = {name: "default" for name in _ALL_KEYS}
    for values, label in layers:
        for key, value in values.items():
            merged[key] = (
                Path(value).expanduser()
                if key == "home" and isinstance(value, (str, Path))
                else value
            )
            sources[key] = f"env MESS_{key.upper()}" if label == "env" else label
    return merged, sources


def resolve_settings(overrides: dict[str, Any] | None = None):
    """Merge the four layers and validate once with pydantic.

    Returns the ``Settings`` and, per field, where its value came from: ``"default"``,
    ``"config file (PATH)"``, ``"env MESS_X"`` or ``"flag"``. ``overrides`` are CLI flags;
    ``None`` values mean "not given".
    """
    from pydantic import ValidationError

    merged, sources = _merge(overrides)
    try:
        settings = _models()[0](**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        top = str(err["loc"][0]) if err["loc"] else ""
        raise ConfigError(
            f"invalid setting {field} (from {sources.get(top, '')}): "
            f"{err['msg'].removeprefix('Value error, ')}"
        ) from None
    check_home(settings.home, sources.get("home", "default"))
    return settings, sources


def check_home(home: Path, source: str) -> None:
    """The data root must be a folder (or not exist yet): a file there is a ConfigError."""
    home = Path(home).expanduser()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"invalid setting home (from {source}): {home} is not a folder")


@dataclass(frozen=True)
class FieldValues:
    """The few settings a fast command reads, validated by their FIELDS declarations."""

    values: dict[str, Any]
    sources: dict[str, str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def resolve_fields(names: list[str], overrides: dict[str, Any] | None = None) -> FieldValues:
    """Like ``resolve_settings`` for ``names`` only, without importing pydantic. The config
    file is still checked for unknown keys."""
    merged, sources = _merge(overrides)
    values = {}
    for name in names:
        spec = FIELDS[name]
        values[name] = (
            spec.check(name, merged[name], sources[name]) if name in merged else spec.get_default()
        )
    if "home" in values:
        check_home(values["home"], sources["home"])
    return FieldValues(values, {n: sources[n] for n in names})


def load_settings(**overrides: Any):
    """Resolved settings for library users: ``load_settings(model="DIR", device="cpu")``."""
    return resolve_settings(overrides)[0]

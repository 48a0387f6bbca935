"""Settings shared by every command: defaults < config file < MESS_* environment < CLI flags.

The config file is TOML: ``$MESS_CONFIG`` if set, else ``config.toml`` in the platform config
dir for "mess". ``MESS_HOME`` (or ``home`` in the file) moves the whole data root: feature
stores, probe results and FAISS indices all live under it.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from messai.errors import ConfigError

APP_NAME = "mess"
DEFAULT_MODEL = "m-a-p/MERT-v1-95M"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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
    if not _DATASET_NAME.match(name or ""):
        raise ConfigError(
            f"invalid dataset name {name!r}: use letters, digits, '.', '_' or '-' "
            "(not starting with '.' or '-', at most 128 characters)"
        )
    return name


class DatasetEntry(BaseModel):
    """``[datasets.NAME]`` in the config file: where a dataset lives and what kind it is."""

    model_config = ConfigDict(extra="forbid")
    path: Path
    kind: str | None = None


class Settings(BaseModel):
    """Every setting mess reads. Field names are the config-file keys and, upper-cased with a
    ``MESS_`` prefix, the environment variables (``MESS_BATCH_SIZE``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    home: Path = Field(default_factory=default_home, description="data root (stores, indices)")
    model: str = Field(DEFAULT_MODEL, description="hub id or local checkpoint directory")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int | None = Field(None, ge=1, le=4096, description="windows per forward")
    segment_seconds: float = Field(5.0, gt=0.2, le=120.0)
    hop_seconds: float = Field(5.0, gt=0.0, le=120.0)
    min_seconds: float = Field(1.0, gt=0.0, le=120.0)
    store_dtype: Literal["float16", "float32"] = "float16"
    folds: int = Field(5, ge=2, le=100)
    seed: int = 0
    r2_threshold: float = Field(0.5, description="minimum R² for an aspect to count as validated")
    index_kind: Literal["flat", "hnsw", "ivf"] = "flat"
    normalize: Literal["center", "zscore", "l2"] = "center"
    datasets: dict[str, DatasetEntry] = Field(default_factory=dict)

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def stores_dir(self) -> Path:
        return self.home / "stores"

    @property
    def indices_dir(self) -> Path:
        return self.home / "indices"


_SCALAR_FIELDS = [n for n in Settings.model_fields if n != "datasets"]


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    for key in data:
        if key not in Settings.model_fields:
            known = ", ".join(Settings.model_fields)
            raise ConfigError(f"{path}: unknown key {key!r} (known keys: {known})")
    for name, entry in (data.get("datasets") or {}).items():
        validate_dataset_name(name)
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: [datasets.{name}] must be a table with 'path'")
        for key in entry:
            if key not in DatasetEntry.model_fields:
                raise ConfigError(f"{path}: unknown key {key!r} in [datasets.{name}]")
    return data


def _read_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _SCALAR_FIELDS:
        value = os.environ.get(f"MESS_{name.upper()}")
        if value is not None and value != "":
            out[name] = value
    return out


def resolve_settings(overrides: dict[str, Any] | None = None) -> tuple[Settings, dict[str, str]]:
    """Merge the four layers and validate once.

    Returns the settings and, per field, where its value came from: ``"default"``,
    ``"config file (PATH)"``, ``"env MESS_X"`` or ``"flag"``. ``overrides`` are CLI flags;
    ``None`` values mean "not given".
    """
    path = config_file_path()
    layers = [
        (_read_config_file(path), f"config file ({path})"),
        (_read_env(), "env"),
        ({k: v for k, v in (overrides or {}).items() if v is not None}, "flag"),
    ]
    merged: dict[str, Any] = {}
    sources = {name: "default" for name in Settings.model_fields}
    for values, label in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = f"env MESS_{key.upper()}" if label == "env" else label
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        top = str(err["loc"][0]) if err["loc"] else ""
        where = sources.get(top, "")
        raise ConfigError(f"invalid setting {field} (from {where}): {err['msg']}") from None
    return settings, sources


def load_settings(**overrides: Any) -> Settings:
    """Resolved settings for library users: ``load_settings(model="DIR", device="cpu")``."""
    return resolve_settings(overrides)[0]

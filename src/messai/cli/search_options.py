"""Options shared by ``mess index`` and ``mess recommend``: index kind, backend, space, normalisation."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer


class Kind(str, Enum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"
    ivfpq = "ivfpq"
    hnsw_sq8 = "hnsw-sq8"


class Backend(str, Enum):
    faiss = "faiss"
    lancedb = "lancedb"


class Space(str, Enum):
    auto = "auto"
    aspect = "aspect"
    layer = "layer"


class Normalize(str, Enum):
    center = "center"
    zscore = "zscore"
    l2 = "l2"


KindOpt = Annotated[
    Optional[Kind],
    typer.Option(
        "--kind",
        help="flat (exact; the default, fine up to ~100k tracks), hnsw or ivf (approximate, for larger stores), ivfpq or hnsw-sq8 (memory-bounded, exactly re-ranked; for catalogues of millions).",
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        help="faiss (local cache; fast cold start) or lancedb (indices on the store's own tracks table, local or s3://; needs messai[lancedb]; ≈ 1 s more per start).",
    ),
]
NormOpt = Annotated[
    Optional[Normalize],
    typer.Option(
        "--normalize",
        help="center (default: subtract the layer mean, then cosine), zscore, or l2 (plain cosine).",
    ),
]

"""``mess serve``: the HTTP API and the listening page (the ``serve`` extra)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from messai.cli.common import ModelOpt, StoresOpt, app, notice, settings_from


@app.command("serve")
def serve_command(
    dataset: Annotated[
        Optional[list[str]],
        typer.Option(
            "--dataset", "-d", help="Serve this dataset (repeatable); default: every store found."
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind; anything but loopback needs --token (or MESS_TOKEN)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8750,
    token: Annotated[
        Optional[str],
        typer.Option(
            "--token",
            envvar="MESS_TOKEN",
            show_envvar=True,
            help="Require 'Authorization: Bearer TOKEN' on /v1/* (/v1/health exempt).",
        ),
    ] = None,
    cors: Annotated[
        Optional[list[str]],
        typer.Option(
            "--cors", help="Allow this browser origin (repeatable); CORS is off without it."
        ),
    ] = None,
    model: ModelOpt = None,
    stores: StoresOpt = None,
) -> None:
    """Serve the stores over HTTP: a JSON API under /v1 (the same answers as 'mess recommend
    --format json'), each track's audio with byte ranges, and a listening page at /. One log
    line per request on stderr. Stop with Ctrl-C."""
    import logging

    from messai.errors import ConfigError
    from messai.serve import check_extra

    check_extra()
    from messai.serve.app import is_loopback

    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve on {host} without a token: pass --token or set MESS_TOKEN (or bind 127.0.0.1)"
        )
    settings = settings_from(stores=stores)
    from messai.serve.live import ServeConfig

    config = ServeConfig(
        home=settings.home,
        stores=settings.stores,
        datasets=tuple(dataset or ()),
        model=model,
        normalize=settings.normalize,
        kind=settings.index_kind,
        token=token or None,
        cors=tuple(cors or ()),
    )
    from messai.features.store import FeatureStore

    for name in config.datasets:  # a misspelt dataset fails here, in one line, not per request
        FeatureStore.open(name, model, home=config.home, stores=config.stores)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    serve_log = logging.getLogger("messai.serve")
    serve_log.addHandler(handler)
    serve_log.setLevel(logging.INFO)
    serve_log.propagate = False
    from messai.serve.app import run

    notice(f"serving on http://{host}:{port}/ (API under /v1; Ctrl-C stops)")
    run(config, host=host, port=port)

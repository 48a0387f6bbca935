"""``mess config``: the resolved settings and where each value came from."""

from __future__ import annotations

from messai.cli.common import Format, FormatOpt, app, print_json, render_rows


@app.command("config")
def config_command(fmt: FormatOpt = Format.table) -> None:
    """Show the resolved settings (defaults < config file < MESS_* env < flags) and their sources."""
    from messai.config import config_file_path, resolve_settings

    settings, sources = resolve_settings({})
    values = settings.model_dump(mode="json")
    values["stores"] = str(settings.stores_location)  # resolved: <home>/stores by default
    if fmt == Format.json:
        print_json(
            {
                "config_file": str(config_file_path()),
                "config_file_exists": config_file_path().is_file(),
                "settings": values,
                "sources": sources,
            }
        )
        return
    rows = [
        {"key": k, "value": "" if v is None else v, "source": sources[k]} for k, v in values.items()
    ]
    path = config_file_path()
    render_rows(
        rows,
        fmt,
        title=f"config file: {path}"
        + ("" if path.is_file() else " (not present: defaults and environment only)"),
    )

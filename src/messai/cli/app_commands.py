"""Import every command module so each registers itself on the app."""

from messai.cli import (  # noqa: F401  (importing registers the commands)
    cmd_aspects,
    cmd_benchmark,
    cmd_config,
    cmd_demo,
    cmd_extract,
    cmd_model,
    cmd_probe,
    cmd_remove,
    cmd_search,
    cmd_store,
    cmd_stores,
)

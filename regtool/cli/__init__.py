"""The `regtool` command line: a Typer app whose commands live one per module in this package.

Each command module registers itself on `regtool.cli.app.app`; every module in this package
(except `app`) is imported here, so a command appears exactly when its module exists.
"""

from __future__ import annotations

import importlib
import pkgutil

from regtool.cli.app import app

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "app":
        importlib.import_module(f"{__name__}.{_info.name}")


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]

"""The Typer app, its global options and what every command shares: config loading, typed
errors -> one red line and exit code 2, rich progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from regtool import __version__
from regtool.config import Config, load_config
from regtool.errors import ConfigError, RegtoolError

app = typer.Typer(
    name="regtool",
    help="Category-level deformable registration from single RGB images by render-and-compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

EXIT_BAD_INPUT = 2
# Seeds go to numpy's SeedSequence (any n >= 0) and torch.manual_seed (n < 2**64, offsets added).
MAX_SEED = 2 ** 63 - 1


@dataclass
class GlobalOptions:
    """Options given before the command name."""

    device: str = "cpu"
    seed: int = 0
    debug: bool = False


def _version(value: bool) -> None:
    if value:
        console.print(f"regtool {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    device: str = typer.Option("cpu", "--device", help="Compute device: cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random generator."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version,
                                           is_eager=True, help="Print the version and exit."),
) -> None:
    ctx.obj = GlobalOptions(device=device, seed=seed, debug=debug)
    from regtool.device import resolve_device

    with reported_errors(ctx):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed}")
        resolve_device(device)


def options(ctx: typer.Context) -> GlobalOptions:
    """Return the global options of this invocation."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def fail(message: str) -> None:
    """Print `message` as one red line on stderr and exit with code 2."""
    line = " ".join(str(message).split())
    err_console.print(Text("error: ", style="bold red") + Text(line, style="red"))
    raise typer.Exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def reported_errors(ctx: typer.Context) -> Iterator[None]:
    """Turn RegtoolError (and a Ctrl-C) into one line and exit code 2 (130 for Ctrl-C) unless
    --debug is given."""
    try:
        yield
    except RegtoolError as exc:
        if options(ctx).debug:
            raise
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print(Text("interrupted", style="red"))
        raise typer.Exit(130) from None


def command_config(config: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Return the config from `--config` (defaults when None) with CLI flag overrides."""
    return load_config(config, overrides)


ConfigOption = typer.Option(None, "--config", "-c", help="TOML config (defaults: "
                            "configs/default.toml values built in).", dir_okay=False)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, text=None)` driving a rich progress bar (shown on stderr)."""
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, text: str | None = None) -> None:
            progress.update(task, advance=n, info=text or "")

        yield advance

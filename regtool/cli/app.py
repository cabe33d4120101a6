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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
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
    # Plain help: typer's rich help prints a type after every flag (`--debug <bool>`).
    rich_markup_mode=None,
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
    profile: str | None = None  # None: `gpu` on CUDA, the built-in defaults otherwise

    def config_profile(self) -> str | None:
        """Return the built-in profile that command configs start from (None: the defaults)."""
        if self.profile is not None:
            return self.profile
        return "gpu" if self.device.startswith("cuda") else None


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
    profile: Optional[str] = typer.Option(
        None, "--profile", help="Built-in config profile the command config starts from: cpu "
        "(the defaults: networks and images sized for a CPU) or gpu (the paper-sized U-Net at "
        "320x240). Default: gpu with --device cuda, cpu otherwise."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version,
                                           is_eager=True, help="Print the version and exit."),
) -> None:
    ctx.obj = GlobalOptions(device=device, seed=seed, debug=debug, profile=profile)
    from regtool.config import read_profile
    from regtool.device import resolve_device

    with reported_errors(ctx):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {seed}")
        resolve_device(device)
        if profile is not None:
            read_profile(profile)


def options(ctx: typer.Context) -> GlobalOptions:
    """Return the global options of this invocation."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


def fail(message: str) -> None:
    """Print `message` as one red line on stderr and exit with code 2."""
    line = " ".join(str(message).split())
    err_console.print(Text("error: ", style="bold red") + Text(line, style="red"))
    raise typer.Exit(EXIT_BAD_INPUT)


def warn(message: str) -> None:
    """Print `message` as one yellow warning line on stderr."""
    line = " ".join(str(message).split())
    err_console.print(Text("warning: ", style="bold yellow") + Text(line, style="yellow"))


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


def command_config(ctx: typer.Context, config: Path | None,
                   overrides: dict[str, Any] | None = None) -> Config:
    """Return the config of the running command: the built-in defaults, the global profile
    (`--profile`, or `gpu` with `--device cuda`), the `--config` file, then CLI flags."""
    return load_config(config, overrides, profile=options(ctx).config_profile())


ConfigOption = typer.Option(None, "--config", "-c", help="TOML config layered on the built-in "
                            "defaults (configs/default.toml) and the --profile.", dir_okay=False)
RayAddressOption = typer.Option(None, "--ray-address", help="With --executor ray: 'auto' or "
                                "HOST:PORT of a running cluster (default: a local Ray for "
                                "this run).")


class RateColumn(ProgressColumn):
    """Throughput of a task in `unit`s per minute (since its start)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if not task.completed or elapsed <= 0:
            return Text(f"-- {self.unit}/min", style="progress.data.speed")
        return Text(f"{60.0 * task.completed / elapsed:.1f} {self.unit}/min",
                    style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(description: str, total: int | None,
                 rate_unit: str | None = None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, text=None, total=None)` driving a rich progress bar (shown on
    stderr); `total` sets the number of steps once it is known; `rate_unit` (e.g. "jobs") adds
    the throughput in those units per minute."""
    columns: list[ProgressColumn | str] = [
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        TimeRemainingColumn()]
    if rate_unit is not None:
        columns.insert(4, RateColumn(rate_unit))
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, text: str | None = None, total: int | None = None) -> None:
            if total is not None:
                progress.update(task, total=total)
            progress.update(task, advance=n, info=text or "")

        yield advance

"""Terminal output: data on stdout, progress and messages on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from svdtool.cli.options import OutputFormat

out = Console(soft_wrap=True)
if not out.is_terminal:
    # Piped or captured output: rich would assume 80 columns and truncate the tables.
    out = Console(soft_wrap=True, width=160)
err = Console(stderr=True, soft_wrap=True)


def is_main() -> bool:
    """False on the ranks other than 0 of a distributed run: they print nothing."""
    from svdtool.engine.world import env_rank

    return env_rank() == 0


def emit_json(data: Any) -> None:
    """Strict JSON on stdout, for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


class RichProgress:
    """A progress bar on stderr: items done of total, and MB/s over the bytes read."""

    def __init__(self, quiet: bool | None = None) -> None:
        self.quiet = not is_main() if quiet is None else quiet  # default: drawn by rank 0 only
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._bytes = 0
        self._t0 = 0.0

    def start(self, label: str, total: int, total_bytes: int = 0) -> None:
        import time

        if self.quiet:
            return
        self._t0 = time.perf_counter()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("[dim]{task.fields[item]}"),
            console=err,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, rate="", item="")

    def advance(self, item: str, nbytes: int = 0) -> None:
        import time

        if self._bar is None or self._task is None:
            return
        self._bytes += nbytes
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = f"{self._bytes / elapsed / 1e6:,.0f} MB/s" if self._bytes else ""
        self._bar.update(self._task, advance=1, rate=rate, item=item)

    def message(self, text: str) -> None:
        if not self.quiet:
            err.print(f"[dim]{text}[/dim]", highlight=False)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def deliver(
    result: Any,
    *,
    fmt: OutputFormat,
    table: Callable[[Any], None],
    written: Iterable[Path] = (),
    report: Path | None = None,
    sigmas: Any = None,
) -> None:
    """What every command does with its result: name the files written, write the ``--report``, then
    print the JSON (``--format json``) or the human tables on stdout. Rank 0 only, under torchrun."""
    if not is_main():
        return
    for path in written:
        err.print(f"wrote {path}", highlight=False)
    if report is not None:
        from svdtool.cli.report import write_report_for

        write_report_for(result, sigmas, report)
    if fmt.value == "json":
        from svdtool.results import to_dict

        emit_json(to_dict(result))
    else:
        table(result)

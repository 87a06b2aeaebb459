"""The ``svdtool`` command line. It parses, calls one function, and prints.

Errors raised as :class:`svdtool.errors.SvdtoolError` are printed here, once, as one line.
"""

from __future__ import annotations

import importlib
import sys

import typer

from svdtool.errors import SvdtoolError

app = typer.Typer(
    name="svdtool",
    help="Singular-value spectra, gradient coverage and SVD-initialised LoRA adapters for LLM checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module registers its commands on `app` when imported; this order is the order of `--help`.
for _module in ("spectrum", "coverage", "init", "verify", "report"):
    importlib.import_module(f"svdtool.cli.{_module}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn SvdtoolError into one line and an exit code.

    SIGINT and SIGTERM end the run with one line, ``interrupted``, and exit 130 / 143 (svdtool.interrupts).
    """
    from svdtool import interrupts
    from svdtool.cli.console import err

    with interrupts.installed():
        try:
            # With standalone_mode=False, click returns Ctrl-C (130) and typer.Exit codes instead of exiting.
            rc = app(args=argv, standalone_mode=False)
            signum = interrupts.received()
            if signum is not None:  # typer turned the interrupt into the exit code 130
                raise interrupts.Interrupted(signum)
            if rc == 130:
                raise KeyboardInterrupt
            if isinstance(rc, int) and rc:
                sys.exit(rc)
        except SvdtoolError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            err.print("[bold red]interrupted[/]")
            sys.exit(exc.exit_code if isinstance(exc, interrupts.Interrupted) else 130)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(1)
        except Exception as exc:
            # Click's usage errors (typer may vendor its own click): show them as click would.
            show = getattr(exc, "show", None)
            if callable(show) and isinstance(getattr(exc, "exit_code", None), int):
                show()
                sys.exit(exc.exit_code)  # type: ignore[attr-defined]
            raise

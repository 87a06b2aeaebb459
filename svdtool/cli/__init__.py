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
    Under a launcher that sets WORLD_SIZE > 1 (torchrun, SLURM), this process first joins the job
    (:mod:`svdtool.engine.world`); only rank 0 prints, and torchrun learns the root cause of a crash
    through ``torch.distributed.elastic``'s ``record``.
    """
    from svdtool.engine.world import env_distributed

    if env_distributed():
        from torch.distributed.elastic.multiprocessing.errors import record

        record(_run)(argv, True)
    else:
        _run(argv, False)


#: Commands that split their work over the ranks of a torchrun job; the others run in one process.
DISTRIBUTED_COMMANDS = ("spectrum", "init", "coverage")


def _check_distributed(argv: list[str]) -> None:
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command in app_commands() and command not in DISTRIBUTED_COMMANDS:
        raise SvdtoolError(
            f"svdtool {command} runs in one process: start it without torchrun "
            f"(under torchrun: {', '.join(DISTRIBUTED_COMMANDS)}; see docs/distributed.md)"
        )


def app_commands() -> set[str]:
    return {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}


def _run(argv: list[str] | None, distributed: bool) -> None:
    from svdtool import interrupts
    from svdtool.cli.console import err
    from svdtool.engine import world

    quiet = world.env_rank() != 0  # every rank fails the same way; rank 0 says so, once
    with interrupts.installed():
        try:
            if distributed:
                _check_distributed(sys.argv[1:] if argv is None else argv)
                world.setup_from_env()
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
            if not quiet:
                err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            if distributed:
                world.linger()  # torchrun stops every rank once one exits: let rank 0 print first
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            if not quiet:
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
                if not quiet:
                    show()
                sys.exit(exc.exit_code)  # type: ignore[attr-defined]
            raise
        finally:
            if distributed:
                world.teardown()

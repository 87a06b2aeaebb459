"""An output folder staged by every rank and published once, only when every rank has succeeded.

Rank 0 creates the hidden staging folder beside ``--out`` (``.OUT.tmp-XXXX``, as in one process,
:mod:`svdtool.adapters.output`) and sends its path to the other ranks, which check that they see it:
``--out`` must be on a filesystem every node shares. Each rank writes the files it owns. The body
settles its phases (:meth:`~svdtool.engine.world.World.phase`), so at its end all ranks have
succeeded; rank 0 then publishes. On any failure rank 0 removes the staging folder; a killed job
leaves only the hidden folder behind, never a partial ``OUT``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from svdtool.adapters.output import check_target, publish, staged_folder
from svdtool.engine.world import World
from svdtool.errors import SvdtoolError


@contextmanager
def shared_staging(
    world: World, out: Path, overwrite: bool, message: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Yield the staging folder on every rank; rank 0 renames it onto ``out`` once the body returned everywhere."""
    if not world.distributed:
        with staged_folder(out, overwrite, message) as tmp:
            yield tmp
        return
    made: Path | None = None
    try:
        with world.phase():
            if world.main:
                check_target(out, overwrite)
                out.parent.mkdir(parents=True, exist_ok=True)
                made = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        tmp = Path(world.broadcast(str(made)))
        with world.phase():
            if not tmp.is_dir():
                raise SvdtoolError(
                    f"{tmp}, made by rank 0, is not visible here: --out must be on a filesystem that every node shares"
                )
        yield tmp
        with world.phase():
            if world.main:
                tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary model folder
                publish(tmp, out, overwrite)
    finally:
        if made is not None and made.exists():
            shutil.rmtree(made, ignore_errors=True)

"""``python -m svdtool ARGS`` with the peak allocated CUDA memory printed last on stderr (``PEAK_ALLOCATED n``).

The same CLI entry point in the same fresh process; only an exit hook is added, which reads
``torch.cuda.max_memory_allocated`` (svdtool records it for gradient passes only).
"""

from __future__ import annotations

import atexit
import sys


def _peak() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"PEAK_ALLOCATED {torch.cuda.max_memory_allocated()}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # guarded: svdtool's helper processes import the main module again
    atexit.register(_peak)
    from svdtool.cli import main

    main(sys.argv[1:])

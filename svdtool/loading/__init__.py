"""Turn the MODEL argument into a :class:`Checkpoint`: a Hub repo id, a folder, a file.

This is the only entry point to checkpoint reading; the readers live in the submodules.
"""

from __future__ import annotations

import re
from pathlib import Path

from svdtool.errors import SvdtoolError
from svdtool.loading.base import FLOAT_DTYPES, GGUF_PREFIX, Checkpoint, CheckpointMeta, TensorInfo
from svdtool.loading.checks import PICKLE_SUFFIXES, pickle_refusal

__all__ = [
    "FLOAT_DTYPES",
    "GGUF_PREFIX",
    "Checkpoint",
    "CheckpointMeta",
    "TensorInfo",
    "open_checkpoint",
    "parse_model_spec",
]

# owner/name, optionally @revision. Owner and name follow the Hub's rules.
_REPO_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:@(?P<rev>.+))?$")


def parse_model_spec(spec: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """``owner/name[@rev]`` -> (repo_id, revision), or None when ``spec`` is not a repo id.

    A revision given twice (``@rev`` and ``--revision``) must agree.
    """
    m = _REPO_RE.match(spec)
    if not m:
        return None
    rev = m.group("rev")
    if rev and revision and rev != revision:
        raise SvdtoolError(f"two revisions given: {spec!r} and --revision {revision!r}")
    return m.group("repo"), rev or revision


def open_checkpoint(
    spec: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    stream: bool = False,
) -> Checkpoint:
    """Open a checkpoint for reading.

    ``spec`` is a local path (a folder with safetensors, a ``.safetensors`` file, a ``.gguf`` file)
    or a Hub repo id ``owner/name[@revision]``. An existing local path always wins over a repo id.
    ``stream`` reads Hub tensors with HTTP range requests instead of downloading the shards.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if stream:
            raise SvdtoolError("--stream applies to Hub repos only; a local path is read in place")
        if revision:
            raise SvdtoolError("--revision applies to Hub repos only")
        if path.is_file() and path.suffix == ".gguf":
            from svdtool.loading.gguf_file import GGUFCheckpoint

            return GGUFCheckpoint(path, spec)
        if path.is_file() and path.suffix in PICKLE_SUFFIXES:
            raise pickle_refusal(spec, path.name)
        if path.is_file() and path.suffix != ".safetensors":
            raise SvdtoolError(f"{spec} is neither a .safetensors nor a .gguf file")
        from svdtool.loading.safetensors_local import open_local

        return open_local(path, spec)
    parsed = parse_model_spec(spec, revision)
    if parsed is None or spec.startswith((".", "/", "~")):
        raise SvdtoolError(f"{spec} does not exist (expected a local path or a Hub repo id such as owner/name)")
    from svdtool.loading.hub import open_hub

    repo_id, rev = parsed
    return open_hub(repo_id, revision=rev, token=token, stream=stream)

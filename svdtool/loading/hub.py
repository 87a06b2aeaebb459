"""Hugging Face Hub checkpoints: downloaded into the standard HF cache, or streamed tensor by tensor.

Download mode fetches only what ``spectrum`` reads: ``config.json``, the safetensors index when there is
one, and the weight files it names (else ``model.safetensors``, else the root ``*.safetensors``), so a repo
that also ships ``consolidated.safetensors`` or ``pytorch_model.bin`` costs nothing extra. Files already in
the cache are reused without a request; ``HF_HUB_OFFLINE=1`` reads from the cache only.

Everything is pinned to the commit the revision resolves to once, at the start: a branch that moves
mid-download cannot mix shards of two commits. Hub failures become one-line :class:`SvdtoolError` messages
(:mod:`svdtool.loading.hub_errors`). The streaming reader lives in :mod:`svdtool.loading.hub_stream`.
"""

from __future__ import annotations

import glob
import logging
import sys
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

from svdtool.errors import SvdtoolError
from svdtool.loading.base import Checkpoint, CheckpointMeta
from svdtool.loading.checks import PICKLE_SUFFIXES
from svdtool.loading.hub_errors import hub_errors, offline_mode
from svdtool.loading.safetensors_local import INDEX_NAME, SINGLE_NAME, LocalSafetensors, index_shards, read_config

CONFIG_NAME = "config.json"
#: Root files a tokenizer / generation setup needs next to the weights (``svdtool init`` copies them).
TOKENIZER_PATTERNS = (
    "tokenizer*.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


class _DropNoMatchWarning(logging.Filter):
    """snapshot_download warns when a pattern matches nothing; a repo without config.json is fine here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No files matched")


def _prepare_hub() -> None:
    """Quiet the library where it would add noise to one-line errors: no progress bars off a terminal."""
    from huggingface_hub.utils import disable_progress_bars

    if not sys.stderr.isatty():
        disable_progress_bars()
    logger = logging.getLogger("huggingface_hub._snapshot_download")
    if not any(isinstance(f, _DropNoMatchWarning) for f in logger.filters):
        logger.addFilter(_DropNoMatchWarning())


def _download(repo_id: str, revision: str | None, token: str | None, names: Iterable[str]) -> Path:
    """Exactly ``names`` of a commit into the cache; returns its snapshot folder ``…/snapshots/<sha>``."""
    from huggingface_hub import snapshot_download

    # Patterns are fnmatch globs: escape names so that a literal '[' in a file name stays literal.
    patterns = [glob.escape(n) for n in names]
    return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=patterns))


def _resolve(repo_id: str, revision: str | None, token: str | None) -> tuple[Path, str]:
    """Resolve the revision to a commit (or find it in the cache) and fetch the config and index."""
    folder = _download(repo_id, revision, token, [CONFIG_NAME, INDEX_NAME])
    return folder, folder.name  # the snapshot folder is named after the commit sha


def _repo_files(repo_id: str, sha: str, token: str | None, folder: Path) -> list[str]:
    """Every file path of the commit: from the cached tree listing (hub >= 2), else the Hub, else the cache."""
    try:
        from huggingface_hub import get_cached_repo_tree

        return [f.path for f in get_cached_repo_tree(repo_id, revision=sha)]
    except Exception:  # ImportError on hub 1.x, CachedRepoTreeNotFoundError when not cached: ask the Hub
        pass
    if not offline_mode():
        from huggingface_hub import HfApi

        return list(HfApi().list_repo_files(repo_id, revision=sha, token=token))
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def choose_weights(files: list[str], folder: Path, label: str) -> list[str]:
    """The safetensors files to read, by the same rules as a local folder, from the repo's file list.

    ``folder`` must already hold the index when the repo has one (``_resolve`` fetched it).
    """
    present = set(files)
    if INDEX_NAME in present:
        shards = index_shards(folder / INDEX_NAME, f"{label}: {INDEX_NAME}")
        missing = [s for s in shards if s not in present]
        if missing:
            raise SvdtoolError(
                f"{label}: {INDEX_NAME} lists shards the repo does not have: {', '.join(missing[:3])} (the repo "
                "is broken at this revision: pick another with --revision, or tell its owners)"
            )
        return shards
    if SINGLE_NAME in present:
        return [SINGLE_NAME]
    root = sorted(f for f in files if "/" not in f and f.endswith(".safetensors") and not f.startswith("adapter_"))
    if root:
        return root
    others = sorted(f for f in files if f.endswith(_OTHER_WEIGHTS))
    if any(f.endswith(".gguf") for f in others):
        gguf = next(f for f in others if f.endswith(".gguf"))
        raise SvdtoolError(
            f"{label} has no safetensors weights but has {gguf}: download that file and pass its path to svdtool"
        )
    if others:
        pickles = [f for f in others if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise SvdtoolError(
                f"{label} has no safetensors weights, only pickles (found {pickles[0]}); svdtool reads safetensors "
                "only and never loads pickle files, which can run code: pick a revision that has safetensors "
                "(an 'Adding safetensors' PR, @refs/pr/N), or convert it (https://huggingface.co/spaces/safetensors/"
                "convert)"
            )
        raise SvdtoolError(
            f"{label} has no safetensors weights (found {others[0]}); svdtool reads safetensors only: convert the "
            "checkpoint, or pick a revision that has safetensors (often an 'Adding safetensors' PR, @refs/pr/N)"
        )
    raise SvdtoolError(f"{label} holds no weights at its root (looked for {INDEX_NAME}, {SINGLE_NAME}, *.safetensors)")


def _matching(files: list[str], patterns: Iterable[str], root_only: bool) -> list[str]:
    pats = list(patterns)
    return [f for f in files if (not root_only or "/" not in f) and any(fnmatch(f, p) for p in pats)]


def _fetch_missing(repo_id: str, sha: str, token: str | None, folder: Path, names: list[str], label: str) -> None:
    """Download the ``names`` not yet in the snapshot folder (a file there is complete: the cache links it last)."""
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        _download(repo_id, sha, token, missing)
    still = [n for n in names if not (folder / n).is_file()]
    if still and offline_mode():  # hub 1.x offline returns a partial snapshot without complaint
        raise SvdtoolError(
            f"HF_HUB_OFFLINE is set and {label} is not completely in the local cache (missing "
            f"{', '.join(still[:3])}): run once without HF_HUB_OFFLINE to download it"
        )
    if still:
        raise SvdtoolError(f"{label}: {', '.join(still[:3])} did not arrive in the cache folder {folder}")


def _label(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def snapshot_files(
    repo_id: str,
    revision: str | None = None,
    token: str | None = None,
    extra_patterns: Iterable[str] = (),
    *,
    weights: bool = True,
) -> tuple[Path, str]:
    """Download config, weights and tokenizer files of a repo into the HF cache: (snapshot folder, commit sha).

    Tokenizer files are the root files matching :data:`TOKENIZER_PATTERNS`; ``extra_patterns`` are more
    fnmatch globs over every repo path. ``weights=False`` fetches only the small files (for streamed runs).
    ``token=None`` lets huggingface_hub use ``HF_TOKEN`` or the saved
    login. Raises :class:`SvdtoolError` with a one-line message on any Hub failure.
    """
    label = _label(repo_id, revision)
    _prepare_hub()
    with hub_errors(repo_id, revision, token):
        folder, sha = _resolve(repo_id, revision, token)
        files = _repo_files(repo_id, sha, token, folder)
        wanted = choose_weights(files, folder, label) if weights else []
        wanted += _matching(files, TOKENIZER_PATTERNS, root_only=True) + _matching(files, extra_patterns, False)
        if CONFIG_NAME in files:
            wanted.append(CONFIG_NAME)
        _fetch_missing(repo_id, sha, token, folder, sorted(set(wanted)), label)
    return folder, sha


def open_hub(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    stream: bool = False,
) -> Checkpoint:
    """A Hub repo as a :class:`Checkpoint`: downloaded (kind ``hub``) or read with range requests (``hub-stream``)."""
    label = _label(repo_id, revision)
    if stream and offline_mode():
        raise SvdtoolError(
            f"--stream reads {repo_id} over the network but HF_HUB_OFFLINE is set: drop --stream to use the local cache"
        )
    _prepare_hub()
    with hub_errors(repo_id, revision, token):
        folder, sha = _resolve(repo_id, revision, token)
        weights = choose_weights(_repo_files(repo_id, sha, token, folder), folder, label)
        meta = CheckpointMeta(label, "hub-stream" if stream else "hub", revision, sha, config=read_config(folder))
        if stream:
            from svdtool.loading.hub_stream import HubStream

            return HubStream(repo_id, sha, weights, token, meta)
        _fetch_missing(repo_id, sha, token, folder, weights, label)
        return LocalSafetensors(folder, weights, meta)

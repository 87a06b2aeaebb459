"""A loopback fake of the Hugging Face Hub, enough for huggingface_hub's downloads and ranged reads.

It speaks the contract in ``reference/loading.md`` §4 (checked with huggingface_hub 1.33 – 2.4):

* ``GET /api/{models|datasets}/{repo}[/revision/{rev}]`` -> ``{"id", "sha", "siblings": [{"rfilename"}]}``
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` -> ``[{"type", "path", "size", "oid", "lfs"?}]`` (never ``xetHash``)
* ``POST /api/{type}s/{repo}/paths-info/{rev}`` (``HfFileSystem.info``)
* ``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}`` with ``ETag``, ``X-Repo-Commit``, ``Content-Length``
  and ``206`` + ``Content-Range`` for ``Range`` requests. Like the real Hub, LFS files (``*.safetensors``,
  ``*.parquet``, …) are answered with a ``302`` to a second loopback server (the "CDN", another origin)
  carrying ``X-Linked-Etag`` / ``X-Linked-Size``; pass ``cdn=False`` to serve them directly.
* errors carry ``X-Error-Code``: ``RepoNotFound`` 404, ``RevisionNotFound`` 404, ``EntryNotFound`` 404
  (+ ``X-Repo-Commit``), ``GatedRepo`` 401 (no token) / 403 (another token) on ``resolve`` of a gated repo.
  As on the Hub, a gated repo's info and file listing stay public.

Every request is logged (:class:`Hit`), so tests can count file GETs and the bytes served.
The servers listen on 127.0.0.1 only (the CDN is addressed as ``localhost``) and run in daemon threads
until :meth:`FakeHub.close`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".parquet", ".arrow", ".model", ".gz", ".zst")


@dataclass(frozen=True)
class Blob:
    data: bytes
    oid: str  # git blob sha1: what the Hub reports as "oid" / the ETag of a regular file
    sha256: str  # the LFS oid / the ETag of an LFS file
    lfs: bool


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # sha -> path -> blob
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    gated_token: str | None = None


@dataclass(frozen=True)
class Hit:
    """One request as the fake saw it."""

    server: str  # "hub" | "cdn"
    method: str
    path: str  # URL path, still quoted, without the query
    range: str | None  # the Range header
    status: int
    nbytes: int  # body bytes sent
    auth: str | None  # the Authorization header

    @property
    def filename(self) -> str | None:
        """The repo file a resolve/CDN request was for (unquoted), else None."""
        m = re.search(r"/resolve/[^/]+/(.+)$", self.path)
        if m:
            return unquote(m.group(1))
        if self.server == "cdn":
            return unquote(self.path.rsplit("/", 1)[-1])
        return None


def _blob(data: bytes, path: str) -> Blob:
    git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    lfs = path.endswith(LFS_SUFFIXES) or len(data) > (1 << 20)
    return Blob(data, git_oid, hashlib.sha256(data).hexdigest(), lfs)


class FakeHub:
    """Repos built from local folders, served over HTTP on loopback."""

    def __init__(self, *, cdn: bool = True) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.hits: list[Hit] = []
        self.faults: list[str] = []  # see inject()
        self._lock = threading.Lock()
        self._cdn_key = secrets.token_hex(8)  # the CDN's "signed URL" part
        self._servers = [self._serve("hub")]
        if cdn:
            self._servers.append(self._serve("cdn"))
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        # Another host name, not only another port: hub 1.x compares host names to decide whether a
        # redirect leaves the Hub (and then reads the file metadata from the 302 itself, as on the real Hub).
        self.cdn_url = f"http://localhost:{self._servers[-1].server_address[1]}" if cdn else None

    # ---------------------------------------------------------------- repos
    def add_repo(
        self,
        repo_id: str,
        folder: Path | str | None = None,
        *,
        files: dict[str, bytes] | None = None,
        repo_type: str = "model",
        gated_token: str | None = None,
        revisions: dict[str, str] | None = None,
    ) -> str:
        """Serve ``folder`` (every file below it, subfolders included) plus ``files`` as one commit.

        ``revisions`` maps branch/tag names to the commit sha (40 hex); by default ``{"main": <content hash>}``.
        Call again with the same ``repo_id`` to add commits with other contents. Returns the commit sha.
        """
        content: dict[str, Blob] = {}
        if folder is not None:
            root = Path(folder)
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    rel = p.relative_to(root).as_posix()
                    content[rel] = _blob(p.read_bytes(), rel)
        for rel, data in (files or {}).items():
            content[rel] = _blob(data, rel)
        digest = hashlib.sha1(json.dumps(sorted((k, b.oid) for k, b in content.items())).encode()).hexdigest()
        revisions = revisions or {"main": digest}
        repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_id, repo_type))
        if gated_token is not None:
            repo.gated_token = gated_token
        for name, sha in revisions.items():
            if not re.fullmatch(r"[0-9a-f]{40}", sha):
                raise ValueError(f"revision {name!r}: {sha!r} is not a 40-hex commit sha")
            repo.commits[sha] = content
            if name != sha:
                repo.refs[name] = sha
        return next(iter(revisions.values()))

    def inject(self, *faults: str) -> None:
        """Make the next ranged GETs fail, one fault each: ``"503"`` (Service Unavailable) or ``"cut"``
        (the connection drops halfway through the body)."""
        with self._lock:
            self.faults.extend(faults)

    def _take_fault(self) -> str | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    # ---------------------------------------------------------------- log
    def reset(self) -> None:
        with self._lock:
            self.hits.clear()

    def file_hits(self, suffix: str = "", method: str | None = None) -> list[Hit]:
        """Requests for repo files (resolve + CDN) whose name ends with ``suffix``."""
        with self._lock:
            hits = list(self.hits)
        return [
            h
            for h in hits
            if h.filename is not None and h.filename.endswith(suffix) and (method is None or h.method == method)
        ]

    def bytes_served(self, suffix: str = "") -> int:
        return sum(h.nbytes for h in self.file_hits(suffix))

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    # ---------------------------------------------------------------- lifecycle
    def _serve(self, role: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub, Handler.role = hub, role
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def close(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env(self, hf_home: Path | str, token: str | None = None, **extra: str) -> dict[str, str]:
        """Environment for a subprocess that talks to this fake (huggingface_hub reads it at import)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in ("TRANSFORMERS_OFFLINE", "HF_HUB_OFFLINE")
        }
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(hf_home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_ETAG_TIMEOUT="2",
            HF_HUB_DOWNLOAD_TIMEOUT="5",
        )
        if token is not None:
            env["HF_TOKEN"] = token
        env.update(extra)
        return env


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients expect
    timeout = 30  # idle keep-alive connections end their thread
    hub: FakeHub
    role: str

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    # ---------------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, cut: bool = False) -> None:
        """One response; ``cut`` announces the whole body but sends half of it and drops the connection."""
        head_only = self.command == "HEAD"
        self.send_response(status)
        hdrs = {"Content-Length": str(len(body)), **(headers or {})}
        if "Content-Type" not in hdrs:
            hdrs["Content-Type"] = "application/octet-stream"
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if cut:
            body = body[: len(body) // 2]
            self.close_connection = True
        if not head_only and body:
            self.wfile.write(body)
        self.hub._record(
            Hit(
                self.role,
                self.command,
                urlsplit(self.path).path,
                self.headers.get("Range"),
                status,
                0 if head_only else len(body),
                self.headers.get("Authorization"),
            )
        )

    def _json(self, data: object, headers: dict[str, str] | None = None) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        hdrs = {"Content-Type": "application/json", "X-Error-Message": message, **(headers or {})}
        if code:
            hdrs["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), hdrs)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def do_POST(self) -> None:  # noqa: N802
        self._route()

    # ---------------------------------------------------------------- routing
    def _route(self) -> None:
        try:
            parts = urlsplit(self.path)
            segs = parts.path.strip("/").split("/")
            query = parse_qs(parts.query)
            if self.role == "cdn":
                return self._cdn(segs)
            if segs[:1] == ["api"] and len(segs) >= 4 and segs[1] in ("models", "datasets"):
                return self._api(segs[1][:-1], f"{unquote(segs[2])}/{unquote(segs[3])}", segs[4:], query)
            repo_type = "model"
            if segs[:1] == ["datasets"]:
                repo_type, segs = "dataset", segs[1:]
            if len(segs) >= 5 and segs[2] == "resolve":
                return self._resolve(repo_type, f"{unquote(segs[0])}/{unquote(segs[1])}", segs[3], segs[4:])
            self._error(404, None, f"no route for {parts.path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo_and_sha(self, repo_type: str, repo_id: str, rev_quoted: str | None) -> tuple[Repo, str] | None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for {repo_id}")
            return None
        rev = unquote(rev_quoted) if rev_quoted is not None else "main"
        sha = rev if rev in repo.commits else repo.refs.get(rev)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, sha

    def _api(self, repo_type: str, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        if not rest or rest[0] == "revision":
            found = self._repo_and_sha(repo_type, repo_id, rest[1] if len(rest) > 1 else None)
            if found is None:
                return
            repo, sha = found
            siblings = [{"rfilename": p, "size": len(b.data), "blobId": b.oid} for p, b in _files(repo, sha)]
            return self._json(
                {
                    "_id": sha[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo_id.split("/")[0],
                    "sha": sha,
                    "private": False,
                    "disabled": False,
                    "gated": "manual" if repo.gated_token else False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "siblings": siblings,
                }
            )
        if rest[0] in ("tree", "paths-info") and len(rest) >= 2:
            found = self._repo_and_sha(repo_type, repo_id, rest[1])
            if found is None:
                return
            repo, sha = found
            files = dict(_files(repo, sha))
            if rest[0] == "paths-info":
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                wanted = [p.strip("/") for p in form.get("paths", [])]
                return self._json(_entries(files, wanted))
            base = unquote("/".join(rest[2:])).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            if base and base not in _dirs(files) and base not in files:
                return self._error(404, "EntryNotFound", f"{base} does not exist", {"X-Repo-Commit": sha})
            return self._json(_listing(files, base, recursive))
        self._error(404, None, "unknown api route")

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path_segs: list[str]) -> None:
        found = self._repo_and_sha(repo_type, repo_id, rev)
        if found is None:
            return
        repo, sha = found
        path = unquote("/".join(path_segs))
        commit = {"X-Repo-Commit": sha}
        if repo.gated_token is not None:
            auth = self.headers.get("Authorization")
            if auth != f"Bearer {repo.gated_token}":
                status = 401 if auth is None else 403
                msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
                return self._error(status, "GatedRepo", msg)
        blob = repo.commits[sha].get(path)
        if blob is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", commit)
        if blob.lfs and self.hub.cdn_url is not None:
            location = f"{self.hub.cdn_url}/{self.hub._cdn_key}/{blob.sha256}/{quote(path, safe='')}"
            headers = {
                "Location": location,
                "X-Linked-Etag": f'"{blob.sha256}"',
                "X-Linked-Size": str(len(blob.data)),
                "ETag": f'"{blob.oid}"',
                **commit,
                "Content-Type": "text/plain",
            }
            return self._send(302, b"", headers)
        etag = blob.sha256 if blob.lfs else blob.oid
        self._body(blob.data, {"ETag": f'"{etag}"', **commit})

    def _cdn(self, segs: list[str]) -> None:
        # /<key>/<sha256>/<name>: the key stands for the signature of a real CDN URL.
        if len(segs) != 3 or segs[0] != self.hub._cdn_key:
            return self._error(403, None, "bad signature")
        for repo in self.hub.repos.values():
            for content in repo.commits.values():
                for blob in content.values():
                    if blob.sha256 == segs[1]:
                        return self._body(blob.data, {"ETag": f'"{blob.sha256}"'})
        self._error(404, None, "no such blob")

    def _body(self, data: bytes, headers: dict[str, str]) -> None:
        """The whole file, or ``206`` with one range (``bytes=a-b``, ``a-`` or ``-n``)."""
        headers = {"Accept-Ranges": "bytes", **headers}
        rng = self.headers.get("Range")
        if rng is None:
            return self._send(200, data, headers)
        size = len(data)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if m is None or m.groups() == ("", ""):
            return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        a, b = m.groups()
        if a == "":
            start, stop = max(size - int(b), 0), size - 1
        else:
            start, stop = int(a), min(int(b), size - 1) if b else size - 1
        if start >= size or start > stop:
            return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        part, headers = data[start : stop + 1], {**headers, "Content-Range": f"bytes {start}-{stop}/{size}"}
        fault = self.hub._take_fault()
        if fault == "503":
            return self._error(503, None, "Service Unavailable (injected)")
        if fault == "cut":
            return self._send(206, part, headers, cut=True)
        self._send(206, part, headers)


def _files(repo: Repo, sha: str) -> list[tuple[str, Blob]]:
    return sorted(repo.commits[sha].items())


def _dirs(files: dict[str, Blob]) -> set[str]:
    out = set()
    for p in files:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def _entry(path: str, files: dict[str, Blob]) -> dict[str, object]:
    if path in files:
        b = files[path]
        e: dict[str, object] = {"type": "file", "path": path, "size": len(b.data), "oid": b.oid}
        if b.lfs:
            e["lfs"] = {"oid": b.sha256, "size": len(b.data), "pointerSize": 134}
        return e
    return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}


def _listing(files: dict[str, Blob], base: str, recursive: bool) -> list[dict[str, object]]:
    """Entries below ``base`` (directories first, like the Hub), all levels when ``recursive``."""
    prefix = f"{base}/" if base else ""
    paths = sorted(p for p in (*_dirs(files), *files) if p.startswith(prefix) and p != base)
    if not recursive:
        paths = [p for p in paths if "/" not in p[len(prefix) :]]
    if base in files:  # a file path lists itself
        paths = [base]
    dirs = _dirs(files)
    return [_entry(p, files) for p in sorted(paths, key=lambda p: (p not in dirs, p))]


def _entries(files: dict[str, Blob], wanted: list[str]) -> list[dict[str, object]]:
    dirs = _dirs(files)
    return [_entry(p, files) for p in wanted if p in files or p in dirs]


def stream_bytes(folder: Path, shards: list[str], readers: int = 1) -> int:
    """What ``spectrum --stream`` may fetch from ``folder``'s shards: each of ``readers`` processes reads
    every shard's 8-byte length and header; every 2-D tensor's bytes are read once, by one of them."""
    from svdtool.loading.safetensors_local import read_header

    total = 0
    for s in shards:
        n, header = read_header(folder / s)
        total += readers * (8 + n)
        total += sum(
            e["data_offsets"][1] - e["data_offsets"][0]
            for k, e in header.items()
            if k != "__metadata__" and len(e["shape"]) == 2
        )
    return total

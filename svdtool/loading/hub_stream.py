"""Read a Hub checkpoint tensor by tensor with HTTP range requests, without downloading any shard.

Per shard, two ranged GETs read the header (8 bytes give its length N, then N bytes), validated against
the file size from ``Content-Range`` like a local file. Each tensor is then one ranged GET of
``8 + N + begin … 8 + N + end - 1`` streamed into a buffer of exactly its size, so peak memory is about
one tensor. Requests go through huggingface_hub's shared HTTP client (its proxies, offline guard and
keep-alive pool) to the ``resolve`` URL of the pinned commit; the client follows the Hub's redirect to its
CDN and drops the ``Authorization`` header there, as the Hub expects.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.loading.base import Checkpoint, CheckpointMeta, TensorInfo
from svdtool.loading.checks import check_unique
from svdtool.loading.hub_errors import first_line, hub_errors, transport_errors
from svdtool.loading.safetensors_local import MAX_HEADER, header_tensors, parse_header
from svdtool.results.manifest import SourceFile

if TYPE_CHECKING:
    import torch

_RETRIES = 4  # per request, on network errors and 429/5xx, resuming where the body stopped
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_ITEMSIZE = {
    "BF16": 2,
    "F16": 2,
    "F32": 4,
    "F64": 8,
    "I8": 1,
    "U8": 1,
    "I16": 2,
    "I32": 4,
    "I64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def _torch_dtype(code: str) -> torch.dtype:
    import torch

    table = {
        "BF16": torch.bfloat16,
        "F16": torch.float16,
        "F32": torch.float32,
        "F64": torch.float64,
        "I8": torch.int8,
        "U8": torch.uint8,
        "I16": torch.int16,
        "I32": torch.int32,
        "I64": torch.int64,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }
    return table[code]


def _content_range(value: str | None, start: int) -> int:
    """``bytes a-b/total`` -> total, checking that the range starts where it was asked to."""
    try:
        unit, rest = (value or "").split(" ", 1)
        span, total = rest.split("/")
        if unit != "bytes" or int(span.split("-")[0]) != start:
            raise ValueError
        return int(total)
    except ValueError:
        raise SvdtoolError(f"the Hub answered a range request with an unexpected Content-Range {value!r}") from None


class HubStream(Checkpoint):
    """Safetensors shards of one Hub commit, read with range requests."""

    def __init__(self, repo_id: str, sha: str, files: list[str], token: str | None, meta: CheckpointMeta) -> None:
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        if sys.byteorder != "little":
            raise SvdtoolError("--stream needs a little-endian CPU (safetensors data is little-endian)")
        self.repo_id, self.sha, self.token = repo_id, sha, token
        # token=None: huggingface_hub resolves HF_TOKEN, then the saved login, exactly as for downloads.
        self._headers = build_hf_headers(token=token)
        self._headers["Accept-Encoding"] = "identity"  # byte ranges of the raw file, never re-encoded
        self._timeout = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
        self._urls = {f: hf_hub_url(repo_id, f, revision=sha) for f in files}
        self._places: dict[tuple[str, str], tuple[int, str]] = {}  # (file, tensor) -> (absolute start, dtype code)
        self._lock = threading.Lock()
        self._infos: list[TensorInfo] = []
        meta.files = []
        self.meta = meta
        for f in files:
            size, n, header = self._read_header(f)
            meta.files.append(SourceFile(path=f, size=size))
            for info in header_tensors(header, f):
                entry = header[info.name]
                code = str(entry["dtype"])
                if code in _ITEMSIZE and info.numel * _ITEMSIZE[code] != info.nbytes:
                    raise SvdtoolError(f"{repo_id}/{f} is corrupt: tensor {info.name!r} has the wrong byte size")
                self._places[(f, info.name)] = (8 + n + int(entry["data_offsets"][0]), code)
                self._infos.append(info)
        check_unique(self._infos, repo_id)

    def _read_header(self, file: str) -> tuple[int, int, dict[str, Any]]:
        label = f"{self.repo_id}/{file}"
        first = bytearray(8)
        size = self._fetch_into(file, 0, memoryview(first))
        (n,) = struct.unpack("<Q", first)
        prefix = bytes(first)
        if n <= MAX_HEADER and 8 + n <= size:
            rest = bytearray(n)
            self._fetch_into(file, 8, memoryview(rest))
            prefix += rest
        n, header = parse_header(prefix, size, label)  # raises unless the header covers the file exactly
        return size, n, header

    def _fetch_into(self, file: str, start: int, buf: memoryview) -> int:
        """Fill ``buf`` with the file's bytes from ``start``; returns the file size (from Content-Range)."""
        from huggingface_hub import get_session
        from huggingface_hub.utils import hf_raise_for_status

        url, pos, attempt = self._urls[file], 0, 0
        retryable: tuple[type[BaseException], ...] = (_Retry, *transport_errors())
        while True:
            pos_before = pos
            try:
                headers = {**self._headers, "Range": f"bytes={start + pos}-{start + len(buf) - 1}"}
                with get_session().stream("GET", url, headers=headers, timeout=self._timeout) as r:
                    if r.status_code == 416:
                        raise SvdtoolError(f"{self.repo_id}/{file} is shorter than its header says (HTTP 416)")
                    if r.status_code == 200:
                        # A server that ignores Range would send the whole shard: refuse to read it.
                        raise SvdtoolError(f"the server for {self.repo_id} ignores range requests; drop --stream")
                    if r.status_code != 206:
                        if r.status_code in _RETRY_STATUS and attempt < _RETRIES:
                            raise _Retry
                        r.read()
                        hf_raise_for_status(r)
                    size = _content_range(r.headers.get("Content-Range"), start + pos)
                    for chunk in r.iter_bytes():
                        end = pos + len(chunk)
                        if end > len(buf):
                            raise SvdtoolError(f"the Hub sent more bytes than asked for {self.repo_id}/{file}")
                        buf[pos:end] = chunk
                        pos = end
                if pos == len(buf):
                    return size
                raise _Retry  # the body ended early: ask for the rest
            except retryable as exc:
                if pos > pos_before:  # data was flowing when it broke: resume at once, a fresh streak
                    attempt = 0
                    continue
                attempt += 1
                if attempt > _RETRIES:
                    reason = first_line(exc) if not isinstance(exc, _Retry) else "incomplete responses"
                    raise SvdtoolError(
                        f"lost the connection to the Hugging Face Hub while streaming {self.repo_id}/{file} "
                        f"({reason}): check the connection, or drop --stream to download the checkpoint"
                    ) from None
                time.sleep(min(2.0 ** (attempt - 1), 8.0))

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, info: TensorInfo) -> torch.Tensor:
        import torch

        start, code = self._places[(info.file, info.name)]
        if code not in _ITEMSIZE:
            raise SvdtoolError(f"{info.name}: safetensors dtype {code} cannot be streamed")
        dtype = _torch_dtype(code)
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        buf = bytearray(info.nbytes)  # the only copy: the response body is written straight into it
        with self._lock, hub_errors(self.repo_id, self.meta.revision, self.token):
            self._fetch_into(info.file, start, memoryview(buf))
        return torch.frombuffer(buf, dtype=dtype).reshape(info.shape)

    def close(self) -> None:
        # Release the keep-alive connections of huggingface_hub's shared client (re-created on next use).
        # Not under the lock: an interrupted run must not wait for a large read to finish.
        from huggingface_hub import close_session

        close_session()


class _Retry(Exception):
    """Internal: the request should be retried."""

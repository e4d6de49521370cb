"""Downloading model files into the cache: resumable, verified, atomic.

A model file is tens to hundreds of megabytes, fetched over networks that drop, from
servers that may change what they serve. So :func:`fetch`:

- **resumes**: bytes go to ``<filename>.part`` next to the final path. A later attempt
  (a retry after a dropped connection, or the next ``mlpi fetch`` after Ctrl-C or a
  network failure) asks for the rest with ``Range: bytes=<size of .part>-`` instead of
  starting over. A server that ignores ranges (200 instead of 206) gets a restart from
  zero; 416 means the ``.part`` already holds everything.
- **verifies**: the whole file is hashed against the artifact's ``md5:`` or ``sha256:``
  checksum before it is used. A mismatch deletes the ``.part`` (resuming a corrupt file
  can never succeed) and fails loudly with both checksums.
- **trusts on first use, recorded and shown**, a file with no published checksum
  (``checksum=None``: RNN-T's and DLRM-v2's checkpoints, which no MLCommons script checks):
  its sha256 is computed once it is complete, recorded in the sidecar as not published,
  and printed to stderr so it can be compared with another download. Only a size given
  in ``Artifact.size`` can be checked. :func:`recorded_checksum` reads the recorded hash
  back, and :func:`recorded_fingerprint` keys what is derived from such files on it.
- **is atomic**: only a verified file is renamed into place (``os.replace``), so the final
  path holds either nothing or a complete, verified file, whatever happens mid-download.
  A small ``<filename>.verified`` sidecar then records the checksum (``"published"``:
  whether it is the artifact's or one computed on first use) with the file's size and
  mtime, so :func:`cached` trusts the file later without re-hashing it on every run.

Concurrent fetches of the same artifact (two ``mlpi`` processes with a cold cache)
serialize on a ``<filename>.lock`` file where ``fcntl`` exists; the second one finds the
file cached when its turn comes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpi import __version__
from mlpi.core.contract.errors import MlpiError
from mlpi.core.engine.cache import cache_root
from mlpi.core.results.rundir import write_json_atomic

__all__ = [
    "NETWORK_HINT",
    "Artifact",
    "artifact_path",
    "cached",
    "fetch",
    "recorded_checksum",
    "recorded_fingerprint",
    "verify",
]

NETWORK_HINT = (
    "without network, pass --model-path FILE with a copy of the model, "
    "or --weights random for a performance-only run"
)
CORRUPT_HINT = "the download was corrupted or the file changed upstream; run `mlpi fetch` again"
DISK_HINT = "free some disk space, or set MLPI_CACHE to a writable folder with enough space"

_ALGORITHMS = {"md5": 32, "sha256": 64}
_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_RETRY_DELAY_S = 1.0  # first back-off; doubles per retry, capped at _RETRY_DELAY_MAX_S
_RETRY_DELAY_MAX_S = 10.0


#: What an artifact's main file is: an ONNX graph; an ONNX graph whose weights are its
#: companion files (external data); a framework checkpoint the model's ``convert`` turns
#: into ONNX graphs.
ARTIFACT_FORMATS = ("onnx", "onnx-external-data", "checkpoint")


@dataclass(frozen=True)
class Artifact:
    """A model's downloadable file(s): where from, what each must hash to, what they are.

    - ``name``: the cache sub-folder (``resnet50``); ``filename``: the main file's name in it.
    - ``checksum``: ``"md5:<32 hex>"`` or ``"sha256:<64 hex>"`` (normalized to lower case);
      ``None`` for a file with no published checksum: :func:`fetch` then trusts the first
      download, records its sha256 (:func:`recorded_checksum`) and prints it.
    - ``size``: bytes, when known: sizes the progress bar, and a file of another size is
      never trusted (the only check a file without a checksum gets).
    - ``format``: one of :data:`ARTIFACT_FORMATS`.
    - ``companions``: further files fetched into the same folder (external-data files,
      checkpoint shards, a vocabulary), each an ``Artifact`` with its own checksum (or
      ``None``). The artifact is cached only when every file is.
    """

    name: str
    filename: str
    url: str
    checksum: str | None
    size: int | None = None
    format: str = "onnx"
    companions: tuple[Artifact, ...] = ()

    @property
    def files(self) -> tuple[Artifact, ...]:
        """Every file to fetch: the companions, then the main file."""
        return (*self.companions, self)

    @property
    def fingerprint(self) -> str:
        """One digest over every file's name and published checksum: keys what is derived
        from them. It cannot know the content of a file without a published checksum; key
        on :func:`recorded_fingerprint` instead, which is this same digest when every
        checksum is published."""
        return _fingerprint((file.filename, file.checksum or "unpublished") for file in self.files)

    def __post_init__(self) -> None:
        if self.format not in ARTIFACT_FORMATS:
            raise ValueError(f"artifact format must be one of {', '.join(ARTIFACT_FORMATS)}, got {self.format!r}")
        object.__setattr__(self, "companions", tuple(self.companions))
        for companion in self.companions:
            if not isinstance(companion, Artifact) or companion.name != self.name or companion.companions:
                raise ValueError("an artifact's companions are plain Artifacts in the same cache folder (same name)")
        if len({f.filename for f in self.files}) != len(self.files):
            raise ValueError("an artifact's files need distinct file names")
        for field_name in ("name", "filename"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value:
                raise ValueError(f"artifact {field_name} must be a plain file name, got {value!r}")
        if self.checksum is not None:
            algorithm, digest = _parse_checksum(self.checksum)
            object.__setattr__(self, "checksum", f"{algorithm}:{digest}")
        scheme = urllib.parse.urlsplit(self.url).scheme.lower() if isinstance(self.url, str) else ""
        if scheme not in _SCHEMES:
            raise ValueError(f"artifact url must be http://, https:// or file://, got {self.url!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"artifact size must be a byte count or None, got {self.size!r}")


def artifact_path(artifact: Artifact) -> Path:
    """Where the artifact lives once fetched: ``<cache>/models/<name>/<filename>`` (not checked)."""
    return cache_root() / "models" / artifact.name / artifact.filename


def cached(artifact: Artifact) -> Path | None:
    """The main file's path if a complete, verified copy of every file is there, else ``None``.

    Cheap: it trusts the ``.verified`` sidecar written after a file was hashed, as long as
    the sidecar names this checksum (for a file without a published one: a sha256 recorded
    on first use) and the file still has the size and mtime recorded in it.
    """
    if any(_cached_file(companion) is None for companion in artifact.companions):
        return None
    return _cached_file(artifact)


def recorded_checksum(artifact: Artifact) -> str | None:
    """The checksum the cache vouches for the artifact's (main) file, ``None`` if it is not
    cached: the published checksum, or for a file without one the ``sha256:<hex>`` recorded
    when it was first fetched. Reads the sidecar only; hashes nothing."""
    entry = _cache_entry(artifact)
    return entry[1] if entry is not None else None


def recorded_fingerprint(artifact: Artifact) -> str | None:
    """:attr:`Artifact.fingerprint` over what is in the cache: a file without a published
    checksum counts with its recorded sha256, so a re-download that changes it changes the
    fingerprint. ``None`` when such a file is not cached. Equal to ``artifact.fingerprint``
    (and reads nothing) when every checksum is published."""
    if all(file.checksum is not None for file in artifact.files):
        return artifact.fingerprint
    checksums = []
    for file in artifact.files:
        checksum = file.checksum if file.checksum is not None else recorded_checksum(file)
        if checksum is None:
            return None
        checksums.append((file.filename, checksum))
    return _fingerprint(checksums)


def _fingerprint(checksums: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for filename, checksum in sorted(checksums):
        digest.update(f"{filename}:{checksum}\n".encode())
    return digest.hexdigest()


def _cached_file(artifact: Artifact) -> Path | None:
    entry = _cache_entry(artifact)
    return entry[0] if entry is not None else None


def _cache_entry(artifact: Artifact) -> tuple[Path, str] | None:
    """The file's path and the checksum its sidecar vouches for, if the sidecar still fits it."""
    path = artifact_path(artifact)
    try:
        stat = path.stat()
    except OSError:
        return None
    record = _read_sidecar(path)
    if record is None or not path.is_file():
        return None
    if artifact.size is not None and stat.st_size != artifact.size:
        return None
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    checksum = record.get("checksum")
    if artifact.checksum is None:
        checksum = _first_use_checksum(record)
        if checksum is None:
            return None
    elif checksum != artifact.checksum:
        return None
    return path, checksum


def verify(path: Path, checksum: str) -> bool:
    """Whether ``path`` hashes to ``checksum`` (``md5:...`` or ``sha256:...``), read in chunks.

    Raises ``ValueError`` for a malformed checksum (``None`` included: a file without a
    published checksum has nothing to verify against) and ``OSError`` if the file cannot
    be read.
    """
    algorithm, expected = _parse_checksum(checksum)
    return _digest(Path(path), algorithm) == expected


def fetch(artifact: Artifact, *, progress: bool = True, timeout: float = 30.0, retries: int = 3) -> Path:
    """Download every file of ``artifact`` into the cache (those not already there) and
    return the main file's path.

    ``timeout`` bounds each network wait (connect, each read); a connection that drops or
    stalls mid-download is resumed up to ``retries`` times. Raises :class:`MlpiError` when
    a file cannot be downloaded (the ``.part`` is kept for a later resume), when it does
    not match its checksum or declared size (the ``.part`` is deleted), or when the cache
    cannot be written.

    A file without a published checksum has its sha256 recorded, and one line printed to
    stderr naming it (even with ``progress=False``: it is what the cache now trusts).
    """
    for companion in artifact.companions:
        _fetch_file(companion, progress=progress, timeout=timeout, retries=retries)
    return _fetch_file(artifact, progress=progress, timeout=timeout, retries=retries)


def _fetch_file(artifact: Artifact, *, progress: bool, timeout: float, retries: int) -> Path:
    final = artifact_path(artifact)
    hit = _cached_file(artifact)
    if hit is not None:
        return hit
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MlpiError(f"cannot create cache folder {final.parent}: {_strerror(exc)}", DISK_HINT) from None
    with _locked(final, quiet=not progress):
        hit = _cached_file(artifact)  # another process may have fetched it while we waited
        if hit is not None:
            return hit
        if _adopt(artifact, final):
            return final
        part = final.with_name(final.name + ".part")
        with _Progress(artifact, enabled=progress) as bar:
            if urllib.parse.urlsplit(artifact.url).scheme.lower() == "file":
                _copy_local(artifact, part, bar)
            else:
                _download(artifact, part, bar, timeout=timeout, retries=max(0, retries))
        _install(artifact, part, final)
    return final


# -- checksums -----------------------------------------------------------------------------


def _parse_checksum(checksum: str | None) -> tuple[str, str]:
    if not isinstance(checksum, str) or ":" not in checksum:
        raise ValueError(f"checksum must look like 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
    algorithm, _, digest = checksum.partition(":")
    algorithm, digest = algorithm.strip().lower(), digest.strip().lower()
    length = _ALGORITHMS.get(algorithm)
    if length is None:
        raise ValueError(f"unsupported checksum algorithm {algorithm!r} in {checksum!r}: use sha256 or md5")
    if len(digest) != length or any(ch not in "0123456789abcdef" for ch in digest):
        raise ValueError(f"{algorithm} checksum must be {length} hex digits, got {digest!r}")
    return algorithm, digest


def _is_sha256(checksum: object) -> bool:
    """Whether ``checksum`` is a normalized ``sha256:<64 lower-case hex>``."""
    if not isinstance(checksum, str) or not checksum.startswith("sha256:"):
        return False
    digest = checksum.removeprefix("sha256:")
    return len(digest) == _ALGORITHMS["sha256"] and all(ch in "0123456789abcdef" for ch in digest)


def _digest(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm, usedforsecurity=False)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()


# -- the cache entry -----------------------------------------------------------------------


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _first_use_checksum(record: dict[str, Any] | None) -> str | None:
    """The sha256 a sidecar recorded on first use (computed here, marked not published)."""
    if record is None or record.get("published") is not False:
        return None
    checksum = record.get("checksum")
    return checksum if _is_sha256(checksum) else None


def _write_sidecar(artifact: Artifact, path: Path, checksum: str) -> None:
    """Vouch for ``path``: ``checksum`` is the artifact's own, or a sha256 computed on first use."""
    stat = path.stat()
    write_json_atomic(
        _sidecar(path),
        {
            "checksum": checksum, "published": artifact.checksum is not None,
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "url": artifact.url,
        },
    )


def _announce_first_use(artifact: Artifact, checksum: str) -> None:
    print(
        f"mlpi: {artifact.filename} has no published checksum; recorded {checksum} (compare it with another download)",
        file=sys.stderr,
    )


def _adopt(artifact: Artifact, final: Path) -> bool:
    """A file at the final path without a valid sidecar (a crash between rename and sidecar,
    or a copy put there by hand): keep it if it verifies, else remove it.

    A file without a published checksum is checked against the sha256 recorded on its first
    use when its sidecar still holds one (a file touched is kept, one changed is replaced);
    with no record, it is kept when its size fits, and its sha256 recorded as on first use."""
    if not final.is_file():
        return False
    try:
        if artifact.size is None or final.stat().st_size == artifact.size:
            if artifact.checksum is None:
                earlier = _first_use_checksum(_read_sidecar(final))
                actual = f"sha256:{_digest(final, 'sha256')}"
                if earlier is None or earlier == actual:
                    _write_sidecar(artifact, final, actual)
                    if earlier is None:
                        _announce_first_use(artifact, actual)
                    return True
            elif verify(final, artifact.checksum):
                _write_sidecar(artifact, final, artifact.checksum)
                return True
        _sidecar(final).unlink(missing_ok=True)
        final.unlink()
    except OSError:
        return False
    return False


def _install(artifact: Artifact, part: Path, final: Path) -> None:
    """Verify the finished ``.part`` and move it into place; a mismatch deletes it. Without
    a published checksum, its sha256 is computed and recorded instead (and its size, when
    declared, still has to match)."""
    if artifact.checksum is None:
        algorithm, expected = "sha256", None
    else:
        algorithm, expected = _parse_checksum(artifact.checksum)
    try:
        got_size = part.stat().st_size
        if expected is None and artifact.size is not None and got_size != artifact.size:
            with contextlib.suppress(OSError):
                part.unlink()
            raise MlpiError(
                f"{artifact.filename} from {artifact.url} is {got_size} bytes, not the {artifact.size} declared",
                CORRUPT_HINT,
            )
        actual = _digest(part, algorithm)
    except OSError as exc:
        raise MlpiError(f"cannot read {part}: {_strerror(exc)}", DISK_HINT) from None
    if expected is not None and actual != expected:
        with contextlib.suppress(OSError):
            part.unlink()
        raise MlpiError(
            f"{artifact.filename} from {artifact.url} does not match its checksum: "
            f"expected {algorithm}:{expected}, got {algorithm}:{actual}",
            CORRUPT_HINT,
        )
    checksum = f"{algorithm}:{actual}"
    try:
        _sidecar(final).unlink(missing_ok=True)
        os.replace(part, final)
        _write_sidecar(artifact, final, checksum)
    except OSError as exc:
        raise MlpiError(f"cannot write {final}: {_strerror(exc)}", DISK_HINT) from None
    if expected is None:
        _announce_first_use(artifact, checksum)


@contextlib.contextmanager
def _locked(final: Path, quiet: bool) -> Iterator[None]:
    """Hold ``<filename>.lock`` exclusively (POSIX); elsewhere, no lock."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent cold fetches of one artifact are not serialized
        yield
        return
    lock_path = final.with_name(final.name + ".lock")
    try:
        handle = open(lock_path, "a+b")
    except OSError as exc:
        raise MlpiError(f"cannot write {lock_path}: {_strerror(exc)}", DISK_HINT) from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"mlpi: waiting for another download of {final.name}", file=sys.stderr)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- transfer ------------------------------------------------------------------------------


class _TooLong(Exception):
    """The body is longer than the artifact's declared size."""


class _Transient(Exception):
    """The connection dropped or stalled mid-body: worth resuming."""


class _WriteError(Exception):
    """Writing the .part failed (disk full, permissions): not a network problem."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"cannot write {path}: {_strerror(error)}")


def _download(artifact: Artifact, part: Path, bar: _Progress, *, timeout: float, retries: int) -> None:
    failures = 0
    while True:
        try:
            _download_once(artifact, part, bar, timeout)
            return
        except _WriteError as exc:
            raise MlpiError(str(exc), DISK_HINT) from None
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} {exc.reason}".rstrip()
            exc.close()
            if exc.code not in _RETRY_STATUS or failures >= retries:
                raise _network_error(artifact, reason) from None
        except urllib.error.URLError as exc:
            reason = _describe(exc.reason)
            if not _transient_reason(exc.reason) or failures >= retries:
                raise _network_error(artifact, reason) from None
        except _Transient as exc:
            reason = str(exc)
            if failures >= retries:
                tries = f" ({failures + 1} attempts)" if failures else ""
                raise _network_error(artifact, f"{reason}{tries}") from None
        failures += 1
        bar.note(f"{artifact.filename}: {reason}; retrying ({failures}/{retries})")
        time.sleep(min(_RETRY_DELAY_S * 2 ** (failures - 1), _RETRY_DELAY_MAX_S))


def _download_once(artifact: Artifact, part: Path, bar: _Progress, timeout: float) -> None:
    """One request: append the rest to ``part`` (206) or rewrite it (200). Returns when the
    body is complete; raises ``_Transient`` when it is cut short."""
    offset = _size(part)
    if artifact.size is not None and offset > artifact.size:
        _truncate(part)
        offset = 0
    if artifact.size is not None and offset == artifact.size and offset > 0:
        return  # a previous run got every byte: go verify
    request = urllib.request.Request(
        artifact.url, headers={"User-Agent": f"mlpi/{__version__}", "Accept-Encoding": "identity"}
    )
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            exc.close()
            return  # nothing past the end of what we hold: the .part is complete
        raise
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        # urllib wraps only failures to connect; a server that accepts and then never
        # answers times out here, bare: worth another try, like a dropped connection
        raise _Transient(f"no answer from the server ({_describe(exc)})") from exc
    with response:
        status = response.status
        length = _int_header(response.headers.get("Content-Length"))
        if status == 206 and offset:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                _truncate(part)
                raise _Transient(f"server resumed at byte {start}, not {offset}")
            mode = "ab"
        elif status == 200 or (status == 206 and not offset):
            mode, offset = "wb", 0
            total = length if status == 200 else _content_range(response.headers.get("Content-Range"))[1]
        else:
            raise _network_error(artifact, f"unexpected HTTP status {status} {response.reason}".rstrip())
        bar.start(completed=offset, total=artifact.size if artifact.size is not None else total)
        limit = None if artifact.size is None else artifact.size - offset
        try:
            received = _stream(response, part, mode, bar, limit=limit)
        except _TooLong:
            _truncate(part)
            raise _network_error(artifact, f"the server sent more than the {artifact.size:,} bytes the file has "
                                           "(a different file?); nothing was kept") from None
    if length is not None and received < length:
        raise _Transient(f"connection closed after {offset + received} of {offset + length} bytes")
    if length is None and artifact.size is not None and offset + received < artifact.size:
        raise _Transient(f"connection closed after {offset + received} of {artifact.size} bytes")


def _stream(response: Any, part: Path, mode: str, bar: _Progress, limit: int | None = None) -> int:
    """Copy the response body into ``part``; every byte received is on disk when this raises.
    More than ``limit`` bytes (the declared size less what ``part`` held) raises ``_TooLong``
    at once, so a wrong or endless body never fills the disk."""
    received = 0
    # read1: hand over whatever has arrived, so a drop mid-chunk loses nothing already received
    read = getattr(response, "read1", response.read)
    try:
        out = open(part, mode)
    except OSError as exc:
        raise _WriteError(part, exc) from exc
    try:
        while True:
            try:
                chunk = read(_CHUNK)
            except (http.client.HTTPException, OSError) as exc:
                raise _Transient(f"connection dropped after {received} bytes of this response ({_describe(exc)})") from exc
            if not chunk:
                break
            if limit is not None and received + len(chunk) > limit:
                raise _TooLong
            try:
                out.write(chunk)
            except OSError as exc:
                raise _WriteError(part, exc) from exc
            received += len(chunk)
            bar.advance(len(chunk))
        try:
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:
            raise _WriteError(part, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            out.close()
    return received


def _copy_local(artifact: Artifact, part: Path, bar: _Progress) -> None:
    """A ``file://`` URL: copy into ``part`` from the start (local reads need no resume)."""
    split = urllib.parse.urlsplit(artifact.url)
    if split.netloc not in ("", "localhost"):
        raise _network_error(artifact, f"file:// URLs must name a local path, not host {split.netloc!r}")
    source = Path(urllib.request.url2pathname(split.path))
    try:
        handle = open(source, "rb")
    except OSError as exc:
        raise _network_error(artifact, _strerror(exc)) from None
    with handle:
        try:
            total = os.fstat(handle.fileno()).st_size
        except OSError:
            total = None
        bar.start(completed=0, total=artifact.size if artifact.size is not None else total)
        try:
            _stream(handle, part, "wb", bar, limit=artifact.size)
        except _WriteError as exc:
            raise MlpiError(str(exc), DISK_HINT) from None
        except _Transient as exc:
            raise _network_error(artifact, str(exc)) from None
        except _TooLong:
            _truncate(part)
            raise _network_error(artifact, f"{source} holds more than the {artifact.size:,} bytes the file has; "
                                           "nothing was kept") from None


def _network_error(artifact: Artifact, reason: str) -> MlpiError:
    return MlpiError(f"cannot download {artifact.name} from {artifact.url}: {reason}", hint=NETWORK_HINT)


def _transient_reason(reason: object) -> bool:
    """Errors before the body worth another try: timeouts and resets, not DNS or refusals."""
    return isinstance(reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError, http.client.RemoteDisconnected))


def _describe(reason: object) -> str:
    import socket

    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name ({reason.strerror or reason})"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(reason, OSError):
        return _strerror(reason)
    if isinstance(reason, http.client.IncompleteRead):
        return "incomplete read"
    return str(reason) or type(reason).__name__


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _truncate(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/200`` -> ``(100, 200)``; parts that are missing or ``*`` are ``None``."""
    if not value:
        return None, None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None, None
    span, _, total = spec.partition("/")
    start = _int_header(span.partition("-")[0].strip())
    return start, _int_header(total.strip()) if total.strip() != "*" else None


# -- progress ------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar on stderr when it is a terminal; one plain line otherwise."""

    def __init__(self, artifact: Artifact, enabled: bool) -> None:
        self.artifact = artifact
        self.enabled = enabled
        self._console: Any = None
        self._progress: Any = None
        self._task: Any = None
        self._announced = False

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False, soft_wrap=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, *, completed: int, total: int | None) -> None:
        """(Re)start the bar at ``completed`` of ``total`` bytes; called once per attempt."""
        if not self.enabled:
            return
        if not self._console.is_terminal:
            if not self._announced:
                size = f" ({total / 1e6:.1f} MB)" if total else ""
                resume = f", resuming at {completed / 1e6:.1f} MB" if completed else ""
                self._console.print(f"mlpi: downloading {self.artifact.filename}{size} from {self.artifact.url}{resume}")
                self._announced = True
            return
        if self._progress is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.artifact.filename, total=total, completed=completed)
        else:
            self._progress.reset(self._task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def note(self, message: str) -> None:
        if self.enabled and self._console is not None:
            self._console.print(f"mlpi: {message}")

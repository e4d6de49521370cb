"""mlpi.core.engine.artifacts: downloads that resume, verify and land atomically.

A real HTTP server on 127.0.0.1 serves the bodies; each route can be told to drop the
connection mid-body, stall, ignore Range, answer an error status, or serve other bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from mlpi.core.contract.errors import MlpiError
from mlpi.core.engine import artifacts
from mlpi.core.engine.artifacts import (
    Artifact,
    artifact_path,
    cached,
    fetch,
    recorded_checksum,
    recorded_fingerprint,
    verify,
)

BODY = os.urandom(2_000_000) + b"tail"  # ~2 MB: several read chunks, so resume is meaningful
OTHER = os.urandom(len(BODY))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


# -- the server --------------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes
    status: int | None = None  # always answer this error status
    first_statuses: list[int] = field(default_factory=list)  # the i-th request gets first_statuses[i]
    ignore_range: bool = False  # always 200 with the whole body
    drop_after: int | None = None  # send this many body bytes, then misbehave (see drop_mode)
    drop_mode: str = "close"  # close: FIN; reset: RST; stall: send nothing more for a while
    drop_every: bool = False  # drop on every request, not only the first
    chunk_delay: float = 0.0  # seconds between 64 KiB chunks (a slow server)
    silent_first: bool = False  # the first request is accepted and never answered (until teardown)


class FakeServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends stalls at teardown
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def requests_for(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        with fake.lock:
            index = sum(1 for r in fake.requests if r["path"] == self.path)
            fake.requests.append(
                {"path": self.path, "range": self.headers.get("Range"), "user_agent": self.headers.get("User-Agent")}
            )
        route = fake.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if route.silent_first and index == 0:
            fake.release.wait(5)
            self.close_connection = True
            return
        status = route.first_statuses[index] if index < len(route.first_statuses) else route.status
        if status is not None:
            self.send_error(status)
            return
        body, start, code = route.body, 0, 200
        requested = self.headers.get("Range")
        if requested and not route.ignore_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206
        payload = body[start:]
        self.send_response(code)
        self.send_header("Content-Length", str(len(payload)))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if route.drop_after is not None and (route.drop_every or index == 0):
            self.wfile.write(payload[: route.drop_after])
            self.wfile.flush()
            self.close_connection = True
            if route.drop_mode == "stall":
                fake.release.wait(5)
            elif route.drop_mode == "reset":
                time.sleep(0.2)  # let the client read what was sent before the RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            return  # "close": the server shuts the socket down after the handler (FIN mid-body)
        for offset in range(0, len(payload), 65536):
            self.wfile.write(payload[offset : offset + 65536])
            if route.chunk_delay:
                time.sleep(route.chunk_delay)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.thread.start()
    yield fake
    fake.release.set()
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MLPI_CACHE", str(root))
    monkeypatch.setattr(artifacts, "_RETRY_DELAY_S", 0.0)
    return root


def art(url: str, body: bytes = BODY, *, checksum: str | None = None, size: int | None = None, name: str = "m") -> Artifact:
    return Artifact(name=name, filename="model.onnx", url=url, checksum=checksum or sha256(body), size=size)


def part_of(artifact: Artifact) -> Path:
    final = artifact_path(artifact)
    return final.with_name(final.name + ".part")


def sidecar_of(artifact: Artifact) -> Path:
    final = artifact_path(artifact)
    return final.with_name(final.name + ".verified")


def assert_network_error(exc: MlpiError, artifact: Artifact) -> None:
    assert exc.message.startswith(f"cannot download {artifact.name} from {artifact.url}: ")
    assert exc.hint is not None and "--model-path" in exc.hint and "--weights random" in exc.hint
    assert not artifact_path(artifact).exists()
    assert cached(artifact) is None


# -- fresh downloads and the cache -------------------------------------------------------------


def test_fresh_download_lands_verified_with_sidecar(server: FakeServer, cache: Path) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)), size=len(BODY))
    path = fetch(artifact, progress=False)
    assert path == cache / "models" / "m" / "model.onnx" == artifact_path(artifact)
    assert path.read_bytes() == BODY
    record = json.loads(sidecar_of(artifact).read_text())
    assert record["checksum"] == artifact.checksum
    assert record["size"] == len(BODY) and record["mtime_ns"] == path.stat().st_mtime_ns
    assert not part_of(artifact).exists()
    assert cached(artifact) == path
    (request,) = server.requests_for("/m.onnx")
    assert request["range"] is None
    assert request["user_agent"].startswith("mlpi/")


def test_second_fetch_makes_no_request(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)))
    first = fetch(artifact, progress=False)
    server.routes["/m.onnx"] = Route(b"", status=500)  # any request now would fail the fetch
    assert fetch(artifact, progress=False) == first
    assert len(server.requests_for("/m.onnx")) == 1


def test_cached_is_none_before_fetch_and_for_file_without_sidecar(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)))
    assert cached(artifact) is None
    final = artifact_path(artifact)
    final.parent.mkdir(parents=True)
    final.write_bytes(BODY)  # right bytes, but nobody vouched for them
    assert cached(artifact) is None
    # fetch hashes the unvouched file instead of downloading it again
    assert fetch(artifact, progress=False) == final
    assert server.requests_for("/m.onnx") == []
    assert cached(artifact) == final


def test_wrong_file_without_sidecar_is_replaced(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)))
    final = artifact_path(artifact)
    final.parent.mkdir(parents=True)
    final.write_bytes(OTHER)
    assert fetch(artifact, progress=False).read_bytes() == BODY
    assert len(server.requests_for("/m.onnx")) == 1


def test_cached_rejects_sidecar_with_other_checksum(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)))
    path = fetch(artifact, progress=False)
    record = json.loads(sidecar_of(artifact).read_text())
    record["checksum"] = sha256(OTHER)
    sidecar_of(artifact).write_text(json.dumps(record))
    assert cached(artifact) is None
    sidecar_of(artifact).write_text("not json")
    assert cached(artifact) is None
    # the file is still right: fetch re-verifies it locally and rewrites the sidecar
    assert fetch(artifact, progress=False) == path
    assert len(server.requests_for("/m.onnx")) == 1
    assert json.loads(sidecar_of(artifact).read_text())["checksum"] == artifact.checksum


def test_cached_rejects_changed_size_or_mtime(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)))  # size unknown: only the sidecar can tell
    path = fetch(artifact, progress=False)
    stat = path.stat()
    with open(path, "ab") as handle:
        handle.write(b"x")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime, other size
    assert cached(artifact) is None

    path.write_bytes(OTHER)  # same size, other bytes, other mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert path.stat().st_size == stat.st_size
    assert cached(artifact) is None
    assert fetch(artifact, progress=False).read_bytes() == BODY  # replaced by a fresh download


def test_cached_rejects_size_other_than_declared(server: FakeServer) -> None:
    url = server.add("/m.onnx", Route(BODY))
    fetch(art(url), progress=False)
    assert cached(art(url)) is not None
    assert cached(art(url, size=len(BODY) + 1)) is None


# -- resume ------------------------------------------------------------------------------------


def test_resume_after_connection_closed_mid_body(server: FakeServer) -> None:
    dropped_at = 700_001
    artifact = art(server.add("/m.onnx", Route(BODY, drop_after=dropped_at)), size=len(BODY))
    path = fetch(artifact, progress=False, retries=1)
    first, second = server.requests_for("/m.onnx")
    assert first["range"] is None
    assert second["range"] == f"bytes={dropped_at}-"
    assert path.read_bytes() == BODY
    assert not part_of(artifact).exists()


def test_resume_when_size_unknown_relies_on_content_length(server: FakeServer) -> None:
    dropped_at = 1_234_567
    artifact = art(server.add("/m.onnx", Route(BODY, drop_after=dropped_at)))  # no size given
    assert fetch(artifact, progress=False, retries=1).read_bytes() == BODY
    assert [r["range"] for r in server.requests_for("/m.onnx")] == [None, f"bytes={dropped_at}-"]


def test_resume_after_connection_reset(server: FakeServer) -> None:
    dropped_at = 900_000
    artifact = art(server.add("/m.onnx", Route(BODY, drop_after=dropped_at, drop_mode="reset")))
    assert fetch(artifact, progress=False, retries=1).read_bytes() == BODY
    first, second = server.requests_for("/m.onnx")
    assert second["range"] is not None
    assert 0 < int(second["range"].removeprefix("bytes=").rstrip("-")) <= dropped_at


def test_resume_after_stalled_connection_times_out(server: FakeServer) -> None:
    dropped_at = 500_000
    artifact = art(server.add("/m.onnx", Route(BODY, drop_after=dropped_at, drop_mode="stall")))
    started = time.monotonic()
    assert fetch(artifact, progress=False, timeout=0.5, retries=1).read_bytes() == BODY
    assert time.monotonic() - started < 4  # the timeout fired; we did not wait out the stall
    assert [r["range"] for r in server.requests_for("/m.onnx")] == [None, f"bytes={dropped_at}-"]


def test_a_server_that_never_answers_is_retried_not_an_internal_error(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY, silent_first=True)))
    started = time.monotonic()
    assert fetch(artifact, progress=False, timeout=0.5, retries=1).read_bytes() == BODY
    assert time.monotonic() - started < 4
    assert len(server.requests_for("/m.onnx")) == 2
    silent = art(server.add("/s.onnx", Route(BODY, silent_first=True)), name="s")
    with pytest.raises(MlpiError) as info:
        fetch(silent, progress=False, timeout=0.3, retries=0)
    assert_network_error(info.value, silent)
    assert "no answer from the server (timed out)" in info.value.message


def test_a_body_longer_than_the_declared_size_stops_there(server: FakeServer, tmp_path: Path) -> None:
    longer = BODY + OTHER * 4  # 10 MB for a 2 MB file
    artifact = art(server.add("/m.onnx", Route(longer)), size=len(BODY))
    with pytest.raises(MlpiError) as info:
        fetch(artifact, progress=False)
    assert_network_error(info.value, artifact)
    assert f"more than the {len(BODY):,} bytes" in info.value.message
    assert not part_of(artifact).exists()
    source = tmp_path / "big.onnx"
    source.write_bytes(longer)
    local = art(source.as_uri(), size=len(BODY), name="local")
    with pytest.raises(MlpiError, match="holds more than"):
        fetch(local, progress=False)
    assert not part_of(local).exists() and not artifact_path(local).exists()


def test_retries_exhausted_keeps_part_and_next_fetch_resumes(server: FakeServer) -> None:
    step = 300_000
    url = server.add("/m.onnx", Route(BODY, drop_after=step, drop_every=True))
    artifact = art(url, size=len(BODY))
    with pytest.raises(MlpiError) as info:
        fetch(artifact, progress=False, retries=2)
    assert_network_error(info.value, artifact)
    requests = server.requests_for("/m.onnx")
    assert [r["range"] for r in requests] == [None, f"bytes={step}-", f"bytes={2 * step}-"]
    assert part_of(artifact).read_bytes() == BODY[: 3 * step]  # every resumed byte in its place

    server.routes["/m.onnx"] = Route(BODY)
    assert fetch(artifact, progress=False).read_bytes() == BODY
    assert server.requests_for("/m.onnx")[-1]["range"] == f"bytes={3 * step}-"


def test_server_ignoring_range_restarts_from_zero(server: FakeServer) -> None:
    dropped_at = 600_000
    artifact = art(server.add("/m.onnx", Route(BODY, drop_after=dropped_at, ignore_range=True)))
    path = fetch(artifact, progress=False, retries=1)
    assert server.requests_for("/m.onnx")[1]["range"] == f"bytes={dropped_at}-"  # asked, got 200
    assert path.read_bytes() == BODY  # not the first 600 kB twice


def test_416_means_part_is_complete(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)))  # size unknown, so ask the server
    part = part_of(artifact)
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY)
    assert fetch(artifact, progress=False).read_bytes() == BODY
    assert [r["range"] for r in server.requests_for("/m.onnx")] == [f"bytes={len(BODY)}-"]
    assert not part.exists()


def test_complete_part_of_known_size_needs_no_request(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(b"", status=500)), size=len(BODY))
    part = part_of(artifact)
    part.parent.mkdir(parents=True)
    part.write_bytes(BODY)
    assert fetch(artifact, progress=False).read_bytes() == BODY
    assert server.requests_for("/m.onnx") == []


def test_server_error_is_retried(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY, first_statuses=[503])))
    assert fetch(artifact, progress=False, retries=1).read_bytes() == BODY
    assert len(server.requests_for("/m.onnx")) == 2


# -- failures ----------------------------------------------------------------------------------


def test_checksum_mismatch_leaves_nothing(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(OTHER)), checksum=sha256(BODY))
    with pytest.raises(MlpiError) as info:
        fetch(artifact, progress=False)
    message = info.value.message
    assert "model.onnx" in message
    assert sha256(BODY) in message and sha256(OTHER) in message
    assert info.value.hint == artifacts.CORRUPT_HINT
    assert not artifact_path(artifact).exists()
    assert not part_of(artifact).exists()
    assert not sidecar_of(artifact).exists()


def test_corrupt_part_is_discarded_and_next_fetch_recovers(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)))
    part = part_of(artifact)
    part.parent.mkdir(parents=True)
    part.write_bytes(OTHER[:1000])  # a .part whose bytes are not the file's start
    with pytest.raises(MlpiError, match="does not match its checksum"):
        fetch(artifact, progress=False)
    assert not part.exists() and not artifact_path(artifact).exists()
    assert fetch(artifact, progress=False).read_bytes() == BODY
    assert [r["range"] for r in server.requests_for("/m.onnx")] == ["bytes=1000-", None]


def test_http_404_is_a_network_error(server: FakeServer) -> None:
    artifact = art(server.add("/missing.onnx", Route(b"", status=404)))
    with pytest.raises(MlpiError) as info:
        fetch(artifact, progress=False)
    assert "404" in info.value.message
    assert_network_error(info.value, artifact)
    assert len(server.requests_for("/missing.onnx")) == 1  # a 404 is not retried


def test_connection_refused_is_a_network_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    artifact = art(f"http://127.0.0.1:{port}/m.onnx")
    with pytest.raises(MlpiError) as info:
        fetch(artifact, progress=False)
    assert "refused" in info.value.message
    assert_network_error(info.value, artifact)


# -- checksums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("checksum_of", [md5, sha256], ids=["md5", "sha256"])
def test_md5_and_sha256(server: FakeServer, checksum_of: Any, tmp_path: Path) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY)), checksum=checksum_of(BODY))
    assert fetch(artifact, progress=False).read_bytes() == BODY
    sample = tmp_path / "sample.bin"
    sample.write_bytes(BODY)
    assert verify(sample, checksum_of(BODY))
    assert not verify(sample, checksum_of(OTHER))
    assert verify(sample, checksum_of(BODY).upper().replace("MD5:", "md5:").replace("SHA256:", "sha256:"))

    wrong = art(server.add("/other.onnx", Route(OTHER)), checksum=checksum_of(BODY), name="other")
    with pytest.raises(MlpiError) as info:
        fetch(wrong, progress=False)
    assert checksum_of(OTHER) in info.value.message


@pytest.mark.parametrize(
    "checksum",
    [
        "",
        "abc",
        "0" * 64,  # no algorithm
        "sha1:" + "0" * 40,
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "md5:" + "0" * 64,
        "sha256:" + "g" * 64,
    ],
)
def test_invalid_checksum_is_value_error(checksum: str) -> None:
    with pytest.raises(ValueError):
        Artifact(name="m", filename="model.onnx", url="https://example.com/m.onnx", checksum=checksum)
    if checksum:
        with pytest.raises(ValueError):
            verify(Path(__file__), checksum)


def test_artifact_normalizes_checksum_and_rejects_bad_fields() -> None:
    upper = Artifact(name="m", filename="f", url="https://example.com/f", checksum="SHA256:" + "AB" * 32)
    assert upper.checksum == "sha256:" + "ab" * 32
    good = {"name": "m", "filename": "f", "url": "https://example.com/f", "checksum": "md5:" + "0" * 32}
    for bad in ({"name": "../x"}, {"filename": "a/b"}, {"filename": ""}, {"url": "ftp://x/f"}, {"size": -1}):
        with pytest.raises(ValueError):
            Artifact(**{**good, **bad})


# -- file:// and output ------------------------------------------------------------------------


def test_file_url(tmp_path: Path) -> None:
    source = tmp_path / "mirror" / "model file.onnx"
    source.parent.mkdir()
    source.write_bytes(BODY)
    artifact = art(source.as_uri(), size=len(BODY))
    path = fetch(artifact, progress=False)
    assert path.read_bytes() == BODY
    assert cached(artifact) == path and not part_of(artifact).exists()

    wrong = art(source.as_uri(), checksum=sha256(OTHER), name="wrong")
    with pytest.raises(MlpiError, match="does not match its checksum"):
        fetch(wrong, progress=False)
    assert not artifact_path(wrong).exists() and not part_of(wrong).exists()

    missing = art((tmp_path / "nope.onnx").as_uri(), name="missing")
    with pytest.raises(MlpiError) as info:
        fetch(missing, progress=False)
    assert_network_error(info.value, missing)


def test_progress_without_terminal(server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    artifact = art(server.add("/m.onnx", Route(BODY, drop_after=100_000)), size=len(BODY))
    assert fetch(artifact, progress=True, retries=1).read_bytes() == BODY
    err = capsys.readouterr().err
    assert "downloading model.onnx" in err and "retrying" in err
    assert "\x1b[" not in err  # no escape codes into a log file


def test_progress_bar_on_terminal(server: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats stderr as a terminal
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    artifact = art(server.add("/m.onnx", Route(BODY)), size=len(BODY))
    assert fetch(artifact, progress=True).read_bytes() == BODY
    err = capsys.readouterr().err
    assert "model.onnx" in err and "2.0" in err  # the bar's description and its MB count


def test_progress_false_prints_nothing(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fetch(art(server.add("/m.onnx", Route(BODY, drop_after=100_000))), progress=False, retries=1)
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(os.name != "posix", reason="the download lock uses fcntl")
def test_concurrent_fetches_download_once(server: FakeServer) -> None:
    artifact = art(server.add("/m.onnx", Route(BODY, chunk_delay=0.005)))
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(fetch(artifact, progress=False))
        except BaseException as exc:  # surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [artifact_path(artifact)] * 2
    assert artifact_path(artifact).read_bytes() == BODY
    assert len(server.requests_for("/m.onnx")) == 1


# -- no published checksum: trust on first use, recorded and shown --------------------------------


def unpublished(url: str, *, size: int | None = None, name: str = "m", filename: str = "model.onnx") -> Artifact:
    return Artifact(name=name, filename=filename, url=url, checksum=None, size=size)


def first_use_line(filename: str, data: bytes) -> str:
    return (
        f"mlpi: {filename} has no published checksum; recorded {sha256(data)} (compare it with another download)\n"
    )


@pytest.fixture
def digests(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the artifacts module hashes, in order."""
    seen: list[Path] = []
    real = artifacts._digest

    def spy(path: Path, algorithm: str) -> str:
        seen.append(Path(path))
        return real(path, algorithm)

    monkeypatch.setattr(artifacts, "_digest", spy)
    return seen


@pytest.fixture(params=["http", "file"])
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Make a URL serving given bytes, over a local HTTP server or as a file:// URL."""
    if request.param == "file":
        def make(body: bytes) -> str:
            source = tmp_path / "mirror" / "model.onnx"
            source.parent.mkdir(exist_ok=True)
            source.write_bytes(body)
            return source.as_uri()

        yield make
        return
    fake = request.getfixturevalue("server")

    def serve(body: bytes) -> str:
        return fake.add("/m.onnx", Route(body))

    yield serve


def test_unpublished_checksum_is_recorded_and_shown(
    source_url: Any, cache: Path, capsys: pytest.CaptureFixture[str], digests: list[Path]
) -> None:
    artifact = unpublished(source_url(BODY), size=len(BODY))
    assert artifact.checksum is None
    assert recorded_checksum(artifact) is None and recorded_fingerprint(artifact) is None
    path = fetch(artifact, progress=False)
    assert path.read_bytes() == BODY
    assert capsys.readouterr().err == first_use_line("model.onnx", BODY)
    record = json.loads(sidecar_of(artifact).read_text())
    assert record["checksum"] == sha256(BODY) and record["published"] is False
    assert record["size"] == len(BODY) and record["mtime_ns"] == path.stat().st_mtime_ns
    assert cached(artifact) == path and not part_of(artifact).exists()
    assert recorded_checksum(artifact) == sha256(BODY)
    assert len(digests) == 1, "hashed once, as a published checksum would be"

    # the second fetch (and every lookup) trusts the sidecar: no hashing, no line, no request
    assert fetch(artifact, progress=False) == path
    assert cached(artifact) == path and recorded_checksum(artifact) == sha256(BODY)
    assert len(digests) == 1
    assert capsys.readouterr().err == ""


def test_second_fetch_of_unpublished_makes_no_request(server: FakeServer, digests: list[Path]) -> None:
    artifact = unpublished(server.add("/m.onnx", Route(BODY)))
    first = fetch(artifact, progress=False)
    server.routes["/m.onnx"] = Route(b"", status=500)
    assert fetch(artifact, progress=False) == first
    assert len(server.requests_for("/m.onnx")) == 1 and len(digests) == 1


def test_unpublished_resumed_download_records_the_whole_files_hash(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    step = 300_000
    url = server.add("/m.onnx", Route(BODY, drop_after=step, drop_every=True))
    artifact = unpublished(url)
    with pytest.raises(MlpiError):
        fetch(artifact, progress=False, retries=1)
    assert part_of(artifact).read_bytes() == BODY[: 2 * step]
    assert recorded_checksum(artifact) is None
    assert capsys.readouterr().err == ""  # nothing recorded for a part

    server.routes["/m.onnx"] = Route(BODY)
    assert fetch(artifact, progress=False).read_bytes() == BODY
    assert server.requests_for("/m.onnx")[-1]["range"] == f"bytes={2 * step}-"
    assert recorded_checksum(artifact) == sha256(BODY)
    assert capsys.readouterr().err == first_use_line("model.onnx", BODY)


def test_unpublished_still_checks_a_declared_size(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = unpublished(server.add("/m.onnx", Route(BODY)), size=len(BODY) + 1)
    with pytest.raises(MlpiError) as info:
        fetch(artifact, progress=False)
    assert f"is {len(BODY)} bytes, not the {len(BODY) + 1} declared" in info.value.message
    assert info.value.hint == artifacts.CORRUPT_HINT
    assert not artifact_path(artifact).exists() and not part_of(artifact).exists()
    assert not sidecar_of(artifact).exists() and capsys.readouterr().err == ""

    right = unpublished(server.add("/m.onnx", Route(BODY)), size=len(BODY))
    fetch(right, progress=False)
    assert cached(right) is not None
    assert cached(unpublished(right.url, size=len(BODY) - 1)) is None


def test_unpublished_sidecar_must_be_a_first_use_sha256(server: FakeServer) -> None:
    url = server.add("/m.onnx", Route(BODY))
    artifact = unpublished(url)
    path = fetch(artifact, progress=False)
    record = json.loads(sidecar_of(artifact).read_text())
    for bad in ({"published": True}, {"checksum": md5(BODY)}, {"checksum": "sha256:xyz"}, {"published": None}):
        sidecar_of(artifact).write_text(json.dumps({**record, **bad}))
        assert cached(artifact) is None and recorded_checksum(artifact) is None
    # a file fetched under a published checksum is cached for that artifact, not the unpublished one
    published = art(url)
    sidecar_of(artifact).unlink()
    assert fetch(published, progress=False) == path and cached(published) == path
    assert cached(artifact) is None
    assert json.loads(sidecar_of(artifact).read_text())["published"] is True
    # ...and an unpublished first-use record whose hash is the published one is trusted for it
    sidecar_of(artifact).write_text(json.dumps(record))
    assert cached(artifact) == path == cached(published)


def test_unpublished_file_without_sidecar_is_adopted_and_shown(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = unpublished(server.add("/m.onnx", Route(BODY)), size=len(BODY))
    final = artifact_path(artifact)
    final.parent.mkdir(parents=True)
    final.write_bytes(OTHER)  # a copy put there by hand: nothing to check it against but its size
    assert cached(artifact) is None
    assert fetch(artifact, progress=False) == final
    assert server.requests_for("/m.onnx") == []
    assert recorded_checksum(artifact) == sha256(OTHER)
    assert capsys.readouterr().err == first_use_line("model.onnx", OTHER)

    wrong_size = unpublished(server.add("/w.onnx", Route(BODY)), size=len(BODY), name="w")
    artifact_path(wrong_size).parent.mkdir(parents=True)
    artifact_path(wrong_size).write_bytes(BODY[:10])
    assert fetch(wrong_size, progress=False).read_bytes() == BODY  # replaced by a download
    assert len(server.requests_for("/w.onnx")) == 1


def test_unpublished_file_touched_is_kept_and_changed_is_fetched_again(
    server: FakeServer, capsys: pytest.CaptureFixture[str], digests: list[Path]
) -> None:
    artifact = unpublished(server.add("/m.onnx", Route(BODY)))
    path = fetch(artifact, progress=False)
    capsys.readouterr()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same bytes, touched
    assert cached(artifact) is None
    assert fetch(artifact, progress=False) == path
    assert len(server.requests_for("/m.onnx")) == 1 and len(digests) == 2  # re-hashed, not re-downloaded
    assert recorded_checksum(artifact) == sha256(BODY) and capsys.readouterr().err == ""

    path.write_bytes(OTHER)  # changed since its hash was recorded: not trusted, fetched again
    assert cached(artifact) is None
    assert fetch(artifact, progress=False).read_bytes() == BODY
    assert len(server.requests_for("/m.onnx")) == 2
    assert recorded_checksum(artifact) == sha256(BODY)
    assert capsys.readouterr().err == first_use_line("model.onnx", BODY)


def test_unpublished_companions_and_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ckpt.pt").write_bytes(BODY)
    (mirror / "vocab.txt").write_bytes(b"a\nb\n")
    vocab = unpublished((mirror / "vocab.txt").as_uri(), filename="vocab.txt", name="c")
    main = Artifact("c", "ckpt.pt", (mirror / "ckpt.pt").as_uri(), None, format="checkpoint", companions=(vocab,))
    assert recorded_fingerprint(main) is None
    path = fetch(main, progress=False)
    assert capsys.readouterr().err == first_use_line("vocab.txt", b"a\nb\n") + first_use_line("ckpt.pt", BODY)
    assert cached(main) == path
    assert recorded_checksum(vocab) == sha256(b"a\nb\n") and recorded_checksum(main) == sha256(BODY)
    fingerprint = recorded_fingerprint(main)
    # the same digest as Artifact.fingerprint of an artifact publishing these very checksums
    published_vocab = Artifact("c", "vocab.txt", vocab.url, sha256(b"a\nb\n"))
    published = Artifact("c", "ckpt.pt", main.url, sha256(BODY), format="checkpoint", companions=(published_vocab,))
    assert fingerprint == published.fingerprint == recorded_fingerprint(published)
    assert main.fingerprint != fingerprint  # the static one cannot know the files
    artifact_path(vocab).unlink()
    assert cached(main) is None and recorded_fingerprint(main) is None


def test_fingerprint_of_published_checksums_is_unchanged() -> None:
    """Converted graphs already in caches are kept under this digest: it must not move."""
    vocab = Artifact("c", "vocab.txt", "https://example.com/v", md5(b"v"))
    main = Artifact("c", "ckpt.pt", "https://example.com/c", sha256(b"c"), format="checkpoint", companions=(vocab,))
    digest = hashlib.sha256()
    for filename, checksum in sorted([("ckpt.pt", sha256(b"c")), ("vocab.txt", md5(b"v"))]):
        digest.update(f"{filename}:{checksum}\n".encode())
    assert main.fingerprint == digest.hexdigest() == recorded_fingerprint(main)  # no cache needed


def test_verify_has_nothing_to_check_without_a_checksum(tmp_path: Path) -> None:
    sample = tmp_path / "sample.bin"
    sample.write_bytes(BODY)
    with pytest.raises(ValueError):
        verify(sample, None)  # type: ignore[arg-type]

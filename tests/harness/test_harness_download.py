"""HTTPS downloads against a real HTTP server on 127.0.0.1: resume with Range, checksums."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlperf_harness.download import fetch_https
from mlperf_harness.errors import HarnessError
from mlperf_harness.spec import HttpsSource

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    def __init__(self) -> None:
        self.requests: list[str | None] = []  # the Range header of each request
        self.cut_first = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = PAYLOAD[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_first:
                    server.cut_first = False
                    self.wfile.write(body[: len(body) // 3])  # the connection drops a third of the way
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/resnet50_v1.onnx"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_download_resumes_with_range_and_verifies(server: Server, tmp_path: Path) -> None:
    path = fetch_https(HttpsSource(url=server.url, sha256=SHA), tmp_path, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0] is None
    assert server.requests[1] is not None and server.requests[1].startswith("bytes=")
    assert int(server.requests[1].split("=")[1].rstrip("-")) > 0  # resumed, not restarted
    assert not list(tmp_path.glob("*.part"))


def test_checksum_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.cut_first = False
    with pytest.raises(HarnessError) as err:
        fetch_https(HttpsSource(url=server.url, sha256="0" * 64), tmp_path, quiet=True)
    assert str(err.value).startswith("resnet50_v1.onnx: checksum mismatch")
    assert list(tmp_path.iterdir()) == []


def test_existing_verified_file_is_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    server.cut_first = False
    fetch_https(HttpsSource(url=server.url, sha256=SHA), tmp_path, quiet=True)
    fetch_https(HttpsSource(url=server.url, sha256=SHA), tmp_path, quiet=True)
    assert len(server.requests) == 1


def test_http_error_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"resnet50_v1\.onnx: download from"):
        fetch_https(
            HttpsSource(url="http://127.0.0.1:9/resnet50_v1.onnx", sha256=SHA), tmp_path, quiet=True, attempts=2
        )


@pytest.mark.parametrize("name", ["resnet50", "bert", "3d-unet"])
def test_a_model_from_a_pvc_folder_or_file_lands_under_its_official_name(name: str, tmp_path: Path) -> None:
    """download.fetch_file, as each benchmark's download-model calls it for a real source (ssd-resnet34
    refuses a given small model: its run preprocesses for the official 1200x1200)."""
    from mlperf_harness.benchmarks import get_benchmark
    from mlperf_harness.spec import Source

    bench = get_benchmark(name)
    made = bench.prepare_model(Source.model_validate({"synthetic": {}}), tmp_path / "made", quiet=True)
    for where, path in (("folder", made.parent), ("file", made)):
        source = Source.model_validate({"pvc": {"claimName": "models", "path": str(path)}})
        got = bench.prepare_model(source, tmp_path / where, quiet=True)
        assert got == tmp_path / where / made.name and got.read_bytes() == made.read_bytes()

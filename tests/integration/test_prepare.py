"""`mltrain data prepare` downloading from a real HTTP server (a static file server on 127.0.0.1)."""

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mltrain.data.layout import check_layout
from mltrain.data.prepare import prepare
from tests.unit.test_prepare import _food11_zip

pytestmark = pytest.mark.integration


def test_prepare_downloads_over_http(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    folder, base_url = http_dir
    _food11_zip(folder)
    report = prepare(tmp_path / "data", url=f"{base_url}/food11.zip", progress=False)
    assert report.downloaded and report.extracted
    check_layout(tmp_path / "data")
    assert not (tmp_path / "data" / ".download").exists()


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A static file server on 127.0.0.1 serving a temporary folder."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()

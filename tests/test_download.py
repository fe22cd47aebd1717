"""The KiTS downloader against a local HTTP server (Range support, cut connections, errors)."""

from __future__ import annotations

import gzip
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.data.download import DATASETS, DownloadError, download_dataset, parse_cases
from kidneyseg.data.kits import find_cases
from kidneyseg.errors import KidneysegError
from kidneyseg.io import write_volume
from kidneyseg.types import Volume


class FakeKits(http.server.ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes) with HTTP Range; misbehaves on request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_once: set[str] = set()  # first full GET: send half, then drop the connection
        self.short: set[str] = set()  # always announce the full length but send half
        self.status: dict[str, int] = {}  # forced HTTP status
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hits(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeKits

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv, path = self.server, self.path
        srv.requests.append((path, self.headers.get("Range")))
        if path in srv.status:
            self.send_error(srv.status[path])
            return
        if path not in srv.files:
            self.send_error(404)
            return
        data = srv.files[path]
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in srv.short or (path in srv.cut_once and start == 0):
            srv.cut_once.discard(path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[FakeKits]:
    srv = FakeKits()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(120, srv.shutdown)  # stops by itself even if a test hangs
    stopper.daemon = True
    stopper.start()
    try:
        yield srv
    finally:
        stopper.cancel()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _nii_gz(tmp: Path, seed: int, dtype: type) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 4 if dtype is np.uint8 else 400, size=(24, 24, 20)).astype(dtype)
    path = write_volume(Volume(array, (0.8, 0.8, 3.0)), tmp / f"v{seed}.nii.gz")
    return path.read_bytes()


def _serve(server: FakeKits, tmp: Path, cases: list[int], label: str) -> None:
    for n in cases:
        server.files[f"/case_{n:05d}/imaging.nii.gz"] = _nii_gz(tmp, n, np.int16)
        server.files[f"/case_{n:05d}/{label}"] = _nii_gz(tmp, 1000 + n, np.uint8)


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.rglob("*") if p.name.endswith(".part") or p.name[0] == ".")


def test_full_download_then_skip(server: FakeKits, tmp_path: Path) -> None:
    _serve(server, tmp_path, [0, 1, 400], "segmentation.nii.gz")
    dest = tmp_path / "kits23"
    cases = download_dataset(
        "kits23", dest, cases="0-1,400", workers=3, base_url=server.url, progress=False
    )
    assert [c.case_id for c in cases] == ["case_00000", "case_00001", "case_00400"]
    for c in cases:
        assert c.image.read_bytes() == server.files[f"/{c.case_id}/imaging.nii.gz"]
        assert c.label.read_bytes() == server.files[f"/{c.case_id}/segmentation.nii.gz"]
    assert [c.case_id for c in find_cases(dest)] == [c.case_id for c in cases]
    assert _leftovers(dest) == []
    n = len(server.requests)
    download_dataset("kits23", dest, cases=[0, 1, 400], base_url=server.url, progress=False)
    assert len(server.requests) == n  # complete files are skipped


def test_kits21_label_name_and_url_templates(server: FakeKits, tmp_path: Path) -> None:
    server.files["/img/7.nii.gz"] = _nii_gz(tmp_path, 7, np.int16)
    server.files["/lab/case_00007.nii.gz"] = _nii_gz(tmp_path, 8, np.uint8)
    dest = tmp_path / "kits21"
    download_dataset(
        "kits21",
        dest,
        cases="7",
        imaging_url=server.url + "/img/{case}.nii.gz",
        label_url=server.url + "/lab/{case_id}.nii.gz",
        progress=False,
    )
    (case,) = find_cases(dest)
    assert case.label is not None and case.label.name == "aggregated_MAJ_seg.nii.gz"
    assert case.image.read_bytes() == server.files["/img/7.nii.gz"]


def test_interrupted_download_resumes_with_range(server: FakeKits, tmp_path: Path) -> None:
    _serve(server, tmp_path, [3], "segmentation.nii.gz")
    path = "/case_00003/imaging.nii.gz"
    server.cut_once.add(path)
    dest = tmp_path / "d"
    (case,) = download_dataset(
        "kits23", dest, cases="3", base_url=server.url, retries=3, backoff=0, progress=False
    )
    hits = server.hits(path)
    assert len(hits) == 2 and hits[0] is None
    assert hits[1] == f"bytes={(len(server.files[path])) // 2}-"
    assert case.image.read_bytes() == server.files[path]
    assert _leftovers(dest) == []


def test_stale_part_larger_than_file_restarts(server: FakeKits, tmp_path: Path) -> None:
    _serve(server, tmp_path, [3], "segmentation.nii.gz")
    path = "/case_00003/imaging.nii.gz"
    part = tmp_path / "d" / "case_00003" / "imaging.nii.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (len(server.files[path]) + 10))
    (case,) = download_dataset(
        "kits23", tmp_path / "d", cases="3", base_url=server.url, backoff=0, progress=False
    )
    assert case.image.read_bytes() == server.files[path]
    assert server.hits(path)[-1] is None  # started over after the 416


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"<html>not found</html>" * 40, "gzip stream does not decompress"),
        ("truncated", "truncated"),
        (gzip.compress(b"not a nifti header" * 50, mtime=0), "not a NIfTI file"),
    ],
    ids=["html-page", "truncated", "not-nifti"],
)
def test_corrupt_file_is_detected_and_removed(
    server: FakeKits, tmp_path: Path, payload: bytes | str, message: str
) -> None:
    _serve(server, tmp_path, [5], "segmentation.nii.gz")
    path = "/case_00005/imaging.nii.gz"
    good = server.files[path]
    server.files[path] = good[: len(good) // 2] if payload == "truncated" else payload
    dest = tmp_path / "d"
    with pytest.raises(DownloadError, match=message) as info:
        download_dataset("kits23", dest, cases="5", base_url=server.url, progress=False)
    assert "case_00005/imaging.nii.gz" in str(info.value) and server.url in str(info.value)
    assert not (dest / "case_00005" / "imaging.nii.gz").exists()
    assert _leftovers(dest) == []
    with pytest.raises(KidneysegError, match="no KiTS cases"):
        find_cases(dest)  # the label alone does not make a case


def test_size_mismatch_after_retries(server: FakeKits, tmp_path: Path) -> None:
    _serve(server, tmp_path, [5], "segmentation.nii.gz")
    path = "/case_00005/imaging.nii.gz"
    server.short.add(path)
    dest = tmp_path / "d"
    with pytest.raises(DownloadError, match=r"after 3 attempts \(connection closed after"):
        download_dataset(
            "kits23", dest, cases="5", base_url=server.url, retries=3, backoff=0, progress=False
        )
    assert len(server.hits(path)) == 3
    assert not (dest / "case_00005" / "imaging.nii.gz").exists()
    # What arrived stays as .part only (never under the final name), for a later resume.
    assert _leftovers(dest) == ["imaging.nii.gz.part"]


def test_server_500_is_retried_then_reported(server: FakeKits, tmp_path: Path) -> None:
    _serve(server, tmp_path, [2], "segmentation.nii.gz")
    path = "/case_00002/segmentation.nii.gz"
    server.status[path] = 500
    dest = tmp_path / "d"
    with pytest.raises(DownloadError, match="case_00002/segmentation.nii.gz.*HTTP 500") as info:
        download_dataset(
            "kits23", dest, cases="2", base_url=server.url, retries=2, backoff=0, progress=False
        )
    assert len(server.hits(path)) == 2
    assert f"{server.url}{path}" in str(info.value)
    assert not (dest / "case_00002" / "segmentation.nii.gz").exists()


def test_cli_download_and_404(
    server: FakeKits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _serve(server, tmp_path, [0], "aggregated_MAJ_seg.nii.gz")
    dest = tmp_path / "k21"
    args = ["download", "kits21", str(dest), "--base-url", server.url, "--workers", "2"]
    assert main([*args, "--cases", "0"]) == 0
    assert "1 kits21 cases complete" in capsys.readouterr().out
    assert len(find_cases(dest)) == 1
    # case 1 is not on the server: 404, not retried, one clear line, exit 2.
    assert main([*args, "--cases", "0-1", "--retries", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert "case_00001" in err and "HTTP 404" in err and server.url + "/case_00001/" in err
    assert len(server.hits("/case_00001/aggregated_MAJ_seg.nii.gz")) == 1
    assert not (dest / "case_00001" / "imaging.nii.gz").exists()
    assert _leftovers(dest) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-x", "not a number or a range"),
        ("9-2", "runs backwards"),
        ("300", "kits21 has no case 300"),
        (",", "not a number or a range"),
    ],
)
def test_cli_bad_cases_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    dest = tmp_path / "k"
    assert main(["download", "kits21", str(dest), "--cases", spec]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not dest.exists()


def test_parse_cases_and_official_locations() -> None:
    assert parse_cases("0-2,42,1", "kits21") == [0, 1, 2, 42]
    assert parse_cases("case_00400-case_00401", "kits23") == [400, 401]
    with pytest.raises(KidneysegError, match="kits23 has no case 350"):
        parse_cases([350], "kits23")
    with pytest.raises(KidneysegError, match="unknown dataset"):
        parse_cases("1", "kits19")
    assert len(parse_cases(None, "kits21")) == 300 and len(parse_cases(None, "kits23")) == 489
    for spec in DATASETS.values():  # documented locations: https, per-case file names
        url = spec.label_url.format(case=12, case_id="case_00012")
        assert url.startswith("https://raw.githubusercontent.com/neheller/")
        assert url.endswith(f"case_00012/{spec.label_name}")
        assert spec.imaging_url.format(case=12).endswith("/master_00012.nii.gz")

"""Models that travel: ``export``, ``predict --model model.zip``, ``install-model FILE|URL``.

Packages are made from the tiny hand-set run folder of `test_inference`; the URL tests serve a
package from an ``http.server`` in a thread that honours HTTP ranges and can cut a transfer.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from kidneyseg.cli import main
from kidneyseg.errors import KidneysegError
from kidneyseg.formats.run_dir import model_id
from kidneyseg.inference import Predictor
from kidneyseg.io import write_volume
from kidneyseg.model_package import (
    CARD_FILE,
    MANIFEST_FILE,
    export_model,
    install_model,
    models_home,
    open_model,
    read_manifest,
)
from test_inference import make_model_dir, phantom_canonical, volume_from_canonical


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_model_dir(tmp_path_factory.mktemp("run"))
    (run / "kidney" / "config.json").write_text('{"prep_dir": null}\n')
    return run


@pytest.fixture(scope="module")
def package(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pkg") / "model.zip"
    export_model(run_dir, path)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KIDNEYSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _rewrite(src: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of a package with members replaced (bytes), removed (None) or added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for name in zin.namelist():
            if name in change:
                continue
            zout.writestr(name, zin.read(name))
        for name, data in change.items():
            if data is not None:
                zout.writestr(name, data)
    return dest


def test_export_holds_checkpoints_card_and_manifest(run_dir: Path, package: Path) -> None:
    manifest = read_manifest(package)
    assert manifest["model_id"] == model_id(run_dir)
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        card = json.loads(zf.read(CARD_FILE))
    assert names == {
        MANIFEST_FILE,
        CARD_FILE,
        "kidney/best.safetensors",
        "kidney/config.json",
        "tumor/best.safetensors",
    }
    assert set(manifest["files"]) == names - {MANIFEST_FILE}
    assert all(len(h) == 64 for h in manifest["files"].values())
    assert card["model_id"] == manifest["model_id"]


def test_predict_with_a_package_equals_the_folder(run_dir: Path, package: Path) -> None:
    volume = volume_from_canonical(phantom_canonical())
    from_dir = Predictor(run_dir, device="cpu", progress=False)
    from_zip = Predictor(package, device="cpu", progress=False)
    np.testing.assert_array_equal(
        from_zip.predict_volume(volume).array, from_dir.predict_volume(volume).array
    )
    assert from_zip.provenance["model_id"] == from_dir.provenance["model_id"]
    assert from_zip.provenance["model"] == str(package)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"tumor/best.safetensors": b"\x00" * 64}, "tumor/best.safetensors does not match"),
        ({"evil.py": b"print('hi')"}, "member not in the manifest: evil.py"),
        ({"kidney/config.json": None}, "member missing: kidney/config.json"),
        ({MANIFEST_FILE: None}, "no manifest.json"),
        ({MANIFEST_FILE: b"{not json"}, "unreadable manifest.json"),
    ],
)
def test_tampered_package_is_refused(
    package: Path, tmp_path: Path, change: dict[str, bytes | None], match: str
) -> None:
    bad = _rewrite(package, tmp_path / "bad.zip", change)
    with pytest.raises(KidneysegError, match=match) as info:
        Predictor(bad, device="cpu", progress=False)
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)


def test_consistent_but_foreign_manifest_is_refused(package: Path, tmp_path: Path) -> None:
    # Replace a checkpoint and fix its hash in the manifest: the model id no longer matches.
    with zipfile.ZipFile(package) as zf:
        manifest = json.loads(zf.read(MANIFEST_FILE))
        kidney = zf.read("kidney/best.safetensors")
    manifest["files"]["tumor/best.safetensors"] = hashlib.sha256(kidney).hexdigest()
    bad = _rewrite(
        package,
        tmp_path / "bad.zip",
        {"tumor/best.safetensors": kidney, MANIFEST_FILE: json.dumps(manifest).encode()},
    )
    with pytest.raises(KidneysegError, match="model id .* is not that of its checkpoints"):
        with open_model(bad):
            pass


def test_corrupt_and_truncated_files_are_refused_on_the_command_line(
    package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = package.read_bytes()
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flip.zip"
    raw = bytearray(data)
    with zipfile.ZipFile(package) as zf:
        info = zf.getinfo("kidney/best.safetensors")
    raw[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF  # inside the stored data
    flipped.write_bytes(bytes(raw))
    ct = tmp_path / "ct.nii.gz"
    write_volume(volume_from_canonical(phantom_canonical()), ct)
    for bad in (truncated, flipped):
        argv = ["predict", str(ct), str(tmp_path / "o.nii.gz"), "--model", str(bad)]
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {bad}: not a valid kidneyseg model package")
        assert "\n" not in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_export_command_and_unknown_model(run_dir: Path, tmp_path: Path, home: Path) -> None:
    out = tmp_path / "m.zip"
    assert main(["export", str(run_dir), str(out)]) == 0
    assert read_manifest(out)["model_id"] == model_id(run_dir)
    assert main(["export", str(run_dir), str(tmp_path / "m.tar")]) == 2
    with pytest.raises(KidneysegError, match="not installed"):
        Predictor("0123456789abcdef", device="cpu")
    with pytest.raises(KidneysegError, match="model folder not found"):
        Predictor(tmp_path / "nowhere", device="cpu")


def test_install_from_file_then_predict_by_id(
    run_dir: Path, package: Path, home: Path, tmp_path: Path
) -> None:
    ident = model_id(run_dir)
    assert models_home() == home / "models"
    assert main(["install-model", str(package)]) == 0
    folder = home / "models" / ident
    assert (folder / "tumor" / "best.safetensors").is_file()
    assert (folder / MANIFEST_FILE).is_file()
    assert sorted(p.name for p in (home / "models").iterdir()) == [ident]  # no leftovers
    ct = tmp_path / "ct.nii.gz"
    write_volume(volume_from_canonical(phantom_canonical()), ct)
    out = tmp_path / "o.nii.gz"
    assert main(["predict", str(ct), str(out), "--model", ident, "--no-progress"]) == 0
    assert out.is_file()
    # Installing again replaces it; a wrong expected id is refused.
    assert install_model(package) == (ident, folder)
    with pytest.raises(KidneysegError, match="not the expected"):
        install_model(package, expected_id="0" * 16)
    # A damaged installed model is refused by id.
    (folder / "kidney" / "best.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(KidneysegError, match="do not match its id"):
        Predictor(ident, device="cpu")


class _Server:
    """An HTTP server in a thread serving one file, with ranges, optionally cutting the first
    transfer half-way."""

    def __init__(self, data: bytes, cut_first: bool) -> None:
        self.data, self.cut, self.ranges = data, cut_first, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path != "/model.zip":
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                body = outer.data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    end = len(outer.data) - 1
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(outer.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut:
                    outer.cut = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server(package: Path) -> Iterator[_Server]:
    srv = _Server(package.read_bytes(), cut_first=True)
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()


def test_install_from_url_resumes_with_a_range(
    run_dir: Path, server: _Server, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{server.url}/model.zip"
    assert main(["install-model", url]) == 2  # the transfer was cut half-way
    assert "run the same command again to resume" in capsys.readouterr().err
    parts = list((home / "models" / ".downloads").iterdir())
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(server.data)
    assert main(["install-model", url, "--id", model_id(run_dir)]) == 0
    assert server.ranges == [None, f"bytes={len(server.data) // 2}-"]
    assert (home / "models" / model_id(run_dir) / "kidney" / "best.safetensors").is_file()
    assert not list((home / "models" / ".downloads").iterdir())  # the download is removed
    assert main(["install-model", f"{server.url}/missing.zip"]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_corrupt_download_is_removed(home: Path, package: Path) -> None:
    data = bytearray(package.read_bytes())
    data[len(data) // 3] ^= 0xFF
    srv = _Server(bytes(data), cut_first=False)
    srv.thread.start()
    try:
        with pytest.raises(KidneysegError, match="not a valid kidneyseg model package"):
            install_model(f"{srv.url}/model.zip")
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
    assert not list((home / "models" / ".downloads").iterdir())
    assert not [p for p in (home / "models").iterdir() if p.name != ".downloads"]

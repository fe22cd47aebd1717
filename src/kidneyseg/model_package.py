"""Models that travel: one-file model packages and the user model store.

A **model package** (``kidneyseg export RUN_DIR model.zip``) is a zip file holding::

    manifest.json              {"format": "kidneyseg-model", "format_version": 1, "model_id",
                                "kidneyseg_version", "files": {member: SHA-256 hex}}
    model_card.json            `kidneyseg.model_card.model_card` of the run folder
    kidney/best.safetensors    each phase's best checkpoint
    kidney/config.json         and its resolved config (when the run folder has it)
    tumor/best.safetensors
    tumor/config.json
    kidney_coronal/...         plane models, when the run folder has them (``data.planes``)

Unpacked, it is a ``RUN_DIR`` that ``predict`` reads. Reading one checks everything before a
byte is used: the members are exactly the manifest's files plus the manifest (no stray or
unsafe names), each member's SHA-256 equals the manifest's, and the manifest's model id equals
the one computed from the checkpoints (`kidneyseg.formats.run_dir.model_id_from_digests`).
A corrupt or tampered package is refused with one line naming the file.

The **model store** (`models_home`: ``$KIDNEYSEG_HOME/models``, default
``~/.cache/kidneyseg/models``) holds installed packages unpacked as ``<model id>/``
(``kidneyseg install-model FILE|URL``; a URL downloads resumably with HTTP ranges into
``.downloads/``). `open_model` resolves what ``predict --model`` is given: a folder, a package
file or an installed model id.

Example:
    >>> export_model("runs/paper", "paper.zip")["model_id"]  # doctest: +SKIP
    '3f2a9c0d1b7e4a55'
    >>> install_model("https://example.org/paper.zip")  # doctest: +SKIP
    ('3f2a9c0d1b7e4a55', PosixPath('/home/me/.cache/kidneyseg/models/3f2a9c0d1b7e4a55'))
    >>> with open_model("3f2a9c0d1b7e4a55") as run_dir:  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kidneyseg.errors import KidneysegError
from kidneyseg.formats.run_dir import (
    BEST_FILE,
    CONFIG_FILE,
    checkpoint_digests,
    file_sha256,
    model_id_from_digests,
    phase_dir,
    require_best_checkpoint,
    trained_planes,
)
from kidneyseg.model_card import model_card
from kidneyseg.types import PHASES
from kidneyseg.utils import atomic_dir, atomic_path, package_version

PACKAGE_FORMAT = "kidneyseg-model"
PACKAGE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CARD_FILE = "model_card.json"
#: Environment variable that moves the user's kidneyseg folder (default ``~/.cache/kidneyseg``).
HOME_ENV = "KIDNEYSEG_HOME"
#: A model id: 16 lower-case hex digits (`kidneyseg.formats.run_dir.model_id`).
MODEL_ID = re.compile(r"^[0-9a-f]{16}$")
#: Member names a package may hold: top-level files or one level under a phase folder.
_SAFE_MEMBER = re.compile(
    r"^(?:(?:kidney|tumor)(?:_coronal|_sagittal)?/)?[A-Za-z0-9_][A-Za-z0-9_.-]*$"
)
_CHUNK = 1 << 20


def kidneyseg_home() -> Path:
    """The user's kidneyseg folder: ``$KIDNEYSEG_HOME``, else ``~/.cache/kidneyseg`` (the model
    store, `models_home`, and the ONNX export cache, `kidneyseg.onnx_backend`)."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "kidneyseg"


def models_home() -> Path:
    """The model store: ``$KIDNEYSEG_HOME/models``, else ``~/.cache/kidneyseg/models``."""
    return kidneyseg_home() / "models"


def _checkpoint_member(phase: str) -> str:
    return f"{phase}/{BEST_FILE}"


def _checkpoint_digests(files: dict[str, str]) -> dict[str, str]:
    """Each checkpoint member's SHA-256 by its folder (``kidney``, ``tumor_coronal``...)."""
    return {n.split("/")[0]: d for n, d in files.items() if n.endswith(f"/{BEST_FILE}")}


def export_model(run_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """Pack both phases' best checkpoints (and those of any plane models), their
    ``config.json`` and the model card of ``run_dir`` into the zip file ``dest`` (written
    atomically). Returns the manifest.

    Raises:
        KidneysegError: a phase's best checkpoint is missing, or ``dest`` is not a ``.zip``
            name or cannot be written.
    """
    run = Path(run_dir)
    out = Path(dest)
    if not out.name.lower().endswith(".zip"):
        raise KidneysegError("a model package is a .zip file; give e.g. model.zip", path=out)
    files: dict[str, Path] = {}
    for phase in PHASES:
        require_best_checkpoint(run, phase)
        for plane in trained_planes(run, phase):
            folder = phase_dir(run, phase, plane)
            files[f"{folder.name}/{BEST_FILE}"] = folder / BEST_FILE
            if (folder / CONFIG_FILE).is_file():
                files[f"{folder.name}/{CONFIG_FILE}"] = folder / CONFIG_FILE
    card = json.dumps(model_card(run), indent=2).encode("utf-8")
    digests = {name: file_sha256(path) for name, path in files.items()}
    digests[CARD_FILE] = hashlib.sha256(card).hexdigest()
    manifest = {
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_FORMAT_VERSION,
        "model_id": model_id_from_digests(_checkpoint_digests(digests)),
        "kidneyseg_version": package_version(),
        "files": dict(sorted(digests.items())),
    }
    with atomic_path(out, verify=_check_written) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(MANIFEST_FILE, json.dumps(manifest, indent=2), zipfile.ZIP_DEFLATED)
        zf.writestr(CARD_FILE, card, zipfile.ZIP_DEFLATED)
        for name, path in files.items():
            method = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
            zf.write(path, name, method)
    return manifest


def _refuse(path: Path, problem: str) -> KidneysegError:
    return KidneysegError(f"not a valid kidneyseg model package: {problem}", path=path)


def _manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    """The manifest of an open package, its structure and member list checked."""
    try:
        manifest = json.loads(zf.read(MANIFEST_FILE).decode("utf-8"))
    except KeyError:
        raise _refuse(path, f"no {MANIFEST_FILE}") from None
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise _refuse(path, f"unreadable {MANIFEST_FILE} ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != PACKAGE_FORMAT or not isinstance(files, dict):
        raise _refuse(path, f"{MANIFEST_FILE} is not a {PACKAGE_FORMAT} manifest")
    if manifest.get("format_version") != PACKAGE_FORMAT_VERSION:
        raise _refuse(
            path,
            f"format version {manifest.get('format_version')!r}; this kidneyseg reads "
            f"{PACKAGE_FORMAT_VERSION} (upgrade kidneyseg)",
        )
    if not MODEL_ID.match(str(manifest.get("model_id", ""))):
        raise _refuse(path, "the manifest has no valid model_id")
    members = zf.namelist()
    if len(members) != len(set(members)):
        raise _refuse(path, "duplicate member names")
    unsafe = sorted(n for n in files if n == MANIFEST_FILE or not _SAFE_MEMBER.match(n))
    extra = sorted(set(members) - set(files) - {MANIFEST_FILE})
    missing = sorted(set(files) - set(members))
    required = [_checkpoint_member(p) for p in PHASES if _checkpoint_member(p) not in files]
    for problem, names in (
        ("unsafe member name", unsafe),
        ("member not in the manifest", extra),
        ("member missing", missing),
        ("checkpoint missing", required),
    ):
        if names:
            raise _refuse(path, f"{problem}: {names[0]} (tampered or incomplete)")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a package, its member list checked (hashes are checked on unpacking).

    Raises:
        KidneysegError: not a zip file, or a manifest that does not describe the members.
    """
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            return _manifest(zf, p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _refuse(p, f"not a readable zip file ({exc})") from None


def _check_written(path: Path) -> None:
    """`atomic_path` check of a written package: it reads back as one."""
    read_manifest(path)


def unpack_model(path: str | Path, dest: str | Path) -> dict[str, Any]:
    """Unpack a package into the new folder ``dest`` (members and manifest), checking every
    member's SHA-256 and the model id as it goes; on any failure ``dest`` is removed. Returns
    the manifest.

    Raises:
        KidneysegError: corrupt, tampered or foreign package (one line naming ``path``).
    """
    src, out = Path(path), Path(dest)
    try:
        with zipfile.ZipFile(src) as zf:
            manifest = _manifest(zf, src)
            out.mkdir(parents=True)
            try:
                for name, expected in manifest["files"].items():
                    target = out / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256()
                    with zf.open(name) as member, target.open("wb") as f:
                        while block := member.read(_CHUNK):
                            digest.update(block)
                            f.write(block)
                    if digest.hexdigest() != expected:
                        raise _refuse(src, f"{name} does not match its SHA-256 in the manifest")
                computed = model_id_from_digests(_checkpoint_digests(manifest["files"]))
                if computed != manifest["model_id"]:
                    raise _refuse(
                        src,
                        f"the manifest's model id {manifest['model_id']} is not that of its "
                        f"checkpoints ({computed})",
                    )
                (out / MANIFEST_FILE).write_bytes(zf.read(MANIFEST_FILE))
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename not in (None, str(src)):
            raise
        raise _refuse(src, f"corrupt zip data ({exc})") from None
    return dict(manifest)


@contextlib.contextmanager
def open_model(model: str | Path) -> Iterator[Path]:
    """The ``RUN_DIR`` that ``predict --model`` names: a folder as it is, a package unpacked
    (checked) into a temporary folder removed afterwards, or an installed model id's folder in
    `models_home` (its checkpoints checked against the id).

    Raises:
        KidneysegError: none of these, or a corrupt package or installed model.
    """
    path = Path(model)
    if path.is_dir():
        yield path
        return
    if path.is_file():
        with tempfile.TemporaryDirectory(prefix="kidneyseg-model-") as tmp:
            folder = Path(tmp) / "model"
            unpack_model(path, folder)
            yield folder
        return
    if MODEL_ID.match(str(model)):
        folder = models_home() / str(model)
        if not folder.is_dir():
            raise KidneysegError(
                f"model {model} is not installed in {models_home()}; install it with "
                "`kidneyseg install-model FILE|URL`"
            )
        if model_id_from_digests(checkpoint_digests(folder)) != str(model):
            raise KidneysegError(
                "installed model's checkpoints do not match its id (corrupt); install it again",
                path=folder,
            )
        yield folder
        return
    raise KidneysegError(
        "model folder not found (expected RUN_DIR with kidney/ and tumor/, a model package "
        ".zip or an installed model id)",
        path=path,
    )


def download(url: str, part: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``part``, resuming from the bytes already there (HTTP range).

    Raises:
        KidneysegError: HTTP error or interrupted transfer (the bytes so far are kept; run
            again to resume).
    """
    import http.client
    import urllib.error
    import urllib.request

    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kidneyseg"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:  # the server ignored the range: start over
                offset = 0
            length = response.headers.get("Content-Length")
            total = None if length is None else offset + int(length)
            with part.open("ab" if offset else "wb") as f:
                while block := response.read(_CHUNK):
                    f.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # already complete; the package check decides
            return part
        raise KidneysegError(f"download failed: HTTP {exc.code} {exc.reason}", path=url) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KidneysegError(
            f"download interrupted ({reason}); run the same command again to resume", path=url
        ) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise KidneysegError(
            f"download interrupted after {size} of {total} bytes; run the same command again "
            "to resume",
            path=url,
        )
    return part


def install_model(source: str | Path, expected_id: str | None = None) -> tuple[str, Path]:
    """Install a package file or URL into `models_home` as ``<model id>/``.

    A URL is downloaded (resumably) to ``.downloads/`` in the store first; the package is
    checked as it is unpacked (`unpack_model`), and with ``expected_id`` its id must match
    (what the publisher announced). A broken download is removed so the next try starts
    afresh. Returns the model id and its folder.

    Raises:
        KidneysegError: download, integrity or id mismatch, unwritable store.
    """
    text = str(source)
    is_url = text.startswith(("http://", "https://"))
    store = models_home()
    if is_url:
        name = hashlib.sha256(text.encode()).hexdigest()[:16]
        package = download(text, store / ".downloads" / f"{name}.zip.part")
    else:
        package = Path(source)
        if not package.is_file():
            raise KidneysegError("no such model package file", path=package)
    staging = store / f".install-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = unpack_model(package, staging / "model")
    except KidneysegError:
        if is_url:
            package.unlink(missing_ok=True)
        raise
    finally:
        if not (staging / "model").is_dir():
            shutil.rmtree(staging, ignore_errors=True)
    model = str(manifest["model_id"])
    try:
        if expected_id is not None and model != expected_id:
            raise KidneysegError(
                f"package holds model {model}, not the expected {expected_id}", path=text
            )
        final = store / model
        with atomic_dir(final) as tmp:
            tmp.rmdir()
            os.replace(staging / "model", tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if is_url:
        package.unlink(missing_ok=True)
    return model, final

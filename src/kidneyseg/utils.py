"""Small helpers shared by every stage: atomic writes, version info."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A reader never sees a half-written file: on any exception the temporary file is removed
    and ``path`` is left as it was. The temporary name keeps the final suffixes
    (e.g. ``.nii.gz``) so writers that infer the format from the name still work.

    Example:
        >>> with atomic_path("/tmp/out.txt") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("done")
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes a private (0600) file, and some writers recreate it; outputs get the
        # usual permissions instead, set just before the rename.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only on success.

    An existing ``path`` is replaced. On failure the temporary folder is removed.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def package_version() -> str:
    from kidneyseg import __version__

    return __version__


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check it is a writable folder (clear error otherwise)."""
    from kidneyseg.errors import KidneysegError

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KidneysegError(f"cannot create output folder: {exc.strerror}", path=p) from exc
    if not p.is_dir():
        raise KidneysegError("output path exists and is not a folder", path=p)
    if not os.access(p, os.W_OK):
        raise KidneysegError("output folder is not writable", path=p)
    return p


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    On such CPUs bf16 autocast roughly halves the time of U-Net convolutions (measured:
    0.56 vs 1.09 s per training step at 128 px, batch 16, on a 2-core AMD EPYC); on others
    it is emulated and slower, so "auto" precision stays fp32 there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False

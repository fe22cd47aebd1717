"""Download KiTS21 / KiTS23 into the KiTS layout that `kidneyseg.data.kits.find_cases` reads.

Sources (the official ones, as the challenge repositories' own scripts use them):

* Imaging (both datasets): ``https://kits19.sfo2.digitaloceanspaces.com/master_XXXXX.nii.gz``,
  the bucket that ``kits21/data/get_imaging.py`` (github.com/neheller/kits21) and
  ``kits23/download.py`` (github.com/neheller/kits23) download from.
* KiTS21 labels: the repository's majority-vote files, ``https://raw.githubusercontent.com/
  neheller/kits21/master/kits21/data/case_XXXXX/aggregated_MAJ_seg.nii.gz`` (cases 0-299).
* KiTS23 labels: ``https://raw.githubusercontent.com/neheller/kits23/<commit>/dataset/
  case_XXXXX/segmentation.nii.gz`` at commit ``c1088353084c17b8882a11db71429e7c022b7785``
  (cases 0-299 and 400-588, ``kits23.TRAINING_CASE_NUMBERS``).

Output: ``DEST/case_XXXXX/imaging.nii.gz`` plus the label file (``aggregated_MAJ_seg.nii.gz``
for KiTS21, ``segmentation.nii.gz`` for KiTS23). A mirror can stand in for the official hosts:
``base_url`` serves the same layout (``{base_url}/case_XXXXX/imaging.nii.gz`` and the label
file), or ``imaging_url`` / ``label_url`` give URL templates with ``{case}`` (the number) and
``{case_id}`` (``case_XXXXX``) fields.

Verification: the official repositories publish **no checksums** for these files, so each file
is verified by its size (``Content-Length`` / ``Content-Range``) and by decompressing the whole
gzip stream (gzip's own CRC-32 and length trailer) and checking it starts with a NIfTI header.
Downloads go to ``<name>.part`` and resume with an HTTP ``Range`` request after a dropped
connection; transient failures (connection errors, timeouts, HTTP 5xx/429) are retried with
exponential backoff; the file is renamed to its final name only once verified, so a final name
always holds a complete file, and files already present are skipped. Files download in
parallel threads with a byte-count progress bar.

Example:
    >>> cases = download_dataset("kits23", "data/kits23", cases="0-9")  # doctest: +SKIP
    >>> cases[0].image  # doctest: +SKIP
    PosixPath('data/kits23/case_00000/imaging.nii.gz')
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from kidneyseg.data.kits import IMAGE_NAME, KitsCase
from kidneyseg.errors import KidneysegError
from kidneyseg.utils import check_writable_dir

IMAGING_URL = "https://kits19.sfo2.digitaloceanspaces.com/master_{case:05d}.nii.gz"
KITS21_LABEL_URL = (
    "https://raw.githubusercontent.com/neheller/kits21/master/kits21/data/"
    "{case_id}/aggregated_MAJ_seg.nii.gz"
)
KITS23_COMMIT = "c1088353084c17b8882a11db71429e7c022b7785"
KITS23_LABEL_URL = (
    f"https://raw.githubusercontent.com/neheller/kits23/{KITS23_COMMIT}/dataset/"
    "{case_id}/segmentation.nii.gz"
)
_CHUNK = 1 << 20
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class DatasetSpec:
    """Where one KiTS edition's files live and which case numbers it has."""

    name: str
    cases: tuple[int, ...]
    imaging_url: str
    label_url: str
    label_name: str


DATASETS: dict[str, DatasetSpec] = {
    "kits21": DatasetSpec(
        "kits21", tuple(range(300)), IMAGING_URL, KITS21_LABEL_URL, "aggregated_MAJ_seg.nii.gz"
    ),
    "kits23": DatasetSpec(
        "kits23",
        tuple(range(300)) + tuple(range(400, 589)),
        IMAGING_URL,
        KITS23_LABEL_URL,
        "segmentation.nii.gz",
    ),
}


class DownloadError(KidneysegError):
    """A file could not be downloaded or failed verification (names the file and URL)."""


def parse_cases(spec: str | Iterable[int] | None, dataset: str = "kits23") -> list[int]:
    """Case numbers from a spec like ``"0-9,42"`` (or a list), checked against the dataset.

    Example:
        >>> parse_cases("0-2,42,1")
        [0, 1, 2, 42]
    """
    available = _spec(dataset).cases
    if spec is None:
        return list(available)
    numbers: set[int] = set()
    if isinstance(spec, str):
        for part in (p.strip() for p in spec.split(",")):
            m = re.fullmatch(r"(?:case_)?(\d+)(?:\s*-\s*(?:case_)?(\d+))?", part)
            if not m:
                raise KidneysegError(
                    f"bad case list {spec!r}: {part!r} is not a number or a range like 0-9"
                )
            lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
            if hi < lo:
                raise KidneysegError(f"bad case list {spec!r}: range {part!r} runs backwards")
            numbers.update(range(lo, hi + 1))
    else:
        try:
            numbers = {int(n) for n in spec}
        except (TypeError, ValueError) as exc:
            raise KidneysegError(f"bad case list {spec!r}: expected integers") from exc
    missing = sorted(numbers - set(available))
    if missing:
        shown = ", ".join(str(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise KidneysegError(f"{dataset} has no case {shown} (its cases: {_ranges(available)})")
    if not numbers:
        raise KidneysegError(f"bad case list {spec!r}: no case selected")
    return sorted(numbers)


def _ranges(numbers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def _spec(dataset: str) -> DatasetSpec:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise KidneysegError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}"
        ) from None


@dataclass(frozen=True)
class _Job:
    case_id: str
    url: str
    path: Path


def download_dataset(
    dataset: str,
    dest: str | Path,
    cases: str | Iterable[int] | None = None,
    workers: int = 4,
    base_url: str | None = None,
    imaging_url: str | None = None,
    label_url: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[KitsCase]:
    """Download KiTS cases (imaging + label) into ``dest`` in the KiTS layout.

    Args:
        dataset: ``"kits21"`` or ``"kits23"``.
        dest: output folder; ``dest/case_XXXXX/`` per case.
        cases: case numbers, e.g. ``"0-9,42"`` or ``[0, 1]``; default all of the dataset's.
        workers: files downloaded in parallel.
        base_url: a mirror serving the KiTS layout (``{base_url}/case_XXXXX/<file>``).
        imaging_url, label_url: URL templates with ``{case}`` / ``{case_id}`` (override
            ``base_url`` and the official locations).
        retries: attempts per file for transient failures (dropped connection, 5xx).
        backoff: first wait between attempts in seconds (doubles each time, at most 60 s).
        timeout: socket timeout in seconds.
        progress: show a progress bar (on a terminal).

    Returns:
        The requested cases, sorted by id.

    Raises:
        KidneysegError: bad arguments, or one line naming the first failed file and its URL
            (the others are attempted first; their partial ``.part`` files stay for a resume).

    Example:
        >>> download_dataset("kits21", "kits21", cases="0-1", workers=2)  # doctest: +SKIP
    """
    from tqdm import tqdm

    spec = _spec(dataset)
    numbers = parse_cases(cases, dataset)
    if int(workers) < 1 or int(retries) < 1:
        raise KidneysegError(f"workers and retries must be >= 1 (got {workers}, {retries})")
    root = check_writable_dir(dest)
    mirror = base_url.rstrip("/") + "/{case_id}/" if base_url else None
    img_tmpl = imaging_url or (mirror + IMAGE_NAME if mirror else spec.imaging_url)
    lab_tmpl = label_url or (mirror + spec.label_name if mirror else spec.label_url)
    jobs = []
    for n in numbers:
        case_id = f"case_{n:05d}"
        # Label first: a case whose imaging failed then has no imaging.nii.gz, so
        # find_cases never sees a half case.
        for tmpl, name in ((lab_tmpl, spec.label_name), (img_tmpl, IMAGE_NAME)):
            path = root / case_id / name
            if not path.is_file():
                jobs.append(_Job(case_id, _format(tmpl, n, case_id), path))

    bar = tqdm(
        total=0,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"{dataset} 0/{len(jobs)}",
        disable=not progress or None,
    )
    lock = threading.Lock()
    done = 0

    def on_bytes(n: int, total_delta: int = 0) -> None:
        with lock:
            if total_delta:
                bar.total = (bar.total or 0) + total_delta
                bar.refresh()
            if n:
                bar.update(n)

    errors: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=min(int(workers), max(len(jobs), 1))) as pool:
            futures = {
                pool.submit(_fetch, job, retries, backoff, timeout, on_bytes): job for job in jobs
            }
            for future in as_completed(futures):
                try:
                    future.result()
                except KidneysegError as exc:
                    errors.append(str(exc))
                done += 1
                bar.set_description(f"{dataset} {done}/{len(jobs)}")
    finally:
        bar.close()
    if errors:
        more = f" ({len(errors)} files failed; rerun to resume)" if len(errors) > 1 else ""
        raise DownloadError(sorted(errors)[0] + more)
    return [
        KitsCase(
            f"case_{n:05d}",
            root / f"case_{n:05d}" / IMAGE_NAME,
            root / f"case_{n:05d}" / spec.label_name,
        )
        for n in numbers
    ]


def _format(template: str, case: int, case_id: str) -> str:
    try:
        return template.format(case=case, case_id=case_id)
    except (KeyError, IndexError, ValueError) as exc:
        raise KidneysegError(
            f"bad URL template {template!r}: use the fields {{case}} and {{case_id}} only"
        ) from exc


def _fetch(
    job: _Job,
    retries: int,
    backoff: float,
    timeout: float,
    on_bytes: Callable[..., None],
) -> None:
    """Download one file to ``<path>.part`` (resuming), verify it, rename it into place."""
    import http.client
    import urllib.error
    import urllib.request

    name = f"{job.case_id}/{job.path.name}"
    part = job.path.with_name(job.path.name + ".part")
    job.path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    last = ""
    for attempt in range(retries):
        if attempt:
            time.sleep(min(backoff * 2 ** (attempt - 1), 60.0))
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(job.url, headers={"User-Agent": "kidneyseg"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                total, offset = _expected_size(response, offset, part)
                if not announced and total is not None:
                    on_bytes(offset, total)
                    announced = True
                with part.open("ab" if offset else "wb") as f:
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        on_bytes(len(chunk))
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # our .part is already the whole file (or bigger)
                last = f"HTTP 416 at byte {offset}"
                if _content_range_total(exc.headers.get("Content-Range")) == offset:
                    break
                part.unlink(missing_ok=True)
                continue
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code in _RETRY_STATUS:
                continue
            raise DownloadError(f"{name}: {last} from {job.url}") from None
        except (OSError, http.client.HTTPException) as exc:
            # URLError, timeouts, resets, IncompleteRead: keep the .part and resume.
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            continue
        size = part.stat().st_size
        if total is None or size == total:
            break
        if size > total:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{name}: size mismatch, received {size} bytes but the server announced "
                f"{total} (corrupt download removed) from {job.url}"
            )
        last = f"connection closed after {size} of {total} bytes"
    else:
        raise DownloadError(
            f"{name}: failed after {retries} attempts ({last}); rerun to resume from the "
            f".part file; URL {job.url}"
        )
    try:
        _verify_gzip_nifti(part)
    except ValueError as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{name}: corrupt download ({exc}), removed; URL {job.url}") from None
    os.replace(part, job.path)


def _expected_size(response: object, offset: int, part: Path) -> tuple[int | None, int]:
    """Total file size announced by the server, and the offset the body starts at."""
    status = getattr(response, "status", 200)
    headers = response.headers  # type: ignore[attr-defined]
    if status == 206:
        start, total = _content_range(headers.get("Content-Range"))
        if start != offset:  # not the range we asked for: start over
            part.unlink(missing_ok=True)
            raise OSError(f"server resumed at byte {start}, not {offset}")
        return total, offset
    # 200: the server ignored the Range header (or none was sent): the body is the whole file.
    length = headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), 0


def _content_range(value: str | None) -> tuple[int, int | None]:
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        raise OSError(f"bad Content-Range header {value!r}")
    return int(m[1]), (int(m[3]) if m[3] != "*" else None)


def _content_range_total(value: str | None) -> int | None:
    m = re.fullmatch(r"bytes \*/(\d+)", (value or "").strip())
    return int(m[1]) if m else None


def _verify_gzip_nifti(path: Path) -> None:
    """Decompress the whole gzip stream (CRC and length checked) and check a NIfTI header.

    Raises:
        ValueError: not gzip, truncated, bad CRC, or not NIfTI-1/2 inside.
    """
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper, checks the trailer
    head = b""
    with path.open("rb") as f:
        try:
            while chunk := f.read(_CHUNK):
                data = decompressor.decompress(chunk)
                if len(head) < 4:
                    head += data[: 4 - len(head)]
            decompressor.flush()
        except zlib.error as exc:
            raise ValueError(f"gzip stream does not decompress: {exc}") from None
    if not decompressor.eof:
        raise ValueError("gzip stream is truncated")
    if len(head) < 4 or {struct.unpack("<i", head)[0], struct.unpack(">i", head)[0]}.isdisjoint(
        {348, 540}
    ):
        raise ValueError("not a NIfTI file inside the gzip stream")

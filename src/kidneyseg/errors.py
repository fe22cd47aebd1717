"""The one exception type that the CLI turns into a one-line message."""

from __future__ import annotations

from pathlib import Path


class KidneysegError(Exception):
    """A user-facing error: bad input, bad config, missing file.

    The message is one line that names the file (when there is one) and the problem, and
    ideally says how to fix it. The CLI prints it as ``error: <message>`` and exits 2.

    Example:
        >>> raise KidneysegError("labels outside 0-3 (found 7)", path="case_1/seg.nii.gz")
        Traceback (most recent call last):
        ...
        kidneyseg.errors.KidneysegError: case_1/seg.nii.gz: labels outside 0-3 (found 7)
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)

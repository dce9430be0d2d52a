"""The app's private working folder: uploads (size-limited) and exports, removed on exit."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from CalibSegLib.errors import CalibSegError

#: Default largest upload accepted, in bytes.
DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024
#: File name endings accepted for uploads (images the library reads).
UPLOAD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


class PrivateFolder:
    """A temporary folder only this user can read (mode 0700), deleted by :meth:`remove`."""

    def __init__(self, maxUploadBytes: int = DEFAULT_MAX_UPLOAD, parent: str | None = None):
        self.path = tempfile.mkdtemp(prefix="calibseg-view-", dir=parent)
        os.chmod(self.path, 0o700)
        self.maxUploadBytes = int(maxUploadBytes)
        self._count = 0

    def subfolder(self, name: str) -> str:
        path = os.path.join(self.path, name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def saveUpload(self, name: str, content: bytes) -> str:
        """Write an uploaded file under a fresh, sanitised name; return its path.

        Raises a :class:`CalibSegError` for a file too large or of a type that is not an image.
        """
        size = len(content or b"")
        if size > self.maxUploadBytes:
            raise CalibSegError(
                f"Upload {name!r} is {size / 2**20:.1f} MiB, more than the limit of "
                f"{self.maxUploadBytes / 2**20:.0f} MiB; start 'calibseg view' with the file "
                "path instead, or raise --max-upload-mb.")
        base = os.path.basename(str(name or "upload"))
        if not base.lower().endswith(UPLOAD_SUFFIXES):
            raise CalibSegError(
                f"Upload {base!r} is not an image file this app reads; upload "
                f"{', '.join(UPLOAD_SUFFIXES)} (a DICOM series: pass its folder on the command "
                "line).")
        if not size:
            raise CalibSegError(f"Upload {base!r} is empty; choose the image file again.")
        self._count += 1
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "upload"
        path = os.path.join(self.subfolder("uploads"), f"{self._count:03d}-{safe}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

"""Publishing output files: write a temporary sibling, verify it, fsync, rename atomically.

Every file vggfeat writes (stores and their parts, model files, weight files, reports, plots,
checkpoints) goes through :func:`publish`, so none is ever left half-written or published
unverified, and an I/O error on the output (a full disk, a read-only folder) becomes one
:class:`OutputError` line naming the path and the cause instead of a traceback.

This module never imports torch or h5py.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vggfeat.errors import OutputError

__all__ = [
    "OutputError",
    "output_error",
    "publish",
    "publish_bytes",
    "resolve_output",
    "fsync_dir",
]

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EISDIR: "is a folder",
}
RESUME_HINT = "free space (or fix the folder) and run the same command to resume"


def _errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, also when a library (h5py) only names it in the message."""
    code = getattr(exc, "errno", None)
    if code:
        return int(code)
    text = str(exc)
    for code, cause in _CAUSES.items():
        if f"errno = {code}," in text or os.strerror(code) in text or cause in text.lower():
            return code
    return None


def output_error(
    exc: BaseException, path: str | os.PathLike, hint: str = RESUME_HINT
) -> OutputError:
    """One-line error for an I/O failure on the output ``path``: cause, path, what to do."""
    code = _errno_of(exc)
    cause = _CAUSES.get(code) if code else None
    if cause is None:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return OutputError(f"{cause} while writing {path}; {hint}.")


def resolve_output(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` must replace: a symlink's target, so the link stays valid."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Persist a rename: fsync the folder that holds the renamed file (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync folders; the rename itself is still atomic
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def publish(
    path: str | os.PathLike,
    verify: Callable[[Path], None] | None = None,
    hint: str = RESUME_HINT,
) -> Iterator[Path]:
    """Context manager: yields a temporary path beside ``path``; on a clean exit the file
    written there is verified, fsynced and renamed onto ``path`` (through a symlink).

    Args:
        path: The file to create or replace. Its folder is created if missing.
        verify: Called with the temporary path after writing; raises if the file is not
            complete and correct (read it back, compare a checksum). Nothing is published then.
        hint: What the user should do after an I/O error (ends the one-line message).

    Raises:
        OutputError: on any OSError while writing, verifying, syncing or renaming.
    """
    final = resolve_output(path)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if verify is not None:
            verify(tmp)
        _fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        raise output_error(exc, final, hint) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: nothing was written there either


def _same_bytes(data: bytes) -> Callable[[Path], None]:
    def verify(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise OSError(errno.EIO, "file read back differs from what was written")

    return verify


def publish_bytes(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (str as UTF-8) to ``path`` atomically, verified by reading it back."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with publish(path, verify=_same_bytes(raw)) as tmp:
        tmp.write_bytes(raw)
    return resolve_output(path)

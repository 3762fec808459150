"""Publishing output files: write a temporary sibling, verify it, fsync, rename atomically.

Every file vggfeat writes (stores and their parts, model files, weight files, reports, plots,
checkpoints) goes through :func:`publish`, so none is ever left half-written or published
unverified, and an I/O error on the output (a full disk, a read-only folder) becomes one
:class:`OutputError` line naming the path and the cause instead of a traceback.

Libraries that write through their own C code (HDF5) get a :class:`GuardedFile` from
:func:`publish_stream` instead of a path: HDF5 never sees an I/O error (it can crash on one),
the first error is kept and raised after the library has closed the file. :class:`OutputLock`
keeps two processes from writing the same output at once.

This module never imports torch or h5py.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import shutil
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
    "publish_stream",
    "GuardedFile",
    "OutputLock",
    "check_free_space",
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
    errno.EFBIG: "file too large for the file system or the process's file size limit",
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


class GuardedFile(io.RawIOBase):
    """A new binary file that never lets a writing library see an I/O error.

    HDF5 does not survive a failed write: its file state goes inconsistent, h5py swallows the
    error when the file is closed (so a broken file looks complete) and a later flush or the
    interpreter's exit can crash with a segmentation fault. Given this object instead of a path
    (h5py's ``fileobj`` driver), the library always sees success: the first OSError is kept in
    :attr:`error` and raised by :meth:`check`, and the bytes the disk refused are kept in
    memory so the library reads back what it thinks it wrote. Writers call :meth:`check` as
    they go (to stop at the first error) and after closing the library's handle.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.name = os.fspath(path)
        self._fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.error: OSError | None = None
        self._pos = 0
        self._size = 0
        self._refused: list[tuple[int, bytes]] = []  # (offset, bytes) not on disk, oldest first

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def _keep(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc

    def _write_at(self, data: memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (the one place bytes reach the disk)."""
        while len(data):
            done = os.pwrite(self._fd, data, offset)
            data, offset = data[done:], offset + done

    def _sync(self) -> None:
        os.fsync(self._fd)

    def write(self, b) -> int:  # noqa: ANN001 (any buffer)
        data = memoryview(b).cast("B")
        if self.error is None:
            try:
                self._write_at(data, self._pos)
            except OSError as exc:
                self._keep(exc)
                self._refused.append((self._pos, bytes(data)))
        else:
            self._refused.append((self._pos, bytes(data)))
        self._pos += len(data)
        self._size = max(self._size, self._pos)
        return len(data)

    def readinto(self, b) -> int:  # noqa: ANN001 (any writable buffer)
        view = memoryview(b).cast("B")
        got = 0
        try:
            got = os.preadv(self._fd, [view], self._pos) if len(view) else 0
        except OSError as exc:
            self._keep(exc)
        view[got:] = bytes(len(view) - got)
        for start, data in self._refused:
            lo, hi = max(start, self._pos), min(start + len(data), self._pos + len(view))
            if lo < hi:
                view[lo - self._pos : hi - self._pos] = data[lo - start : hi - start]
        n = max(0, min(len(view), self._size - self._pos))
        self._pos += n
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            self._keep(exc)
        self._size = size
        return size

    def flush(self) -> None:
        pass  # unbuffered: every write is already a system call

    def close(self) -> None:
        """fsync and close the file; an error here is kept like a write error."""
        if not self.closed:
            try:
                self._sync()
            except OSError as exc:
                self._keep(exc)
            try:
                os.close(self._fd)
            except OSError as exc:
                self._keep(exc)
        super().close()

    def check(self) -> None:
        """Raise the first I/O error met so far, if any."""
        if self.error is not None:
            raise self.error


@contextmanager
def publish_stream(
    path: str | os.PathLike,
    verify: Callable[[Path], None] | None = None,
    hint: str = RESUME_HINT,
) -> Iterator[GuardedFile]:
    """:func:`publish` for libraries that write a file object: yields a :class:`GuardedFile`
    on the temporary path (e.g. for ``h5py.File(fh, "w")``; close the library's handle inside
    the block). Any I/O error the file met is raised (as one :class:`OutputError` line) before
    verification, so nothing half-written is ever published.
    """
    with publish(path, verify=verify, hint=hint) as tmp:
        fh = GuardedFile(tmp)
        try:
            yield fh
        except BaseException:
            fh.close()
            if fh.error is not None:
                raise fh.error from None  # the cause, not what the library made of it
            raise
        fh.close()
        fh.check()


def _size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def check_free_space(path: str | os.PathLike, need: int, hint: str = RESUME_HINT) -> None:
    """Refuse to start writing ``path`` (about ``need`` bytes) where the disk has less free.

    Raises:
        OutputError: naming the bytes needed and free, before anything is written.
    """
    folder = resolve_output(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: the write itself will report a full disk
    if free < need:
        raise OutputError(
            f"not enough space to write {path}: it needs about {_size_text(need)} and "
            f"{folder} has {_size_text(free)} free; {hint}."
        )


class OutputLock:
    """Keeps two processes from writing one output: an exclusive (or shared, for readers that
    must not see it change) ``flock`` on ``<file>.lock`` beside the file.

    The kernel drops the lock when its process dies, so a crash never leaves a stale lock; the
    lock file is removed on release. A second process is refused at once with one line (it
    does not wait), so the same work is never done twice without the user knowing.

    Example:
        >>> with OutputLock("store.h5"):
        ...     pass  # write store.h5 and its parts
    """

    def __init__(self, path: str | os.PathLike, shared: bool = False) -> None:
        self.path = resolve_output(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock, or raise OutputError saying which process holds it."""
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        while self._fd is None:
            try:
                self.lock_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise output_error(exc, self.lock_path) from None
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputError(
                    f"{self.path} is in use by another vggfeat process{who}: wait for it to "
                    "finish, or write to another output."
                ) from None
            except OSError:
                os.close(fd)  # a file system without locks: go on unlocked, as before
                return self
            # A releasing holder may have removed the file between our open and flock.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:
                os.close(fd)
        if not self.shared:
            try:  # the holder's pid, for the message a second process gets
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass  # a full disk: the lock holds all the same
        return self

    def release(self) -> None:
        """Drop the lock and remove the lock file when no one else holds it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # Only the last holder removes the file: a shared holder first checks it is alone.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(self.lock_path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

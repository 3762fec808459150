"""Publishing output files: verified, atomic, through symlinks; I/O errors as one line."""

import errno
import os

import pytest

from vggfeat.files import OutputError, output_error, publish, publish_bytes


def test_publish_bytes_round_trip_and_leaves_no_temporary(tmp_path):
    out = publish_bytes(tmp_path / "sub" / "a.json", "{}\n")
    assert out.read_text() == "{}\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.json"]


def test_failed_verification_publishes_nothing_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def verify(tmp):
        raise OSError(errno.EIO, "read back differs")

    with pytest.raises(OutputError, match="input/output error while writing .*a.txt"):
        with publish(path, verify=verify) as tmp:
            tmp.write_text("new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_an_error_in_the_body_removes_the_temporary_and_propagates(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with publish(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_enospc_becomes_one_line_with_path_and_resume_hint(tmp_path):
    with pytest.raises(OutputError) as info:
        with publish(tmp_path / "store.h5"):
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(info.value)
    assert message.startswith("no space left on device while writing ")
    assert "store.h5" in message and "run the same command to resume" in message
    assert "\n" not in message


def test_errno_named_only_in_a_library_message_is_recognised():
    # h5py reports HDF5 failures as OSError with the errno only inside the text.
    exc = OSError("Unable to create file (file write failed: errno = 28, error message = 'x')")
    assert str(output_error(exc, "p.h5")).startswith("no space left on device while writing p.h5")


def test_writes_go_through_a_symlink(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    publish_bytes(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_one_line_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied while writing"):
            publish_bytes(folder / "a.txt", "x")
    finally:
        folder.chmod(0o700)


# --- GuardedFile / publish_stream: HDF5 never sees an I/O error --------------------------------


def _fail_on_write(monkeypatch, k, code=errno.ENOSPC):
    """Make the k-th write that reaches the disk raise OSError(code); returns the call count."""
    from vggfeat.files import GuardedFile

    real = GuardedFile._write_at
    calls = [0]

    def write_at(self, data, offset):
        calls[0] += 1
        if calls[0] == k:
            raise OSError(code, os.strerror(code))
        return real(self, data, offset)

    monkeypatch.setattr(GuardedFile, "_write_at", write_at)
    return calls


def _write_h5(path, data):
    import h5py

    from vggfeat.files import publish_stream

    with publish_stream(path) as fh:
        with h5py.File(fh, "w", libver="latest") as f:
            f.create_dataset("x", data=data, chunks=(16, data.shape[1]), fletcher32=True)
            for i in range(5):
                f.attrs[f"a{i}"] = "y" * 300
            f.flush()


@pytest.mark.parametrize("k", [1, 2, 4, 6, 9, 12])
def test_a_failing_write_anywhere_in_an_hdf5_file_is_one_error_and_no_file(
    tmp_path, monkeypatch, k
):
    import h5py
    import numpy as np

    data = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    calls = _fail_on_write(monkeypatch, k)
    with pytest.raises(OutputError, match="^no space left on device while writing .*x.h5"):
        _write_h5(tmp_path / "x.h5", data)
    assert calls[0] >= k and os.listdir(tmp_path) == []  # nothing published, no temporary
    monkeypatch.undo()
    # HDF5 is still healthy in this process (a failed write used to leave it to segfault).
    _write_h5(tmp_path / "x.h5", data)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert np.array_equal(f["x"][()], data)


def test_an_error_at_close_or_fsync_publishes_nothing(tmp_path, monkeypatch):
    import numpy as np

    from vggfeat.files import GuardedFile

    def sync(self):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(GuardedFile, "_sync", sync)
    with pytest.raises(OutputError, match="^input/output error while writing"):
        _write_h5(tmp_path / "x.h5", np.zeros((20, 4), np.float32))
    assert os.listdir(tmp_path) == []


def test_guarded_file_reads_back_what_the_disk_refused(tmp_path, monkeypatch):
    from vggfeat.files import GuardedFile

    _fail_on_write(monkeypatch, 2)
    fh = GuardedFile(tmp_path / "f")
    fh.write(b"abcdef")
    fh.seek(3)
    fh.write(b"XYZ!")  # refused by the disk: kept in memory
    fh.seek(0)
    buf = bytearray(10)
    assert fh.readinto(buf) == 7 and bytes(buf) == b"abcXYZ!\0\0\0"
    with pytest.raises(OSError, match="No space"):
        fh.check()
    fh.close()


def test_check_free_space(tmp_path):
    from vggfeat.files import check_free_space

    check_free_space(tmp_path / "a.h5", 1000)
    with pytest.raises(OutputError, match=r"not enough space to write .*a.h5: it needs about"):
        check_free_space(tmp_path / "new" / "a.h5", 1 << 62)


# --- OutputLock ----------------------------------------------------------------------------------


def test_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    from vggfeat.files import OutputLock

    with OutputLock(tmp_path / "s.h5"):
        assert (tmp_path / "s.h5.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(OutputError, match=rf"s.h5 is in use by .*\(pid {os.getpid()}\)"):
            OutputLock(tmp_path / "s.h5").acquire()
        with pytest.raises(OutputError, match="in use"):
            OutputLock(tmp_path / "s.h5", shared=True).acquire()
    assert not (tmp_path / "s.h5.lock").exists()  # released: no litter
    with OutputLock(tmp_path / "s.h5", shared=True), OutputLock(tmp_path / "s.h5", shared=True):
        with pytest.raises(OutputError, match="in use"):
            OutputLock(tmp_path / "s.h5").acquire()
    assert not (tmp_path / "s.h5.lock").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    import signal
    import subprocess
    import sys

    from vggfeat.files import OutputLock

    code = (
        "import sys, time; from vggfeat.files import OutputLock; "
        f"OutputLock({str(tmp_path / 's.h5')!r}).acquire(); print('held', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {proc.pid}"):
            OutputLock(tmp_path / "s.h5").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / "s.h5.lock").exists()  # the file stays, but the lock died with it
    with OutputLock(tmp_path / "s.h5"):
        pass

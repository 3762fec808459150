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

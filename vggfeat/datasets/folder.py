"""Index image files and folders into (id, path) samples; ids are POSIX paths relative to a root.

A folder scan follows symlinked folders but visits each real folder once, by (device, inode), so
links such as ``latest -> .`` or ``up -> ..`` neither duplicate images nor loop forever. Image
files are recognised by the extensions Pillow registers, and other regular files by their
content; whatever the scan leaves out is counted, with why, in a ``ScanReport``.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vggfeat.errors import VggfeatError
from vggfeat.images import IMAGE_EXTENSIONS, looks_like_image

__all__ = ["ScanReport", "find_images", "read_list"]

_EXAMPLES = 3  # names shown per kind of skip in the one-line summary


def _printable(text: str) -> str:
    """Undecodable bytes in file names (surrogates) as escapes, so the text can be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class ScanReport:
    """What a scan found and everything it left out, with why.

    Attributes:
        images: Samples found (files in folders, files given directly and listed paths).
        by_content: Files without an image extension that are images by their first bytes.
        not_images: Regular files left out as not images, counted by extension.
        not_files: Entries left out that are no regular files, by kind (broken link, pipe, ...).
        revisited: Symlinked folders left out because their folder was already scanned (loops
            such as ``latest -> .`` and second links to one folder), as paths under the input.
        unreadable: Folders or files that could not be read, with the reason.
    """

    images: int = 0
    by_content: list[str] = field(default_factory=list)
    not_images: Counter[str] = field(default_factory=Counter)
    not_files: Counter[str] = field(default_factory=Counter)
    revisited: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was found and what was skipped, with counts, reasons and examples."""
        found = f"scan: {self.images} image{'s' if self.images != 1 else ''}"
        if self.by_content:
            found += f" ({len(self.by_content)} recognised by content: no image extension)"
        parts = []
        if self.not_images:
            kinds = _tally(self.not_images, 5)
            parts.append(f"{_count(self.not_images.total(), 'non-image file')} ({kinds})")
        if self.not_files:
            kinds = _tally(self.not_files, len(self.not_files))
            parts.append(f"{_count(self.not_files.total(), 'non-file')} ({kinds})")
        if self.revisited:
            parts.append(
                f"{_count(len(self.revisited), 'symlinked folder')} already scanned (symlink "
                f"loop or second link: {_examples(self.revisited)})"
            )
        if self.unreadable:
            parts.append(f"{_count(len(self.unreadable), 'unreadable entry')} "
                         f"({_examples(self.unreadable)})")  # fmt: skip
        line = f"{found}; skipped {', '.join(parts)}" if parts else f"{found}; nothing skipped"
        return _printable(line)


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _tally(counts: Counter[str], top: int) -> str:
    """'.txt 3, .csv 1': the ``top`` most common, ties by name."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    more = ", ..." if len(ordered) > top else ""
    return ", ".join(f"{key} {n}" for key, n in ordered[:top]) + more


def _examples(items: Sequence[str]) -> str:
    more = ", ..." if len(items) > _EXAMPLES else ""
    return ", ".join(items[:_EXAMPLES]) + more


def _kind(mode: int | None) -> str:
    if mode is None:
        return "broken symlink"
    if stat.S_ISFIFO(mode):
        return "pipe"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "other"


def _folder_key(path: str | os.PathLike) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _image_files(folder: Path, report: ScanReport) -> list[Path]:
    """Image files under ``folder``, recursively, following symlinked folders once each.

    The real tree is scanned before any symlinked folder, so a folder reached both directly and
    through a link keeps its real path.
    """
    found: list[Path] = []
    visited = {_folder_key(folder)}
    real: list[Path] = [folder]
    linked: deque[Path] = deque()
    while real or linked:
        if real:
            current = real.pop()
        else:
            current = linked.popleft()
            try:
                key = _folder_key(current)
            except OSError as exc:
                report.unreadable.append(f"{_under(current, folder)}: {exc.strerror}")
                continue
            if key in visited:
                report.revisited.append(_under(current, folder))
                continue
            visited.add(key)
        try:
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            report.unreadable.append(f"{_under(current, folder)}: {exc.strerror}")
            continue
        for entry in entries:
            path = Path(entry.path)
            if _is_dir(entry):
                if entry.is_symlink():
                    linked.append(path)
                    continue
                key = (entry.stat(follow_symlinks=False).st_dev, entry.inode())
                if key in visited:  # a bind mount of a folder already scanned
                    report.revisited.append(_under(path, folder))
                else:
                    visited.add(key)
                    real.append(path)
            elif _is_image_file(entry, path, folder, report):
                found.append(path)
    return sorted(found)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # e.g. a link to itself: ELOOP
        return False


def _under(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _is_image_file(entry: os.DirEntry, path: Path, folder: Path, report: ScanReport) -> bool:
    """Whether a non-folder entry is an image to index; counts it in ``report`` if not."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True  # indexed whatever it holds: a bad one becomes a failed row with its reason
    try:
        mode = entry.stat().st_mode
    except OSError:
        mode = None
    if mode is None or not stat.S_ISREG(mode):
        report.not_files[_kind(mode)] += 1
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as exc:
        report.unreadable.append(f"{_under(path, folder)}: {exc.strerror}")
        return False
    if looks_like_image(head):
        report.by_content.append(_under(path, folder))
        return True
    report.not_images[suffix or "no extension"] += 1
    return False


def _relative_id(path: Path, base: Path) -> str:
    # Lexical, not resolved: ids keep the names of symlinked folders under the root.
    relative = Path(os.path.relpath(path.absolute(), base.absolute()))
    if relative.parts and relative.parts[0] == "..":
        raise VggfeatError(f"{path} is not under --root {base}: give a --root that contains it.")
    return relative.as_posix()


_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def _decode_text(data: bytes, name: str) -> str:
    """Text of a list file: BOM-marked UTF-8/16/32, BOM-less UTF-16, else UTF-8.

    BOM-less text that is not UTF-8 keeps its bytes as surrogates (as ``os.listdir`` does for
    such names), so a name in a legacy encoding still finds the same file on disk.
    """
    encoding = None
    for bom, codec in _BOMS:
        if data.startswith(bom):
            encoding, data = codec, data[len(bom) :]
            break
    if encoding is None and b"\x00" in data and len(data) % 2 == 0:
        # UTF-16 without a BOM: ASCII characters put their zero byte first (BE) or second (LE).
        even, odd = data[0::2].count(0), data[1::2].count(0)
        encoding = "utf-16-le" if odd > even else "utf-16-be"
    try:
        return data.decode(encoding or "utf-8", "strict" if encoding else "surrogateescape")
    except UnicodeDecodeError as exc:
        raise VggfeatError(
            f"--list {name} is not valid {encoding} text ({exc.reason} at byte {exc.start}): "
            "save it as UTF-8 text, one path per line."
        ) from None


def read_list(list_file: str | os.PathLike) -> list[str]:
    """Paths listed one per line, in UTF-8, UTF-16 or UTF-32 (with or without a BOM).

    Only line ends are stripped, so names may start or end with spaces. Blank lines and lines
    whose first non-blank character is '#' are skipped.
    """
    text = _decode_text(Path(list_file).read_bytes(), str(list_file))
    lines = re.split(r"\r\n|\r|\n", text)
    return [s for s in lines if s.strip() and not s.lstrip().startswith("#")]


def find_images(
    inputs: Sequence[str | os.PathLike] = (),
    root: str | os.PathLike | None = None,
    list_file: str | os.PathLike | None = None,
    report: ScanReport | None = None,
) -> list[tuple[str, str]]:
    """Samples (id, path) from files, folders (searched recursively) and/or a list file.

    Ids are paths relative to ``root`` if given, else to the folder given as input (a file given
    directly gets its name). Listed paths that are relative resolve against ``root`` (or the
    working directory); listed files that do not exist are kept, so the run records them as
    failed. Files given explicitly are kept whatever their extension.

    Args:
        inputs: Image files and folders.
        root: The folder ids are relative to.
        list_file: A text file of paths, one per line (see ``read_list``).
        report: Filled with what the scan found and what it skipped, and why.
    """
    report = report if report is not None else ScanReport()
    base = Path(root) if root is not None else None
    if base is not None and not base.is_dir():
        raise VggfeatError(f"--root {base} is not a folder.")
    samples: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = _image_files(item, report)
            samples += [(_relative_id(p, base or item), str(p)) for p in found]
        elif item.exists():
            samples.append((_relative_id(item, base) if base else item.name, str(item)))
        else:
            raise VggfeatError(f"Input {item} does not exist.")
    if list_file is not None:
        for line in read_list(list_file):
            path = Path(line)
            if not path.is_absolute() and base is not None:
                path = base / path
            samples.append((_relative_id(path, base) if base else Path(line).as_posix(), str(path)))
    report.images = len(samples)
    _refuse_duplicates(id_ for id_, _ in samples)
    if not samples:
        raise VggfeatError(
            f"No images found ({report.summary()}): give image files, folders or --list FILE."
        )
    return samples


def _refuse_duplicates(ids: Iterable[str]) -> None:
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise VggfeatError(
            f"{len(dupes)} image ids occur twice (e.g. {', '.join(dupes[:3])}): give each image "
            "once, or a --root that makes ids unique."
        )

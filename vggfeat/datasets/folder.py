"""Index image files and folders into (id, path) samples; ids are POSIX paths relative to a root."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from vggfeat.errors import VggfeatError
from vggfeat.images import IMAGE_EXTENSIONS

__all__ = ["find_images", "read_list"]


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, following symlinked folders."""
    found = []
    for dirpath, _, files in os.walk(folder, followlinks=True):
        found += [Path(dirpath, f) for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _relative_id(path: Path, base: Path) -> str:
    # Lexical, not resolved: ids keep the names of symlinked folders under the root.
    relative = Path(os.path.relpath(path.absolute(), base.absolute()))
    if relative.parts and relative.parts[0] == "..":
        raise VggfeatError(f"{path} is not under --root {base}: give a --root that contains it.")
    return relative.as_posix()


def read_list(list_file: str | os.PathLike) -> list[str]:
    """Paths listed one per line; blank lines and '#' comments are skipped."""
    lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def find_images(
    inputs: Sequence[str | os.PathLike] = (),
    root: str | os.PathLike | None = None,
    list_file: str | os.PathLike | None = None,
) -> list[tuple[str, str]]:
    """Samples (id, path) from files, folders (searched recursively) and/or a list file.

    Ids are paths relative to ``root`` if given, else to the folder given as input (a file given
    directly gets its name). Listed paths that are relative resolve against ``root`` (or the
    working directory); listed files that do not exist are kept, so the run records them as
    failed. Files given explicitly are kept whatever their extension.
    """
    base = Path(root) if root is not None else None
    if base is not None and not base.is_dir():
        raise VggfeatError(f"--root {base} is not a folder.")
    samples: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            samples += [(_relative_id(p, base or item), str(p)) for p in _image_files(item)]
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
    _refuse_duplicates(id_ for id_, _ in samples)
    if not samples:
        raise VggfeatError("No images found: give image files, folders or --list FILE.")
    return samples


def _refuse_duplicates(ids: Iterable[str]) -> None:
    seen: set[str] = set()
    dupes = [i for i in ids if i in seen or seen.add(i)]
    if dupes:
        raise VggfeatError(
            f"{len(dupes)} image ids occur twice (e.g. {', '.join(dupes[:3])}): give each image "
            "once, or a --root that makes ids unique."
        )

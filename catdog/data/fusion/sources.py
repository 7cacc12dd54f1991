"""Reading the sources: folders and (nested) zips behind one small interface, and the image checks."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from catdog import CatDogError

JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
PNG_START = b"\x89PNG\r\n\x1a\n"
#: The formats fusion writes: those whose start and end markers the quick check knows (Kaggle ships JPEGs).
FORMATS = frozenset({"JPEG", "PNG"})


@dataclass(frozen=True)
class SourceFile:
    """One file of a source: ``name`` is its path inside the source, ``ref`` says where it is for users."""

    name: str
    ref: str
    read: Callable[[], bytes] = field(compare=False, repr=False)
    path: str | None = None  # set for folder sources: hardlink/symlink/move need a real file


class Source(contextlib.ExitStack):
    """A folder or zip archive, listed as :class:`SourceFile` objects (use as a context manager)."""

    def __init__(self, location: str | os.PathLike[str], what: str) -> None:
        super().__init__()
        self.location = Path(location)
        self.what = what
        if not self.location.exists():
            raise CatDogError(f"{what} source {self.location}: no such file or folder")

    def files(self) -> list[SourceFile]:
        """Every file of the source, nested zips opened, sorted by name."""
        if self.location.is_dir():
            return sorted(_folder_files(str(self.location)), key=lambda f: f.name)
        return self._zip_files(self.location, str(self.location))

    def _open_zip(self, location: Path | io.IOBase, ref: str) -> zipfile.ZipFile:
        try:
            return self.enter_context(zipfile.ZipFile(location))
        except zipfile.BadZipFile as err:
            raise CatDogError(f"{self.what} source {ref}: not a valid zip file ({err})") from err

    def _zip_files(self, location: Path | io.IOBase, ref: str) -> list[SourceFile]:
        archive = self._open_zip(location, ref)
        files: list[SourceFile] = []
        for info in archive.infolist():
            if info.is_dir():
                continue
            member_ref = f"{ref}!{info.filename}"
            if info.filename.lower().endswith(".zip"):
                # Nested archive (the competition zip holds train.zip): spool it to a seekable temp file.
                spool = self.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed by the stack)
                with archive.open(info) as member:
                    shutil.copyfileobj(member, spool, 1 << 20)
                spool.seek(0)
                nested = self._zip_files(spool, member_ref)  # type: ignore[arg-type]
                files.extend(SourceFile(f"{info.filename}!{f.name}", f.ref, f.read) for f in nested)
            else:
                files.append(SourceFile(info.filename, member_ref, functools.partial(archive.read, info)))
        return files


def _folder_files(root: str, prefix: str = "", seen: frozenset[str] = frozenset()) -> list[SourceFile]:
    """Every file under ``root``, linked folders followed once (plain strings: a Path per file costs more than
    reading a small image)."""
    seen = seen | {os.path.realpath(root)}
    found = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir():
                if entry.is_dir(follow_symlinks=False) or os.path.realpath(entry.path) not in seen:
                    found += _folder_files(entry.path, f"{prefix}{entry.name}/", seen)
            else:
                found.append(SourceFile(prefix + entry.name, entry.path, functools.partial(read_file, entry.path),
                                        entry.path))  # fmt: skip
    return found


def read_file(path: str) -> bytes:
    """The bytes of a file: usually one ``read`` of its size plus one byte (the short read says "end of file")."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(descriptor).st_size
        data = os.read(descriptor, size + 1)
        if len(data) == size:
            return data
        chunks = [data]
        while chunk := os.read(descriptor, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def basename(name: str) -> str:
    """The file name of a source file name (zip nesting included)."""
    return name.rsplit("!", 1)[-1].rsplit("/", 1)[-1]


def folder_of(name: str) -> str:
    """The folder part of a source file name (zip nesting included)."""
    return name[: max(name.rfind("/"), name.rfind("!")) + 1]


def check_image(data: bytes, full: bool = False) -> str | None:
    """None if ``data`` is a usable image, else the reason.

    ``quick`` checks the signature and that the file ends with its end marker (a truncated download does
    not). ``full`` also walks a JPEG's markers (:func:`jpeg_structure_problem`) and decodes every pixel with
    Pillow, which catches most damage in the middle of a file (the end marker is then intact). Damage that
    still decodes (a zeroed block of compressed data, say) is invisible to any check without the original.
    """
    if not data:
        return "empty file"
    if not full:
        if data.startswith(JPEG_START):
            if data.endswith(JPEG_END) or data.rstrip(b"\x00\r\n ").endswith(JPEG_END):
                return None
            return "truncated JPEG (no end-of-image marker)"
        if data.startswith(PNG_START):
            return None if b"IEND" in data[-16:] else "truncated PNG (no IEND chunk)"
    elif data.startswith(JPEG_START) and (problem := jpeg_structure_problem(data)):
        return problem
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in FORMATS:
                return f"unsupported image format {image.format}"
            image.load()
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as err:
        return f"corrupt image ({err})"
    return None


#: Markers that may start a segment of a JPEG (frame headers, tables, scans, application data, comments).
_SEGMENT_MARKERS = frozenset({*range(0xC0, 0xD0), *range(0xDA, 0xE0), *range(0xE0, 0xF0), 0xFE})


def jpeg_structure_problem(data: bytes) -> str | None:
    """None if ``data`` is a well-formed sequence of JPEG segments and scans up to its end marker, else why not.

    Inside compressed scan data a 0xFF byte may only be followed by 0x00 (stuffing), by a restart marker
    (in order, 0xD0 to 0xD7) or by the marker that ends the scan. Random damage almost always breaks this.
    """
    pos, size = 2, len(data)
    while True:
        if pos + 1 >= size or data[pos] != 0xFF:
            return f"corrupt JPEG (no marker at byte {pos})"
        while pos + 1 < size and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos + 1] if pos + 1 < size else 0
        if marker == 0xD9:
            return None
        if marker not in _SEGMENT_MARKERS:
            return f"corrupt JPEG (unexpected marker 0x{marker:02X} at byte {pos})"
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > size:
            return f"corrupt JPEG (segment at byte {pos} runs past the end)"
        pos += 2 + length
        if marker == 0xDA:
            found = _scan_end(data, pos)
            if isinstance(found, str):
                return found
            pos = found


def _scan_end(data: bytes, pos: int) -> int | str:
    """Where the compressed data starting at ``pos`` ends (its next marker), or what is wrong with it."""
    restart = 0
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return "corrupt JPEG (compressed data runs to the end of the file)"
        following = data[pos + 1]
        if following == 0x00:
            pos += 2
        elif following == 0xFF:
            pos += 1
        elif 0xD0 <= following <= 0xD7:
            if following != 0xD0 + restart:
                return f"corrupt JPEG (restart marker out of order at byte {pos})"
            restart, pos = (restart + 1) % 8, pos + 2
        else:
            return pos

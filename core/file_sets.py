"""Folders and .zip archives opened into the files they hold, ready for ingestion. Each file gets a name of its own
(its path inside, flattened: `guides/setup.md` is stored as `guides_setup.md`, so two `notes.md` in different
folders do not replace each other); files of a kind we do not read are listed as skipped; an archive is checked
whole before anything is unpacked (entries pointing outside it, links, a member over the file size limit, a zip
bomb), and refused whole, so nothing of a bad archive is written."""
from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.documents import SUPPORTED_SUFFIXES, display_name
from core.office import EXPANSION  # the same zip-bomb bound as for Office files
from core.web import looks_like_url

MAX_ARCHIVE_FILES = 1000
_SKIPPED_SILENTLY = ("__MACOSX", "Thumbs.db", "desktop.ini")  # what systems add to folders and archives


@dataclass
class Source:
    """One thing to ingest: a file on disk (with the name to store it under) or a web address (name None)."""

    path: str | Path
    name: str | None = None


@dataclass
class Listed:
    """A file that was looked at and not ingested: (name, status "skipped" or "failed", why)."""

    name: str
    status: str
    reason: str


def expand_sources(items: list[str | Path], workdir: Path, max_file_mb: int,
                   recursive: bool = False) -> list[Source | Listed]:
    """Every item as the files to ingest: a folder as its files (its subfolders with `recursive`), a .zip as its
    members (unpacked under `workdir`), anything else (a file, a web address) as itself."""
    out: list[Source | Listed] = []
    for n, item in enumerate(items):
        path = None if looks_like_url(item) else Path(item)
        if path is not None and path.is_dir():
            out.extend(_folder(path, recursive))
        elif path is not None and path.suffix.lower() == ".zip" and path.is_file():
            out.extend(_archive(path, display_name(path.name), workdir / f"zip-{n}", max_file_mb))
        else:
            out.append(Source(item))
    return out


def _hidden(parts) -> bool:
    return any(part.startswith(".") or part in _SKIPPED_SILENTLY for part in parts)


def _flat_name(parts) -> str:
    return display_name("_".join(parts))


def _kind_problem(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".zip":
        return "an archive inside a folder or archive is not opened; add it by itself"
    if suffix not in SUPPORTED_SUFFIXES:
        return f"unsupported file type {suffix or '(no extension)'}"
    return None


# ---- folders ---------------------------------------------------------------------------------------------------

def _folder(root: Path, recursive: bool) -> list[Source | Listed]:
    out: list[Source | Listed] = []
    entries = sorted(root.rglob("*") if recursive else root.iterdir())
    for path in entries:
        parts = path.relative_to(root).parts
        if _hidden(parts) or path.is_symlink():  # links could lead anywhere, loops included
            continue
        if path.is_dir():
            if not recursive:
                out.append(Listed(_flat_name(parts) + "/", "skipped", "a folder; add --recursive to include it"))
            continue
        name = _flat_name(parts)
        problem = _kind_problem(path.name)
        out.append(Listed(name, "skipped", problem) if problem else Source(path, name))
    if not out:
        return [Listed(display_name(root.name) + "/", "failed", "the folder has no files in it")]
    return out


# ---- archives --------------------------------------------------------------------------------------------------

def _archive(path: Path, name: str, workdir: Path, max_file_mb: int) -> list[Source | Listed]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return [Listed(name, "failed", "the .zip file is corrupt or not a zip archive")]
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        parts_of = {m.filename: PurePosixPath(m.filename.replace("\\", "/")).parts for m in members}
        problem = _archive_problem(members, parts_of, max_file_mb)
        if problem:
            return [Listed(name, "failed", f"{problem}; nothing from it was added")]
        kept = [m for m in members if not _hidden(parts_of[m.filename])]
        # A zip of one folder ("docs/...") names its files without that folder.
        tops = {parts_of[m.filename][0] for m in kept if len(parts_of[m.filename]) > 1}
        strip = 1 if len(tops) == 1 and all(len(parts_of[m.filename]) > 1 for m in kept) else 0
        out: list[Source | Listed] = []
        for member in sorted(kept, key=lambda m: m.filename):
            parts = parts_of[member.filename][strip:]
            file_name = _flat_name(parts)
            kind = _kind_problem(parts[-1])
            if kind:
                out.append(Listed(file_name, "skipped", kind))
                continue
            target = workdir / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                # zipfile reads no more than the size the entry declares (checked above), whatever the data says.
                shutil.copyfileobj(source, sink)
            out.append(Source(target, file_name))
    if not out:
        return [Listed(name, "failed", "the archive has no files in it")]
    return out


def _archive_problem(members: list[zipfile.ZipInfo], parts_of: dict[str, tuple[str, ...]],
                     max_file_mb: int) -> str | None:
    if len(members) > MAX_ARCHIVE_FILES:
        return f"the archive holds {len(members)} files, over the limit of {MAX_ARCHIVE_FILES}"
    limit = max_file_mb * 1024 * 1024
    for member in members:
        parts = parts_of[member.filename]
        if (parts and (parts[0].startswith("/") or ":" in parts[0])) or ".." in parts:
            return f"the archive has an entry that points outside it ({member.filename})"
        if stat.S_ISLNK(member.external_attr >> 16):
            return f"the archive has a link in it ({member.filename})"
        if member.flag_bits & 0x1:
            return "the archive is password-protected"
        if member.file_size > limit:
            return (f"{member.filename} is {member.file_size / 1048576:.1f} MB unpacked, over the {max_file_mb} MB "
                    "limit for a file")
    total = sum(m.file_size for m in members)
    if total > EXPANSION * limit:
        return (f"the archive unpacks to {total / 1048576:.1f} MB, over the limit of "
                f"{EXPANSION * max_file_mb} MB")
    return None


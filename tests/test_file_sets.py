"""Folders and .zip archives as people have them: a line for each file in them, files of other kinds listed as
skipped, and a bad archive refused whole before anything is written. Real store, real embedder, the CLI's own
main()."""
from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from conftest import HANDBOOK, cli_here
from core.config import load_settings
from core.lab import Lab


def make_folder(root: Path) -> Path:
    """Notes as they pile up: two files, one of a kind we do not read, hidden system files, and a subfolder with a
    file of the same name as one above it."""
    root.mkdir()
    (root / "handbook.md").write_text(HANDBOOK)
    (root / "canteen.txt").write_text("The canteen of the Velmor lighthouse serves kelp soup on Fridays.")
    (root / "tool.exe").write_bytes(b"MZ\x90\x00" + bytes(200))
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "guides").mkdir()
    (root / "guides" / "canteen.txt").write_text("Guides may eat at the canteen after the last tour of the day.")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    return root


def lines(results) -> list[tuple[str, str]]:
    return [(r["file"] if isinstance(r, dict) else r.file, r["status"] if isinstance(r, dict) else r.status)
            for r in results]


def test_a_folder_gives_a_line_for_each_file_and_its_subfolders_with_recursive(data_dir, tmp_path):
    folder = make_folder(tmp_path / "notes")
    first = cli_here(["ingest", str(folder), "--json"], data_dir)
    assert first.returncode == 0, first.stderr  # skipped files are not failures
    results = json.loads(first.stdout)["results"]
    assert lines(results) == [("canteen.txt", "added"), ("guides/", "skipped"), ("handbook.md", "added"),
                              ("tool.exe", "skipped")]
    assert results[1]["message"] == "a folder; add --recursive to include it"
    assert results[3]["message"] == "unsupported file type .exe"
    again = cli_here(["ingest", str(folder), "--recursive"], data_dir)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "unchanged  canteen.txt: already in the knowledge base with the same content",
        "    added  guides_canteen.txt: added: 1 page(s), 1 chunks",  # its own name: the top one is not replaced
        "unchanged  handbook.md: already in the knowledge base with the same content",
        "  skipped  tool.exe: unsupported file type .exe"]
    listed = json.loads(cli_here(["kb", "show", "default", "--json"], data_dir).stdout)
    assert sorted(f["file"] for f in listed["files"]) == ["canteen.txt", "guides_canteen.txt", "handbook.md"]
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = cli_here(["ingest", str(empty)], data_dir)
    assert refused.returncode == 1 and "failed  empty/: the folder has no files in it" in refused.stdout


def write_zip(path: Path, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name in links:  # a symbolic link entry, as `zip --symlinks` writes it
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


@pytest.fixture
def small_lab(tmp_path) -> Lab:
    """A Lab whose file size limit is 1 MB, so that archive limits are reached with small test files."""
    return Lab(load_settings(data_dir=tmp_path / "small", max_file_mb=1))


def test_a_zip_of_a_folder_goes_in_file_by_file(small_lab, tmp_path):
    archive = write_zip(tmp_path / "docs.zip", {
        "docs/handbook.md": HANDBOOK.encode(),
        "docs/guides/canteen.txt": b"Guides may eat at the canteen after the last tour of the day.",
        "docs/logo.svg": b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        "docs/old.zip": b"PK\x05\x06" + bytes(18),
        "__MACOSX/docs/._handbook.md": b"\x00\x05\x16\x07",
    })
    results = small_lab.kbs.ingest([archive])
    assert lines(results) == [("guides_canteen.txt", "added"), ("handbook.md", "added"), ("logo.svg", "skipped"),
                              ("old.zip", "skipped")]  # without the zip's one top folder; macOS's extras ignored
    assert results[3].message == "an archive inside a folder or archive is not opened; add it by itself"
    hits, _ = small_lab.kbs.search("When may guides eat at the canteen?")
    assert hits[0].file == "guides_canteen.txt"
    assert lines(small_lab.kbs.ingest([archive]))[:2] == [("guides_canteen.txt", "unchanged"),
                                                          ("handbook.md", "unchanged")]


@pytest.mark.parametrize("members, links, why", [
    ({"ok.md": b"fine", "../escape.md": b"outside"}, (), "an entry that points outside it (../escape.md)"),
    ({"ok.md": b"fine", "/etc/cron.d/x.md": b"absolute"}, (), "an entry that points outside it (/etc/cron.d/x.md)"),
    ({"ok.md": b"fine"}, ("link.md",), "a link in it (link.md)"),
    ({"ok.md": b"fine", "big.txt": b"a" * (1024 * 1024 + 1)}, (), "big.txt is 1.0 MB unpacked, over the 1 MB limit"),
    ({f"part{i}.txt": b"b" * 1_000_000 for i in range(11)}, (), "the archive unpacks to 10.5 MB, over the limit of 10 MB"),
])
def test_a_bad_archive_is_refused_whole_and_nothing_is_written(small_lab, tmp_path, members, links, why):
    small_lab.kbs.ingest([write_zip(tmp_path / "good.zip", {"kept.md": b"Already stored before the bad archive."})])
    bad = write_zip(tmp_path / "bad.zip", members, links)
    [result] = small_lab.kbs.ingest([bad])
    assert result.file == "bad.zip" and result.status == "failed"
    assert why in result.message and result.message.endswith("nothing from it was added")
    assert [f["file"] for f in small_lab.kbs.show("default")["files"]] == ["kept.md"]
    assert not (tmp_path / "escape.md").exists() and not (tmp_path.parent / "escape.md").exists()
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 and then nothing sensible")
    [broken] = small_lab.kbs.ingest([tmp_path / "broken.zip"])
    assert (broken.status, broken.message) == ("failed", "the .zip file is corrupt or not a zip archive")

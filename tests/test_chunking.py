"""Per-knowledge-base chunk settings, re-indexing from stored text, the chunk preview, and batched ingestion."""
import json
import sqlite3

import pytest

from conftest import SHARED_DATA, cli_here, write_pdf
from core.errors import InputError

LONG = " ".join(f"Sentence number {i} is about the river {['Oda', 'Vel', 'Marn'][i % 3]}." for i in range(300))


def test_a_new_knowledge_base_keeps_the_chunk_settings_it_was_made_with(lab, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(LONG)
    [small] = lab.kbs.ingest([path], "small", chunk_size=48, chunk_overlap=8)
    [large] = lab.kbs.ingest([path], "large", chunk_size=200, chunk_overlap=20)
    assert small.chunks > 2 * large.chunks
    assert (lab.kbs.show("small")["chunk_size"], lab.kbs.show("small")["chunk_overlap"]) == (48, 8)
    tokenizer = lab.models.embedder.tokenizer
    for chunk in lab.kbs.preview("small", "long.txt")["chunks"]:
        assert len(tokenizer.encode(chunk["text"], add_special_tokens=False)) <= 48
    # More files for "small" are split the same way without naming the settings again...
    other = tmp_path / "more.txt"
    other.write_text(LONG.replace("river", "lake"))
    [more] = lab.kbs.ingest([other], "small")
    assert more.chunks == small.chunks
    # ...and asking for other settings on an existing knowledge base is refused, pointing to the re-index.
    with pytest.raises(InputError, match="kb configure small"):
        lab.kbs.ingest([other], "small", chunk_size=100)


def test_reindex_rebuilds_every_file_from_its_stored_text(lab, tmp_path):
    pdf = write_pdf(tmp_path / "atlas.pdf", ["Intro page with nothing.", LONG[:1500], "The Quorvin Bridge spans the Oda."])
    notes = tmp_path / "notes.txt"
    notes.write_text(LONG)
    lab.kbs.ingest([pdf, notes], "kb", chunk_size=200, chunk_overlap=20)
    before = {f["file"]: f["chunks"] for f in lab.kbs.show("kb")["files"]}
    pdf.unlink()  # the originals are gone: the re-index reads the text the knowledge base stored
    notes.unlink()
    done = lab.kbs.configure("kb", chunk_size=40, chunk_overlap=5)
    after = {f["file"]: f["chunks"] for f in lab.kbs.show("kb")["files"]}
    assert [r["status"] for r in done["results"]] == ["updated", "updated"]
    assert all(after[name] > before[name] for name in before)
    assert lab.kbs.store.chunk_count("kb") == sum(after.values())  # the old chunks are gone
    assert not any(f["needs_reindex"] for f in lab.kbs.show("kb")["files"])
    hits, _ = lab.kbs.search("What does the Quorvin Bridge span?", "kb", top_k=1)
    assert hits[0].file == "atlas.pdf" and hits[0].page == "3"  # page labels survive
    # Nothing to do the second time.
    assert lab.kbs.configure("kb", chunk_size=40, chunk_overlap=5)["results"] == []


def test_bad_chunk_settings_are_refused_and_nothing_changes(lab, handbook):
    lab.kbs.ingest([handbook], "kb")
    chunks = lab.kbs.store.chunk_count("kb")
    for size, overlap, reason in ((1000, 10, "window of 254 tokens"), (100, 100, "less than the chunk size"),
                                  (8, 0, "between 16"), (100, -1, "at least 0")):
        with pytest.raises(InputError, match=reason):
            lab.kbs.configure("kb", chunk_size=size, chunk_overlap=overlap)
    assert lab.kbs.store.chunk_count("kb") == chunks
    assert lab.kbs.show("kb")["chunk_size"] == lab.settings.chunk_size


def test_preview_shows_chunks_in_reading_order_with_pages(lab, tmp_path):
    pdf = write_pdf(tmp_path / "book.pdf", [f"Chapter {n}. " + LONG[:600] for n in range(1, 4)])
    lab.kbs.ingest([pdf], "kb", chunk_size=64, chunk_overlap=0)
    preview = lab.kbs.preview("kb", "book.pdf")
    pages = [c["page"] for c in preview["chunks"]]
    assert pages == sorted(pages, key=int) and set(pages) == {"1", "2", "3"}
    assert preview["chunks"][0]["text"].startswith("Chapter 1.")
    assert all(0 < c["tokens"] <= 64 for c in preview["chunks"])
    with pytest.raises(InputError, match="no such file"):
        lab.kbs.preview("kb", "missing.pdf")


TOWNS = ["Vettelborg", "Lindqvar", "Marnholt", "Orsk", "Hollowmere", "Quorvin", "Brask", "Tellin"]
TRADES = ["copper bells", "pear cider", "river barges", "wool blankets", "glass beads", "clay pipes", "rope",
          "salt fish", "beeswax candles", "oak barrels"]


def small_notes(folder, count: int = 40) -> list:
    """`count` short notes, each about one fictional guild with its own name, town, trade and founding year."""
    paths = []
    for i in range(count):
        path = folder / f"guild_{i:02d}.txt"
        path.write_text(f"The guild of {TOWNS[i % 8]} number {i} makes {TRADES[i % 10]}. It was founded in "
                        f"{1700 + 7 * i} by master Ansel Kr{'aeiou'[i % 5]}mer the {i + 1}th. Its hall stands on "
                        f"{['North', 'South', 'East', 'West'][i % 4]} Street beside the {['mill', 'well'][i % 2]}.")
        paths.append(path)
    return paths


def assert_many_go_in_together(lab, docs: list, kb: str) -> None:
    results = lab.kbs.ingest(docs, kb)
    assert [r.file for r in results] == [d.name for d in docs]  # results in the order given
    assert {r.status for r in results} == {"added"}
    assert lab.kbs.store.chunk_count(kb) == sum(r.chunks for r in results) == lab.kbs.show(kb)["chunks"]
    assert len(lab.kbs.show(kb)["files"]) == len(docs)
    hits, _ = lab.kbs.search(docs[7].read_text()[:200], kb, top_k=1)
    assert hits[0].file == docs[7].name


def test_many_small_files_go_in_together_and_each_is_listed(lab, tmp_path):
    assert_many_go_in_together(lab, small_notes(tmp_path), "notes")


@pytest.mark.skipif(not (SHARED_DATA / "pubmedqa_test" / "docs").is_dir(),
                    reason="../shared/data/pubmedqa_test is not beside this checkout")
def test_many_real_abstracts_go_in_together_and_each_is_listed(lab):
    docs = sorted((SHARED_DATA / "pubmedqa_test" / "docs").glob("*.txt"))[:40]
    assert len(docs) == 40  # the folder is there: its abstracts must be too
    assert_many_go_in_together(lab, docs, "pubmed")


def test_the_same_file_given_twice_in_one_call_goes_in_once(lab, handbook):
    first, second = lab.kbs.ingest([handbook, handbook], "kb")
    assert (first.status, second.status) == ("added", "unchanged")
    assert "given twice" in second.message
    assert lab.kbs.store.chunk_count("kb") == first.chunks


def test_deleting_files_and_knowledge_bases_leaves_no_stored_text(lab, handbook, tmp_path, data_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text(LONG)
    lab.kbs.ingest([handbook, notes], "kb")
    notes.write_text(LONG + " One more sentence.")
    lab.kbs.ingest([notes], "kb")  # the replaced version's text goes too
    lab.kbs.delete_file("kb", "handbook.md")
    with sqlite3.connect(data_dir / "catalog.sqlite") as db:
        assert db.execute("SELECT COUNT(DISTINCT ingest_id) FROM pages").fetchone()[0] == 1
    lab.kbs.delete("kb")
    with sqlite3.connect(data_dir / "catalog.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM pages").fetchone()[0] == 0


def test_cli_chunk_settings_configure_and_preview(tmp_path, handbook):
    env = tmp_path / "data"

    def run_json(args):
        done = cli_here(args, env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert cli_here(["ingest", str(handbook), "--kb", "h", "--chunk-size", "32", "--overlap", "4"], env).returncode == 0
    shown = run_json(["kb", "show", "h", "--json"])
    assert (shown["chunk_size"], shown["chunk_overlap"]) == (32, 4)
    refused = cli_here(["ingest", str(handbook), "--kb", "h", "--chunk-size", "64"], env)
    assert refused.returncode == 1 and "kb configure h" in refused.stderr
    done = run_json(["kb", "configure", "h", "--chunk-size", "64", "--overlap", "8", "--json"])
    assert done["chunk_size"] == 64 and done["results"][0]["status"] == "updated"
    preview = run_json(["kb", "show", "h", "--file", "handbook.md", "--json"])
    assert any("Mirela Quanz" in c["text"] for c in preview["chunks"])
    bad = cli_here(["kb", "configure", "h", "--chunk-size", "5000"], env)
    assert bad.returncode == 1 and "chunk size" in bad.stderr

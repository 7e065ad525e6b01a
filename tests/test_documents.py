"""Reading files: every bad input gets a specific message naming the file."""
from pathlib import Path

import pytest

from conftest import SHARED_DATA, write_pdf, write_scanned_pdf
from core.documents import display_name, read_pages
from core.errors import InputError


def reason(path: Path, name: str | None = None, max_mb: int = 50) -> str:
    with pytest.raises(InputError) as caught:
        read_pages(path, name or path.name, max_mb)
    assert caught.value.subject == (name or path.name)
    return caught.value.reason


def test_pdf_pages_keep_their_numbers(tmp_path):
    path = write_pdf(tmp_path / "two.pdf", ["Alpha page text.", "Beta page text."])
    pages = read_pages(path, "two.pdf", 50)
    assert [(p.label, p.text) for p in pages] == [("1", "Alpha page text."), ("2", "Beta page text.")]
    assert {p.read_by for p in pages} == {"text"}  # short pages of real text keep their text layer: no OCR


def test_text_and_markdown(tmp_path):
    (tmp_path / "a.txt").write_text("plain words")
    (tmp_path / "b.md").write_text("# Title\n\nbody")
    assert read_pages(tmp_path / "a.txt", "a.txt", 50)[0].text == "plain words"
    assert read_pages(tmp_path / "b.md", "b.md", 50)[0].text.startswith("# Title")


def test_non_utf8_text_is_detected(tmp_path):
    path = tmp_path / "latin.txt"
    text = "Le café de la gare sert des crêpes délicieuses à volonté, été comme hiver, près du théâtre."
    path.write_bytes(text.encode("cp1252"))
    assert read_pages(path, "latin.txt", 50)[0].text == text


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "empty" in reason(tmp_path / "empty.txt")


def test_unsupported_type(tmp_path):
    (tmp_path / "sheet.ods").write_bytes(b"PK\x03\x04 not really")
    assert "unsupported file type .ods" in reason(tmp_path / "sheet.ods")


def test_binary_file_named_txt(tmp_path):
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    assert "binary" in reason(tmp_path / "blob.txt")


def test_size_limit(tmp_path):
    (tmp_path / "big.txt").write_text("x" * (2 * 1024 * 1024))
    assert "over the 1 MB limit" in reason(tmp_path / "big.txt", max_mb=1)


def test_scanned_pdf_says_ocr_is_needed(tmp_path):
    assert "OCR" in reason(write_scanned_pdf(tmp_path / "scan.pdf"))


def test_corrupt_pdf(tmp_path):
    (tmp_path / "junk.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    assert "corrupt" in reason(tmp_path / "junk.pdf") or "no text" in reason(tmp_path / "junk.pdf")


def test_truncated_pdf(tmp_path):
    whole = write_pdf(tmp_path / "whole.pdf", ["Some text " * 50] * 3).read_bytes()
    (tmp_path / "cut.pdf").write_bytes(whole[: len(whole) // 3])
    message = reason(tmp_path / "cut.pdf")
    assert "corrupt or truncated" in message or "no text layer" in message


def test_password_protected_pdf(tmp_path):
    path = write_pdf(tmp_path / "secret.pdf", ["Top secret."], password="hunter2")
    assert "password" in reason(path)


def test_display_name_strips_paths_and_odd_characters():
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\report.pdf") == "report.pdf"
    assert display_name("<script>x</script>.md") == "script_.md"  # "/" splits the path; "<>" are replaced
    assert display_name("a<b>c.md") == "a_b_c.md"
    with pytest.raises(InputError):
        display_name("../..")


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside this checkout")
def test_real_wikipedia_pdf(tmp_path):
    pages = read_pages(SHARED_DATA / "pdfs" / "UC_Berkeley_short.pdf", "UC_Berkeley_short.pdf", 50)
    assert len(pages) == 5
    assert "Berkeley" in pages[0].text


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is not beside this checkout")
def test_real_ligature_pdf_reads_words():
    text = read_pages(SHARED_DATA / "pdfs" / "crazyones.pdf", "crazyones.pdf", 50)[0].text
    assert "misfits" in text.lower()


def test_citations_read_naturally():
    from core.documents import cite

    assert cite("a.pdf", "3") == "a.pdf, page 3"
    assert cite("t.csv", "rows 1-50") == "t.csv, rows 1-50"
    assert cite("notes.md", "") == "notes.md"


def test_utf16_text_with_a_byte_order_mark(tmp_path):
    """What Windows Notepad saves as "Unicode": full of NUL bytes, but text, not binary."""
    path = tmp_path / "notepad.txt"
    path.write_bytes("Résumé of the Zorblat meeting.".encode("utf-16"))
    assert read_pages(path, "notepad.txt", 50)[0].text == "Résumé of the Zorblat meeting."

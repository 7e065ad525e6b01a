"""Scanned pages and images, read by real OCR (Tesseract): found by their words, cited by page, and listed as read by
OCR; without Tesseract, a clear message and the text pages still go in."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from conftest import SHARED_DATA, write_pdf
from core import ocr
from core.documents import NOT_READ, READ_BY_OCR, READ_TEXT, read_pages
from core.errors import InputError

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="Tesseract is not installed (scripts/install.sh installs it as root)")
BERKELEY = SHARED_DATA / "pdfs" / "UC_Berkeley_short.pdf"


def page_picture(pdf: Path, index: int, dpi: int = 150):
    """A page of a real PDF as a greyscale picture: what a scanner would have made of it."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(pdf))
    try:
        return document[index].render(scale=dpi / 72, grayscale=True).to_pil()
    finally:
        document.close()


def text_then_pictures(path: Path, text: str | None, pictures: list) -> Path:
    """A PDF whose first page has a text layer (unless `text` is None) and whose next pages are only pictures."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    if text is not None:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    for picture in pictures:
        pdf.add_page()
        pdf.image(picture, x=0, y=0, w=pdf.w)
    pdf.output(str(path))
    return path


@needs_tesseract
@pytest.mark.skipif(not BERKELEY.exists(), reason=f"{BERKELEY} is not beside this checkout")
def test_scanned_page_of_a_real_pdf_is_found_by_its_words_and_cited_by_page(lab, tmp_path):
    scan = text_then_pictures(tmp_path / "berkeley_scan.pdf", "A cover page with a text layer.",
                              [page_picture(BERKELEY, 1)])
    pages = read_pages(scan, scan.name, 50)
    assert [p.read_by for p in pages] == [READ_TEXT, READ_BY_OCR]
    assert all(words in pages[1].text for words in ("Oski", "Henry Durant", "Oakland")), pages[1].text
    shown = []
    [result] = lab.kbs.ingest([scan], progress=lambda fraction, message: shown.append(message))
    assert any("page 2/2 (OCR)" in message for message in shown), shown
    assert result.status == "added" and "read by OCR: page(s) 2" in result.message, result
    assert lab.kbs.show("default")["files"][0]["ocr_pages"] == ["2"]
    hits, _ = lab.kbs.search("Who founded the College of California, Henry Durant?", top_k=2)
    assert hits[0].page == "2" and "Durant" in hits[0].text and hits[0].keyword_rank is not None
    lab.kbs.configure("default", chunk_size=120, chunk_overlap=10)  # re-indexed from the stored text, not read again
    assert lab.kbs.show("default")["files"][0]["ocr_pages"] == ["2"]


@needs_tesseract
def test_image_files_are_read_by_ocr(lab, tmp_path):
    source = write_pdf(tmp_path / "notice.pdf", ["Notice: the Brindle Canal lock opens at 06:40 on weekdays."])
    picture = page_picture(source, 0, dpi=200)
    for suffix in (".png", ".jpg", ".tiff"):
        picture.save(tmp_path / f"notice{suffix}")
    results = lab.kbs.ingest([tmp_path / f"notice{suffix}" for suffix in (".png", ".jpg", ".tiff")])
    assert [r.status for r in results] == ["added"] * 3, results
    assert all(r.message.endswith("; read by OCR") for r in results), results
    hits, _ = lab.kbs.search("When does the Brindle Canal lock open?", top_k=1)
    assert "06:40" in hits[0].text and hits[0].file.startswith("notice.")


def test_without_tesseract_scanned_pages_are_named_and_text_pages_still_go_in(lab, tmp_path, monkeypatch):
    monkeypatch.setattr(ocr, "TESSERACT", "no-such-tesseract")
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (400, 200), 255).save(blank)
    mixed = text_then_pictures(tmp_path / "mixed.pdf", "The Brindle Canal has nine locks.", [blank, blank])
    only_pictures = text_then_pictures(tmp_path / "only.pdf", None, [blank])
    assert [p.read_by for p in read_pages(mixed, mixed.name, 50)] == [READ_TEXT, NOT_READ, NOT_READ]
    with pytest.raises(InputError, match="install Tesseract"):
        read_pages(blank, blank.name, 50)
    results = {r.file: r for r in lab.kbs.ingest([mixed, only_pictures, blank])}
    assert results["mixed.pdf"].status == "added"
    assert "page(s) 2-3 have no text layer and were not read" in results["mixed.pdf"].message
    assert results["only.pdf"].status == "failed" and "no text layer" in results["only.pdf"].message
    assert results["blank.png"].status == "failed" and "install Tesseract" in results["blank.png"].message


@needs_tesseract
def test_a_corrupt_image_is_refused_and_a_picture_without_words_skipped(lab, tmp_path):
    from PIL import Image, ImageDraw

    fake = tmp_path / "photo.jpg"
    fake.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    logo = tmp_path / "logo.png"
    picture = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(picture).ellipse((40, 40, 260, 260), fill=0)
    picture.save(logo)
    results = {r.file: r for r in lab.kbs.ingest([fake, logo])}
    assert results["photo.jpg"].status == "failed" and "corrupt or not an image" in results["photo.jpg"].message
    assert results["logo.png"].status == "skipped" and "no words" in results["logo.png"].message


@needs_tesseract
def test_cancel_stops_ocr_between_pages_and_stores_nothing(lab, tmp_path):
    picture = page_picture(write_pdf(tmp_path / "p.pdf", ["The Brindle Canal has nine locks."]), 0, dpi=100)
    scan = text_then_pictures(tmp_path / "long_scan.pdf", None, [picture] * 4)
    stop, shown = threading.Event(), []

    def progress(fraction: float, message: str) -> None:
        shown.append(message)
        if "page 1/4" in message:
            stop.set()  # what the Cancel button does

    [result] = lab.kbs.ingest([scan], progress=progress, should_stop=stop.is_set)
    assert result.status == "cancelled", result
    assert not any("page 3/4" in message or "page 4/4" in message for message in shown), shown
    assert lab.kbs.names() == []

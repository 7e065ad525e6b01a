"""Read a PDF's pages: the text layer through PDFium (pypdfium2), and pages without one by OCR (core/ocr.py).

Why PDFium: it reads the text layer of the shared 20-page PDF in 0.09 s where pypdf took 3.4 s
(bench/bench_ingest.py), which had made PDF ingestion wait on parsing as long as on embedding. It also renders the pages that OCR
reads. PDFium is not thread-safe, so every call into it holds one lock; OCR runs outside it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core import ocr
from core.errors import InputError

# A page is read by OCR when its text layer has no letters or digits, or fewer than this and a picture on it (a
# scan with a stamped page number); a short page of real text ("Chapter 2") keeps its text layer.
MIN_TEXT_CHARS = 16
MAX_PICTURE_PIXELS = 40_000_000  # an A3 page at 300 dpi is 17M; this keeps a poster-sized page's image to 40 MB
_PDFIUM = threading.Lock()
OnPage = Callable[[int, int, bool], None]  # (pages done, pages in all, whether that page was read by OCR)


@dataclass
class PdfPage:
    number: int
    text: str  # what OCR read, else the text layer
    scanned: bool  # no text layer to speak of: its words are in a picture (or drawn as shapes)
    ocr: bool  # its text was read by OCR


def _open(path: Path, name: str):
    import pypdfium2 as pdfium
    import pypdfium2.raw as codes

    try:
        return pdfium.PdfDocument(str(path))  # a PDF whose password is empty opens without one
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == codes.FPDF_ERR_PASSWORD:
            raise InputError("the PDF is password-protected; remove the password and upload it again",
                             subject=name) from None
        raise InputError(f"the PDF is corrupt or truncated and cannot be read ({exc})", subject=name) from None


def _text_layer(page) -> str:
    textpage = page.get_textpage()
    try:
        return textpage.get_text_range()
    finally:
        textpage.close()


def _looks_scanned(page, text: str) -> bool:
    import pypdfium2.raw as codes

    letters = sum(ch.isalnum() for ch in text)
    if letters == 0:
        return True
    return letters < MIN_TEXT_CHARS and next(page.get_objects(filter=[codes.FPDF_PAGEOBJ_IMAGE], max_depth=3), None) is not None


def _picture(page):
    """The page as a greyscale image at OCR's resolution, or less for a page so big (a poster, a plan) that the
    image would not fit MAX_PICTURE_PIXELS."""
    width, height = page.get_size()  # in points, 1/72 inch
    scale = min(ocr.DPI / 72, (MAX_PICTURE_PIXELS / max(1.0, width * height)) ** 0.5)
    return page.render(scale=scale, grayscale=True).to_pil()


def read_pdf(path: Path, name: str, on_page: OnPage | None = None, ocr_available: bool = True) -> list[PdfPage]:
    """Every page's text, by number: its text layer, else (with `ocr_available`) what OCR reads in its picture.
    `on_page` is called after each page, and may raise to stop the reading."""
    with _PDFIUM:
        document = _open(path, name)
    try:
        with _PDFIUM:
            total = len(document)
        if total == 0:
            raise InputError("the PDF has no pages", subject=name)
        pages = []
        for index in range(total):
            with _PDFIUM:
                page = document[index]
                try:
                    text = _text_layer(page)
                    scanned = _looks_scanned(page, text)
                    image = _picture(page) if scanned and ocr_available else None
                finally:
                    page.close()
            if image is not None:
                text = ocr.read_image(image, name)
            pages.append(PdfPage(index + 1, text, scanned, image is not None))
            if on_page:
                on_page(index + 1, total, image is not None)
    finally:
        with _PDFIUM:
            document.close()
    if all(page.scanned for page in pages) and not ocr_available:
        raise InputError(f"the PDF has no text layer (it looks scanned); {ocr.INSTALL_HINT}", subject=name)
    return pages

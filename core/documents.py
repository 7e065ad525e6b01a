"""Read a user's file into pages of text, or say exactly why not. No store access here."""
from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from core import ocr, office
from core.errors import InputError, NoTextFound
from core.pdf import OnPage, read_pdf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_SUFFIXES = {
    ".pdf": "PDF", ".txt": "text", ".md": "Markdown", ".markdown": "Markdown",
    ".html": "HTML", ".htm": "HTML", ".docx": "Word", ".csv": "CSV", ".xlsx": "Excel", ".pptx": "PowerPoint",
    **{suffix: "image (read by OCR)" for suffix in IMAGE_SUFFIXES},
}
# How a page's text was read: its own text, OCR of its picture, or nothing (no text layer and no OCR installed).
READ_TEXT, READ_BY_OCR, NOT_READ = "text", "ocr", "not read"
CSV_ROWS_PER_PAGE = 50  # a CSV's "pages" are row ranges, so a citation says which rows a passage came from
# Rows are set apart as paragraphs: the chunker (llama-index SentenceSplitter) splits at "\n\n\n" first and keeps
# paragraphs that fit whole, so a row is never cut in two and its values never lose their headers.
ROW_SEPARATOR = "\n\n\n"
_SAFE_NAME = re.compile(r"[^\w.\- ()+,]+", re.UNICODE)


@dataclass
class Page:
    text: str
    # page number for PDFs ("1", "2", ...); "rows 1-50" for CSV; "sheet Costs, rows 2-51" for Excel; "slide 3" for
    # PowerPoint; "" for files without pages
    label: str
    read_by: str = READ_TEXT


def cite(file: str, label: str) -> str:
    """How a passage's place is written in prompts and the CLI: "a.pdf, page 3", "t.csv, rows 1-50", "notes.md"."""
    if not label:
        return file
    return f"{file}, page {label}" if label.isdigit() else f"{file}, {label}"


def page_ranges(labels: list[str]) -> str:
    """Page labels as a reader writes them: ["1", "2", "3", "7"] -> "1-3, 7" (labels that are not numbers as they are)."""
    parts: list[list[str]] = []
    for label in labels:
        last = parts[-1] if parts else None
        if last and label.isdigit() and last[-1].isdigit() and int(label) == int(last[-1]) + 1:
            last[1:] = [label]
        else:
            parts.append([label])
    return ", ".join("-".join(part) for part in parts)


def display_name(raw: str) -> str:
    """The name a file is stored and cited under: its base name, with path parts and odd characters removed."""
    base = Path(str(raw).replace("\\", "/")).name.strip()
    cleaned = _SAFE_NAME.sub("_", base).strip(". ")
    if not cleaned:
        raise InputError("the file name is empty or has no usable characters", subject=repr(raw))
    if len(cleaned) > 200:  # keep the extension: it decides how the file is read
        suffix = Path(cleaned).suffix[:20]
        cleaned = cleaned[: 200 - len(suffix)] + suffix
    return cleaned


def read_pages(path: Path, name: str, max_mb: int, on_page: OnPage | None = None) -> list[Page]:
    """Return the file's text as pages. Raises InputError naming the file and the reason. `on_page` follows files
    read page by page (PDFs, images), and may raise to stop the reading."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputError(f"unsupported file type {suffix or '(no extension)'}; supported: {kinds}", subject=name)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", subject=name) from None
    if size == 0:
        raise InputError("the file is empty (0 bytes)", subject=name)
    if size > max_mb * 1024 * 1024:
        raise InputError(f"the file is {size / 1048576:.1f} MB, over the {max_mb} MB limit", subject=name)
    if suffix == ".pdf":
        pages = _read_pdf(path, name, on_page)
    elif suffix in IMAGE_SUFFIXES:
        pages = _read_image(path, name, on_page)
    elif suffix in (".html", ".htm"):
        pages = [Page(_read_html(path, name), "")]
    elif suffix == ".docx":
        pages = [Page(office.read_docx(path, name, max_mb), "")]
    elif suffix == ".xlsx":
        pages = _sheet_pages(office.read_xlsx(path, name, max_mb))
    elif suffix == ".pptx":
        pages = [Page(text, f"slide {number}") for number, text in office.read_pptx(path, name, max_mb) if text]
    elif suffix == ".csv":
        pages = _read_csv(path, name)
    else:
        pages = [Page(_read_text(path, name), "")]
    if not any(p.text.strip() for p in pages):
        if suffix in IMAGE_SUFFIXES:  # a logo or a photo among the documents, most likely
            raise NoTextFound("OCR found no words in this image (a picture without text)", subject=name)
        if any(p.read_by == READ_BY_OCR for p in pages):
            raise InputError("OCR found no words on its pages", subject=name)
        raise InputError("the file has no text in it", subject=name)
    return pages


def _read_text(path: Path, name: str) -> str:
    return decode_text(path.read_bytes(), name, "text")


def decode_text(data: bytes, name: str, kind: str, declared: str | None = None) -> str:
    """Bytes to text: a byte-order mark, else valid UTF-8, else a declared charset (HTML's <meta>), else detection."""
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    if b"\x00" in data[:4096]:
        raise InputError(f"this looks like a binary file, not {kind}", subject=name)
    try:
        # Text that is valid UTF-8 and not plain ASCII is practically never in another encoding, even where a
        # page declares one (a common mistake of servers and templates).
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            return data.decode(declared)
        except (LookupError, UnicodeDecodeError):
            pass  # an unknown or wrong declaration: detect instead
    return _detect_encoding(data, name)


def _detect_encoding(data: bytes, name: str) -> str:
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise InputError("the text encoding could not be detected", subject=name)
    return str(best)


# ---- HTML ------------------------------------------------------------------------------------------------------
# <meta charset="x"> or <meta http-equiv="Content-Type" content="text/html; charset=x">, found in the raw bytes.
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
# The HTML standard reads these labels as windows-1252 (a superset), as browsers do.
_READ_AS_CP1252 = {"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "cp819", "ibm819", "us-ascii", "ascii"}
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
_BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "dd", "details", "div", "dl", "dt", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "summary", "table", "tr", "ul",
)


def _read_html(path: Path, name: str) -> str:
    """The page's main text as Markdown (headings, lists, tables kept); scripts, styles and navigation dropped.
    Nothing in the page is ever run: it is only parsed."""
    html = _XML_DECLARATION.sub("", _decode_html(path.read_bytes(), name), count=1)
    import trafilatura

    if logging.getLogger("trafilatura").level == logging.NOTSET:
        # It logs errors for pages without main text; here those get the fallback below or a clear message.
        logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    try:
        text = trafilatura.extract(
            html, output_format="markdown", include_tables=True, include_formatting=True, include_links=False,
            include_images=False, include_comments=False, favor_recall=True, deduplicate=False,
        )
    except (ValueError, TypeError, RecursionError):  # malformed markup trafilatura could not handle
        text = None
    if not (text or "").strip():
        # Pages with no recognisable main text (a bare list, a short notice): take all visible text instead.
        text = _visible_text(html)
    if not text.strip():
        raise InputError("no readable text in the HTML", subject=name)
    return text.strip()


def _decode_html(data: bytes, name: str) -> str:
    """HTML bytes to text, using the page's <meta charset> when the bytes are not UTF-8."""
    declared = _META_CHARSET.search(data[:8192])
    label = declared.group(1).decode("ascii").lower() if declared else None
    if label in _READ_AS_CP1252:
        label = "cp1252"
    if label and label.startswith(("utf-16", "utf-32")):  # bytes we can read as ASCII cannot be UTF-16
        label = None
    return decode_text(data, name, "HTML", declared=label)


def _visible_text(html: str) -> str:
    """All text a reader would see, one block per line; scripts, styles and hidden parts removed."""
    from lxml import etree
    from lxml import html as lxml_html

    try:
        root = lxml_html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return ""
    for element in root.xpath("//script | //style | //noscript | //template | //head | //*[@hidden]"):
        element.drop_tree()
    for element in root.iter(*_BLOCK_TAGS, "br", "td", "th"):
        gap = " " if element.tag in ("td", "th") else "\n"
        element.tail = gap + (element.tail or "")
        if element.tag != "br":
            element.text = gap + (element.text or "")
    lines = (" ".join(line.split()) for line in root.text_content().splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# ---- CSV -------------------------------------------------------------------------------------------------------
def _read_csv(path: Path, name: str) -> list[Page]:
    """One line per row, "header: value; header: value", so every chunk says what its numbers are;
    a page per CSV_ROWS_PER_PAGE rows, labelled with its row range (rows counted after the header)."""
    text = _read_text(path, name).lstrip("\ufeff")
    if not text.strip():
        raise InputError("the CSV file has no rows", subject=name)
    sample = text[:16384]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only, or the sniffer sees a ragged last row
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:  # one column, or nothing consistent to go by
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), dialect) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise InputError(f"the CSV file could not be parsed ({exc})", subject=name) from None
    if not rows:
        raise InputError("the CSV file has no rows", subject=name)
    header = [" ".join(cell.split()) or f"column {i}" for i, cell in enumerate(rows[0], 1)]
    data = rows[1:]
    if not data:
        raise InputError("the CSV file has only a header row and no data rows", subject=name)
    return _row_pages(header, list(enumerate(data, 1)), lambda first, last: f"rows {first}-{last}")


def _row_pages(header: list[str], rows: list[tuple[int, list[str]]], label, above: list[str] = ()) -> list[Page]:
    """Numbered rows as "header: value" lines, a page per CSV_ROWS_PER_PAGE rows, each labelled by
    `label(first row number, last row number)`; the `above` lines (a title over a table) open the first page."""
    pages = []
    for first in range(0, len(rows), CSV_ROWS_PER_PAGE):
        block = rows[first : first + CSV_ROWS_PER_PAGE]
        lines = (list(above) if first == 0 else []) + [_csv_line(header, cells) for _, cells in block]
        pages.append(Page(ROW_SEPARATOR.join(lines), label(block[0][0], block[-1][0])))
    return pages


def _sheet_pages(sheets: list[tuple[str, list[tuple[int, list[str]]]]]) -> list[Page]:
    """A worksheet as a CSV is read, a page per CSV_ROWS_PER_PAGE rows, cited by sheet and by the row numbers Excel
    shows. The table's header is its first row as wide as half the widest row: title lines above the table stay as
    lines of their own. A sheet without such a table (one column, one row) is its rows' cells, a line each."""
    pages = []
    for title, rows in sheets:
        if not rows:
            continue
        filled = [sum(1 for cell in cells if cell) for _, cells in rows]
        wide = max(2, math.ceil(max(filled) / 2))
        start = next((i for i, n in enumerate(filled) if n >= wide), None)
        label = (lambda first, last, title=title:
                 f"sheet {title}, row {first}" if first == last else f"sheet {title}, rows {first}-{last}")
        if start is None or start == len(rows) - 1:
            pages.append(Page("\n".join(_cells_line(cells) for _, cells in rows), label(rows[0][0], rows[-1][0])))
            continue
        header = [cell or f"column {i}" for i, cell in enumerate(rows[start][1], 1)]
        above = [_cells_line(cells) for _, cells in rows[:start]]  # a title over the table
        pages.extend(_row_pages(header, rows[start + 1:], label, above))
    return pages


def _cells_line(cells: list[str]) -> str:
    return "; ".join(cell for cell in cells if cell)


def _csv_line(header: list[str], row: list[str]) -> str:
    cells = []
    for i, (key, value) in enumerate(zip_longest(header, row, fillvalue=""), 1):
        value = " ".join(value.split())  # a cell with line breaks stays on its row's line
        if value:
            cells.append(f"{key or f'column {i}'}: {value}")
    return "; ".join(cells)


def _read_pdf(path: Path, name: str, on_page: OnPage | None) -> list[Page]:
    pages = []
    for page in read_pdf(path, name, on_page, ocr_available=ocr.available()):
        read_by = READ_BY_OCR if page.ocr else NOT_READ if page.scanned else READ_TEXT
        # PDFium ends lines with \r\n and marks a hyphen it found at a line's end as U+FFFE.
        text = page.text.replace("\r\n", "\n").replace("\ufffe", "-\n")
        pages.append(Page(_tidy(text), str(page.number), read_by))
    return pages


def _read_image(path: Path, name: str, on_page: OnPage | None) -> list[Page]:
    """A picture of text (a scan, a photo of a page); each frame of a multi-page TIFF is a page."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    if not ocr.available():
        raise InputError(f"an image is read by OCR; {ocr.INSTALL_HINT}", subject=name)
    try:
        with Image.open(path) as image:
            frames = [frame.convert("L") for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"the image is corrupt or not an image ({type(exc).__name__})", subject=name) from None
    pages = []
    for number, frame in enumerate(frames, start=1):
        pages.append(Page(_tidy(ocr.read_image(frame, name)), str(number) if len(frames) > 1 else "", READ_BY_OCR))
        if on_page:
            on_page(number, len(frames), True)
    return pages


def _tidy(text: str) -> str:
    # NFKC turns typographic ligatures (the "fi" in "misfits") back into letters, so keyword search finds them.
    text = unicodedata.normalize("NFKC", text)
    # PDF text layers and OCR keep hyphenated line breaks, and runs of spaces from column layouts.
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)
    text = re.sub(r"[ \t]+", " ", text)
    return text.strip()

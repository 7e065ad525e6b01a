"""Read a user's file into pages of text, or say exactly why not. No store access here."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError

SUPPORTED_SUFFIXES = {".pdf": "PDF", ".txt": "text", ".md": "Markdown", ".markdown": "Markdown"}
_SAFE_NAME = re.compile(r"[^\w.\- ()+,]+", re.UNICODE)


@dataclass
class Page:
    text: str
    label: str  # page number for PDFs ("1", "2", ...); "" for files without pages


def display_name(raw: str) -> str:
    """The name a file is stored and cited under: its base name, with path parts and odd characters removed."""
    base = Path(str(raw).replace("\\", "/")).name.strip()
    cleaned = _SAFE_NAME.sub("_", base).strip(". ")
    if not cleaned:
        raise InputError("the file name is empty or has no usable characters", subject=repr(raw))
    return cleaned[:200]


def read_pages(path: Path, name: str, max_mb: int) -> list[Page]:
    """Return the file's text as pages. Raises InputError naming the file and the reason."""
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
    pages = _read_pdf(path, name) if suffix == ".pdf" else [Page(_read_text(path, name), "")]
    if not any(p.text.strip() for p in pages):
        raise InputError("the file has no text in it", subject=name)
    return pages


def _read_text(path: Path, name: str) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise InputError("this looks like a binary file, not text", subject=name)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise InputError("the text encoding could not be detected", subject=name)
    return str(best)


def _read_pdf(path: Path, name: str) -> list[Page]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many "protected" PDFs open with an empty password
            except Exception:  # noqa: BLE001 - pypdf raises several types for unsupported crypto
                opened = 0
            if not opened:
                raise InputError("the PDF is password-protected; remove the password and upload it again", subject=name)
        pages = []
        for number, page in enumerate(reader.pages, start=1):
            pages.append(Page(_tidy(page.extract_text() or ""), str(number)))
    except InputError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as exc:
        raise InputError(f"the PDF is corrupt or truncated and cannot be read ({type(exc).__name__})", subject=name) from None
    if not pages:
        raise InputError("the PDF has no pages", subject=name)
    if not any(p.text.strip() for p in pages):
        raise InputError(
            "the PDF has no text layer (it looks scanned); run OCR on it first, e.g. `ocrmypdf in.pdf out.pdf`",
            subject=name,
        )
    return pages


def _tidy(text: str) -> str:
    # NFKC turns typographic ligatures (the "fi" in "misfits") back into letters, so keyword search finds them.
    text = unicodedata.normalize("NFKC", text)
    # pypdf keeps hyphenated line breaks and runs of spaces from column layouts.
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)
    text = re.sub(r"[ \t]+", " ", text)
    return text.strip()

"""Text out of Office files (.docx, .xlsx, .pptx). Each is a zip of XML: it is checked before it is opened (an old
binary or password-protected file, a broken archive, a zip bomb), so every problem gets its own message. Turning
the text into pages and citations is core/documents.py's job."""
from __future__ import annotations

import datetime
import re
import zipfile
from pathlib import Path

from core.errors import InputError

# suffix: (what it is, with its article; the part every such file has; the old binary format it replaced)
KINDS = {
    ".docx": ("a Word document", "word/document.xml", ".doc"),
    ".xlsx": ("an Excel workbook", "xl/workbook.xml", ".xls"),
    ".pptx": ("a PowerPoint presentation", "ppt/presentation.xml", ".ppt"),
}
EXPANSION = 10  # unpacked, a file may be at most this many times the size limit (guards against zip bombs)
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # the container of old binary Office files and of password-protected new ones


def corrupt(suffix: str) -> str:
    return f"the {suffix} file is corrupt or not {KINDS[suffix][0]}"


def check_package(path: Path, name: str, max_mb: int) -> None:
    """Refuse, with the reason, an Office file that cannot or should not be opened."""
    suffix = Path(name).suffix.lower()
    kind, main_part, old = KINDS[suffix]
    with path.open("rb") as handle:
        magic = handle.read(8)
    if magic.startswith(_OLE_MAGIC):
        raise InputError(f"this is a password-protected {kind[kind.index(' ') + 1:]} or an old binary {old}; save it "
                         f"as {suffix} without a password and add it again", subject=name)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise InputError(corrupt(suffix), subject=name) from None
    if main_part not in {m.filename for m in members}:
        raise InputError(corrupt(suffix), subject=name)
    expanded = sum(m.file_size for m in members)  # python-pptx reads every part, pictures included
    if expanded > EXPANSION * max_mb * 1024 * 1024:
        raise InputError(f"the document expands to {expanded / 1048576:.0f} MB when unpacked, too large to read",
                         subject=name)


# ---- Word ------------------------------------------------------------------------------------------------------

def read_docx(path: Path, name: str, max_mb: int) -> str:
    import xml.etree.ElementTree as ET
    import zlib

    import docx2txt

    check_package(path, name, max_mb)
    try:
        text = docx2txt.process(str(path))
    except RuntimeError:  # zipfile: "File is encrypted, password required"
        raise InputError("the .docx is password-protected; remove the password and add it again", subject=name) from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zlib.error, ET.ParseError):
        raise InputError(corrupt(".docx"), subject=name) from None
    # docx2txt puts a blank line before every paragraph, table cells included.
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---- Excel -----------------------------------------------------------------------------------------------------

def read_xlsx(path: Path, name: str, max_mb: int) -> list[tuple[str, list[tuple[int, list[str]]]]]:
    """Each worksheet's name and its non-empty rows, as (row number in the sheet, cell texts). Formulas give the
    value Excel last saved with them (a file never opened in Excel has none: such cells read as empty)."""
    from openpyxl import load_workbook

    check_package(path, name, max_mb)
    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception:  # noqa: BLE001 - openpyxl raises many types (KeyError, InvalidFileException, XML errors)
        raise InputError(corrupt(".xlsx"), subject=name) from None
    sheets = []
    try:
        for sheet in workbook.worksheets:
            rows = []
            sheet.reset_dimensions()  # read every row: some tools write a wrong size, which would cut rows off
            for number, values in enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1):
                cells = [_cell_text(value) for value in values]
                if any(cells):
                    while not cells[-1]:
                        cells.pop()
                    rows.append((number, cells))
            sheets.append((sheet.title, rows))
    except Exception:  # noqa: BLE001 - a sheet's XML broken past the workbook's
        raise InputError(corrupt(".xlsx"), subject=name) from None
    finally:
        workbook.close()
    return sheets


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 1871.0 is how Excel stores 1871
    if isinstance(value, datetime.datetime):
        return value.date().isoformat() if value.time() == datetime.time() else value.isoformat(sep=" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return " ".join(str(value).split())  # a cell with line breaks stays on its row's line


# ---- PowerPoint ------------------------------------------------------------------------------------------------

def read_pptx(path: Path, name: str, max_mb: int) -> list[tuple[int, str]]:
    """Each slide's number and text: its shapes top to bottom, left to right (tables row by row), then its
    speaker notes."""
    from pptx import Presentation

    check_package(path, name, max_mb)
    try:
        presentation = Presentation(str(path))
        slides = []
        for number, slide in enumerate(presentation.slides, start=1):
            parts = [_shape_text(shape) for shape in _reading_order(slide.shapes)]
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                notes = slide.notes_slide.notes_text_frame.text.strip()
                if notes:
                    parts.append(f"Notes: {notes}")
            slides.append((number, "\n\n".join(p for p in parts if p.strip())))
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - python-pptx raises many types for broken parts
        raise InputError(corrupt(".pptx"), subject=name) from None
    return slides


def _reading_order(shapes) -> list:
    return sorted(shapes, key=lambda s: ((s.top or 0), (s.left or 0)))


def _shape_text(shape) -> str:
    from pptx.shapes.group import GroupShape

    if isinstance(shape, GroupShape):
        return "\n".join(_shape_text(s) for s in _reading_order(shape.shapes))
    if getattr(shape, "has_table", False):
        return "\n".join(" | ".join(" ".join(cell.text.split()) for cell in row.cells) for row in shape.table.rows)
    if getattr(shape, "has_text_frame", False):
        return "\n".join(p.strip() for p in shape.text_frame.text.splitlines() if p.strip())
    return ""

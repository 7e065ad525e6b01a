"""More kinds of source: HTML, Word, CSV and web pages by URL. Real parsers, a real HTTP server on 127.0.0.1
(no request leaves this machine), real models for the end-to-end test; every bad input gets a clear reason."""
from __future__ import annotations

import gzip
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import HANDBOOK, free_port, cli_here, write_pdf
from core.documents import read_pages
from core.errors import InputError
from core.web import as_url, fetch_url, looks_like_url, url_file_name

# A fictional fact, so finding it proves the text came from the page.
FACT = "The Velmor lighthouse keeper is Ada Strund, who paints the lamp room teal every April."
PAGE = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Velmor lighthouse</title>
<style>body {{ font-family: STYLE_TEXT_SHOULD_NOT_APPEAR; }}</style>
<script>document.title='pwned'; var s = "SCRIPT_TEXT_SHOULD_NOT_APPEAR";</script>
</head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/about">NAV_TEXT_SHOULD_NOT_APPEAR</a></li></ul></nav>
<article>
<h1>The Velmor lighthouse</h1>
<p>{FACT}</p>
<p>The lighthouse stands on a granite spur north of the harbour and has guided fishing boats since 1871.
Its lamp is visible for twenty-two nautical miles on a clear night, and the keeper's log is kept in the museum.</p>
<h2>Visiting</h2>
<ul><li>Open on Saturdays from May to September</li><li>Tickets cost four crowns</li></ul>
<table><tr><th>Month</th><th>Hours</th></tr><tr><td>May</td><td>10-16</td></tr><tr><td>June</td><td>10-18</td></tr></table>
</article>
<script>document.write("SCRIPT_TEXT_SHOULD_NOT_APPEAR")</script>
</body></html>
"""
NOT_WANTED = ("SCRIPT_TEXT_SHOULD_NOT_APPEAR", "pwned", "STYLE_TEXT_SHOULD_NOT_APPEAR", "NAV_TEXT_SHOULD_NOT_APPEAR")


def read(path: Path, name: str | None = None, max_mb: int = 50):
    return read_pages(path, name or path.name, max_mb)


def reason(path: Path, max_mb: int = 50) -> str:
    with pytest.raises(InputError) as caught:
        read(path, max_mb=max_mb)
    assert caught.value.subject == path.name
    return caught.value.reason


# ---- HTML ------------------------------------------------------------------------------------------------------

def test_html_keeps_main_text_as_markdown_without_scripts_styles_or_navigation(tmp_path):
    path = tmp_path / "velmor.html"
    path.write_text(PAGE, encoding="utf-8")
    pages = read(path)
    assert len(pages) == 1 and pages[0].label == ""
    text = pages[0].text
    assert FACT in text
    for unwanted in NOT_WANTED:
        assert unwanted not in text
    assert "# The Velmor lighthouse" in text and "## Visiting" in text  # headings kept as Markdown
    assert "- Tickets cost four crowns" in text  # list items
    assert "| May | 10-16 |" in text  # table rows


def test_htm_suffix_and_cp1252_page_with_meta_charset(tmp_path):
    text = "Le “phare” de Velmor : café, crêpes et gâteau à volonté — été comme hiver."
    page = f'<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252"></head>' \
           f"<body><article><p>{text}</p></article></body></html>"
    path = tmp_path / "phare.htm"
    path.write_bytes(page.encode("cp1252"))
    assert read(path)[0].text == text


def test_meta_charset_is_respected_where_detection_alone_would_guess_wrong(tmp_path):
    # Short KOI8-R text is too little for a statistical guess; the page's own declaration settles it.
    page = '<html><head><meta charset="koi8-r"></head><body><p>Привет, мир</p></body></html>'
    path = tmp_path / "privet.html"
    path.write_bytes(page.encode("koi8-r"))
    assert read(path)[0].text == "Привет, мир"


def test_html_without_main_text_falls_back_to_visible_text(tmp_path):
    path = tmp_path / "form.html"
    path.write_text(f"<script>var s='SCRIPT_TEXT_SHOULD_NOT_APPEAR'</script><form><label>{FACT}</label></form>")
    text = read(path)[0].text
    assert FACT in text and "SCRIPT_TEXT_SHOULD_NOT_APPEAR" not in text
    (tmp_path / "plain.html").write_text(FACT)  # text sent as HTML, no markup at all
    assert read(tmp_path / "plain.html")[0].text == FACT


def test_html_with_no_readable_text(tmp_path):
    path = tmp_path / "blank.html"
    path.write_text("<html><head><script>alert('x')</script><style>p {}</style></head><body>  </body></html>")
    assert reason(path) == "no readable text in the HTML"


def test_binary_file_named_html(tmp_path):
    (tmp_path / "image.html").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    assert "binary" in reason(tmp_path / "image.html")


# ---- Word ------------------------------------------------------------------------------------------------------

def test_docx_written_by_word_library_is_read(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Velmor lighthouse", level=1)
    document.add_paragraph(FACT)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Month", "Hours"
    table.cell(1, 0).text, table.cell(1, 1).text = "May", "10-16"
    document.save(tmp_path / "velmor.docx")
    pages = read(tmp_path / "velmor.docx")
    assert len(pages) == 1
    text = pages[0].text
    assert "Velmor lighthouse" in text and FACT in text and "10-16" in text
    assert "\n\n\n" not in text


def test_corrupt_docx(tmp_path):
    (tmp_path / "broken.docx").write_bytes(b"this is not a zip archive at all" * 10)
    assert reason(tmp_path / "broken.docx") == "the .docx file is corrupt or not a Word document"
    with zipfile.ZipFile(tmp_path / "other.docx", "w") as archive:  # a zip, but not a Word document
        archive.writestr("xl/workbook.xml", "<workbook/>")
    assert reason(tmp_path / "other.docx") == "the .docx file is corrupt or not a Word document"
    whole = (tmp_path / "other.docx").read_bytes()
    (tmp_path / "cut.docx").write_bytes(whole[: len(whole) // 2])
    assert reason(tmp_path / "cut.docx") == "the .docx file is corrupt or not a Word document"


def test_old_binary_word_file_named_docx(tmp_path):
    (tmp_path / "old.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    assert "old binary .doc" in reason(tmp_path / "old.docx")


# ---- CSV -------------------------------------------------------------------------------------------------------

def test_latin1_csv_rows_become_self_describing_lines_in_row_range_pages(tmp_path):
    dishes = ["crêpe au sucre", "gâteau basque", "pâté en croûte", "crème brûlée", "soupe à l'oignon"]
    lines = ["numéro,ville,plat,prix"] + [f"{i},Genève {i},{dishes[i % 5]},{i}.50" for i in range(1, 121)]
    path = tmp_path / "menu.csv"
    path.write_bytes("\r\n".join(lines).encode("latin-1"))
    pages = read(path)
    assert [p.label for p in pages] == ["rows 1-50", "rows 51-100", "rows 101-120"]
    rows = [row for page in pages for row in page.text.splitlines() if row]
    assert len(rows) == 120
    assert rows[0] == "numéro: 1; ville: Genève 1; plat: gâteau basque; prix: 1.50"
    assert rows[-1] == "numéro: 120; ville: Genève 120; plat: crêpe au sucre; prix: 120.50"


def test_csv_dialect_is_sniffed(tmp_path):
    path = tmp_path / "semicolons.csv"
    path.write_text('name;note;city\n"Strund, Ada";"keeps the ""lamp""";Velmor\nPim;;Vettelborg\n')
    assert read(path)[0].text.split("\n\n\n") == [
        'name: Strund, Ada; note: keeps the "lamp"; city: Velmor',
        "name: Pim; city: Vettelborg",  # empty cells are left out
    ]
    one_column = tmp_path / "one.csv"
    one_column.write_text("word\nheron\nporridge\n")
    assert read(one_column)[0].text.split("\n\n\n") == ["word: heron", "word: porridge"]


def test_empty_and_header_only_csv(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert "empty" in reason(tmp_path / "empty.csv")
    (tmp_path / "blank.csv").write_text("\n \n\n")
    assert reason(tmp_path / "blank.csv") == "the CSV file has no rows"
    (tmp_path / "header.csv").write_text("name,city\n")
    assert reason(tmp_path / "header.csv") == "the CSV file has only a header row and no data rows"


# ---- Excel and PowerPoint --------------------------------------------------------------------------------------

def write_workbook(path: Path, keepers: int = 60) -> Path:
    """A workbook as people make them: a table with a title row above it, numbers, dates and a blank row in the
    middle; a one-line notes sheet; an empty sheet."""
    import datetime

    from openpyxl import Workbook

    workbook = Workbook()
    table = workbook.active
    table.title = "Keepers"
    table.append(["Velmor lighthouse keepers"])
    table.append([])
    table.append(["Name", "Since", "Lamp colour", "Hours a week", "Appointed"])
    for i in range(keepers):
        table.append([f"Keeper {i}", 1871 + i, "amber", 38.5, datetime.date(1900 + i % 100, 4, 1)])
    table.append([])
    table.append(["Bram Oskarsen", 1998.0, "violet", 40, datetime.datetime(1998, 4, 1)])
    workbook.create_sheet("Notes").append(["The lamp room is painted every April."])
    workbook.create_sheet("Empty")
    workbook.save(path)
    return path


def write_deck(path: Path) -> Path:
    """Three slides: a title and bullets with speaker notes; a table; a blank one."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "The Velmor lighthouse"
    first.placeholders[1].text = FACT + "\nThe lamp is visible for twenty-two nautical miles."
    first.notes_slide.notes_text_frame.text = "Mention the museum log."
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Opening hours"
    grid = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(6), Inches(1)).table
    grid.cell(0, 0).text, grid.cell(0, 1).text = "Month", "Hours"
    grid.cell(1, 0).text, grid.cell(1, 1).text = "May", "10-16"
    deck.slides.add_slide(deck.slide_layouts[6])
    deck.save(path)
    return path


def test_an_excel_sheet_reads_like_a_csv_cited_by_sheet_and_excel_s_row_numbers(tmp_path):
    pages = read(write_workbook(tmp_path / "keepers.xlsx"))
    # The header is row 3 (the title above it stays a line); 60 keepers in rows 4-63, a blank row, Bram in row 65.
    assert [p.label for p in pages] == ["sheet Keepers, rows 4-53", "sheet Keepers, rows 54-65",
                                        "sheet Notes, row 1"]
    lines = [line for page in pages[:2] for line in page.text.split("\n\n\n")]
    assert len(lines) == 1 + 61 and lines[0] == "Velmor lighthouse keepers"
    assert lines[1] == "Name: Keeper 0; Since: 1871; Lamp colour: amber; Hours a week: 38.5; Appointed: 1900-04-01"
    assert lines[-1] == "Name: Bram Oskarsen; Since: 1998; Lamp colour: violet; Hours a week: 40; Appointed: 1998-04-01"
    assert pages[2].text == "The lamp room is painted every April."


def test_a_powerpoint_deck_reads_slide_by_slide_with_tables_and_notes(tmp_path):
    pages = read(write_deck(tmp_path / "velmor.pptx"))
    assert [p.label for p in pages] == ["slide 1", "slide 2"]  # the blank slide has nothing to cite
    assert pages[0].text.startswith("The Velmor lighthouse\n\n" + FACT)
    assert pages[0].text.endswith("Notes: Mention the museum log.")
    assert pages[1].text == "Opening hours\n\nMonth | Hours\nMay | 10-16"


def test_broken_old_and_oversized_office_files_are_refused_clearly(tmp_path):
    for suffix, kind in ((".xlsx", "an Excel workbook"), (".pptx", "a PowerPoint presentation")):
        (tmp_path / f"broken{suffix}").write_bytes(b"this is not a zip archive at all" * 10)
        assert reason(tmp_path / f"broken{suffix}") == f"the {suffix} file is corrupt or not {kind}"
        with zipfile.ZipFile(tmp_path / f"word{suffix}", "w") as archive:  # a zip, but another kind of document
            archive.writestr("word/document.xml", "<document/>")
        assert reason(tmp_path / f"word{suffix}") == f"the {suffix} file is corrupt or not {kind}"
    (tmp_path / "old.xlsx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600)
    assert "old binary .xls; save it as .xlsx" in reason(tmp_path / "old.xlsx")
    bomb = tmp_path / "bomb.xlsx"  # 12 MB of XML squeezed into a few kB, against a 1 MB limit
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
        archive.writestr("xl/worksheets/sheet1.xml", "<row/>" * 2_000_000)
    assert bomb.stat().st_size < 100_000
    assert "expands to 11 MB when unpacked, too large to read" in reason(bomb, max_mb=1)


def test_lab_finds_a_spreadsheet_row_and_a_slide_and_cites_them(lab, tmp_path):
    from core.documents import cite

    results = lab.kbs.ingest([write_workbook(tmp_path / "keepers.xlsx", keepers=5),
                              write_deck(tmp_path / "velmor.pptx")])
    assert [r.status for r in results] == ["added", "added"], [r.message for r in results]
    hits, _ = lab.kbs.search("Which keeper had a violet lamp?")  # the slide about a keeper's lamp comes close
    [row] = [hit for hit in hits[:2] if "Bram Oskarsen" in hit.text]
    assert cite(row.file, row.page) == "keepers.xlsx, sheet Keepers, rows 4-10"
    hits, _ = lab.kbs.search("In which month are the opening hours 10-16?")
    assert cite(hits[0].file, hits[0].page) == "velmor.pptx, slide 2" and "May | 10-16" in hits[0].text


# ---- URLs ------------------------------------------------------------------------------------------------------

class _Site(BaseHTTPRequestHandler):
    """A small web site: path -> (status, content-type, body, extra headers)."""

    routes: dict = {}

    def do_GET(self):  # noqa: N802 - the name http.server calls
        status, content_type, body, headers = self.routes.get(self.path, (404, "text/plain", b"not found", {}))
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            if not key.startswith("_"):  # "_stream": send no Content-Length, only close the connection at the end
                self.send_header(key, value)
        if "Content-Length" not in headers and not headers.get("_stream"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pdf = write_pdf(tmp_path_factory.mktemp("site") / "report.pdf", [FACT, "Second page about the harbour."])
    latin = "<html><body><article><p>Le café du phare sert des crêpes à volonté, été comme hiver.</p></article></body></html>"
    big = b"x" * (1024 * 1024 + 100)
    _Site.routes = {
        "/docs/page": (200, "text/html; charset=utf-8", PAGE.encode(), {}),
        "/docs/latin": (200, "text/html; charset=ISO-8859-1", latin.encode("cp1252"), {}),
        "/report.pdf": (200, "application/pdf", pdf.read_bytes(), {}),
        "/notes.txt": (200, "text/plain; charset=utf-8", HANDBOOK.encode(), {}),
        "/zipped": (200, "text/plain", gzip.compress(HANDBOOK.encode()), {"Content-Encoding": "gzip"}),
        "/blob": (200, "application/octet-stream", b"\x00\x01\x02" * 100, {}),
        "/untyped": (200, None, b"no content type", {}),
        "/moved": (302, "text/plain", b"", {"Location": "/docs/page"}),
        "/to-file": (302, "text/plain", b"", {"Location": "file:///etc/passwd"}),
        "/big-declared": (200, "text/plain", big, {}),
        "/big-streamed": (200, "text/plain", big, {"Connection": "close", "_stream": "1"}),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch_reason(url: str, tmp_path: Path, max_mb: int = 50) -> str:
    with pytest.raises(InputError) as caught:
        fetch_url(url, tmp_path, max_mb, timeout=10)
    assert caught.value.subject == url
    return caught.value.reason


@pytest.fixture
def dead_proxy(monkeypatch):
    """Proxies that reach nothing: loopback addresses must be fetched directly anyway."""
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")
    for key in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)


def test_fetch_saves_each_supported_kind_under_a_name_from_the_url(site, tmp_path, dead_proxy):
    port = site.rsplit(":", 1)[1]
    page = fetch_url(f"{site}/docs/page", tmp_path / "a", 50)
    assert page.name == f"127.0.0.1_{port}_docs_page.html"
    text = read(page)[0].text
    assert FACT in text and not any(unwanted in text for unwanted in NOT_WANTED)

    pdf = fetch_url(f"{site}/report.pdf", tmp_path / "b", 50)
    assert pdf.name == f"127.0.0.1_{port}_report.pdf"
    assert [p.label for p in read(pdf)] == ["1", "2"]

    notes = fetch_url(f"{site}/notes.txt", tmp_path / "c", 50)
    assert notes.name == f"127.0.0.1_{port}_notes.txt" and "Mirela Quanz" in read(notes)[0].text

    moved = fetch_url(f"{site}/moved", tmp_path / "d", 50)  # named after the address asked for
    assert moved.name == f"127.0.0.1_{port}_moved.html" and FACT in read(moved)[0].text

    zipped = fetch_url(f"{site}/zipped", tmp_path / "e", 50)
    assert "Mirela Quanz" in read(zipped)[0].text


def test_fetch_honours_the_servers_charset(site, tmp_path):
    latin = fetch_url(f"{site}/docs/latin", tmp_path, 50)
    assert read(latin)[0].text == "Le café du phare sert des crêpes à volonté, été comme hiver."


def test_fetch_failures_name_the_url_and_the_reason(site, tmp_path, dead_proxy):
    assert "HTTP 404" in fetch_reason(f"{site}/nothing-here", tmp_path)
    assert fetch_reason(f"{site}/blob", tmp_path) == \
        "not a web page or supported document (content-type application/octet-stream)"
    assert "content-type missing" in fetch_reason(f"{site}/untyped", tmp_path)
    assert "redirected to a file://" in fetch_reason(f"{site}/to-file", tmp_path)
    assert fetch_reason(f"{site}/big-declared", tmp_path, max_mb=1) == "the download is 1.0 MB, over the 1 MB limit"
    assert fetch_reason(f"{site}/big-streamed", tmp_path, max_mb=1) == "the download is over the 1 MB limit"
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_unreachable_host(tmp_path, dead_proxy):
    url = f"http://127.0.0.1:{free_port()}/page"  # a port nothing listens on
    assert fetch_reason(url, tmp_path) == "could not connect (connection refused)"


def test_only_http_and_https_are_fetched(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    assert "only http:// and https://" in fetch_reason(secret.as_uri(), tmp_path)
    assert "only http:// and https://" in fetch_reason("ftp://127.0.0.1/file.txt", tmp_path)
    assert fetch_reason("http:///no-host", tmp_path) == "the address has no host name"
    assert fetch_reason("http://127.0.0.1:99999/", tmp_path) == "the address has an invalid port"


def test_url_helpers():
    assert looks_like_url("https://example.com/a") and looks_like_url(" HTTP://x ") and looks_like_url("file:///etc/x")
    assert not looks_like_url("/tmp/notes.md") and not looks_like_url("C:\\notes.md") and not looks_like_url(Path("x"))
    assert as_url("example.com/page") == "https://example.com/page" and as_url("/etc/passwd") == "https:///etc/passwd"
    assert url_file_name("https://example.com/", ".html") == "example.com.html"
    assert url_file_name("https://example.com/docs/guide.htm?lang=en&v=2#top", ".html") == \
        "example.com_docs_guide_lang_en_v_2.html"
    assert url_file_name("http://127.0.0.1:8000/docs/page", ".html") == "127.0.0.1_8000_docs_page.html"
    assert url_file_name("https://example.com/caf%C3%A9/<script>", ".md") == "example.com_café_script.md"
    assert len(url_file_name("https://example.com/" + "a" * 500, ".pdf")) == 200


# ---- end to end ------------------------------------------------------------------------------------------------

def test_lab_ingests_urls_mixed_with_files_and_finds_the_page(lab, site, handbook, dead_proxy):
    port = site.rsplit(":", 1)[1]
    messages = []
    results = lab.kbs.ingest([handbook, f"{site}/docs/page", f"{site}/nothing-here"],
                         progress=lambda fraction, message: messages.append(message))
    by_file = {r.file: r for r in results}
    page_name = f"127.0.0.1_{port}_docs_page.html"
    assert by_file["handbook.md"].status == "added"
    assert by_file[page_name].status == "added"
    failed = by_file[f"{site}/nothing-here"]
    assert failed.status == "failed" and "HTTP 404" in failed.message
    assert any(m.startswith(f"Fetching {site}/docs/page") for m in messages)

    hits, _ = lab.kbs.search("Who is the keeper of the Velmor lighthouse?")
    assert hits[0].file == page_name and "Ada Strund" in hits[0].text

    # Again: the same content changes nothing; a failing address leaves what is stored alone.
    again = lab.kbs.ingest([f"{site}/docs/page", f"{site}/blob"])
    assert [r.status for r in again] == ["unchanged", "failed"]
    assert sorted(f["file"] for f in lab.kbs.show("default")["files"]) == sorted(["handbook.md", page_name])


def test_cli_reports_a_failing_url(data_dir):
    url = f"http://127.0.0.1:{free_port()}/gone"
    done = cli_here(["ingest", url], data_dir)
    assert done.returncode == 1
    assert f"failed  {url}: could not connect (connection refused)" in done.stdout

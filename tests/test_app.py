"""End-to-end tests of the Gradio app: the real server (`python app.py`), real models, no mocks.

One app server is shared by every test in the session (see `app_server` in conftest.py), so each test uses its
own file names and none of them relies on what another test added or on the order they run in.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from conftest import cli_here, start_app, write_pdf, write_scanned_pdf

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
GENERATION_TIMEOUT_MS = 180_000
UI_TIMEOUT_MS = 60_000
MAX_NEW_TOKENS = 48  # keeps a two-column answer at ~10 s on two CPU cores
OK_STATUSES = ("Added", "Unchanged", "Updated")  # the handbook may already be in the shared server's store
NO_CHROMIUM = f"{CHROMIUM} is not installed; the browser tests need a system Chromium"
# Checked at collection time too, so a machine without Chromium does not start the app server just to skip.
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)


# ---- helpers -----------------------------------------------------------------------------------------------

def table_data(value) -> list[list]:
    """Rows of a Dataframe output as gradio_client returns it (a dict with `data`, or already a list)."""
    if isinstance(value, dict):
        return value.get("data") or []
    return list(value or [])


def status_lines(markdown: str) -> list[str]:
    return [line.strip() for line in markdown.splitlines() if line.strip()]


def stored_files(app_server, kb: str = "default") -> list[str]:
    """The file names the server's store really holds, read from its data folder by the CLI's code (a store opened
    apart from the server's; `python -m core` as a process of its own is test_cli.py's)."""
    import json

    _, data_dir = app_server
    shown = cli_here(["kb", "show", kb, "--json"], data_dir)
    if shown.returncode != 0:
        return []  # no knowledge base yet
    return [f["file"] for f in json.loads(shown.stdout)["files"]]


def dom_rows(page, elem_id: str) -> list[list[str]]:
    """The body rows of a Gradio Dataframe as cell texts, in display order.

    Gradio 6 renders the rows as ARIA grid rows (`[role=row]` holding `[role=gridcell]`s, virtualised for long
    tables, which ours are not); the `<table>` inside only holds the header and a hidden sizing row."""
    return page.evaluate(
        """(id) => [...document.querySelectorAll(`#${id} [role=row]`)]
               .map(row => [...row.querySelectorAll('[role=gridcell]')].map(cell => cell.textContent.trim()))
               .filter(cells => cells.length > 0)""",
        elem_id,
    )


# /ask and the other Compare events return, per column slot, (header, chat, stats, sources), then the vote status.
SLOT_FIELDS = 4
ALL_COLUMNS = ["base", "finetuned", "rag", "finetuned+rag"]


def slot_outputs(result, slot: int) -> tuple:
    return tuple(result[slot * SLOT_FIELDS:(slot + 1) * SLOT_FIELDS])


def message_text(message: dict) -> str:
    """A chat message's text (the API gives content as a string or as a list of typed parts)."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def last_bot_text(chat) -> str:
    return message_text(chat[-1]) if chat else ""


def user_questions(chat) -> list[str]:
    return [message_text(m) for m in chat if m["role"] == "user"]


def ask_api(client, question: str, kb: str, columns=("base", "rag"), blind=False, max_new=MAX_NEW_TOKENS, **kw):
    return client.predict(question, kb, kw.get("adapter"), list(columns), blind, kw.get("top_k", 3), max_new, 0.0,
                          0.9, "", api_name="/ask")


def bot_messages(page, slot: int) -> list[str]:
    return page.locator(f'#chat-{slot} [data-testid="bot"]').all_inner_texts()


def slot_titles(page) -> list[str]:
    return [page.locator(f"#header-{i}").inner_text().split("\n")[0].strip() if page.locator(f"#header-{i}").is_visible()
            else "" for i in range(4)]


def wait_for_answers(page, timeout: int = GENERATION_TIMEOUT_MS) -> None:
    """Wait until the Compare tab has finished a turn (the vote status says what to do next)."""
    page.wait_for_function("() => /Vote below|Vote saved/.test(document.getElementById('vote-status').textContent)",
                           timeout=timeout)


def set_max_tokens(page, value: int) -> None:
    """Open the Compare tab's generation settings (if closed) and set the answer length so that it sticks."""
    box = "#max-tokens input[type=number]"
    if not page.locator(box).is_visible():
        page.get_by_text("Generation settings").click()
    set_number(page, box, str(value))


def pick_kb(page, name: str, elem_id: str = "compare-kb") -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(name)
    box.press("Enter")


def dom_file_names(page) -> list[str]:
    return [row[0] for row in dom_rows(page, "kb-files")]


def wait_for_text(page, elem_id: str, *needles: str, timeout: int = UI_TIMEOUT_MS) -> None:
    """Wait until the element's text contains every needle."""
    page.wait_for_function(
        """([id, needles]) => {
               const el = document.getElementById(id);
               return !!el && needles.every(n => el.textContent.includes(n));
           }""",
        arg=[elem_id, list(needles)],
        timeout=timeout,
    )


def wait_for_files(page, expected: list[str], timeout: int = UI_TIMEOUT_MS) -> None:
    """Wait until the knowledge tab's file table lists exactly `expected` (order ignored)."""
    deadline = time.monotonic() + timeout / 1000
    while sorted(names := dom_file_names(page)) != sorted(expected):
        assert time.monotonic() < deadline, f"file table shows {names}, expected {expected}"
        page.wait_for_timeout(200)


def upload(page, paths: list[Path]) -> None:
    """Put files into the knowledge tab's upload box and wait until the browser has sent them to the server."""
    upload_to(page, "kb-upload", paths)


def upload_to(page, elem_id: str, paths: list[Path]) -> None:
    """Put files into an upload box and wait until the browser has sent them to the server. Tried again if the box
    was built anew meanwhile (a tab's content is mounted when first shown, which can drop files set too early)."""
    for attempt in range(3):
        page.locator(f"#{elem_id} input[type=file]").set_input_files([str(p) for p in paths])
        # Once a file is on the server the component lists it with a download link to the server's copy. (Its
        # visible name is split into stem and extension spans, and a transient progress view also shows names,
        # so matching the text would be racy.)
        try:
            for p in paths:
                page.locator(f'#{elem_id} a[download="{p.name}"][href*="/file="]').wait_for(
                    timeout=UI_TIMEOUT_MS // 3)
            return
        except Exception:  # noqa: BLE001 - playwright's timeout: set the files again
            if attempt == 2:
                raise


def set_number(page, selector: str, value: str) -> None:
    """Type into a number box and make sure it kept the value: a box inside an accordion that has just opened can
    be mounted again a moment later with its initial value (seen about 1 run in 4)."""
    box = page.locator(selector)
    for _ in range(10):
        box.fill(value)
        box.press("Tab")  # a number box commits its value when it loses focus
        page.wait_for_timeout(300)
        if box.input_value() == value:
            return
    raise AssertionError(f"{selector} does not keep the value {value}")


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#study-run", timeout=UI_TIMEOUT_MS)  # the first tab: the study
    # The tabs fill in the visitor's own data when a page opens; acting before that could be undone by it.
    page.wait_for_selector("#page-ready [data-ready]", state="attached", timeout=UI_TIMEOUT_MS)
    page.get_by_role("tab", name="1 · Knowledge base").click()
    page.wait_for_selector("#kb-add", timeout=UI_TIMEOUT_MS)


# ---- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    c = Client(url, verbose=False)
    yield c
    close = getattr(c, "close", None)
    if callable(close):
        close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, tmp_path, request):
    """A fresh browser page; a full-page screenshot lands in the test's tmp_path whether the test passes or not."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    pg = context.new_page()
    yield pg
    shot = tmp_path / f"{request.node.name}.png"
    try:
        pg.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    except Exception as exc:  # noqa: BLE001 - a failed screenshot must not hide the test's own result
        print(f"screenshot failed: {exc}")
    context.close()


# ---- tests -------------------------------------------------------------------------------------------------

def test_client_cancels_an_add_and_the_rest_is_listed_as_cancelled(app_server, client, tmp_path):
    """Cancel (its own endpoint, outside the write queue) stops an Add under way: what was written stays, each file
    whole, and every other file has its line."""
    files = []
    for n in range(3):  # ~150 chunks each: several seconds of embedding in all
        path = tmp_path / f"long{n}.txt"
        path.write_text("\n\n".join(f"Log {n}, entry {i}. " + "The harbour master records each ship's cargo. " * 12
                                     for i in range(150)))
        files.append(path)
    job = client.submit([handle_file(str(f)) for f in files], "cancel-me", api_name="/add_files")
    deadline = time.time() + 120
    while not (job.status().progress_data or job.done()):  # the Add is running (its progress shows)
        assert time.time() < deadline, "the Add never started"
        time.sleep(0.1)
    client.predict(api_name="/cancel_add")
    lines = status_lines(job.result()[0])
    assert len(lines) == 3 and any(line.startswith("**Cancelled** · long") for line in lines), lines
    written = [line.split(" · ")[1].split(":")[0] for line in lines if line.startswith("**Added**")]
    _, data_dir = app_server
    shown = cli_here(["kb", "show", "cancel-me", "--json"], data_dir)
    stored = sorted(f["file"] for f in json.loads(shown.stdout)["files"]) if shown.returncode == 0 else []
    assert stored == sorted(written)


def test_client_add_handbook_then_ask(app_server, client, handbook):
    """Through the public API: add the handbook with the knowledge tab's handler, then ask both columns."""
    status, cleared, _kb, table, _to_delete = client.predict(
        [handle_file(str(handbook))], "default", api_name="/add_files"
    )
    lines = status_lines(status)
    assert len(lines) == 1, status
    assert "handbook.md" in lines[0] and lines[0].startswith(tuple(f"**{s}**" for s in OK_STATUSES)), status
    assert not cleared, "the upload box should be emptied after adding"
    assert "handbook.md" in [row[0] for row in table_data(table)]

    result = ask_api(client, "Who founded the Zorblat Institute?", "default", columns=ALL_COLUMNS)
    base_header, base_chat, base_stats, _ = slot_outputs(result, 0)
    _, tuned_chat, _, _ = slot_outputs(result, 1)
    rag_header, rag_chat, rag_stats, sources = slot_outputs(result, 2)
    assert "Base model" in base_header and "RAG" in rag_header
    rag, base = last_bot_text(rag_chat), last_bot_text(base_chat)
    assert "handbook.md" in sources and sources.count("<li>") <= 3, sources
    assert "Quanz" in rag, rag
    assert "Quanz" not in base, base
    assert "Pick a fine-tuned adapter" in last_bot_text(tuned_chat)  # no adapter: the column says how to get one
    assert "tokens/s" in base_stats, base_stats
    assert "tokens/s" in rag_stats, rag_stats
    assert "retrieval" in rag_stats and "retrieval" not in base_stats
    new_tokens = int(re.search(r"tokens in, (\d+) out$", base_stats).group(1))
    assert 0 < new_tokens <= MAX_NEW_TOKENS, base_stats
    assert "Vote below" in result[-1]


@pytest.mark.browser
@needs_chromium
def test_browser_upload_pdf_then_compare(app_server, client, page, tmp_path):
    url, _ = app_server
    pdf = write_pdf(
        tmp_path / "quorvin_bridge.pdf",
        ["The Quorvin Bridge in Larkspur was designed by engineer Tessaly Brandt in 1962."],
    )
    before = stored_files(app_server)
    assert pdf.name not in before, "this test adds the file itself; the shared server must not have it yet"
    open_app(page, url)
    pick_kb(page, "default", "kb-select")  # a page starts on the knowledge base last written, maybe another test's

    upload(page, [pdf])
    page.locator("#kb-add").click()
    wait_for_text(page, "kb-status", "Added", pdf.name, timeout=GENERATION_TIMEOUT_MS)
    status = page.locator("#kb-status").inner_text()
    assert f"Added · {pdf.name}: added: 1 page(s)" in status, status
    wait_for_files(page, [*before, pdf.name])
    row = next(r for r in dom_rows(page, "kb-files") if r[0] == pdf.name)
    assert row[1] == "1", row  # pages

    page.get_by_role("tab", name="3 · Compare").click()
    # No adapter yet: switch the two fine-tuned columns off, and the page shows Base and RAG only.
    page.get_by_label("Fine-tuned", exact=True).uncheck()
    page.get_by_label("Fine-tuned + RAG").uncheck()
    page.wait_for_function("() => !document.getElementById('header-2')?.offsetParent")
    assert slot_titles(page) == ["Base model", "RAG", "", ""]
    page.locator("#question textarea").fill("Who designed the Quorvin Bridge?")
    set_max_tokens(page, MAX_NEW_TOKENS)
    page.locator("#ask").click()

    wait_for_answers(page)
    wait_for_text(page, "stats-0", "tokens/s")
    wait_for_text(page, "stats-1", "tokens/s")
    base, rag = bot_messages(page, 0)[-1], bot_messages(page, 1)[-1]
    base_stats = page.locator("#stats-0").inner_text()
    assert "Brandt" in rag, rag
    assert "Brandt" not in base, base
    new_tokens = int(re.search(r"tokens in, (\d+) out\s*$", base_stats).group(1))
    assert new_tokens <= MAX_NEW_TOKENS, f"the max-length slider was not applied: {base_stats}"

    sources = page.locator("#sources-1 li").all_inner_texts()
    assert sources, "the RAG column shows no sources"
    cited = [s for s in sources if s.startswith(pdf.name)]
    assert cited, sources
    assert "page 1" in cited[0] and "vector" in cited[0] and "Tessaly Brandt" in cited[0], cited
    marked = page.locator("#sources-1 mark").all_inner_texts()  # the question's words, highlighted
    assert "Quorvin" in marked and "Bridge" in marked, marked
    assert not page.locator("#sources-0 li").count()  # the base model read nothing
    # The bundled model reads one passage: the first; any others are listed as not shown to it.
    assert "not shown to the model" not in sources[0]
    assert all("not shown to the model" in s for s in sources[1:]), sources
    assert page.locator("#loop-stop input").is_checked()


@pytest.mark.browser
@needs_chromium
def test_browser_bad_files_are_reported_and_not_added(app_server, client, page, tmp_path):
    url, _ = app_server
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    scanned = write_scanned_pdf(tmp_path / "scanned_page.pdf")
    before = stored_files(app_server)

    open_app(page, url)
    pick_kb(page, "default", "kb-select")  # a page starts on the knowledge base last written, maybe another test's
    wait_for_files(page, before)  # the tab refreshes its table on load; start from what the server holds

    upload(page, [empty, scanned])
    page.locator("#kb-add").click()
    wait_for_text(page, "kb-status", empty.name, scanned.name, timeout=GENERATION_TIMEOUT_MS)

    lines = status_lines(page.locator("#kb-status").inner_text())
    assert len(lines) == 2, lines
    by_file = {name: next((line for line in lines if name in line), "") for name in (empty.name, scanned.name)}
    assert by_file[empty.name].startswith("Not added"), lines
    assert "empty" in by_file[empty.name].removeprefix(f"Not added · {empty.name}"), lines
    assert by_file[scanned.name].startswith("Not added"), lines
    # A page with only a drawing on it: OCR reads it and finds no words (or, without Tesseract, says to install it).
    why = "OCR found no words" if shutil.which("tesseract") else "install Tesseract"
    assert why in by_file[scanned.name], lines
    assert "Added ·" not in page.locator("#kb-status").inner_text()

    # Nothing was added: not in the page's table (updated by the same event) and not on the server.
    assert sorted(dom_file_names(page)) == sorted(before)
    assert sorted(stored_files(app_server)) == sorted(before)


@pytest.mark.browser
@needs_chromium
@pytest.mark.skipif(shutil.which("tesseract") is None, reason="Tesseract is not installed (scripts/install.sh installs it as root)")
def test_browser_file_list_shows_the_pages_read_by_ocr(app_server, page, tmp_path):
    from test_ocr import page_picture, text_then_pictures

    url, _ = app_server
    picture = page_picture(write_pdf(tmp_path / "src.pdf", ["The Brindle Canal has nine locks and one aqueduct."]), 0)
    scan = text_then_pictures(tmp_path / "canal_scan.pdf", "Canal survey, cover page.", [picture])
    open_app(page, url)
    pick_kb(page, "default", "kb-select")
    upload(page, [scan])
    page.locator("#kb-add").click()
    wait_for_text(page, "kb-status", "Added", scan.name, timeout=GENERATION_TIMEOUT_MS)
    assert "read by OCR: page(s) 2" in page.locator("#kb-status").inner_text()
    page.wait_for_function("(name) => [...document.querySelectorAll('#kb-files [role=row]')]"
                           ".some(r => r.textContent.includes(name))", arg=scan.name)
    row = next(r for r in dom_rows(page, "kb-files") if r[0] == scan.name)
    assert (row[1], row[3]) == ("2", "2"), row  # 2 pages, page 2 read by OCR


def test_client_can_use_a_knowledge_base_created_after_start(app_server, client, tmp_path):
    """A knowledge base made after the page was built must be accepted by /ask (Gradio checks dropdown choices)."""
    notes = tmp_path / "orchard.txt"
    notes.write_text("The Hollowmere orchard grows a pear variety called Duskwater Gold.")
    status, *_ = client.predict([handle_file(str(notes))], "orchards", api_name="/add_files")
    assert "Added" in status and "orchard.txt" in status
    result = ask_api(client, "Which pear variety grows in the Hollowmere orchard?", "orchards", columns=["rag"],
                     max_new=24)
    _, _, rag_stats, sources = slot_outputs(result, 0)
    assert "<li><b>orchard.txt</b>" in sources, sources
    assert "tokens/s" in rag_stats
    assert stored_files(app_server, "orchards") == ["orchard.txt"]


def test_client_generates_training_data_from_a_knowledge_base(app_server, client, tmp_path):
    notes = tmp_path / "glassworks.txt"
    notes.write_text("The Ostrava glassworks was founded by Hedda Lintz in 1911. Its furnace burns at 1480 degrees. "
                     "The glassworks exports blue bottles to Lisbon.")
    client.predict([handle_file(str(notes))], "glass", api_name="/add_files")
    status, _, preview = client.predict("glass", "glass-qa", 3, False, True, 0, 1.0, api_name="/generate_dataset")
    assert "Generated" in status and "glass-qa" in status and "raft" in status, status
    assert "Passages:" in preview and "Hedda Lintz" in preview, preview  # RAFT prompt, shown as the model sees it


def test_client_renames_a_knowledge_base(app_server, client, tmp_path):
    notes = tmp_path / "rename_me.txt"
    notes.write_text("The Vellum Society meets on the first Thursday of every month.")
    client.predict([handle_file(str(notes))], "to-rename", api_name="/add_files")
    status, *_ = client.predict("to-rename", "renamed-kb", api_name="/rename_kb")
    assert "renamed-kb" in status
    assert stored_files(app_server, "renamed-kb") == ["rename_me.txt"]
    assert stored_files(app_server, "to-rename") == []


@pytest.mark.browser
@needs_chromium
def test_browser_new_kb_preview_reindex_and_delete(app_server, page, tmp_path):
    """A knowledge base typed into the picker: add a file with small chunks, preview them, re-index with bigger
    chunks, then delete the whole knowledge base (only after typing its name)."""
    url, _ = app_server
    notes = tmp_path / "river_notes.txt"
    notes.write_text(" ".join(f"Note {i}: the river Oda floods every {i + 2} years near the mill." for i in range(60)))
    open_app(page, url)
    picker = page.locator("#kb-select input")
    picker.fill("chunk-lab")
    picker.press("Enter")
    page.get_by_text("Chunk settings").click()
    set_number(page, "#kb-chunk-size input", "32")
    set_number(page, "#kb-chunk-overlap input", "0")
    upload(page, [notes])
    page.locator("#kb-add").click()
    wait_for_text(page, "kb-status", "Added", notes.name, timeout=GENERATION_TIMEOUT_MS)
    wait_for_files(page, [notes.name])
    small_chunks = int(dom_rows(page, "kb-files")[0][2])
    assert stored_files(app_server, "chunk-lab") == [notes.name]

    page.locator("#kb-file-pick input").click()
    page.get_by_role("option", name=notes.name).click()
    page.locator("#kb-preview-button").click()
    page.wait_for_function("() => document.querySelectorAll('#kb-preview [role=row]').length > 2")
    rows = dom_rows(page, "kb-preview")
    assert min(small_chunks, 20) <= len(rows) <= small_chunks, rows  # long tables are virtualised: not all in the DOM
    assert rows[0][3].startswith("Note 0:") and all(int(r[2]) <= 32 for r in rows), rows[:3]

    set_number(page, "#kb-chunk-size input", "128")
    set_number(page, "#kb-chunk-overlap input", "16")
    page.locator("#kb-reindex").click()
    wait_for_text(page, "kb-status", "re-indexed", timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function(
        "(n) => { const r = document.querySelector('#kb-files [role=gridcell]:nth-child(3)');"
        " return r && Number(r.textContent) < n; }", arg=small_chunks)

    page.get_by_text("Rename or delete this knowledge base").click()
    page.locator("#kb-delete").click()  # not confirmed: refused, nothing deleted
    page.get_by_text("type its name (chunk-lab)").first.wait_for()
    assert stored_files(app_server, "chunk-lab") == [notes.name]
    page.locator("#kb-delete-confirm textarea, #kb-delete-confirm input").first.fill("chunk-lab")
    page.locator("#kb-delete").click()
    wait_for_text(page, "kb-status", "Deleted", "chunk-lab")
    assert stored_files(app_server, "chunk-lab") == []


@pytest.mark.browser
@needs_chromium
def test_browser_fine_tune_survives_a_page_refresh_and_feeds_compare(app_server, client, page, handbook):
    """Import Q&A, see it as the model will, train (2 epochs, to keep it short), refresh the page mid-run and find
    the job again, then pick the new adapter in Compare and get a fine-tuned answer."""
    url, _ = app_server
    facts = Path(__file__).parent / "data" / "zorblat_facts.jsonl"
    open_app(page, url)
    page.get_by_role("tab", name="2 · Fine-tune").click()
    page.locator("#ft-import").wait_for()  # a tab's content is built when first shown
    upload_to(page, "ft-data-file", [facts])
    page.locator("#ft-data-name textarea, #ft-data-name input").first.fill("ui-facts")
    page.locator("#ft-import").click()
    wait_for_text(page, "ft-data-status", "Imported", "12 examples")
    wait_for_text(page, "ft-preview", "<|im_start|>assistant", "only the answer is learned")
    page.locator("#ft-check").click()  # the data check before training: these 12 facts are clean
    wait_for_text(page, "ft-check-report", "No problems found", "12 examples")
    assert not page.locator("#ft-fix").is_visible()
    page.get_by_text("Advanced").click()
    set_number(page, "#ft-epochs input", "2")
    page.locator("#ft-estimate").click()
    wait_for_text(page, "ft-plan", "min for", "fits", "weights", "activations")  # the memory it adds up
    page.locator("#ft-adapter-name textarea, #ft-adapter-name input").first.fill("ui-lora")
    page.locator("#ft-start").click()
    wait_for_text(page, "ft-job-status", "ui-lora")
    page.wait_for_function("() => /Running|Completed/.test(document.getElementById('ft-job-status').textContent)",
                           timeout=GENERATION_TIMEOUT_MS)

    page.reload()  # the job runs in its own process: a refresh finds it again
    page.get_by_role("tab", name="2 · Fine-tune").click()
    wait_for_text(page, "ft-job-status", "ui-lora", timeout=GENERATION_TIMEOUT_MS)
    # The whole 6-step run: ~30 s on a quiet machine; 162 s had passed at step 5 with a benchmark sharing the cores.
    wait_for_text(page, "ft-job-status", "Completed", timeout=3 * GENERATION_TIMEOUT_MS)
    assert "step 6/6" in page.locator("#ft-job-status").inner_text()  # 12 examples, batch 4, 2 epochs
    wait_for_text(page, "ft-adapters", "ui-lora")
    # The refreshed page shows the dataset this run trained on (the newest), not an empty picker.
    page.wait_for_function("() => document.querySelector('#ft-dataset input').value === 'ui-facts'")

    page.get_by_role("tab", name="3 · Compare").click()
    # Picked from the list: the option shows once the tab has refreshed its choices, so no reply can undo it.
    page.locator("#compare-adapter input").click()
    page.get_by_role("option", name="ui-lora").click()
    page.locator("#question textarea").click()
    assert page.locator("#compare-adapter input").input_value() == "ui-lora"
    client.predict([handle_file(str(handbook))], "ft-compare", api_name="/add_files")
    pick_kb(page, "ft-compare")
    set_max_tokens(page, 24)
    page.locator("#question textarea").fill("Who founded the Zorblat Institute?")
    page.locator("#ask").click()
    wait_for_answers(page)
    # All four columns, one question: each answered, with timings; both RAG columns show what they read.
    assert slot_titles(page) == ["Base model", "Fine-tuned", "RAG", "Fine-tuned + RAG"]
    for slot in range(4):
        assert bot_messages(page, slot)[-1].strip(), slot
        assert "tokens/s" in page.locator(f"#stats-{slot}").inner_text(), slot
    for slot in (2, 3):
        assert page.locator(f"#sources-{slot} li").count() >= 1, slot


@pytest.mark.browser
@needs_chromium
def test_browser_a_new_page_starts_on_the_last_used_knowledge_base_and_adds_fine_tuned_columns_with_an_adapter(
        app_server, client, page, tmp_path):
    """A page opened after documents went into a new knowledge base shows that one in every tab (not an empty
    'default'); the fine-tuned columns wait until an adapter is picked; the empty per-question table is labelled."""
    url, _ = app_server
    notes = tmp_path / "kilns.txt"
    notes.write_text("The Ashgrove kiln fires stoneware at 1280 degrees every Thursday.")
    status, *_ = client.predict([handle_file(str(notes))], "last-used", api_name="/add_files")
    assert "kilns.txt" in status and "added" in status.lower(), status  # (CI once showed 'default' here)
    open_app(page, url)
    page.wait_for_function("() => document.querySelector('#kb-select input').value === 'last-used'",
                           timeout=UI_TIMEOUT_MS)
    assert dom_file_names(page) == ["kilns.txt"]
    page.get_by_role("tab", name="3 · Compare").click()
    assert page.locator("#compare-kb input").input_value() == "last-used"
    assert not page.get_by_label("Fine-tuned", exact=True).is_checked()
    assert not page.get_by_label("Fine-tuned + RAG").is_checked()
    assert slot_titles(page) == ["Base model", "RAG", "", ""]
    page.locator("#compare-adapter input").fill("some-adapter")
    page.locator("#compare-adapter input").press("Enter")
    page.wait_for_function("() => document.querySelectorAll('#columns input:checked').length === 4",
                           timeout=UI_TIMEOUT_MS)
    page.wait_for_function("() => document.getElementById('header-3').offsetParent !== null", timeout=UI_TIMEOUT_MS)
    assert slot_titles(page) == ["Base model", "Fine-tuned", "RAG", "Fine-tuned + RAG"]
    page.get_by_role("tab", name="4 · Evaluate").click()
    assert page.locator("#ev-kb input").input_value() == "last-used"
    headers = page.locator("#ev-questions").inner_text()
    assert "Question" in headers and "Gold answer" in headers, headers


@pytest.mark.browser
@needs_chromium
def test_browser_blind_vote_reveals_names_and_exports_preferences(app_server, client, page, tmp_path):
    """Blind mode: two shuffled columns named A and B, no timings or sources to give them away; a vote reveals
    the names, lands on the leaderboard and becomes a preference pair in the exported DPO file."""
    import json

    url, _ = app_server
    notes = tmp_path / "lighthouse.txt"
    notes.write_text("The Skerrow lighthouse keeper in 1921 was Ansgar Vole. The lamp burned whale oil.")
    client.predict([handle_file(str(notes))], "blind-kb", api_name="/add_files")
    open_app(page, url)
    page.get_by_role("tab", name="3 · Compare").click()
    pick_kb(page, "blind-kb")
    page.get_by_label("Fine-tuned", exact=True).uncheck()
    page.get_by_label("Fine-tuned + RAG").uncheck()
    page.locator("#blind input").check()
    page.wait_for_function("() => /Answer A/.test(document.getElementById('header-0').textContent)")
    set_max_tokens(page, 24)
    page.locator("#question textarea").fill("Who was the Skerrow lighthouse keeper in 1921?")
    page.locator("#ask").click()
    wait_for_answers(page)
    assert slot_titles(page) == ["Answer A", "Answer B", "", ""]
    assert "tokens/s" not in page.locator("#stats-0").inner_text() + page.locator("#stats-1").inner_text()
    assert page.locator("#sources-0 li").count() + page.locator("#sources-1 li").count() == 0
    answers = [bot_messages(page, 0)[-1], bot_messages(page, 1)[-1]]

    page.locator("#vote-comment textarea, #vote-comment input").first.fill("names the keeper")
    page.locator("#best-1").click()
    wait_for_text(page, "vote-status", "Vote saved")
    titles = slot_titles(page)
    assert {t.split(": ")[1] for t in titles[:2]} == {"Base model", "RAG"}, titles
    assert titles[0].startswith("Answer A: ") and titles[1].startswith("Answer B: ")
    winner = titles[1].split(": ")[1]
    assert winner in page.locator("#vote-status").inner_text()
    assert "tokens/s" in page.locator("#stats-0").inner_text()  # revealed with the names
    page.wait_for_function("() => document.querySelector('#best-0').disabled")  # one vote per answer set

    page.get_by_text("Leaderboard and exports").click()
    page.wait_for_function("() => document.querySelectorAll('#leaderboard [role=row]').length > 1")
    board = {row[0]: row for row in dom_rows(page, "leaderboard")}
    assert board[winner][1:] == ["100%", "1", "0", "0", "1"], board

    with page.expect_download() as download:
        page.locator("#export-votes").click()
        page.locator("#export-file a[download]").first.click()
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert len(rows) == 1, rows
    assert rows[0]["prompt"] == [{"role": "user", "content": "Who was the Skerrow lighthouse keeper in 1921?"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": answers[1]}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": answers[0]}]


def test_two_sessions_ask_at_once_and_keep_their_own_conversations(app_server, tmp_path):
    """Two users at once: both are answered at the same time (neither waits in the queue: their rows share the
    model's decode batch), and neither sees the other's conversation."""
    import threading

    url, _ = app_server
    notes = tmp_path / "ferry.txt"
    notes.write_text("The Brisk Otter ferry leaves Pellham harbour at 07:40 every weekday.")
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    first.predict([handle_file(str(notes))], "ferries", api_name="/add_files")
    questions = ["When does the Brisk Otter ferry leave?", "Which harbour does the Brisk Otter leave from?"]
    jobs = [c.submit(q, "ferries", None, ["base", "rag"], False, 2, 48, 0.0, 0.9, "", api_name="/ask")
            for c, q in zip((first, second), questions)]
    seen: dict[int, set] = {0: set(), 1: set()}
    both_streaming = threading.Event()

    def watch(index, job):
        while not job.done():
            seen[index].add(str(job.status().code).rsplit(".", 1)[-1])
            if len(job.outputs()) > 1 and len(jobs[1 - index].outputs()) > 1 and not jobs[1 - index].done():
                both_streaming.set()  # each has shown some of its answer while the other is still running
            time.sleep(0.05)

    watchers = [threading.Thread(target=watch, args=(i, j)) for i, j in enumerate(jobs)]
    for w in watchers:
        w.start()
    results = [j.result(timeout=GENERATION_TIMEOUT_MS / 1000) for j in jobs]
    for w in watchers:
        w.join()
    for result, question in zip(results, questions):
        for slot in (0, 1):
            chat = slot_outputs(result, slot)[1]
            assert user_questions(chat) == [question]  # its own question only
            assert last_bot_text(chat).strip()
    assert "07:40" in last_bot_text(slot_outputs(results[0], 1)[1])
    assert both_streaming.is_set(), f"one answer waited for the other (statuses seen: {seen})"
    # A follow-up continues each session's own conversation.
    follow = first.predict("And on Sundays?", "ferries", None, ["base"], False, 2, 16, 0.0, 0.9, "", api_name="/ask")
    assert user_questions(slot_outputs(follow, 0)[1]) == [questions[0], "And on Sundays?"]


@pytest.mark.browser
@needs_chromium
def test_browser_runs_a_small_evaluation_and_sees_the_table_and_chart(app_server, client, page, tmp_path, handbook):
    url, _ = app_server
    client.predict([handle_file(str(handbook))], "eval-kb", api_name="/add_files")
    questions = tmp_path / "handbook_qa.csv"
    questions.write_text("question,answer\nWho founded the Zorblat Institute?,Mirela Quanz\n"
                         "In which town was the Zorblat Institute founded?,Vettelborg\n"
                         "What is the mascot of the institute?,Pim\n")
    open_app(page, url)
    page.get_by_role("tab", name="4 · Evaluate").click()
    page.get_by_label("A Q&A file").check()
    upload_to(page, "ev-file", [questions])
    set_number(page, "#ev-limit input", "2")
    page.locator("#ev-kb input").fill("eval-kb")
    page.locator("#ev-kb input").press("Enter")
    page.locator("#ev-run").click()
    wait_for_text(page, "ev-status", "Completed", "2/2 questions", timeout=GENERATION_TIMEOUT_MS)
    wait_for_text(page, "ev-verdict", "On these 2 questions")
    rows = {row[0]: row for row in dom_rows(page, "ev-summary")}
    assert set(rows) == {"Base model", "RAG"}, rows
    assert rows["RAG"][5] != "–" and rows["Base model"][5] == "–", rows  # grounded: only RAG read passages
    page.locator("#ev-chart canvas, #ev-chart svg").first.wait_for()  # the bar chart is drawn (asynchronously)
    per_question = dom_rows(page, "ev-questions")
    assert len(per_question) == 2 and per_question[0][1] == "Who founded the Zorblat Institute?", per_question
    assert per_question[0][4].startswith(("RIGHT", "WRONG")), per_question
    with page.expect_download() as download:
        page.locator("#ev-export-csv").click()
        page.locator("#ev-export-file a[download]").first.click()
    exported = Path(download.value.path()).read_text()
    assert exported.splitlines()[0].startswith("index,question,gold,variant,answer") and "Mirela Quanz" in exported

    # The advisor: facts that change, sources wanted -> RAG, with the last evaluation shown beside it; asking for a
    # style instead brings fine-tuning in.
    page.get_by_text("Not sure yet? Five questions").click()
    page.locator("#advise-run").click()
    wait_for_text(page, "advise-out", "Recommendation: RAG", "for RAG:", "Your last evaluation")
    page.get_by_label("Answering in a certain style, tone or format").check()
    page.locator("#advise-run").click()
    wait_for_text(page, "advise-out", "Recommendation: Both", "+3 for fine-tuning")


def test_client_loads_the_demo_pack(app_server, client):
    status, _kb, table, _ = client.predict(False, api_name="/load_demo")
    assert "Demo loaded" in status and "demo-qa" in status and "Brindlewick" in status, status
    assert sorted(row[0] for row in table_data(table)) == ["handbook.md", "policies.md", "products.md"]
    assert sorted(stored_files(app_server, "demo")) == ["handbook.md", "policies.md", "products.md"]


# ---- demo mode (the public Space) -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The app in demo mode, as on a Space: every visitor in a workspace of their own."""
    data_dir = tmp_path_factory.mktemp("space") / "data"
    for url in start_app(data_dir, LAB_DEMO_MODE="1"):
        yield url, data_dir


@needs_chromium
def test_demo_mode_gives_each_visitor_their_own_workspace(demo_server, browser, handbook, tmp_path):
    """Two browsers (two cookie jars, as two visitors): what one adds, the other never sees, through the page or
    the API; a refresh keeps the visitor's workspace; an upload over the cap is refused."""
    url, data_dir = demo_server
    alice_context, bob_context = (browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2))
    try:
        alice, bob = alice_context.new_page(), bob_context.new_page()
        for page in (alice, bob):
            page.set_default_timeout(UI_TIMEOUT_MS)
            open_app(page, url)
        wait_for_text(alice, "demo-note", "yours alone", "5 MB")
        upload(alice, [handbook])
        alice.locator("#kb-add").click()
        wait_for_text(alice, "kb-status", "Added", "handbook.md")
        wait_for_files(alice, ["handbook.md"])

        bob.reload()
        open_app(bob, url)  # waits until the page has been filled with Bob's own workspace
        bob.get_by_role("tab", name="1 · Knowledge base").click()
        assert dom_file_names(bob) == []  # where Alice's page, opened the same way, lists her file (below)
        alice.reload()  # the cookie brings Alice back to her workspace
        open_app(alice, url)
        wait_for_files(alice, ["handbook.md"])

        big = tmp_path / "big.txt"
        big.write_text("x" * (6 * 2**20))
        bob.locator("#kb-upload input[type=file]").set_input_files([str(big)])
        bob.wait_for_function("() => /exceed|too large|size/i.test(document.body.innerText)", timeout=UI_TIMEOUT_MS)

        # On disk: two workspaces, the handbook only in Alice's.
        spaces = [p for p in (data_dir / "workspaces").iterdir() if p.is_dir()]
        holding = [p for p in spaces if cli_here(["kb", "show", "default", "--json"], p).returncode == 0]
        assert len(spaces) >= 2 and len(holding) == 1, (spaces, holding)

        # An API client is a third visitor (no cookie: its session is its workspace): it cannot reach her file.
        with pytest.raises(Exception, match="no such knowledge base"):
            Client(url, verbose=False).predict("default", 120, 20, api_name="/configure_kb")
    finally:
        alice_context.close()
        bob_context.close()


@pytest.mark.browser
@needs_chromium
def test_browser_switches_the_model_from_the_header_and_answers_with_it(page, tmp_path):
    """A model folder dropped into the models folder is offered in the header's picker with its size and memory;
    Use switches the served model without a restart (the header says so, a new page keeps it, Compare answers with
    it), and back."""
    from conftest import tiny_chat_model
    from core.config import load_settings
    from core.models import load_generator

    data_dir = tmp_path / "data"
    tiny_chat_model(data_dir / "models" / "tiny", load_generator(load_settings(data_dir=data_dir)).tokenizer)
    for url in start_app(data_dir):
        open_app(page, url)
        assert "SmolLM2-135M-Instruct (bundled)" in page.locator("#model-header").inner_text()
        page.locator("#model-panel").get_by_text("Choose the model").click()
        page.locator("#model-pick input").click()
        options = page.get_by_role("option").all_inner_texts()
        tiny = next(o for o in options if o.startswith("tiny"))
        assert re.search(r"tiny · 3M · answer [0-9.]+ GB · train [0-9.]+ GB", tiny), options
        assert any(o.startswith("Qwen/Qwen2.5-0.5B-Instruct") and "download 0.99 GB" in o for o in options), options
        page.get_by_role("option", name=tiny).click()
        page.locator("#model-use").click()
        wait_for_text(page, "model-status", "Now answering, training and evaluating with tiny")
        wait_for_text(page, "model-header", "Model: tiny")
        assert json.loads((data_dir / "model.json").read_text()) == {"base_model": "local:tiny"}

        open_app(page, url)  # a new page: the model chosen stays
        wait_for_text(page, "model-header", "Model: tiny")
        page.get_by_role("tab", name="3 · Compare").click()
        page.get_by_label("Fine-tuned", exact=True).uncheck()
        page.get_by_label("Fine-tuned + RAG").uncheck()
        page.get_by_label("RAG", exact=True).uncheck()
        page.locator("#question textarea").fill("Who designed the Quorvin Bridge?")
        set_max_tokens(page, MAX_NEW_TOKENS)
        page.locator("#ask").click()
        wait_for_text(page, "stats-0", "tokens/s", timeout=GENERATION_TIMEOUT_MS)
        # noise from random weights (maybe no visible characters), but tokens from the tiny model
        assert int(re.search(r"(\d+) out", page.locator("#stats-0").inner_text()).group(1)) > 0
        log = (data_dir.parent / next(p.name for p in data_dir.parent.glob("app-*.log"))).read_text()
        assert "Traceback" not in log, log[-3000:]

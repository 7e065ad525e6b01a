"""Knowledge base tab: upload documents or give web addresses, watch them being indexed, see and delete what is stored."""
from __future__ import annotations

import gradio as gr

from core.errors import LabError
from core.lab import Lab
from core.store import DEFAULT_KB
from core.web import as_url
from ui.formatting import STATUS_LABEL, escape_plain

FILE_HEADERS = ["File", "Pages", "Chunks", "Added"]


def kb_choices(lab: Lab) -> list[str]:
    names = lab.store.kb_names()
    return names if DEFAULT_KB in names else [DEFAULT_KB, *names]


def file_rows(lab: Lab, kb: str) -> list[list]:
    if not lab.store.has_kb(kb):
        return []
    return [[f["file"], f["pages"], f["chunks"], f["added"]] for f in lab.kb_show(kb)["files"]]


def build(lab: Lab) -> None:
    with gr.Tab("1 · Knowledge base", id="kb") as tab:
        gr.Markdown(
            "Add your documents here. They are split into short passages, embedded, and stored on this machine "
            "so the **RAG** answers in the *Compare* tab can quote them. Supported: **PDF** (with a text layer), "
            "**.txt**, **.md**, **.html**, **.docx** (Word) and **.csv**, and **web pages** by address (their main "
            "text is kept; menus and scripts are dropped). Adding the same content again changes nothing; "
            "a changed file or page replaces its old version."
        )
        with gr.Row():
            kb = gr.Dropdown(
                choices=kb_choices(lab), value=DEFAULT_KB, label="Knowledge base", allow_custom_value=True,
                info="Pick one, or type a new name to create it when you add files.", scale=2,
            )
        uploads = gr.File(label="Documents to add", file_count="multiple", type="filepath", elem_id="kb-upload")
        urls = gr.Textbox(label="Web pages (one URL per line)", value="", lines=2, max_lines=10,
                          placeholder="https://example.com/page", elem_id="kb-urls")
        failed_urls = gr.State(None)  # the lines that failed stay in the box to fix; the rest are cleared
        add = gr.Button("Add to knowledge base", variant="primary", elem_id="kb-add")
        # Progress is drawn here only (not over every output), so the area keeps some height.
        status = gr.Markdown("Choose files or enter web addresses above, then press **Add to knowledge base**.",
                             elem_id="kb-status", min_height=60)
        table = gr.Dataframe(
            headers=FILE_HEADERS, value=file_rows(lab, DEFAULT_KB), interactive=False,
            label="Stored in this knowledge base", elem_id="kb-files",
        )
        with gr.Row():
            to_delete = gr.Dropdown(label="File to delete", choices=[r[0] for r in file_rows(lab, DEFAULT_KB)], scale=3)
            delete = gr.Button("Delete file", variant="stop", scale=1)
        with gr.Accordion("Rename this knowledge base", open=False):
            with gr.Row():
                new_name = gr.Textbox(label="New name", placeholder="letters, digits, '.', '_' or '-'", scale=3)
                rename = gr.Button("Rename", scale=1)

        def refresh(kb_name):
            rows = file_rows(lab, kb_name)
            return (
                gr.update(choices=kb_choices(lab), value=kb_name),
                rows,
                gr.update(choices=[r[0] for r in rows], value=None),
            )

        def add_files(paths, kb_name, url_text="", progress=gr.Progress()):
            # Every line becomes a web address (https:// added if missing), so no line is ever read as a server path.
            addresses = [as_url(line) for line in (url_text or "").splitlines() if line.strip()]
            if not paths and not addresses:
                raise gr.Error("Choose one or more files, or enter web addresses, first.")
            try:
                results = lab.ingest([*(paths or []), *addresses], kb_name, progress=lambda f, m: progress(f, desc=m))
            except LabError as exc:
                raise gr.Error(str(exc)) from None
            lines = [f"**{STATUS_LABEL[r.status]}** · {escape_plain(r.file)}: {escape_plain(r.message)}" for r in results]
            failed = {r.file for r in results if r.status == "failed"}
            return ("\n\n".join(lines), None, *refresh(kb_name), "\n".join(a for a in addresses if a in failed))

        def delete_file(kb_name, name):
            if not name:
                raise gr.Error("Pick a file to delete.")
            try:
                removed = lab.delete_file(kb_name, name)
            except LabError as exc:
                raise gr.Error(str(exc)) from None
            message = f"**Deleted** · {escape_plain(removed['file'])} ({removed['chunks_removed']} chunks)."
            return (message, *refresh(kb_name))

        def rename_kb(kb_name, wanted):
            try:
                renamed = lab.kb_rename(kb_name, wanted)
            except LabError as exc:
                raise gr.Error(str(exc)) from None
            return (f"**Renamed** · {escape_plain(kb_name)} is now {escape_plain(renamed)}.", *refresh(renamed), "")

        # Writes share one queue slot: the store has one writer anyway, and waiting users see their place.
        # The URL box is the last input (optional for API clients); it is refilled through a State, which the API
        # does not show, so /add_files keeps its outputs.
        add.click(add_files, [uploads, kb, urls], [status, uploads, kb, table, to_delete, failed_urls],
                  api_name="add_files", concurrency_id="kb_write", concurrency_limit=1, show_progress_on=[status]
                  ).success(lambda left: left, [failed_urls], [urls], api_visibility="private")
        delete.click(delete_file, [kb, to_delete], [status, kb, table, to_delete],
                     api_name="delete_file", concurrency_id="kb_write", concurrency_limit=1, show_progress_on=[status])
        rename.click(rename_kb, [kb, new_name], [status, kb, table, to_delete, new_name],
                     api_name="rename_kb", concurrency_id="kb_write", concurrency_limit=1, show_progress_on=[status])
        kb.change(lambda name: refresh(name)[1:], [kb], [table, to_delete], api_visibility="private")
        tab.select(refresh, [kb], [kb, table, to_delete], api_visibility="private")

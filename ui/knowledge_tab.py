"""Knowledge base tab: upload documents or give web addresses, watch them being indexed, see and delete what is stored."""
from __future__ import annotations

import gradio as gr

from core.demo import load_demo
from core.documents import page_ranges
from core.lab import Lab
from core.catalog import Chunking
from core.web import as_url
from ui.cancel import CancelFlags
from ui.choices import kb_choices, kb_to_show
from ui.formatting import STATUS_LABEL, escape_plain, user_errors
from ui.workspace import LabOf

FILE_HEADERS = ["File", "Pages", "Chunks", "Read by OCR", "Added"]
PREVIEW_HEADERS = ["#", "Page", "Tokens", "Chunk text"]


def file_rows(lab: Lab | None, kb: str) -> list[list]:
    if not lab or not lab.kbs.exists(kb):
        return []
    return [[f["file"], f["pages"], f["chunks"], page_ranges(f["ocr_pages"]) or ("all" if f["ocr_pages"] else ""),
             f["added"]] for f in lab.kbs.show(kb)["files"]]


def kb_view(lab: Lab, kb_name: str) -> tuple:
    """(knowledge base picker, file table, file picker) showing `kb_name`."""
    rows = file_rows(lab, kb_name)
    return (
        gr.update(choices=kb_choices(lab), value=kb_name),
        rows,
        gr.update(choices=[r[0] for r in rows], value=None),
    )


def chunk_fields(lab: Lab, kb_name: str) -> tuple:
    """The knowledge base's own chunk settings; a name not created yet keeps what the user typed."""
    if not lab.kbs.exists(kb_name):
        return gr.update(), gr.update()
    current = lab.kbs.chunking(kb_name)
    return current.size, current.overlap


def _whole(value) -> int | None:
    return None if value is None or value == "" else int(value)


class KnowledgeHandlers:
    """The tab's event handlers; each works on the Lab of the request it is called with."""

    def __init__(self, lab_of: LabOf):
        self.lab_of = lab_of
        self.cancel_flags = CancelFlags()  # polled by the ingest between embedding batches

    def opened(self, request: gr.Request):
        """A page opened (or refreshed): start on the knowledge base last used."""
        lab = self.lab_of(request)
        shown = kb_to_show(lab)
        return (*kb_view(lab, shown), *chunk_fields(lab, shown))

    def refresh(self, kb_name, request: gr.Request):
        return kb_view(self.lab_of(request), kb_name)

    def files_of(self, name, request: gr.Request):
        return self.refresh(name, request)[1:]

    def picked(self, name, request: gr.Request):
        return (*chunk_fields(self.lab_of(request), name), gr.update(visible=False))

    def load_the_demo(self, train, request: gr.Request, progress=gr.Progress()):
        lab = self.lab_of(request)
        with user_errors():
            done = load_demo(lab.kbs, lab.datasets, lab.training, train=bool(train),
                             progress=lambda f, m: progress(f, desc=m))
        lines = [f"**Demo loaded** into the knowledge base **{done['kb']}** and the dataset "
                 f"**{done['dataset']['name']}** ({done['dataset']['examples']} questions)."]
        if done["job"]:
            lines.append(f"Fine-tuning started (adapter **{done['adapter']}**): follow it in the *Fine-tune* tab.")
        lines.append(f"Now try the *Compare* tab with the knowledge base **{done['kb']}**: "
                     f"*{done['first_question']}*")
        return ("\n\n".join(lines), *kb_view(lab, done["kb"]))

    def add_files(self, paths, kb_name, url_text="", size=None, overlap=None, request: gr.Request = None,
                  progress=gr.Progress()):
        lab = self.lab_of(request)
        # Every line becomes a web address (https:// added if missing), so no line is ever read as a server path.
        addresses = [as_url(line) for line in (url_text or "").splitlines() if line.strip()]
        if not paths and not addresses:
            raise gr.Error("Choose one or more files, or enter web addresses, first.")
        wanted, note = (_whole(size), _whole(overlap)), ""
        if lab.kbs.exists(kb_name):  # an existing knowledge base keeps its settings; Re-index changes them
            current = lab.kbs.chunking(kb_name)
            if wanted != (current.size, current.overlap) and None not in wanted:
                note = (f"\n\nChunk settings unchanged: this knowledge base keeps chunks of {current.size} tokens "
                        f"with overlap {current.overlap}. Use **Re-index** under *Chunk settings* to change them.")
            wanted = (None, None)
        stop = self.cancel_flags.start(request)
        with user_errors():
            results = lab.kbs.ingest([*(paths or []), *addresses], kb_name, progress=lambda f, m: progress(f, desc=m),
                                     chunk_size=wanted[0], chunk_overlap=wanted[1], should_stop=stop.is_set)
        lines = [f"**{STATUS_LABEL[r.status]}** · {escape_plain(r.file)}: {escape_plain(r.message)}" for r in results]
        failed = {r.file for r in results if r.status == "failed"}
        return ("\n\n".join(lines) + note, None, *kb_view(lab, kb_name),
                "\n".join(a for a in addresses if a in failed))

    def cancel_add(self, request: gr.Request):
        return self.cancel_flags.cancel(request, "**Cancelling** · the file being written is finished; the rest "
                                                 "is not added.")

    def delete_file(self, kb_name, name, request: gr.Request):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Pick a file to delete.")
        with user_errors():
            removed = lab.kbs.delete_file(kb_name, name)
        message = f"**Deleted** · {escape_plain(removed['file'])} ({removed['chunks_removed']} chunks)."
        return (message, *kb_view(lab, kb_name))

    def preview_file(self, kb_name, name, request: gr.Request):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Pick a file to preview.")
        with user_errors():
            chunks = lab.kbs.preview(kb_name, name)["chunks"]
        rows = [[i, c["page"] or "–", c["tokens"], c["text"]] for i, c in enumerate(chunks, 1)]
        return gr.update(value=rows, visible=True)

    def configure_kb(self, kb_name, size, overlap, request: gr.Request, progress=gr.Progress()):
        lab = self.lab_of(request)
        with user_errors():
            done = lab.kbs.configure(kb_name, _whole(size), _whole(overlap), progress=lambda f, m: progress(f, desc=m))
        head = (f"**Chunk settings** · {escape_plain(kb_name)}: chunks of {done['chunk_size']} tokens, "
                f"overlap {done['chunk_overlap']}.")
        if not done["results"]:
            head += " Every file already uses them; nothing to re-index."
        lines = [f"**{STATUS_LABEL[r['status']]}** · {escape_plain(r['file'])}: {escape_plain(r['message'])}"
                 for r in done["results"]]
        return ("\n\n".join([head, *lines]), *kb_view(lab, kb_name))

    def delete_whole_kb(self, kb_name, typed, request: gr.Request):
        lab = self.lab_of(request)
        if (typed or "").strip() != kb_name:
            raise gr.Error(f"To delete the knowledge base, type its name ({kb_name}) in the box first.")
        with user_errors():
            lab.kbs.delete(kb_name)
        shown = kb_to_show(lab)
        return (f"**Deleted** · the knowledge base {escape_plain(kb_name)} and all its files.",
                *kb_view(lab, shown), "", *chunk_fields(lab, shown))

    def rename_kb(self, kb_name, wanted, request: gr.Request):
        lab = self.lab_of(request)
        with user_errors():
            renamed = lab.kbs.rename(kb_name, wanted)
        return (f"**Renamed** · {escape_plain(kb_name)} is now {escape_plain(renamed)}.", *kb_view(lab, renamed), "")


def build(lab_of: LabOf):
    first = lab_of.initial
    first_kb = kb_to_show(first)
    handlers = KnowledgeHandlers(lab_of)
    with gr.Tab("1 · Knowledge base", id="kb") as tab:
        gr.Markdown(
            "Add your documents here. They are split into short passages, embedded, and stored on this machine "
            "so the **RAG** answers in the *Compare* tab can quote them. Supported: **PDF** (scanned pages are "
            "read by OCR), **.txt**, **.md**, **.html**, **.docx** (Word), **.xlsx** (Excel), **.pptx** (PowerPoint), "
            "**.csv**, images of text (**.png**, **.jpg**, **.tiff**, read by OCR), a **.zip** of such files (a line for each file in it), and **web pages** by address (their main "
            "text is kept; menus and scripts are dropped). Adding the same content again changes nothing; "
            "a changed file or page replaces its old version."
        )
        with gr.Row():
            demo = gr.Button("New here? Load the demo (a fictional company)", size="sm", scale=2, elem_id="demo-load")
            demo_train = gr.Checkbox(False, label="Also fine-tune on its questions (Quick preset, a few minutes)",
                                     scale=2, elem_id="demo-train")
        with gr.Row():
            kb = gr.Dropdown(
                choices=kb_choices(first), value=first_kb, label="Knowledge base", allow_custom_value=True, elem_id="kb-select",
                info="Pick one, or type a new name to create it when you add files.", scale=2,
            )
        uploads = gr.File(label="Documents to add", file_count="multiple", type="filepath", elem_id="kb-upload")
        urls = gr.Textbox(label="Web pages (one URL per line)", value="", lines=2, max_lines=10,
                          placeholder="https://example.com/page", elem_id="kb-urls")
        failed_urls = gr.State(None)  # the lines that failed stay in the box to fix; the rest are cleared
        with gr.Row():
            add = gr.Button("Add to knowledge base", variant="primary", elem_id="kb-add", scale=4)
            cancel = gr.Button("Cancel", elem_id="kb-cancel", scale=1)
        # Progress is drawn here only (not over every output), so the area keeps some height.
        status = gr.Markdown("Choose files or enter web addresses above, then press **Add to knowledge base**.",
                             elem_id="kb-status", min_height=60)
        first_rows = file_rows(first, first_kb)
        table = gr.Dataframe(
            headers=FILE_HEADERS, value=first_rows, interactive=False,
            label="Stored in this knowledge base", elem_id="kb-files",
        )
        with gr.Row():
            to_delete = gr.Dropdown(label="File", choices=[r[0] for r in first_rows], scale=3,
                                    elem_id="kb-file-pick")
            preview = gr.Button("Preview chunks", scale=1, elem_id="kb-preview-button")
            delete = gr.Button("Delete file", variant="stop", scale=1)
        preview_table = gr.Dataframe(headers=PREVIEW_HEADERS, interactive=False, wrap=True, visible=False,
                                     label="What the model reads from this file: its chunks, in order",
                                     elem_id="kb-preview")
        defaults = lab_of.workspaces.settings
        chunking = first.kbs.chunking(first_kb) if first else Chunking(defaults.chunk_size, defaults.chunk_overlap)
        with gr.Accordion("Chunk settings", open=False):
            gr.Markdown(
                "Documents are cut into **chunks** of about this many tokens; RAG gives the model the best few. "
                "Smaller chunks are more precise but carry less context; **overlap** repeats the end of one chunk "
                "at the start of the next, so a sentence cut in two is still found. A new knowledge base takes "
                "these values when you first add files; for an existing one, **Re-index** rebuilds every file "
                "with them (from the text stored when it was added)."
            )
            with gr.Row():
                chunk_size = gr.Number(value=chunking.size, label="Chunk size (tokens)", precision=0, minimum=16,
                                       elem_id="kb-chunk-size")
                chunk_overlap = gr.Number(value=chunking.overlap, label="Overlap (tokens)", precision=0, minimum=0,
                                          elem_id="kb-chunk-overlap")
                reindex = gr.Button("Re-index with these settings", elem_id="kb-reindex")
        with gr.Accordion("Rename or delete this knowledge base", open=False):
            with gr.Row():
                new_name = gr.Textbox(label="New name", placeholder="letters, digits, '.', '_' or '-'", scale=3)
                rename = gr.Button("Rename", scale=1)
            with gr.Row():
                confirm_name = gr.Textbox(label="To delete it with all its files, type its name", scale=3,
                                          elem_id="kb-delete-confirm")
                delete_kb = gr.Button("Delete knowledge base", variant="stop", scale=1, elem_id="kb-delete")

        # Writes share one queue slot: the store has one writer anyway, and waiting users see their place.
        write = dict(concurrency_id="kb_write", concurrency_limit=1, show_progress_on=[status])
        # The URL box is the last input (optional for API clients); it is refilled through a State, which the API
        # does not show, so /add_files keeps its outputs.
        add.click(handlers.add_files, [uploads, kb, urls, chunk_size, chunk_overlap],
                  [status, uploads, kb, table, to_delete, failed_urls], api_name="add_files", **write
                  ).success(lambda left: left, [failed_urls], [urls], api_visibility="private")
        # Not in the write queue: it must run while an Add holds it.
        cancel.click(handlers.cancel_add, None, [status], api_name="cancel_add")
        delete.click(handlers.delete_file, [kb, to_delete], [status, kb, table, to_delete],
                     api_name="delete_file", **write)
        rename.click(handlers.rename_kb, [kb, new_name], [status, kb, table, to_delete, new_name],
                     api_name="rename_kb", **write)
        reindex.click(handlers.configure_kb, [kb, chunk_size, chunk_overlap], [status, kb, table, to_delete],
                      api_name="configure_kb", **write)
        delete_kb.click(handlers.delete_whole_kb, [kb, confirm_name],
                        [status, kb, table, to_delete, confirm_name, chunk_size, chunk_overlap],
                        api_name="delete_kb", **write)
        demo.click(handlers.load_the_demo, [demo_train], [status, kb, table, to_delete], api_name="load_demo", **write)
        preview.click(handlers.preview_file, [kb, to_delete], [preview_table], api_name="preview_file")
        # The chunk fields follow the user's own picks only (input, not change): a late reply to a programmatic
        # change (the tab's refresh) would otherwise overwrite values just typed for a new knowledge base.
        kb.change(handlers.files_of, [kb], [table, to_delete], api_visibility="private")
        kb.input(handlers.picked, [kb], [chunk_size, chunk_overlap, preview_table], api_visibility="private")
        tab.select(handlers.refresh, [kb], [kb, table, to_delete], api_visibility="private")
    return handlers.opened, None, [kb, table, to_delete, chunk_size, chunk_overlap]

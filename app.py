"""RAG & Fine-Tune Lab: composes the tabs and launches. All the work happens in `core`."""
import os
import threading

import core  # noqa: F401 - sets the offline/telemetry environment before gradio is imported
import gradio as gr

from core.answers import warm_up
from core.workspaces import Workspaces, demo_mode_from_env
from ui import compare_tab, evaluate_tab, finetune_tab, knowledge_tab, models_panel, study_tab
from ui.workspace import COOKIE_SCRIPT, LabOf

DEMO_NOTE = ("**Demo mode:** your knowledge bases, datasets, adapters and votes are yours alone and are deleted "
             "after {hours:g} hours without use. Files up to {mb} MB, fine-tunes up to {minutes:g} minutes, "
             "{questions} evaluation questions at a time. Run the app on your own machine for no limits.")


def build_app(workspaces: Workspaces) -> gr.Blocks:
    lab_of = LabOf(workspaces)
    # Uploads and exports pile up in Gradio's cache; on a public Space, files older than 2 h go (checked hourly).
    with gr.Blocks(title="RAG & Fine-Tune Lab", delete_cache=(3600, 7200) if workspaces.demo else None) as demo:
        gr.Markdown(
            "# RAG & Fine-Tune Lab\n"
            "For your documents: should you use **RAG**, **fine-tuning**, or both? Run the whole study in one click, or go step by step: add documents, fine-tune on Q&A, compare answers, then evaluate."
        )
        model_panel = models_panel.build(lab_of)
        if workspaces.demo:
            limits = workspaces.limits
            gr.Markdown(DEMO_NOTE.format(hours=limits.idle_minutes / 60, mb=limits.max_file_mb,
                                         minutes=limits.max_train_minutes, questions=limits.max_eval_questions),
                        elem_id="demo-note")
        with gr.Tabs():
            # The study first: a new user can run the whole experiment from the first screen.
            opened = [model_panel, study_tab.build(lab_of), knowledge_tab.build(lab_of), finetune_tab.build(lab_of),
                      compare_tab.build(lab_of), evaluate_tab.build(lab_of)]
        # Each time a page opens, the tabs show the visitor's own data: the page is built once at start-up (in demo
        # mode, empty), and knowledge bases made since (or a returning visitor's) should be there, the last used
        # one picked.
        ready = gr.HTML("", elem_id="page-ready", container=False, padding=False)
        event = None
        for fn, inputs, outputs in filter(None, opened):  # one after another, then the page says it is ready
            event = (event.then if event else demo.load)(fn, inputs, outputs, api_visibility="private")
        event.then(lambda: '<span data-ready="1"></span>', None, [ready], api_visibility="private")
    return demo


def main() -> None:
    demo_mode = demo_mode_from_env(os.environ)
    workspaces = Workspaces(demo=demo_mode)
    if workspaces.shared:  # a study whose process died with the machine (or a hard stop) goes on where it stopped
        workspaces.shared.studies.resume_interrupted()
    demo = build_app(workspaces)
    # Load both models in the background so the first question does not wait for them.
    threading.Thread(target=warm_up, args=(workspaces.settings,), daemon=True).start()
    demo.queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        show_error=True,
        head=COOKIE_SCRIPT if demo_mode else None,
        # Oversized uploads are refused by the server before they are stored.
        max_file_size=f"{workspaces.limits.max_file_mb}mb" if demo_mode else None,
    )


if __name__ == "__main__":
    main()

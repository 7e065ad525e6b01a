"""RAG & Fine-Tune Lab: composes the tabs and launches. All the work happens in `core`."""
import os
import threading

import core  # noqa: F401 - sets the offline/telemetry environment before gradio is imported
import gradio as gr

from core.lab import Lab
from ui import compare_tab, evaluate_tab, finetune_tab, knowledge_tab


def build_app(lab: Lab | None = None) -> gr.Blocks:
    lab = lab or Lab()
    info = lab.info()
    with gr.Blocks(title="RAG & Fine-Tune Lab") as demo:
        gr.Markdown(
            "# RAG & Fine-Tune Lab\n"
            "For your documents: should you use **RAG**, **fine-tuning**, or both? Add documents, fine-tune on Q&A, compare answers, then evaluate.\n\n"
            f"<sub>Model: **{info['base_model']}** · Embeddings: **{info['embed_model']}** · "
            f"Device: **{info['device'].upper()}** · Data: `{info['data_dir']}`</sub>"
        )
        with gr.Tabs():
            knowledge_tab.build(lab)
            finetune_tab.build(lab)
            compare_tab.build(lab)
            evaluate_tab.build(lab)
    return demo


def main() -> None:
    lab = Lab(background_indexing=True)
    demo = build_app(lab)
    # Load both models in the background so the first question does not wait for them.
    threading.Thread(target=lab.warm_up, daemon=True).start()
    demo.queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        show_error=True,
    )


if __name__ == "__main__":
    main()

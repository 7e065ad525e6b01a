"""Compare tab: one question, the base model and RAG answering side by side, streaming, with sources."""
from __future__ import annotations

import gradio as gr

from core.errors import LabError
from core.generation import GenerationConfig
from core.lab import Lab
from core.store import DEFAULT_KB
from ui.formatting import SOURCES_HEADERS, SOURCES_TYPES, escape, sources_rows, timing_line
from ui.knowledge_tab import kb_choices

COLUMNS = ("base", "rag")


def build(lab: Lab) -> None:
    with gr.Tab("2 · Compare", id="compare") as tab:
        gr.Markdown(
            "Ask a question about your documents. The **base model** answers from what it already knows; "
            "**RAG** first finds the most relevant passages in your knowledge base and answers from them. "
            "Compare the two to see what your documents add."
        )
        question = gr.Textbox(label="Your question", placeholder="e.g. What does the handbook say about paid leave?",
                              lines=2, elem_id="question")
        with gr.Row():
            # allow_custom_value: knowledge bases created after start-up (or by API clients) must be accepted;
            # the engine reports an unknown name clearly.
            kb = gr.Dropdown(choices=kb_choices(lab), value=DEFAULT_KB, label="Knowledge base (for RAG)",
                             allow_custom_value=True, scale=2)
            top_k = gr.Slider(1, 10, value=lab.settings.top_k, step=1, label="Passages to retrieve (top-k)",
                              info="More passages give RAG more context but a longer, slower prompt.", scale=2)
            max_tokens = gr.Slider(16, 512, value=lab.settings.max_new_tokens, step=16, label="Max answer length (tokens)",
                                   info="Longer answers take longer to generate.", scale=2)
        ask = gr.Button("Ask both", variant="primary", elem_id="ask")
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Markdown("### Base model\n*The model alone — it has not read your documents.*")
                base_answer = gr.Markdown(elem_id="answer-base", min_height=80)
                base_stats = gr.Markdown(elem_id="stats-base")
            with gr.Column():
                gr.Markdown("### RAG\n*The same model, reading passages from your knowledge base.*")
                rag_answer = gr.Markdown(elem_id="answer-rag", min_height=80)
                rag_stats = gr.Markdown(elem_id="stats-rag")
        sources = gr.Dataframe(headers=SOURCES_HEADERS, datatype=SOURCES_TYPES, interactive=False, wrap=True, elem_id="sources",
                               label="Sources the RAG answer read (score: cosine similarity, 1 is identical; found by meaning "
                                     "(vector) and/or by shared words (keyword); the question's words are highlighted)")

        def answer(q, kb_name, k, max_new):
            if not (q or "").strip():
                raise gr.Error("Type a question first.")
            texts = {name: "" for name in COLUMNS}
            stats = {name: "" for name in COLUMNS}
            rows: list[list] = []
            config = GenerationConfig(max_new_tokens=int(max_new))
            try:
                for event in lab.ask_stream(q, list(COLUMNS), kb=kb_name, top_k=int(k), config=config):
                    if event.kind == "delta":
                        texts[event.variant] += event.text
                    elif event.kind == "sources":
                        rows = sources_rows(event.answer.sources)
                        stats[event.variant] = "retrieved passages, generating…"
                    elif event.kind == "done":
                        texts[event.variant] = event.answer.answer
                        stats[event.variant] = timing_line(event.answer.timings)
                    elif event.kind == "error":
                        texts[event.variant] = f"Could not answer: {event.text}"
                    yield (escape(texts["base"]), stats["base"], escape(texts["rag"]), stats["rag"], rows)
            except LabError as exc:
                raise gr.Error(str(exc)) from None

        outputs = [base_answer, base_stats, rag_answer, rag_stats, sources]
        # Button and Enter share one queue slot: the model generates one batch at a time.
        ask.click(answer, [question, kb, top_k, max_tokens], outputs, api_name="ask",
                  concurrency_id="generate", concurrency_limit=1)
        question.submit(answer, [question, kb, top_k, max_tokens], outputs, api_visibility="private",
                        concurrency_id="generate", concurrency_limit=1)
        tab.select(lambda current: gr.update(choices=kb_choices(lab), value=current), [kb], [kb],
                   api_visibility="private")

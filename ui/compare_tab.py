"""Compare tab: one question, the base model, RAG and (with an adapter) the fine-tuned variants answering side by
side, streaming, with sources."""
from __future__ import annotations

import gradio as gr

from core.errors import LabError
from core.generation import GenerationConfig
from core.lab import Lab
from core.store import DEFAULT_KB
from ui.formatting import SOURCES_HEADERS, SOURCES_TYPES, escape, sources_rows, timing_line
from ui.knowledge_tab import kb_choices

COLUMNS = ("base", "rag", "finetuned", "finetuned+rag")
NEEDS_ADAPTER = "Pick a fine-tuned adapter above to see this column (train one in the Fine-tune tab)."


def build(lab: Lab) -> None:
    with gr.Tab("3 · Compare", id="compare") as tab:
        gr.Markdown(
            "Ask a question about your documents. The **base model** answers from what it already knows; "
            "**RAG** first finds the most relevant passages in your knowledge base and answers from them; "
            "**Fine-tuned** uses an adapter trained on your Q&A, and **Fine-tuned + RAG** does both. "
            "Compare them to see what your documents and your training add."
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
            adapter = gr.Dropdown(choices=lab.adapters.names(), value=None, label="Fine-tuned adapter",
                                  info="Optional: adds the two fine-tuned columns.", allow_custom_value=True,
                                  elem_id="compare-adapter", scale=2)
        ask = gr.Button("Ask", variant="primary", elem_id="ask")
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Markdown("### Base model\n*The model alone — it has not read your documents.*")
                base_answer = gr.Markdown(elem_id="answer-base", min_height=80)
                base_stats = gr.Markdown(elem_id="stats-base")
            with gr.Column():
                gr.Markdown("### RAG\n*The same model, reading passages from your knowledge base.*")
                rag_answer = gr.Markdown(elem_id="answer-rag", min_height=80)
                rag_stats = gr.Markdown(elem_id="stats-rag")
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Markdown("### Fine-tuned\n*The model with your adapter, without your documents.*")
                ft_answer = gr.Markdown(elem_id="answer-finetuned", min_height=80)
                ft_stats = gr.Markdown(elem_id="stats-finetuned")
            with gr.Column():
                gr.Markdown("### Fine-tuned + RAG\n*Your adapter, reading the same passages as RAG.*")
                ftrag_answer = gr.Markdown(elem_id="answer-finetuned-rag", min_height=80)
                ftrag_stats = gr.Markdown(elem_id="stats-finetuned-rag")
        sources = gr.Dataframe(headers=SOURCES_HEADERS, datatype=SOURCES_TYPES, interactive=False, wrap=True, elem_id="sources",
                               label="Sources the RAG answer read (score: cosine similarity, 1 is identical; found by meaning "
                                     "(vector) and/or by shared words (keyword); the question's words are highlighted)")

        def answer(q, kb_name, k, max_new, adapter_name=None):
            if not (q or "").strip():
                raise gr.Error("Type a question first.")
            chosen = [v for v in COLUMNS if adapter_name or not v.startswith("finetuned")]
            texts = {name: "" if name in chosen else NEEDS_ADAPTER for name in COLUMNS}
            stats = {name: "" for name in COLUMNS}
            rows: list[list] = []
            config = GenerationConfig(max_new_tokens=int(max_new))

            def view():
                return (*(x for name in COLUMNS for x in (escape(texts[name]), stats[name])), rows)

            try:
                for event in lab.ask_stream(q, chosen, kb=kb_name, top_k=int(k), config=config,
                                            adapter=adapter_name or None):
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
                    yield view()
            except LabError as exc:
                raise gr.Error(str(exc)) from None

        outputs = [base_answer, base_stats, rag_answer, rag_stats, ft_answer, ft_stats, ftrag_answer, ftrag_stats, sources]
        inputs = [question, kb, top_k, max_tokens, adapter]
        # Button and Enter share one queue slot: the model generates one batch at a time.
        ask.click(answer, inputs, outputs, api_name="ask", concurrency_id="generate", concurrency_limit=1)
        question.submit(answer, inputs, outputs, api_visibility="private",
                        concurrency_id="generate", concurrency_limit=1)
        # Choices only for the adapter: a late reply must not put back a value the user has changed meanwhile.
        tab.select(lambda current: (gr.update(choices=kb_choices(lab), value=current),
                                    gr.update(choices=lab.adapters.names())),
                   [kb], [kb, adapter], api_visibility="private")

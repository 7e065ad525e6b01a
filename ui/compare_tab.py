"""Compare tab: up to four columns (base, fine-tuned, RAG, fine-tuned + RAG) answering side by side, streaming,
each keeping its own conversation; blind mode and votes; the leaderboard and exports. The session logic is
core.arena.ArenaSession; this module only lays it out (`build`) and connects it (`CompareHandlers`)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from core.arena import COLUMN_ORDER, ArenaSession
from core.generation import GenerationConfig
from core.lab import Lab
from core.variants import VARIANTS
from core.votes import ALL_BAD, TIE
from ui.choices import adapter_choices, kb_choices, kb_to_show
from ui.formatting import escape, sources_html, timing_line, user_errors
from ui.workspace import LabOf

SLOTS = len(COLUMN_ORDER)
SIMULTANEOUS_QUESTIONS = 8  # measured with bench/bench_visitors.py (docs/BENCHMARKS.md)
# The fine-tuned columns need an adapter: they are switched on when one is picked, not before.
FIRST_COLUMNS = [v for v in COLUMN_ORDER if not VARIANTS[v].uses_adapter]
COLUMN_CHOICES = [(VARIANTS[v].label, v) for v in COLUMN_ORDER]
LEADERBOARD_HEADERS = ["Variant", "Win rate", "Wins", "Ties", "All bad", "Votes"]
SETTING_HINTS = {
    "temperature": "0 always picks the likeliest word, so the same question gets the same answer. "
                   "Higher values give more varied (and more often wrong) answers.",
    "top_p": "Only used when temperature is above 0: sample only from the likeliest words that together "
             "make up this share of the probability.",
    "read_passages": "Of the passages retrieved, how many the model is shown, best first (ranked by their "
                     "sentence nearest the question). 0: as suits the model (one for models under 1B parameters, "
                     "which read one passage better than several).",
    "min_relevance": "When no retrieved sentence is at least this similar to the question, the RAG columns say "
                     "your documents do not seem to answer it instead of guessing. 0 turns this off.",
    "system_prompt": "Optional instructions given to every column. Empty: RAG uses its own (answer from the "
                     "passages and cite them).",
}


def leaderboard_rows(lab: Lab | None, kb: str | None) -> list[list]:
    if lab is None:
        return []
    return [[VARIANTS[r["variant"]].label, f"{r['win_rate']:.0%}", r["wins"], r["ties"], r["all_bad"], r["votes"]]
            for r in lab.votes.leaderboard(kb or None)]


def _export_dir() -> Path:
    # Gradio serves files only from allowed places; the system temp folder is one.
    return Path(tempfile.mkdtemp(prefix="lab-export-"))


def generation_settings(k, max_new, temp, p, loop_stop=True) -> tuple[GenerationConfig, int]:
    return GenerationConfig(max_new_tokens=int(max_new), temperature=float(temp), top_p=float(p),
                            stop_loops=bool(loop_stop)), int(k)


def reading_settings(read, relevance) -> dict:
    """The Compare tab's reading knobs as Answers.ask_stream's overrides (None: the settings' default)."""
    return {"read_passages": None if read is None else int(read),
            "min_relevance": None if relevance is None else float(relevance)}


def view(state: ArenaSession, status: str = ""):
    """Every slot's content from the session (a hidden slot when fewer columns are on), in the order of the
    events' outputs: the session, each slot's seven parts, the tie and all-bad buttons, the vote status."""
    updates = []
    for i in range(SLOTS):
        variant = state.order[i] if i < len(state.order) else None
        if variant is None:
            updates += [gr.update(visible=False), "", [], "", "", gr.update(interactive=False),
                        gr.update(interactive=False)]
            continue
        col = state.columns[variant]
        shown = not state.blind or state.revealed  # timings and passages would give a blind column away
        stats = timing_line(col.timings) if shown else ("answered" if col.timings else "")
        if col.note and stats:
            stats += f" · {col.note}"
        updates += [
            gr.update(visible=True),
            f"### {state.title(variant)}" + ("" if state.blind else f"\n*{VARIANTS[variant].description}*"),
            [{"role": m["role"], "content": escape(m["content"])} for m in col.messages],
            stats,
            sources_html(col.sources) if shown else "",
            gr.update(interactive=state.turn is not None),
            gr.update(interactive=state.can_vote and bool(col.timings) and not col.error),
        ]
    can_vote = state.can_vote
    return (state, *updates, gr.update(interactive=can_vote), gr.update(interactive=can_vote), status)


def comparison_file(state: ArenaSession, fmt: str) -> str:
    with user_errors():
        comparison = state.comparison()
    path = _export_dir() / f"comparison-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
    path.write_text(comparison.to_markdown() if fmt == "md" else comparison.to_json(), encoding="utf-8")
    return str(path)


class CompareHandlers:
    """The tab's events. Each finds the visitor's Lab from its request; parameter names are what API clients see."""

    def __init__(self, lab_of: LabOf):
        self.lab_of = lab_of

    def answer(self, state: ArenaSession, q, kb_name, adapter_name, chosen, is_blind, k, max_new, temp, p, system,
               read=None, relevance=None, loop_stop=True, request: gr.Request = None):
        config, k = generation_settings(k, max_new, temp, p, loop_stop)
        with user_errors():
            lab = self.lab_of(request)
            events = state.ask(lab.answers, lab.quota, q, list(chosen or []), config, kb=kb_name,
                               adapter=adapter_name or None, top_k=k, system_prompt=system, blind=bool(is_blind),
                               **reading_settings(read, relevance))
            yield view(state, "Answering…")
            for _ in events:
                yield view(state, "Answering…")
        note = "Which answer is best? Vote below." if state.can_vote else ""
        yield view(state, note)

    def answer_again(self, slot: int, state: ArenaSession, kb_name, adapter_name, k, max_new, temp, p, system,
                     read=None, relevance=None, loop_stop=True, request: gr.Request = None):
        """The column in `slot` answers the latest question again."""
        if slot >= len(state.order):
            raise gr.Error("This column is not in use.")
        config, k = generation_settings(k, max_new, temp, p, loop_stop)
        with user_errors():
            lab = self.lab_of(request)
            for _ in state.ask_again(lab.answers, lab.quota, state.order[slot], config, kb=kb_name,
                                     adapter=adapter_name or None, top_k=k, system_prompt=system,
                                     **reading_settings(read, relevance)):
                yield view(state, "Answering again…")
        yield view(state, "Which answer is best now? Vote below." if state.can_vote else "")

    def vote_best(self, slot: int, state: ArenaSession, note, kb_name, request: gr.Request):
        """A vote for the column in `slot`."""
        return self._vote(state.order[slot], state, note, kb_name, request)

    def vote_tie(self, state: ArenaSession, note, kb_name, request: gr.Request):
        return self._vote(TIE, state, note, kb_name, request)

    def vote_all_bad(self, state: ArenaSession, note, kb_name, request: gr.Request):
        return self._vote(ALL_BAD, state, note, kb_name, request)

    def _vote(self, choice: str, state: ArenaSession, note, kb_name, request: gr.Request):
        lab = self.lab_of(request)
        with user_errors():
            state.vote(lab.votes, choice, note)
        picked = {TIE: "a tie", ALL_BAD: "all answers bad"}.get(choice) or f"**{state.title(choice)}** best"
        return (*view(state, f"Vote saved: {picked}."), "", leaderboard_rows(lab, kb_name))

    def clear_all(self, state: ArenaSession, chosen, is_blind):
        state.clear()
        return self.rearrange(state, chosen, is_blind)

    def adapter_picked(self, state: ArenaSession, chosen, is_blind, adapter_name):
        """Picking an adapter switches the two fine-tuned columns on (they need one)."""
        chosen = list(chosen or [])
        if adapter_name:
            chosen = [v for v in COLUMN_ORDER if v in chosen or VARIANTS[v].uses_adapter]
        return (gr.update(value=chosen), *self.rearrange(state, chosen, is_blind))

    def opened(self, request: gr.Request):
        """A page opened (or refreshed): start on the knowledge base last used."""
        lab = self.lab_of(request)
        shown = kb_to_show(lab)
        return (gr.update(choices=kb_choices(lab), value=shown), gr.update(choices=adapter_choices(lab, matching=True)),
                leaderboard_rows(lab, shown))

    def rearrange(self, state: ArenaSession, chosen, is_blind):
        """Show the switched-on columns now (in blind mode: shuffled, named A-D)."""
        if not chosen:
            state.order = []
            return view(state, "Switch on at least one column.")
        state.arrange(list(chosen), bool(is_blind))
        return view(state, "")

    def write_votes(self, kb_name, request: gr.Request):
        lab = self.lab_of(request)
        path = _export_dir() / f"preferences-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        with user_errors():
            result = lab.votes.export(path, "dpo", kb=kb_name or None)
        gr.Info(f"{result['rows']} preference pairs from the votes on {kb_name}.")
        return str(path)

    def write_markdown(self, state: ArenaSession):
        return comparison_file(state, "md")

    def write_json(self, state: ArenaSession):
        return comparison_file(state, "json")

    def board(self, name, request: gr.Request):
        return leaderboard_rows(self.lab_of(request), name)

    def refresh(self, current, request: gr.Request):
        # Choices only for the adapter: a late reply must not put back a value the user has changed meanwhile.
        lab = self.lab_of(request)
        return (gr.update(choices=kb_choices(lab), value=current), gr.update(choices=adapter_choices(lab, matching=True)),
                leaderboard_rows(lab, current))


class ColumnHandlers:
    """One column's buttons. Bound methods rather than functools.partial: Gradio finds the `gr.Request`
    parameter through the type hints, which a partial object hides."""

    def __init__(self, handlers: CompareHandlers, slot: int):
        self.handlers, self.slot = handlers, slot

    def answer_again(self, state: ArenaSession, kb_name, adapter_name, k, max_new, temp, p, system, read=None,
                     relevance=None, loop_stop=True, request: gr.Request = None):
        yield from self.handlers.answer_again(self.slot, state, kb_name, adapter_name, k, max_new, temp, p, system,
                                              read, relevance, loop_stop, request)

    def vote_best(self, state: ArenaSession, note, kb_name, request: gr.Request):
        return self.handlers.vote_best(self.slot, state, note, kb_name, request)


def build(lab_of: LabOf):
    first, defaults = lab_of.initial, lab_of.workspaces.settings
    handlers = CompareHandlers(lab_of)
    with gr.Tab("3 · Compare", id="compare") as tab:
        gr.Markdown(
            "Ask a question about your documents. The **base model** answers from what it already knows; "
            "**Fine-tuned** uses an adapter trained on your Q&A; **RAG** first finds the most relevant passages in "
            "your knowledge base and answers from them; **Fine-tuned + RAG** does both. Each column keeps its own "
            "conversation. Vote for the best answer to build a leaderboard and preference data for training."
        )
        session = gr.State(ArenaSession())
        question = gr.Textbox(label="Your question", placeholder="e.g. What does the handbook say about paid leave?",
                              lines=2, elem_id="question")
        with gr.Row():
            # allow_custom_value: knowledge bases and adapters made after start-up (or by API clients) must be
            # accepted; the engine reports an unknown name clearly.
            kb = gr.Dropdown(choices=kb_choices(first), value=kb_to_show(first), label="Knowledge base (for RAG)",
                             allow_custom_value=True, elem_id="compare-kb", scale=2)
            adapter = gr.Dropdown(choices=adapter_choices(first, matching=True), value=None, label="Fine-tuned adapter",
                                  info="Picking one switches on the two fine-tuned columns.",
                                  allow_custom_value=True,
                                  elem_id="compare-adapter", scale=2)
            columns = gr.CheckboxGroup(COLUMN_CHOICES, value=FIRST_COLUMNS, label="Columns",
                                       info="Switch off what you do not want to compare.", elem_id="columns", scale=3)
            blind = gr.Checkbox(value=False, label="Blind mode",
                                info="Shuffled columns named A-D; the names show after you vote.",
                                elem_id="blind", scale=1)
        with gr.Accordion("Generation settings (shared by all columns)", open=False):
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=0.0, step=0.05, label="Temperature",
                                        info=SETTING_HINTS["temperature"])
                top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", info=SETTING_HINTS["top_p"])
            with gr.Row():
                max_tokens = gr.Slider(16, 512, value=defaults.max_new_tokens, step=16,
                                       label="Max answer length (tokens)", info="Longer answers take longer.",
                                       elem_id="max-tokens")
                top_k = gr.Slider(1, 10, value=defaults.top_k, step=1, label="Passages to retrieve (top-k)",
                                  info="More passages give RAG more context but a longer, slower prompt.")
            with gr.Row():
                read_passages = gr.Slider(0, 10, value=defaults.read_passages, step=1,
                                          label="Passages the model reads", info=SETTING_HINTS["read_passages"],
                                          elem_id="read-passages")
                min_relevance = gr.Slider(0, 1, value=defaults.min_relevance, step=0.05,
                                          label="'Not in your documents' below", info=SETTING_HINTS["min_relevance"],
                                          elem_id="min-relevance")
            loop_stop = gr.Checkbox(value=True, label="Stop answers that repeat themselves",
                                    info="An answer going round in circles stops where the repetition began.",
                                    elem_id="loop-stop")
            system_prompt = gr.Textbox(label="System prompt", lines=2, info=SETTING_HINTS["system_prompt"])
        with gr.Row():
            ask = gr.Button("Ask", variant="primary", elem_id="ask", scale=3)
            clear = gr.Button("Clear conversations", elem_id="clear", scale=1)

        slots = []
        with gr.Row(equal_height=False):
            for i in range(SLOTS):
                with gr.Column(min_width=280, visible=i < len(FIRST_COLUMNS)) as column:
                    variant = VARIANTS[FIRST_COLUMNS[i if i < len(FIRST_COLUMNS) else 0]]
                    header = gr.Markdown(f"### {variant.label}\n*{variant.description}*", elem_id=f"header-{i}")
                    chat = gr.Chatbot(elem_id=f"chat-{i}", height=360, show_label=False, feedback_options=None,
                                      buttons=["copy_all"], placeholder="Answers appear here.")
                    stats = gr.Markdown(elem_id=f"stats-{i}")
                    sources = gr.HTML(elem_id=f"sources-{i}", js_on_load=None)
                    with gr.Row():
                        again = gr.Button("Ask again", size="sm", elem_id=f"again-{i}", interactive=False)
                        best = gr.Button("This one is best", size="sm", elem_id=f"best-{i}", interactive=False)
                slots.append(dict(column=column, header=header, chat=chat, stats=stats, sources=sources,
                                  again=again, best=best))
        with gr.Row():
            tie = gr.Button("It's a tie", size="sm", elem_id="vote-tie", interactive=False)
            all_bad = gr.Button("All are bad", size="sm", elem_id="vote-all-bad", interactive=False)
            comment = gr.Textbox(placeholder="Optional comment on your vote", show_label=False, scale=3,
                                 elem_id="vote-comment")
        vote_status = gr.Markdown(elem_id="vote-status")

        with gr.Accordion("Leaderboard and exports", open=False):
            leaderboard = gr.Dataframe(headers=LEADERBOARD_HEADERS, value=leaderboard_rows(first, kb_to_show(first)),
                                       interactive=False, elem_id="leaderboard",
                                       label="Votes on this knowledge base (win rate: wins / votes it was in)")
            with gr.Row():
                export_votes = gr.Button("Export preference data (DPO JSONL)", elem_id="export-votes")
                export_md = gr.Button("Export this comparison (Markdown)", elem_id="export-md")
                export_json = gr.Button("Export this comparison (JSON)", elem_id="export-json")
            export_file = gr.File(label="Exported file", interactive=False, elem_id="export-file")

    # ---- wiring: the order of inputs and outputs is the API's (clients call positionally) ----------------------
    slot_outputs = [c for s in slots for c in (s["column"], s["header"], s["chat"], s["stats"], s["sources"],
                                               s["again"], s["best"])]
    outputs = [session, *slot_outputs, tie, all_bad, vote_status]
    reading = [read_passages, min_relevance, loop_stop]  # last, so clients of the older API keep working
    inputs = [session, question, kb, adapter, columns, blind, top_k, max_tokens, temperature, top_p, system_prompt,
              *reading]
    again_inputs = [session, kb, adapter, top_k, max_tokens, temperature, top_p, system_prompt, *reading]
    vote_inputs, vote_outputs = [session, comment, kb], [*outputs, comment, leaderboard]
    # Visitors' questions run at the same time: their rows join the model's one decode batch (core.generation),
    # so eight cost little more than one; a ninth sees its place in the queue.
    busy = dict(concurrency_id="answer", concurrency_limit=SIMULTANEOUS_QUESTIONS)
    ask.click(handlers.answer, inputs, outputs, api_name="ask", **busy)
    question.submit(handlers.answer, inputs, outputs, api_visibility="private", **busy)
    for i, s in enumerate(slots):
        per_column = ColumnHandlers(handlers, i)
        s["again"].click(per_column.answer_again, again_inputs, outputs, api_name=f"ask_again_{i}", **busy)
        s["best"].click(per_column.vote_best, vote_inputs, vote_outputs, api_name=f"vote_best_{i}")
    tie.click(handlers.vote_tie, vote_inputs, vote_outputs, api_name="vote_tie")
    all_bad.click(handlers.vote_all_bad, vote_inputs, vote_outputs, api_name="vote_all_bad")
    clear.click(handlers.clear_all, [session, columns, blind], outputs, api_name="clear")
    columns.input(handlers.rearrange, [session, columns, blind], outputs, api_visibility="private")
    blind.input(handlers.rearrange, [session, columns, blind], outputs, api_visibility="private")
    adapter.input(handlers.adapter_picked, [session, columns, blind, adapter], [columns, *outputs],
                  api_visibility="private")

    export_votes.click(handlers.write_votes, [kb], [export_file], api_name="export_votes")
    export_md.click(handlers.write_markdown, [session], [export_file], api_name="export_md")
    export_json.click(handlers.write_json, [session], [export_file], api_name="export_json")

    kb.change(handlers.board, [kb], [leaderboard], api_visibility="private")
    tab.select(handlers.refresh, [kb], [kb, adapter, leaderboard], api_visibility="private")
    return handlers.opened, None, [kb, adapter, leaderboard]

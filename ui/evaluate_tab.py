"""Evaluate tab: run the variants on held-out questions, see who wins with intervals, a chart, every answer, and
a plain-language verdict; reopen and export past runs. The work is core.evaluation's; this module lays it out
(`build`) and connects it (`EvaluateHandlers`)."""
from __future__ import annotations

import tempfile
from contextlib import closing
from pathlib import Path

import gradio as gr

from core.advisor import QUESTIONS, Situation
from core.eval_store import export
from core.lab import Lab
from core.variants import VARIANTS
from core.verdict import headline_metric, verdict
from ui.cancel import CancelFlags
from ui.choices import adapter_choices, dataset_choices, kb_choices, kb_to_show, run_ids
from ui.formatting import escape_plain, user_errors
from ui.workspace import LabOf

FROM_DATASET, FROM_FILE = "A dataset's held-out questions", "A Q&A file"
FROM_KB = "New questions generated from the knowledge base"
VARIANT_CHOICES = [(VARIANTS[v].label, v) for v in ("base", "finetuned", "rag", "finetuned+rag")]
SUMMARY_HEADERS = ["Variant", "Score [95% interval]", "Token F1", "ROUGE-L", "chrF", "Grounded", "Hit@k", "MRR",
                   "ms / answer", "Errors"]
METRIC_NOTE = (
    "**Score** is yes/no/maybe accuracy for yes/no/maybe questions, otherwise the share of answers that contain the "
    "gold answer. Token F1 is after taking the answer's final sentence. chrF is shown instead of BLEU: BLEU counts "
    "4-word sequences, so it is near 0 for right answers to short questions. Grounded: share of the answer's words "
    "found in the passages it read. Hit@k / MRR: whether (and how high) the question's own source was retrieved.")


def summary_rows(run: dict) -> list[list]:
    def mean(s, metric):
        return round(s[metric]["mean"], 3) if metric in s else "–"

    rows = []
    for variant, s in (run.get("summary") or {}).items():
        head = s.get(headline_metric(run))
        score = f"{head['mean']:.1%} [{head['low']:.0%}-{head['high']:.0%}]" if head else "–"
        rows.append([VARIANTS[variant].label, score, mean(s, "f1"), mean(s, "rouge_l"), mean(s, "chrf"),
                     mean(s, "groundedness"), mean(s, "hit"), mean(s, "rr"), round(s.get("latency_ms", 0)),
                     s.get("errors", 0)])
    return rows


def chart_data(run: dict):
    import pandas as pd

    metric = headline_metric(run)
    rows = [{"variant": VARIANTS[v].label, "score": s[metric]["mean"]}
            for v, s in (run.get("summary") or {}).items() if metric in s]
    return pd.DataFrame(rows) if rows else None


QUESTION_HEADERS = ["#", "Question", "Gold answer"]  # then a column per variant


def question_rows(run: dict) -> tuple[list[str], list[list]]:
    variants = run.get("variants", [])
    headers = QUESTION_HEADERS + [VARIANTS[v].label for v in variants]
    metric = headline_metric(run)
    rows = []
    for r in run.get("results", []):
        cells = []
        for v in variants:
            a = r["answers"][v]
            if a.get("error"):
                cells.append(f"(error) {a['error']}")
            else:
                right = (a.get("scores") or {}).get(metric)
                cells.append(("RIGHT · " if right else "WRONG · ") + a["answer"])
        rows.append([r["index"] + 1, r["question"], r["gold"], *cells])
    return headers, rows


def status_line(run: dict) -> str:
    line = (f"**{run['state'].capitalize()}** · run `{run['id']}` · {escape_plain(run['testset'])} · "
            f"{run['done']}/{run['questions']} questions")
    for warning in run.get("warnings", []):
        line += f"\n\n**Warning:** {escape_plain(warning)}"
    return line


def advice_markdown(advice: dict) -> str:
    lines = [f"### Recommendation: {advice['label']}", ""]
    for reason in advice["reasons"]:
        lines.append(f"- **{reason['points']:+d} for {reason['side']}:** {reason['reason']}")
    lines += [f"\n**Note:** {caution}" for caution in advice["cautions"]]
    measured = advice.get("measured")
    if measured:
        lines.append(f"\n**Your last evaluation** (run `{measured['run']}`): {escape_plain(measured['verdict'])}")
        if measured["note"]:
            lines.append(f"\n**{measured['note']}**")
    lines.append(f"\n{advice['next_step']}")
    return "\n".join(lines)


def shown(lab: Lab, run: dict):
    """A run in the tab's outputs: status, verdict, summary, chart, every question, and the past-runs choice."""
    headers, rows = question_rows(run)
    return (status_line(run), verdict(run), summary_rows(run), chart_data(run),
            gr.update(value=rows, headers=headers), gr.update(choices=run_ids(lab), value=run["id"]))


SHOWN_OUTPUTS = 6  # len(shown(...)): a running status leaves the other five as they are


class EvaluateHandlers:
    """The tab's events. Each finds the visitor's Lab from its request; parameter names are what API clients see."""

    def __init__(self, lab_of: LabOf):
        self.lab_of = lab_of
        self.cancel_flags = CancelFlags()  # checked by the engine as it answers

    def advise(self, request: gr.Request, *values):
        with user_errors():
            situation = Situation(**dict(zip(QUESTIONS, values)))
            return advice_markdown(self.lab_of(request).evaluation.advise(situation))

    def run_evaluation(self, src, dataset_name, file, most, chosen, kb_name, adapter_name, request: gr.Request,
                       progress=gr.Progress()):
        """Streams the run's progress, then shows it. Cancel sets this session's flag; the engine stops before the
        next question and saves the run as cancelled with the questions answered so far."""
        lab = self.lab_of(request)
        if src == FROM_KB and not kb_name:
            raise gr.Error("Pick the knowledge base to generate questions from.")

        def report(fraction, message):
            progress(fraction, desc=message)

        yield ("**Running** · Starting…", *[gr.update()] * (SHOWN_OUTPUTS - 1))
        with user_errors():
            items, label = lab.evaluation.items(
                dataset_name if src == FROM_DATASET else None, file if src == FROM_FILE else None,
                limit=int(most) if most else None, generate_from=kb_name if src == FROM_KB else None,
                progress=report)
            stop = self.cancel_flags.start(request)
            steps = lab.evaluation.steps(items, label, list(chosen or []), kb=kb_name or None,
                                         adapter=adapter_name or None, progress=report, should_stop=stop.is_set)
            with closing(steps):
                for run in steps:
                    if "results" not in run:  # the last one is the finished run, shown below
                        yield (f"**Running** · Question {run['done']}/{run['questions']}",
                               *[gr.update()] * (SHOWN_OUTPUTS - 1))
        yield shown(lab, run)

    def cancel_run(self, request: gr.Request):
        return self.cancel_flags.cancel(request, "**Cancelling** · stops within a word; the questions already "
                                                 "answered are kept.")

    def open_run(self, run_id, request: gr.Request):
        lab = self.lab_of(request)
        if not run_id:
            raise gr.Error("Pick a past run first.")
        with user_errors():
            return shown(lab, lab.evals.load(run_id))

    def write_csv(self, run_id, request: gr.Request):
        return self._write(run_id, ".csv", request)

    def write_json(self, run_id, request: gr.Request):
        return self._write(run_id, ".json", request)

    def _write(self, run_id, suffix, request: gr.Request):
        lab = self.lab_of(request)
        if not run_id:
            raise gr.Error("Run or open an evaluation first.")
        with user_errors():
            path = export(lab.evals.load(run_id), Path(tempfile.mkdtemp(prefix="lab-eval-")) / f"{run_id}{suffix}")
        return str(path)

    def opened(self, request: gr.Request):
        """A page opened (or refreshed): start on the knowledge base last used."""
        lab = self.lab_of(request)
        return gr.update(choices=kb_choices(lab), value=kb_to_show(lab))

    def refresh(self, current, request: gr.Request):
        lab = self.lab_of(request)
        return (gr.update(choices=lab.datasets.names()), gr.update(choices=kb_choices(lab)),
                gr.update(choices=adapter_choices(lab, matching=True)), gr.update(choices=run_ids(lab)))


def build_advisor(handlers: EvaluateHandlers) -> None:
    with gr.Accordion("Not sure yet? Five questions to a recommendation", open=False, elem_id="advisor"):
        answers = [gr.Radio([(words, value) for value, words in choices.items()], value=getattr(Situation, key),
                            label=question, elem_id=f"advise-{key}")
                   for key, (question, choices) in QUESTIONS.items()]
        button = gr.Button("Advise me", elem_id="advise-run")
        out = gr.Markdown(elem_id="advise-out")
    button.click(handlers.advise, answers, [out], api_name="advise")


def build(lab_of: LabOf):
    first = lab_of.initial
    handlers = EvaluateHandlers(lab_of)
    with gr.Tab("4 · Evaluate", id="evaluate") as tab:
        gr.Markdown(
            "Which variant answers your questions best? Pick held-out questions with their right answers, the "
            "variants to compare, and run. Every variant answers every question; the answers are scored without "
            "any AI judge, and you get a verdict in plain words.")
        build_advisor(handlers)
        with gr.Row():
            source = gr.Radio([FROM_DATASET, FROM_FILE, FROM_KB], value=FROM_DATASET, label="Questions from",
                              info="Generated questions are made from the passages when you run, and never saved "
                                   "as training data.",
                              elem_id="ev-source")
            dataset = gr.Dropdown(choices=dataset_choices(first), label="Dataset (its test part)",
                                  allow_custom_value=True, elem_id="ev-dataset")
            upload = gr.File(label="Q&A file (.jsonl, .json, .csv)", file_types=[".jsonl", ".json", ".csv"],
                             type="filepath", elem_id="ev-file")
            limit = gr.Number(value=20, precision=0, minimum=1, label="Questions (at most)",
                              info="Each question takes a few seconds per variant on a CPU.", elem_id="ev-limit")
        with gr.Row():
            variants = gr.CheckboxGroup(VARIANT_CHOICES, value=["base", "rag"], label="Variants", elem_id="ev-variants")
            kb = gr.Dropdown(choices=kb_choices(first), value=kb_to_show(first), label="Knowledge base (for RAG)",
                             allow_custom_value=True, elem_id="ev-kb")
            adapter = gr.Dropdown(choices=adapter_choices(first, matching=True), value=None, label="Adapter (for fine-tuned)",
                                  allow_custom_value=True, elem_id="ev-adapter")
        with gr.Row():
            run_button = gr.Button("Run evaluation", variant="primary", elem_id="ev-run")
            cancel = gr.Button("Cancel", elem_id="ev-cancel")
        status = gr.Markdown("No evaluation yet.", elem_id="ev-status")
        verdict_box = gr.Markdown(elem_id="ev-verdict")
        summary = gr.Dataframe(headers=SUMMARY_HEADERS, interactive=False, elem_id="ev-summary",
                               label="Results per variant")
        gr.Markdown(METRIC_NOTE)
        chart = gr.BarPlot(x="variant", y="score", y_lim=[0, 1], title="Score by variant (higher is better)",
                           elem_id="ev-chart")
        questions = gr.Dataframe(headers=QUESTION_HEADERS, interactive=False, wrap=True, elem_id="ev-questions",
                                 label="Every question")
        with gr.Row():
            past = gr.Dropdown(choices=run_ids(first), label="Past runs", elem_id="ev-past",
                               allow_custom_value=True)
            open_button = gr.Button("Open", elem_id="ev-open")
            export_csv = gr.Button("Export CSV", elem_id="ev-export-csv")
            export_json = gr.Button("Export JSON", elem_id="ev-export-json")
        export_file = gr.File(label="Exported file", interactive=False, elem_id="ev-export-file")

    # ---- wiring: the order of inputs and outputs is the API's (clients call positionally) ----------------------
    outputs = [status, verdict_box, summary, chart, questions, past]  # what shown() fills, in its order
    run_button.click(handlers.run_evaluation, [source, dataset, upload, limit, variants, kb, adapter], outputs,
                     api_name="run_evaluation", concurrency_id="evaluate", concurrency_limit=1)
    cancel.click(handlers.cancel_run, None, [status], api_name="cancel_evaluation")
    open_button.click(handlers.open_run, [past], outputs, api_name="open_evaluation")
    export_csv.click(handlers.write_csv, [past], [export_file], api_name="export_evaluation_csv")
    export_json.click(handlers.write_json, [past], [export_file], api_visibility="private")
    tab.select(handlers.refresh, [kb], [dataset, kb, adapter, past], api_visibility="private")
    return handlers.opened, None, [kb]

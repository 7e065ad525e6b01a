"""Study tab: the whole experiment in one click (core/study.py). Pick a knowledge base (or load the demo pack), a
time budget, and press Run; one progress bar follows the stages, a refresh or an app restart finds the study again,
and the report opens here when it is done."""
from __future__ import annotations

import html

import gradio as gr

from core.demo import DEMO_KB, load_demo
from core.errors import LabError
from core.lab import Lab
from core.study import ACTIVE, DEFAULT_MINUTES, DEFAULT_QUESTIONS, MIN_MINUTES
from core.study_report import html_fragment
from ui.choices import kb_choices, kb_to_show
from ui.formatting import escape_plain, user_errors
from ui.workspace import LabOf

INTRO = ("**One click from your documents to a fair answer:** should you use RAG, fine-tuning, both, or RAFT? The "
         "study writes questions from your documents, trains on some facts (and tests them with reworded questions), "
         "keeps other facts out of training altogether, trains a fact-tuned and a RAFT adapter within your time "
         "budget, evaluates five variants and writes a report. It runs in its own process: you can leave or refresh "
         "this page.")
MARKS = {"done": "✓", "running": "▶", "waiting": "·"}


def study_choices(lab: Lab | None) -> list[tuple[str, str]]:
    if lab is None:
        return []
    return [(f"{s['name']} · {s['kb']} · {s['state']}", s["name"]) for s in lab.studies.list()]


def status_html(study: dict) -> str:
    e = html.escape
    fraction = study.get("fraction") or 0.0
    eta = f" · about {max(1, round(study['eta_s'] / 60))} min left" if study.get("eta_s") else ""
    lines = [f"<p><b>{e(study['state'].capitalize())}</b> · study <code>{e(study['name'])}</code> on "
             f"<b>{e(study['kb'])}</b> · budget {study['minutes']:g} min{eta}</p>",
             f'<progress id="study-progress" max="1" value="{fraction:.3f}" style="width:100%"></progress>',
             f"<p>{e(study.get('message') or '')}</p>"]
    if study.get("error"):
        lines.append(f"<p><b>Error</b> · {e(study['error'])}</p>")
    stages = "".join(f'<li data-state="{s["state"]}">{MARKS[s["state"]]} {e(s["label"])}'
                     + (f" ({s['seconds']:.0f} s)" if s.get("seconds") is not None else "") + "</li>"
                     for s in study["stages"])
    return "".join(lines) + f'<ul class="study-stages" style="list-style:none;padding-left:0">{stages}</ul>'


def study_view(lab: Lab, name: str | None) -> tuple:
    """(status, report, report file, timer) of one study; the timer runs while it is active."""
    if not name:
        return ("No study yet. Pick a knowledge base (or load the demo pack) and press **Run the study**.", "",
                gr.update(value=None, visible=False), gr.Timer(active=False))
    try:
        study = lab.studies.get(name)
    except LabError as exc:
        return (f"**Not found** · {escape_plain(str(exc))}", "", gr.update(value=None, visible=False),
                gr.Timer(active=False))
    report, file = "", gr.update(value=None, visible=False)
    if study["report_ready"]:
        report = html_fragment(lab.studies.report(name))
        file = gr.update(value=str(lab.studies.report_path(name, ".html")), visible=True)
    return status_html(study), report, file, gr.Timer(active=study["state"] in ACTIVE)


class StudyHandlers:
    def __init__(self, lab_of: LabOf):
        self.lab_of = lab_of

    def opened(self, request: gr.Request):
        """A page opened (or refreshed): the running study if there is one, else the newest; the knowledge base
        last used."""
        lab = self.lab_of(request)
        studies = lab.studies.list()
        chosen = next((s["name"] for s in studies if s["state"] in ACTIVE), studies[0]["name"] if studies else None)
        return (gr.update(choices=kb_choices(lab), value=kb_to_show(lab)),
                gr.update(choices=study_choices(lab), value=chosen), *study_view(lab, chosen))

    def demo(self, request: gr.Request, progress=gr.Progress()):
        lab = self.lab_of(request)
        with user_errors():
            load_demo(lab.kbs, lab.datasets, lab.training, progress=lambda f, m: progress(f, desc=m))
        return (f"**Demo pack loaded** into the knowledge base `{DEMO_KB}`: press **Run the study**.",
                gr.update(choices=kb_choices(lab), value=DEMO_KB))

    def start(self, kb, minutes, questions, qa_file, request: gr.Request):
        lab = self.lab_of(request)
        with user_errors():
            study = lab.studies.start(kb, float(minutes or DEFAULT_MINUTES), qa_file or None,
                                      questions=int(questions or DEFAULT_QUESTIONS))
        return (f"**Started** study `{study['name']}`.", gr.update(choices=study_choices(lab), value=study["name"]),
                *study_view(lab, study["name"]))

    def poll(self, name, request: gr.Request):
        lab = self.lab_of(request)
        view = study_view(lab, name)
        # The picker's labels carry each study's state: refreshed when the timer stops (the study ended).
        return (*view, gr.update(choices=study_choices(lab), value=name) if not getattr(view[3], "active", False) else gr.update())

    def cancel(self, name, request: gr.Request):
        lab = self.lab_of(request)
        with user_errors():
            _require(name)
            lab.studies.cancel(name)
        return study_view(lab, name)

    def resume(self, name, request: gr.Request):
        lab = self.lab_of(request)
        with user_errors():
            _require(name)
            lab.studies.resume(name)
        return study_view(lab, name)


def _require(name) -> None:
    if not name:
        raise gr.Error("Pick a study first.")


def build(lab_of: LabOf):
    first = lab_of.initial
    handlers = StudyHandlers(lab_of)
    with gr.Tab("Study: all in one click", id="study"):
        gr.Markdown(INTRO)
        with gr.Row():
            kb = gr.Dropdown(choices=kb_choices(first), value=kb_to_show(first), label="Knowledge base",
                             allow_custom_value=True, elem_id="study-kb", scale=2)
            with gr.Column(scale=1):
                minutes = gr.Number(DEFAULT_MINUTES, label="Time budget (minutes)", minimum=MIN_MINUTES, precision=0,
                                    elem_id="study-minutes")
                questions = gr.Number(DEFAULT_QUESTIONS, label="Test questions of each kind (at most)", minimum=3,
                                      precision=0, elem_id="study-questions",
                                      info="Fewer: faster; more: a surer verdict")
            qa_file = gr.File(label="Your own Q&A file (optional)", file_types=[".jsonl", ".json", ".csv"],
                              type="filepath", elem_id="study-qa", scale=2)
        with gr.Row():
            demo_button = gr.Button("Load the demo pack", elem_id="study-demo")
            run_button = gr.Button("Run the study", variant="primary", elem_id="study-run")
        message = gr.Markdown(elem_id="study-message")
        study = gr.Dropdown(choices=study_choices(first), label="Study", elem_id="study-pick")
        status = gr.HTML(elem_id="study-status")
        with gr.Row():
            cancel_button = gr.Button("Cancel", variant="stop", elem_id="study-cancel")
            resume_button = gr.Button("Resume from the last finished stage", elem_id="study-resume")
        report = gr.HTML(elem_id="study-report")
        report_file = gr.File(label="Report (self-contained HTML)", visible=False, elem_id="study-report-file")
        timer = gr.Timer(2.0, active=False)
        view = [status, report, report_file, timer]
        demo_button.click(handlers.demo, None, [message, kb], api_name="study_load_demo")
        run_button.click(handlers.start, [kb, minutes, questions, qa_file], [message, study, *view],
                         api_name="run_study")
        study.input(handlers.poll, [study], [*view, study], api_visibility="private")
        timer.tick(handlers.poll, [study], [*view, study], api_visibility="private")
        cancel_button.click(handlers.cancel, [study], view, api_name="cancel_study")
        resume_button.click(handlers.resume, [study], view, api_name="resume_study")
    return handlers.opened, None, [kb, study, *view]

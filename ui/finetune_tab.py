"""Fine-tune tab: import training data (Q&A, or preference pairs from a file or the Compare tab's votes), see it as
the model will, pick a preset, launch a job in its own process (SFT or DPO), watch it live (a refresh re-attaches),
cancel or resume it, and manage the adapters it makes."""
from __future__ import annotations

import tempfile
import time

import gradio as gr

from core.errors import LabError
from core.lab import Lab
from core.finetuning import memory_parts_text
from core.models import describe_model
from core.training import PRESETS, TrainSettings
from ui.choices import adapter_choices, dataset_choices, dataset_to_show, job_choices
from ui.formatting import escape_plain, user_errors
from ui.settings_form import settings_fields, values_of
from ui.workspace import LabOf

ADAPTER_HEADERS = ["Adapter", "Base model", "Method", "Dataset", "Steps", "Train loss", "Validation loss", "Minutes", "Finished",
                   "Created"]
ACTIVE = ("queued", "running")


def preset_text(name: str) -> str:
    return f"**{name.capitalize()}** · {PRESETS[name]['about']}"


def adapter_rows(lab: Lab | None) -> list[list]:
    if lab is None:
        return []
    return [[a["name"], describe_model(a.get("base_model") or "?"), method_text(a), a.get("dataset"), f"{a.get('steps')}/{a.get('total_steps')}", a.get("train_loss"),
             a.get("eval_loss"), round((a.get("seconds") or 0) / 60, 1), "yes" if a.get("complete") else "stopped early",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(a.get("created", 0)))] for a in lab.adapters.list()]


def method_text(adapter: dict) -> str:
    """How an adapter was trained, e.g. "sft · lora" or "dpo · dora, from demo-quick"."""
    settings = adapter.get("settings") or {}
    text = f"{adapter.get('method') or 'sft'} · {settings.get('tuning') or 'lora'}"
    return text + (f", from {adapter['from_adapter']}" if adapter.get("from_adapter") else "")


def votes_text(lab: Lab | None) -> str:
    pairs = len(lab.votes.preference_pairs()) if lab else 0
    return (f"Your votes in **Compare** give **{pairs}** usable preference pair{'s' if pairs != 1 else ''} (each "
            "winner against each other answer shown; ties, all-bad votes and identical answers give none). DPO "
            "teaches the model to prefer the answers you chose; start it from a fine-tuned adapter to improve that "
            "one.")


def dataset_text(lab: Lab, name: str | None) -> str:
    """A dataset's size and split, and its first training examples as the model reads them."""
    if not name:
        return ""
    try:
        shown = lab.datasets.show(name, "train", limit=2)
    except LabError as exc:
        return f"**Not found** · {escape_plain(str(exc))}"
    split = shown["split"]
    if shown.get("kind") == "text":
        blocks = [f"Passage {i} · {e['answer_tokens']} tokens, all learned:\n```\n{e['text']}\n```"
                  for i, e in enumerate(shown["preview"], 1)]
        return "\n\n".join([f"**{escape_plain(shown['name'])}** · {shown['examples']} passages ({shown['format']}) "
                              f"· trains by **continued pre-training**", *blocks])
    pairs = shown.get("kind") == "preference"
    head = (f"**{escape_plain(shown['name'])}** · {shown['examples']} {'preference pairs' if pairs else 'examples'} "
            f"({shown['format']}) · train {split['train']}, validation {split['validation']}, test {split['test']} "
            f"(seed {shown['seed']})" + (" · trains with **DPO**: the chosen answer over the rejected one" if pairs
                                         else ""))
    if pairs:
        blocks = [f"Pair {i} · {e['prompt_tokens']} prompt tokens; chosen answer ({e['answer_tokens']} tokens):"
                  f"\n```\n{e['text']}\n```\nrejected answer ({e['rejected_tokens']} tokens):\n```\n{e['rejected']}\n```"
                  for i, e in enumerate(shown["preview"], 1)]
    else:
        blocks = [f"Example {i} · {e['prompt_tokens']} prompt tokens + {e['answer_tokens']} answer tokens "
                  f"(only the answer is learned):\n```\n{e['text']}\n```" for i, e in enumerate(shown["preview"], 1)]
    return "\n\n".join([head, *blocks])


def cleaning_text(found: dict) -> str:
    """The dataset check as Markdown: each problem with its count, fix and first examples."""
    problems = {kind: p for kind, p in found["problems"].items() if p["count"]}
    if not problems:
        return f"**No problems found** in {escape_plain(found['name'])} ({found['examples']} examples)."
    lines = [f"**{escape_plain(found['name'])}** · {found['examples']} examples: {len(found['removed'])} would be "
             f"removed and {len(found['repaired'])} repaired."]
    for kind, problem in problems.items():
        shown = "; ".join(f"{item['part']} #{item['index']}: {escape_plain(item['preview'])}"
                          + (f" ({escape_plain(item['detail'])})" if item["detail"] else "")
                          for item in problem["found"])
        lines.append(f"- **{kind.replace('_', ' ').capitalize()}: {problem['count']}** · {problem['about']} · "
                     f"fix: {problem['fix']}. {shown}")
    return "\n".join(lines)


def margins_text(result: dict) -> str | None:
    """A DPO run's proof: the chosen answers' margin over the rejected ones, before and after."""
    margins = result.get("margins") or {}
    parts = []
    for part in ("train", "validation"):
        before, after = margins.get(f"{part}_before"), margins.get(f"{part}_after")
        if before and after:
            parts.append(f"{part} pairs ({before['pairs']}): log-probability margin of chosen over rejected "
                         f"{before['mean_margin']} → **{after['mean_margin']}**, chosen the more likely in "
                         f"{before['chosen_more_likely']:.0%} → **{after['chosen_more_likely']:.0%}**")
    return " · ".join(parts) or None


def job_view(lab: Lab, job_id: str | None):
    """(status Markdown, loss chart data, log tail) of one job."""
    import pandas as pd

    empty = None  # no data yet: an empty plot (an empty table drew a stray legend)
    if not job_id:
        return "No training job yet. Import data, pick a preset and press **Start training**.", empty, ""
    try:
        job = lab.jobs.get(job_id)
    except LabError as exc:
        return f"**Not found** · {escape_plain(str(exc))}", empty, ""
    state = job["state"]
    lines = [f"**{state.capitalize()}** · job `{job['id']}` · dataset {escape_plain(job['dataset'])} → adapter "
             f"**{escape_plain(str(job.get('adapter')))}**"]
    if state == "queued":
        lines.append(f"Waiting for the device (job `{job.get('waiting_for') or '…'}` is training). It starts by itself.")
    if state in ("running", "completed", "cancelled") and job.get("total_steps"):
        parts = [f"step {job.get('step')}/{job['total_steps']}", f"epoch {job.get('epoch', 0)}"]
        if job.get("elapsed_s") is not None:
            parts.append(f"{job['elapsed_s']:.0f} s elapsed")
        if state == "running" and job.get("eta_s"):
            parts.append(f"~{job['eta_s']:.0f} s left")
        if job.get("tokens_per_s"):
            parts.append(f"{job['tokens_per_s']:.0f} tokens/s")
        lines.append(" · ".join(parts))
    if job.get("message"):
        lines.append(escape_plain(job["message"]))
    if margins_text(job.get("result") or {}):
        lines.append(margins_text(job["result"]))
    if job.get("error"):
        lines.append(f"**Error** · {escape_plain(job['error'])}")
    if state != "queued":  # every job writes its curves as TensorBoard event files
        lines.append(f"Curves in TensorBoard: `tensorboard --logdir {lab.jobs.root}` (every job), then open "
                     "http://localhost:6006")
    history = job.get("history") or {}
    rows = [(s, l, "train") for s, l in history.get("train", [])] + [(s, l, "validation") for s, l in history.get("eval", [])]
    chart = pd.DataFrame(rows, columns=["step", "loss", "series"]) if rows else empty
    return "\n\n".join(lines), chart, job.get("log_tail", "")


def job_updates(lab: Lab, job_id: str | None) -> tuple:
    """(status, chart, log, timer, adapters table, adapter picker) for one job; the timer runs while it is active."""
    status, chart, log = job_view(lab, job_id)
    active = False
    if job_id:
        try:
            active = lab.jobs.get(job_id)["state"] in ACTIVE
        except LabError:
            pass
    updates = (status, chart, log, gr.Timer(active=active))
    if not active:  # finished: its adapter shows up below
        return (*updates, adapter_rows(lab), gr.update(choices=adapter_choices(lab)))
    return (*updates, gr.update(), gr.update())


def adapters_after(lab: Lab, message: str, export=None) -> tuple:
    """(status, adapters table, adapter picker, exported file) after an action on an adapter."""
    return (message, adapter_rows(lab), gr.update(choices=adapter_choices(lab), value=None),
            export or gr.update(visible=False))


class FineTuneHandlers:
    """The tab's event handlers; each works on the Lab of the request it is called with. `advanced_names` are the
    Advanced panel's settings, in the order their values arrive."""

    def __init__(self, lab_of: LabOf, advanced_names: list[str]):
        self.lab_of = lab_of
        self.advanced_names = advanced_names

    def settings_from(self, lab: Lab, dataset, preset_name, values) -> TrainSettings:
        return lab.training.preset(preset_name, dataset, **values_of(TrainSettings, self.advanced_names, values))

    def on_preset(self, name, dataset, request: gr.Request):
        """The preset's values in the Advanced panel, for the method the dataset calls for (DPO's pace differs),
        and that method (the panel's state)."""
        lab = self.lab_of(request)
        with user_errors():
            chosen = lab.training.preset(name, dataset if dataset in lab.datasets.names() else None)
        method = chosen.method if chosen.method != "auto" else "sft"
        return (preset_text(name), *[getattr(chosen, key) for key in self.advanced_names], method)

    def on_tuning(self, preset_name, dataset, tuning, request: gr.Request):
        """A full fine-tune trains at a far gentler pace than an adapter: the panel shows the preset's values for
        the adapter type picked (every field but the method and the type themselves)."""
        lab = self.lab_of(request)
        with user_errors():
            chosen = lab.training.preset(preset_name or "quick", dataset if dataset in lab.datasets.names() else None,
                                         tuning=tuning or "lora")
        return [getattr(chosen, key) for key in self.advanced_names if key not in ("method", "tuning")]

    def show_dataset(self, name, preset_name, panel_method, request: gr.Request):
        """The dataset's preview; the Advanced panel changes only when the dataset calls for another method than
        the one its values are for (the user's own edits stay otherwise)."""
        lab = self.lab_of(request)
        wanted = lab.training.method_for(name) if name in lab.datasets.names() else panel_method
        if wanted == panel_method:
            return (dataset_text(lab, name), *[gr.update() for _ in self.advanced_names], panel_method)
        return (dataset_text(lab, name), *self.on_preset(preset_name or "quick", name, request)[1:])

    def check_data(self, name, max_length, request: gr.Request):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Import or pick a dataset first.")
        with user_errors():
            found = lab.datasets.clean(name, max_length=int(max_length or 384))
        return cleaning_text(found), gr.update(visible=not found["clean"])

    def apply_fixes(self, name, max_length, request: gr.Request):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Import or pick a dataset first.")
        with user_errors():
            done = lab.datasets.clean(name, apply=True, max_length=int(max_length or 384))
        saved = done["saved_as"]
        message = (f"**Saved** · {escape_plain(saved['name'])}: {saved['examples']} examples, the same split "
                   f"({escape_plain(name)} is unchanged). It is selected for training.")
        return (message, gr.update(visible=False), gr.update(choices=dataset_choices(lab), value=saved["name"]),
                dataset_text(lab, saved["name"]))

    def kb_to_text_dataset(self, kb_name, request: gr.Request):
        lab = self.lab_of(request)
        if not kb_name:
            raise gr.Error("Pick a knowledge base first.")
        with user_errors():
            info = lab.datasets.from_kb(kb_name)
        message = (f"**Made** · {escape_plain(info['name'])}: {info['examples']} passages of {escape_plain(kb_name)}. "
                   "Press **Start training** below: the model reads them (continued pre-training), and Compare "
                   "then shows whether that helps it answer without RAG.")
        return message, gr.update(choices=dataset_choices(lab), value=info["name"]), dataset_text(lab, info["name"])

    def votes_to_dataset(self, request: gr.Request):
        lab = self.lab_of(request)
        with user_errors():
            info = lab.datasets.from_votes()
        message = (f"**Made** · {escape_plain(info['name'])}: {info['examples']} preference pairs from your votes. "
                   "Press **Start training** below to train with DPO.")
        return (message, gr.update(choices=dataset_choices(lab), value=info["name"]),
                dataset_text(lab, info["name"]), votes_text(lab))

    def import_data(self, path, name, request: gr.Request):
        lab = self.lab_of(request)
        if not path:
            raise gr.Error("Choose a Q&A file first.")
        with user_errors():
            info = lab.datasets.import_file(path, (name or "").strip() or None)
        message = (f"**Imported** · {escape_plain(info['name'])}: {info['examples']} examples "
                   f"({info['format']}).")
        return message, gr.update(choices=dataset_choices(lab), value=info["name"]), dataset_text(lab, info["name"])

    def generate_data(self, kb_name, name, count, use_model, raft, distractors, share, request: gr.Request,
                      progress=gr.Progress()):
        lab = self.lab_of(request)
        if not kb_name or not (name or "").strip():
            raise gr.Error("Pick a knowledge base and name the dataset first.")
        with user_errors():
            info = lab.datasets.generate(kb_name, name.strip(), int(count or 50), bool(raft), int(distractors or 0),
                                         float(share if share is not None else 0.8), bool(use_model),
                                         progress=lambda f, m: progress(f, desc=m))
        message = (f"**Generated** · {escape_plain(info['name'])}: {info['examples']} examples "
                   f"({info['format']}; {info['questions_by_model']} questions by the model, "
                   f"{info['questions_by_template']} by template).")
        return message, gr.update(choices=dataset_choices(lab), value=info["name"]), dataset_text(lab, info["name"])

    def estimate_plan(self, request: gr.Request, name, preset_name, *values):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Import or pick a dataset first.")
        with user_errors():
            result = lab.training.estimate(name, self.settings_from(lab, name, preset_name, values))
        verdict = "fits" if result["fits"] else f"**does not fit**: {result['advice']}"
        kind = ("full fine-tune (every weight)" if result.get("tuning") == "full" else
                "4-bit QLoRA" if result["quantized_4bit"] else "full-precision " + (result.get("tuning") or "lora").upper())
        return (f"About **{result['minutes']} min** for {result['steps']} steps; needs ~{result['memory_gb']} GB "
                f"({memory_parts_text(result['memory_parts_gb'])}) of {result['available_gb']} GB free ({verdict}); "
                f"{result['method'].upper()}, {kind}, "
                f"{result['lora_parameters'] / 1e6:.1f}M trainable parameters.")

    def start(self, request: gr.Request, name, preset_name, wanted, start_from, *values):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Import or pick a dataset first.")
        with user_errors():
            started = lab.training.start(name, self.settings_from(lab, name, preset_name, values),
                                         (wanted or "").strip() or None, from_adapter=start_from or None)
        status, chart, log = job_view(lab, started["id"])
        return (gr.update(choices=job_choices(lab), value=started["id"]), status, chart, log,
                gr.Timer(active=True))

    def poll(self, job_id, request: gr.Request):
        return job_updates(self.lab_of(request), job_id)

    def cancel(self, job_id, request: gr.Request):
        lab = self.lab_of(request)
        if not job_id:
            raise gr.Error("No job to cancel.")
        with user_errors():
            lab.jobs.cancel(job_id)
        return job_updates(lab, job_id)

    def resume(self, job_id, request: gr.Request):
        lab = self.lab_of(request)
        if not job_id:
            raise gr.Error("No job to resume.")
        with user_errors():
            lab.jobs.resume(job_id)
        return job_updates(lab, job_id)

    # The three adapter actions take the same two inputs (export and delete ignore the new name).
    def rename_adapter(self, name, new, request: gr.Request):
        lab = self.lab_of(request)
        _require_adapter(name)
        with user_errors():
            renamed = lab.adapters.rename(name, new)
        return adapters_after(lab, f"**Renamed** · {escape_plain(name)} is now {escape_plain(renamed)}.")

    def export_adapter(self, name, new, request: gr.Request):
        lab = self.lab_of(request)
        _require_adapter(name)
        with user_errors():
            path = lab.adapters.export_zip(name, tempfile.mkdtemp(prefix="lab-export-"))
        return adapters_after(lab, f"**Exported** · {escape_plain(name)} as a zip (peft adapter folder).",
                              export=gr.update(value=[str(path)], visible=True))

    def export_gguf(self, name, new, request: gr.Request, progress=gr.Progress()):
        """The adapter merged into its base as a Q8_0 GGUF file with an Ollama Modelfile, checked by loading it
        back: the files to download, and whether it answers as in the app."""
        lab = self.lab_of(request)
        _require_adapter(name)
        progress(0.1, desc="Merging and writing the GGUF file, then loading it back to compare answers")
        with user_errors():
            done = lab.exports.gguf(name, tempfile.mkdtemp(prefix="lab-gguf-"), ("q8_0",))
        file = done["files"][0]
        message = (f"**Exported** · {escape_plain(name)} as GGUF ({file['type']}, {file['size_mb']} MB) with an "
                   f"Ollama Modelfile: loaded back, it gives the in-app fine-tuned answers on "
                   f"**{file['same_answers']} of {file['checked']}** test questions. Put both files in one folder, "
                   f"then `ollama create {name} -f Modelfile`.")
        return adapters_after(lab, message, export=gr.update(value=[file["path"], done["modelfile"]], visible=True))

    def push_adapter(self, name, repo, request: gr.Request, progress=gr.Progress()):
        lab = self.lab_of(request)
        _require_adapter(name)
        progress(0.2, desc="Uploading to the Hugging Face Hub")
        with user_errors():
            done = lab.hub.push(name, (repo or "").strip())
        return adapters_after(lab, f"**Uploaded** · {escape_plain(name)} with its model card to "
                                   f"[{done['repo']}]({done['url']}) (private).")

    def delete_adapter(self, name, new, request: gr.Request):
        lab = self.lab_of(request)
        _require_adapter(name)
        with user_errors():
            lab.adapters.delete(name)
        return adapters_after(lab, f"**Deleted** · {escape_plain(name)}.")

    def reattach(self, current, shown_dataset, request: gr.Request):
        """A page opened (or refreshed) mid-training re-attaches: the newest active job, else the one shown, else
        the newest; the timer runs again while that job is active. The dataset shown stays, else the newest."""
        lab = self.lab_of(request)
        datasets, dataset = dataset_choices(lab), dataset_to_show(lab, shown_dataset)
        listed = lab.jobs.list()
        active = [j["id"] for j in listed if j["state"] in ACTIVE]
        known = [j["id"] for j in listed]
        chosen = (active or [current if current in known else None] or [None])[0] or (known or [None])[0]
        return (gr.update(choices=job_choices(lab), value=chosen), *job_updates(lab, chosen)[:4],
                gr.update(choices=datasets, value=dataset), adapter_rows(lab), gr.update(choices=adapter_choices(lab)),
                gr.update(choices=lab.kbs.names()), votes_text(lab), gr.update(choices=adapter_choices(lab, matching=True)),
                gr.update(choices=lab.kbs.names()))


def _require_adapter(name) -> None:
    if not name:
        raise gr.Error("Pick an adapter first.")


def build(lab_of: LabOf) -> None:
    first = lab_of.initial
    with gr.Tab("2 · Fine-tune", id="finetune") as tab:
        gr.Markdown(
            "Teach the model from question/answer examples. It learns a small **adapter** (LoRA) on top of the base "
            "model, so training is fast and the base stays as it is. Training runs in its own process: you can leave "
            "or refresh this page and come back to it."
        )
        with gr.Accordion("1. Training data", open=True):
            gr.Markdown(
                "Upload **.jsonl** (OpenAI chat: `{\"messages\": [...]}`, or Alpaca: `instruction`/`input`/`output`), "
                "**.json** (a list of those) or **.csv** with `question` and `answer` columns. Part of it is kept "
                "apart: *validation* to watch for over-fitting, and *test* for the evaluation later. A file of "
                "**preference pairs** (`prompt`, `chosen`, `rejected`) trains with DPO instead."
            )
            with gr.Row():
                data_file = gr.File(label="Q&A file", file_types=[".jsonl", ".json", ".csv"], type="filepath",
                                    elem_id="ft-data-file", scale=3)
                with gr.Column(scale=2):
                    data_name = gr.Textbox(label="Dataset name", placeholder="default: the file's name",
                                           elem_id="ft-data-name")
                    import_button = gr.Button("Import", variant="primary", elem_id="ft-import")
            with gr.Accordion("…or generate Q&A from a knowledge base", open=False):
                gr.Markdown(
                    "Answers are sentences taken from your documents (so they are true to them); the model writes a "
                    "question for each, and a simple template steps in where its question is unusable. **RAFT** "
                    "training shows each question with the passage that answers it among unrelated ones, as RAG "
                    "will, so the model learns to find and quote the right passage."
                )
                with gr.Row():
                    gen_kb = gr.Dropdown(choices=first.kbs.names() if first else [], label="Knowledge base",
                                         elem_id="ft-gen-kb",
                                         allow_custom_value=True)
                    gen_name = gr.Textbox(label="Dataset name", elem_id="ft-gen-name")
                    gen_count = gr.Number(50, label="Examples", precision=0, minimum=1)
                with gr.Row():
                    gen_model = gr.Checkbox(True, label="Let the model write the questions",
                                            info="Off: template questions only (fast)")
                    gen_raft = gr.Checkbox(False, label="RAFT examples")
                    gen_distractors = gr.Number(3, label="RAFT distractor passages", precision=0, minimum=0)
                    gen_share = gr.Number(0.8, label="RAFT share with the answering passage", minimum=0, maximum=1)
                generate_button = gr.Button("Generate", elem_id="ft-generate")
            with gr.Accordion("…or read a knowledge base's text (continued pre-training)", open=False):
                gr.Markdown("The model learns every word of the passages, with no questions: a test of whether "
                            "reading your documents in training helps it answer, against giving them to it (RAG).")
                with gr.Row():
                    text_kb = gr.Dropdown(choices=first.kbs.names() if first else [], label="Knowledge base",
                                          elem_id="ft-text-kb", allow_custom_value=True)
                    text_button = gr.Button("Make the text dataset", elem_id="ft-text")
            with gr.Accordion("…or learn from your votes (DPO)", open=False):
                votes_about = gr.Markdown(votes_text(first), elem_id="ft-votes-about")
                votes_button = gr.Button("Make the preference dataset “votes”", elem_id="ft-votes")
            data_status = gr.Markdown(elem_id="ft-data-status")
            dataset = gr.Dropdown(choices=dataset_choices(first), value=dataset_to_show(first),
                                  label="Dataset", elem_id="ft-dataset", allow_custom_value=True)
            with gr.Row():
                check_button = gr.Button("Check the data", elem_id="ft-check")
                fix_button = gr.Button("Save a fixed copy (NAME-clean)", visible=False, elem_id="ft-fix")
            check_report = gr.Markdown(elem_id="ft-check-report")
            preview = gr.Markdown(elem_id="ft-preview")
        with gr.Accordion("2. Settings", open=True):
            preset = gr.Radio(list(PRESETS), value="quick", label="Preset", elem_id="ft-preset")
            preset_about = gr.Markdown(preset_text("quick"))
            with gr.Accordion("Advanced", open=False):
                # Made from TrainSettings' declaration, as the CLI's flags are: a new setting is one field there.
                initial = (first.training.preset("quick", dataset_to_show(first)) if first
                           else TrainSettings.from_preset("quick"))
                advanced = settings_fields(TrainSettings, initial)
            with gr.Row():
                adapter_name = gr.Textbox(label="Adapter name", placeholder="default: DATASET-PRESET",
                                          elem_id="ft-adapter-name")
                start_from = gr.Dropdown(choices=adapter_choices(first, matching=True), value=None, label="Start from adapter",
                                         info="optional: go on training one (e.g. DPO on top of a Q&A fine-tune)",
                                         elem_id="ft-start-from")
            with gr.Row():
                estimate_button = gr.Button("Estimate time and memory", elem_id="ft-estimate")
                start_button = gr.Button("Start training", variant="primary", elem_id="ft-start")
            plan = gr.Markdown(elem_id="ft-plan")
        with gr.Accordion("3. Training job", open=True):
            jobs = job_choices(first)
            job = gr.Dropdown(choices=jobs, value=jobs[0][1] if jobs else None, label="Job", elem_id="ft-job")
            job_status = gr.Markdown(elem_id="ft-job-status")
            loss_chart = gr.LinePlot(x="step", y="loss", color="series", title="Loss (lower is better)",
                                     elem_id="ft-loss", height=260)
            with gr.Row():
                cancel_button = gr.Button("Cancel (keeps the last checkpoint)", variant="stop", elem_id="ft-cancel")
                resume_button = gr.Button("Resume from the last checkpoint", elem_id="ft-resume")
            log_tail = gr.Textbox(label="Log (last lines)", lines=6, max_lines=12, interactive=False, elem_id="ft-log")
        with gr.Accordion("4. Adapters", open=True):
            adapters_table = gr.Dataframe(headers=ADAPTER_HEADERS, value=adapter_rows(first), interactive=False,
                                          elem_id="ft-adapters")
            with gr.Row():
                adapter_pick = gr.Dropdown(choices=adapter_choices(first), label="Adapter", elem_id="ft-adapter-pick")
                new_adapter_name = gr.Textbox(label="New name")
            with gr.Row():
                rename_button = gr.Button("Rename")
                export_button = gr.Button("Export as .zip")
                gguf_button = gr.Button("Export for Ollama (GGUF)", elem_id="ft-export-gguf")
                delete_button = gr.Button("Delete", variant="stop")
            with gr.Row():
                hub_repo = gr.Textbox(label="Hub repository", placeholder="USER/REPO",
                                      info="uploads the adapter and a model card of where it came from (private); "
                                           "needs a network and a token", elem_id="ft-hub-repo")
                push_button = gr.Button("Push to the Hub", elem_id="ft-push")
            adapter_status = gr.Markdown(elem_id="ft-adapter-status")
            export_file = gr.File(label="Exported files", visible=False, file_count="multiple",
                                  elem_id="ft-export-files")
        timer = gr.Timer(2.0, active=bool(jobs and first.jobs.get(jobs[0][1])["state"] in ACTIVE))

        handlers = FineTuneHandlers(lab_of, list(advanced))
        settings_inputs = list(advanced.values())
        job_outputs = [job_status, loss_chart, log_tail, timer, adapters_table, adapter_pick]
        adapter_inputs = [adapter_pick, new_adapter_name]
        adapter_outputs = [adapter_status, adapters_table, adapter_pick, export_file]
        panel_method = gr.State("dpo" if initial.method == "dpo" else "sft")  # what the Advanced panel's values are for
        preset.change(handlers.on_preset, [preset, dataset], [preset_about, *settings_inputs, panel_method],
                      api_visibility="private")
        check_button.click(handlers.check_data, [dataset, advanced["max_length"]], [check_report, fix_button],
                           api_name="check_dataset")
        fix_button.click(handlers.apply_fixes, [dataset, advanced["max_length"]],
                         [check_report, fix_button, dataset, preview], api_name="clean_dataset")
        text_button.click(handlers.kb_to_text_dataset, [text_kb], [data_status, dataset, preview],
                          api_name="dataset_from_kb")
        votes_button.click(handlers.votes_to_dataset, None, [data_status, dataset, preview, votes_about],
                           api_name="dataset_from_votes")
        import_button.click(handlers.import_data, [data_file, data_name], [data_status, dataset, preview],
                            api_name="import_dataset")
        generate_button.click(handlers.generate_data,
                              [gen_kb, gen_name, gen_count, gen_model, gen_raft, gen_distractors, gen_share],
                              [data_status, dataset, preview], api_name="generate_dataset",
                              concurrency_id="generate", concurrency_limit=1, show_progress_on=[data_status])
        paced = [advanced[key] for key in advanced if key not in ("method", "tuning")]
        advanced["tuning"].input(handlers.on_tuning, [preset, dataset, advanced["tuning"]], paced,
                                 api_visibility="private")
        dataset.change(handlers.show_dataset, [dataset, preset, panel_method], [preview, *settings_inputs, panel_method],
                       api_visibility="private")
        estimate_button.click(handlers.estimate_plan, [dataset, preset, *settings_inputs], [plan],
                              api_name="estimate_training")
        start_button.click(handlers.start, [dataset, preset, adapter_name, start_from, *settings_inputs],
                           [job, job_status, loss_chart, log_tail, timer],
                           api_name="start_training", concurrency_id="training", concurrency_limit=1)
        job.change(handlers.poll, [job], job_outputs, api_visibility="private")
        timer.tick(handlers.poll, [job], job_outputs, api_visibility="private")
        cancel_button.click(handlers.cancel, [job], job_outputs, api_name="cancel_training")
        resume_button.click(handlers.resume, [job], job_outputs, api_name="resume_training")
        rename_button.click(handlers.rename_adapter, adapter_inputs, adapter_outputs, api_name="rename_adapter")
        export_button.click(handlers.export_adapter, adapter_inputs, adapter_outputs, api_name="export_adapter")
        push_button.click(handlers.push_adapter, [adapter_pick, hub_repo], adapter_outputs, api_name="push_adapter")
        gguf_button.click(handlers.export_gguf, adapter_inputs, adapter_outputs, api_name="export_gguf",
                          concurrency_id="generate", concurrency_limit=1)
        delete_button.click(handlers.delete_adapter, adapter_inputs, adapter_outputs, api_name="delete_adapter")
        tab.select(handlers.reattach, [job, dataset], [job, job_status, loss_chart, log_tail, timer, dataset,
                                                       adapters_table, adapter_pick, gen_kb, votes_about, start_from,
                                                       text_kb],
                   api_visibility="private")

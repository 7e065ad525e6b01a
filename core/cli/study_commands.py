"""The study's commands: run, list, show, export, cancel, resume (see core/study.py)."""
from __future__ import annotations

from core.cli.registry import EXIT_FAILED, arg, command
from core.study import DEFAULT_MINUTES, DEFAULT_QUESTIONS


def _line(study: dict) -> str:
    done = sum(s["state"] == "done" for s in study["stages"])
    eta = f", about {study['eta_s'] / 60:.0f} min left" if study.get("eta_s") else ""
    what = study.get("error") or study.get("message") or ""
    return (f"{study['name']}\t{study['state']}\t{study['fraction'] or 0:.0%}\tstage {done}/{len(study['stages'])}"
            f"{eta}\t{what}")


def _show(study: dict, args) -> None:
    print(_line(study))
    for stage in study["stages"]:
        took = f" ({stage['seconds']:.0f} s)" if stage.get("seconds") is not None else ""
        print(f"  [{stage['state']}] {stage['label']}{took}")
    for line in (study.get("report") or {}).get("verdict", []):
        print(f"- {line}")


def _summary(study: dict, report: dict | None) -> dict:
    out = {k: study.get(k) for k in ("name", "kb", "state", "stage", "fraction", "message", "error", "eta_s",
                                      "minutes", "stages", "report_ready", "interrupted", "waiting_for")}
    if report:
        out["report"] = {k: report[k] for k in ("verdict", "results", "comparisons", "winners", "split", "learned",
                                                "costs", "cuts", "questions", "runs")}
    return out


@command("study run", "run the whole study: questions, fair split, two fine-tunes, five variants, a report",
         "Builds short-answer questions from the knowledge base's passages, splits them by passage into trained "
         "facts (tested with reworded questions) and new facts, trains a fact-tuned and a RAFT adapter within the "
         "time budget, evaluates base, RAG, fine-tuned, fine-tuned + RAG and RAFT + RAG, and writes the report. "
         "It runs in a process of its own: Ctrl-C stops watching, not the study (study cancel NAME stops it).",
         args=[arg("--kb", required=True, help="the knowledge base to study"),
               arg("--qa", help="your own Q&A file (.jsonl, .json or .csv): its questions are tested too"),
               arg("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"time budget in minutes (default: {DEFAULT_MINUTES:g})"),
               arg("--questions", type=int, default=DEFAULT_QUESTIONS,
                   help=f"held-out questions of each kind, at most (default: {DEFAULT_QUESTIONS}; fewer is faster, "
                        "more decides more)"),
               arg("--name", help="the study's name (default: KB-study)"),
               arg("--seed", type=int, default=42, help="seed of the question sample and the split (default: 42)"),
               arg("--detach", action="store_true", help="start it and return (see: study show NAME)")],
         text=_show)
def study_run(lab, args, out):
    study = lab.studies.start(args.kb, args.minutes, args.qa, args.name, args.seed, args.questions)
    out.note(f"study {study['name']} started (cancel: python -m core study cancel {study['name']})")
    if args.detach:
        return _summary(study, None)
    try:
        final = lab.studies.wait(study["name"], lambda s: out.note(f"  {_line(s)}"))
    except KeyboardInterrupt:
        out.note(f"stopped watching; the study goes on (python -m core study show {study['name']})")
        return _summary(lab.studies.get(study["name"]), None), 0
    report = lab.studies.report(final["name"]) if final.get("report_ready") else None
    return _summary(final, report), 0 if final["state"] == "completed" else EXIT_FAILED


@command("study list", "list studies", text=lambda payload, args: [print(_line(s)) for s in payload["studies"]])
def study_list(lab, args, out):
    return {"studies": [_summary(s, None) for s in lab.studies.list()]}


@command("study show", "a study's progress, or its results once finished", args=[arg("name")], text=_show)
def study_show(lab, args, out):
    study = lab.studies.get(args.name)
    return _summary(study, lab.studies.report(args.name) if study["report_ready"] else None)


@command("study export", "write a finished study's report (.html, .md or .json)",
         args=[arg("name"), arg("path", help="report.html, report.md or report.json")],
         text=lambda payload, args: print(f"wrote {payload['path']}"))
def study_export(lab, args, out):
    return {"study": args.name, "path": str(lab.studies.export(args.name, args.path))}


@command("study cancel", "stop a study (resume continues from its last finished stage)", args=[arg("name")],
         text=lambda payload, args: print(_line(payload)))
def study_cancel(lab, args, out):
    return _summary(lab.studies.cancel(args.name), None)


@command("study resume", "continue a cancelled, failed or interrupted study from its last finished stage",
         args=[arg("name")], text=lambda payload, args: print(_line(payload)))
def study_resume(lab, args, out):
    return _summary(lab.studies.resume(args.name), None)

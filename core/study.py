"""The study as a service: one experiment from a knowledge base to a fair verdict on RAG, fine-tuning, both, and
RAFT. Starting one checks the input and launches its runner (core/study_runner.py), a process of its own, so a page
refresh, an app restart or a crash of the app leaves it running, and a crashed runner resumes from its last
finished stage.

data_dir/studies/<name>/ holds study.json (what was asked), state.json (where it is, written by its runner),
stage-<stage>.json for every finished stage, log.txt, `cancel` (a flag the runner polls), and at the end report.json,
report.md and report.html (self-contained: opens offline).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from core.datasets import parse_examples
from core.errors import InputError
from core.fileio import FolderRegistry, read_json, write_json
from core.jobs import process_alive, wait_until_final
from core.knowledge import KnowledgeBases
from core.limits import Quota

STAGES = (
    ("questions", "Building questions from the passages"),
    ("datasets", "Splitting the facts and writing the training sets"),
    ("train_facts", "Training the fact-tuned adapter"),
    ("train_raft", "Training the RAFT adapter"),
    ("check", "Checking what each adapter learned"),
    ("evaluate", "Evaluating the five variants"),
    ("report", "Writing the report"),
)
ACTIVE = ("queued", "running")
DEFAULT_MINUTES, MIN_MINUTES, MAX_MINUTES = 15.0, 5.0, 24 * 60.0
DEFAULT_QUESTIONS, MAX_QUESTIONS = 20, 500  # held-out questions of each kind, at most
REPORT_FORMATS = {".html": "report.html", ".md": "report.md", ".json": "report.json"}


def stage_file(folder: Path, stage: str) -> Path:
    """Where a finished stage's result is kept: its existence is what marks the stage done."""
    return folder / f"stage-{stage}.json"


def running_studies(data_dir: Path) -> list[str]:
    """The studies of a data folder whose runner is at work (read from disk: no Lab needed)."""
    root = Path(data_dir) / "studies"
    if not root.exists():
        return []
    return [folder.name for folder in sorted(root.iterdir())
            if (read_json(folder / "state.json") or {}).get("state") in ACTIVE and process_alive(folder)]


class Studies(FolderRegistry):
    marker, what, hint = "study.json", "study", "none yet: run one first"

    def __init__(self, data_dir: Path, kbs: KnowledgeBases, quota: Quota, lock_dir: Path | None = None,
                 base_model: str | None = None):
        self.data_dir, self.base_model = Path(data_dir), base_model  # the model a study started now uses
        super().__init__(self.data_dir / "studies")
        self.kbs, self.quota, self.lock_dir = kbs, quota, lock_dir

    # ---- starting -------------------------------------------------------------------------------------------
    def start(self, kb: str, minutes: float = DEFAULT_MINUTES, qa_file: str | Path | None = None,
              name: str | None = None, seed: int = 42, questions: int = DEFAULT_QUESTIONS) -> dict:
        """Check the input, write the study and launch its runner; returns the study (poll `get`). `questions`:
        held-out questions of each kind, at most (fewer train and answer faster; more decide more). A study
        started while another runs waits for it (queued)."""
        limits = self.quota.limits
        if limits and limits.max_eval_questions < 6:
            raise InputError(f"this demo evaluates at most {limits.max_eval_questions} questions at a time; a study "
                             "needs at least 6 (3 of each kind)")
        self.kbs.show(kb)  # an unknown knowledge base is refused here, with the existing ones named
        if not MIN_MINUTES <= minutes <= MAX_MINUTES:
            raise InputError(f"the time budget must be between {MIN_MINUTES:g} and {MAX_MINUTES:g} minutes, got "
                             f"{minutes:g}: below {MIN_MINUTES:g} there is no time to train anything useful")
        if not 3 <= questions <= MAX_QUESTIONS:
            raise InputError(f"questions of each kind must be between 3 and {MAX_QUESTIONS}, got {questions}")
        passages = len(self.kbs.fact_chunks(kb))
        if passages < 2:
            raise InputError(f"a fair study needs at least 2 passages (facts from one are trained on, from another "
                             f"only tested); this knowledge base has {passages}: add documents first", subject=kb)
        if qa_file:
            qa_path = Path(qa_file)
            if not qa_path.is_file():
                raise InputError("no such file", subject=str(qa_path))
            parse_examples(qa_path)  # the importer's line-numbered messages, before anything is started
        if limits:
            for action in ("train", "train", "evaluate", "dataset"):  # a study trains twice and evaluates once
                self.quota.spend(action)
        name = self.free_name(name or f"{kb}-study")
        folder = self.root / name
        folder.mkdir(parents=True)
        study = {"name": name, "kb": kb, "minutes": float(minutes), "questions": questions, "seed": seed,
                 "created": time.time(),
                 "data_dir": str(self.data_dir), "qa_file": None, "base_model": self.base_model,
                 "caps": {"train_minutes": limits.max_train_minutes, "eval_questions": limits.max_eval_questions}
                 if limits else None}
        if qa_file:
            study["qa_file"] = shutil.copy(qa_path, folder / f"qa{qa_path.suffix.lower()}")
        if self.lock_dir:
            study["lock_dir"] = str(self.lock_dir)
        write_json(folder / "state.json", {"state": "queued", "stage": None, "fraction": 0.0,
                                           "message": "waiting to start"})
        write_json(folder / "study.json", study)  # last: the marker that lists the study
        self._launch(folder)
        return self.get(name)

    def resume(self, name: str) -> dict:
        """Start a cancelled, failed or interrupted study again: finished stages are kept, a training job that
        was under way is resumed from its checkpoint (nothing is trained twice)."""
        folder = self.path(name)
        state = self.get(name)
        if state["state"] in ACTIVE:
            raise InputError(f"the study is {state['state']}; only a cancelled, failed or interrupted study can be "
                             "resumed", subject=name)
        if state["state"] == "completed":
            raise InputError("the study is complete; its report is ready (study show / study export)", subject=name)
        (folder / "cancel").unlink(missing_ok=True)
        status = read_json(folder / "state.json") or {}
        write_json(folder / "state.json", {**status, "state": "queued", "error": None, "resumed": True,
                                           "message": "resuming from its last finished stage"})
        self._launch(folder)
        return self.get(name)

    def resume_interrupted(self) -> list[str]:
        """Resume every study whose runner died while it ran (the machine or the app was stopped hard); the app
        calls this when it starts."""
        resumed = []
        for name in self.names():
            if self.get(name).get("interrupted"):
                self.resume(name)
                resumed.append(name)
        return resumed

    def _launch(self, folder: Path) -> None:
        log = open(folder / "log.txt", "a")
        process = subprocess.Popen(
            [sys.executable, "-m", "core.study_runner", str(folder)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        log.close()
        (folder / "pid").write_text(str(process.pid))

    # ---- watching -------------------------------------------------------------------------------------------
    def get(self, name: str) -> dict:
        """The study, where it is, and what its finished stages found."""
        folder = self.path(name)
        study = read_json(folder / "study.json")
        state = read_json(folder / "state.json") or {"state": "queued"}
        interrupted = state.get("state") in ACTIVE and not process_alive(folder)
        if interrupted:
            state = {**state, "state": "failed", "interrupted": True,
                     "error": "the study's process ended unexpectedly; resume it to continue from its last "
                              "finished stage"}
        stages = []
        for key, label in STAGES:
            result = read_json(stage_file(folder, key))
            stages.append({"stage": key, "label": label,
                           "state": "done" if result is not None else
                           ("running" if state.get("stage") == key and state.get("state") == "running" else
                            "waiting"),
                           "seconds": (result or {}).get("seconds")})
        return {**study, **state, "stages": stages, "report_ready": (folder / "report.json").exists()}

    def list(self) -> list[dict]:
        return [self.get(name) for name in reversed(self.names())]

    def wait(self, name: str, on_status=None, poll_s: float = 1.0) -> dict:
        """Block until the study ends; `on_status(study)` sees every change of stage or message."""
        return wait_until_final(lambda: self.get(name), lambda s: (s["state"], s.get("stage"), s.get("message")),
                                on_status, poll_s)

    def stage_result(self, name: str, stage: str) -> dict | None:
        return read_json(stage_file(self.path(name), stage))

    def cancel(self, name: str) -> dict:
        """Stop the study at the next step (a running training job is cancelled with it); resume continues."""
        folder = self.path(name)
        (folder / "cancel").touch()
        return self.get(name)

    # ---- the report -----------------------------------------------------------------------------------------
    def report(self, name: str) -> dict:
        report = read_json(self.path(name) / "report.json")
        if report is None:
            raise InputError(f"the report is not ready (the study is {self.get(name)['state']})", subject=name)
        return report

    def report_path(self, name: str, fmt: str = ".html") -> Path:
        self.report(name)
        return self.path(name) / REPORT_FORMATS[fmt]

    def export(self, name: str, target: str | Path) -> Path:
        """Copy the report to `target`; its suffix (.html, .md or .json) picks the format."""
        target = Path(target)
        if target.suffix.lower() not in REPORT_FORMATS:
            raise InputError(f"the report is written as {', '.join(REPORT_FORMATS)}; give a file name ending in "
                             "one of them", subject=str(target))
        if target.is_dir():
            raise InputError("that is a folder; give a file name", subject=str(target))
        shutil.copyfile(self.report_path(name, target.suffix.lower()), target)
        return target

    def delete(self, name: str) -> None:
        """Forget a finished study (its datasets, adapters and evaluation runs stay: they are normal ones)."""
        if self.get(name)["state"] in ACTIVE:
            raise InputError("the study is running; cancel it first", subject=name)
        shutil.rmtree(self.path(name))

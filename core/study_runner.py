"""A study's runner: the process that carries out its stages in order (core/study_stages.py), one study at a time,
saving each stage's result before the next starts, so that running it again continues where it stopped.

Run one by hand: python -m core.study_runner DATA_DIR/studies/<name>
"""
from __future__ import annotations

import contextlib
import sys
import time
import traceback
from pathlib import Path

from filelock import Timeout

from core.errors import LabError
from core.fileio import file_lock, read_json, write_json
from core.study import stage_file

# Each stage's share of the progress bar (measured on the demo pack on a 2-core CPU: training takes most).
WEIGHTS = {"questions": 0.12, "datasets": 0.02, "train_facts": 0.25, "train_raft": 0.35, "check": 0.06,
           "evaluate": 0.19, "report": 0.01}


class StudyRun:
    """What a stage gets: the study, its Lab, its earlier stages' results, progress and cancel."""

    def __init__(self, folder: Path):
        from core.config import load_settings
        from core.lab import Lab

        self.folder = folder
        self.study = read_json(folder / "study.json")
        self.name = self.study["name"]
        lock_dir = self.study.get("lock_dir")
        # the model the study started with, even if another has been chosen since (older studies: the current one)
        model = {"base_model": self.study["base_model"]} if self.study.get("base_model") else {}
        self.lab = Lab(load_settings(data_dir=Path(self.study["data_dir"]), **model),
                       device_lock_dir=Path(lock_dir) if lock_dir else None)
        self.lock_dir = Path(lock_dir) if lock_dir else self.lab.jobs.root
        self.stage = None
        self.started = time.time()

    # ---- state ------------------------------------------------------------------------------------------------
    def state(self, **update) -> None:
        status = read_json(self.folder / "state.json") or {}
        write_json(self.folder / "state.json", {**status, **update})

    def progress(self, fraction: float, message: str) -> None:
        """Progress within the current stage, shown as one bar across all stages with the time left."""
        from core.study import STAGES

        keys = [k for k, _ in STAGES]
        before = sum(WEIGHTS[k] for k in keys[:keys.index(self.stage)])
        overall = min(1.0, before + WEIGHTS[self.stage] * max(0.0, min(1.0, fraction)))
        elapsed = time.time() - self.started
        base = (read_json(self.folder / "state.json") or {}).get("fraction_at_start", 0.0)
        done_here = overall - base
        eta = elapsed / done_here * (1 - overall) if done_here > 0.03 and elapsed > 5 else None
        self.state(state="running", stage=self.stage, fraction=round(overall, 4), message=message,
                   eta_s=round(eta) if eta is not None else None)

    def cancelled(self) -> bool:
        return (self.folder / "cancel").exists()

    def check_cancel(self) -> None:
        from core.study_stages import StudyCancelled

        if self.cancelled():
            raise StudyCancelled()

    def result(self, stage: str) -> dict:
        return read_json(stage_file(self.folder, stage))

    def note(self, key: str, value) -> None:
        """Something a stage must find again if it is interrupted (say, the id of the training job it started)."""
        notes = read_json(self.folder / "notes.json") or {}
        write_json(self.folder / "notes.json", {**notes, key: value})

    def noted(self, key: str):
        return (read_json(self.folder / "notes.json") or {}).get(key)

    @contextlib.contextmanager
    def device(self):
        """Hold the device, as training jobs do, while this study answers questions: one heavy step at a time."""
        from core.jobs import device_lock

        lock, holder = device_lock(self.lock_dir, self.lab.settings.resolved_device)
        while True:
            self.check_cancel()
            try:
                lock.acquire()
                break
            except Timeout:
                who = (holder.read_text().strip() if holder.exists() else "") or "another job"
                self.state(message=f"waiting for the device ({who} is using it)")
                time.sleep(1.0)
        holder.write_text(f"study {self.name}")
        try:
            yield
        finally:
            holder.unlink(missing_ok=True)
            lock.release()


def run_study(folder: Path) -> int:
    from core.study import STAGES
    from core.study_stages import STAGE_FUNCTIONS, StudyCancelled

    run = StudyRun(folder)
    queue_lock = file_lock(run.lock_dir / "study.lock", timeout=0)
    holder = run.lock_dir / "study.holder"
    run.lock_dir.mkdir(parents=True, exist_ok=True)
    while True:  # one study at a time; a second one waits, visibly
        if run.cancelled():
            run.state(state="cancelled", message="cancelled before it started", finished=time.time())
            return 0
        try:
            queue_lock.acquire()
            break
        except Timeout:
            who = (holder.read_text().strip() if holder.exists() else "") or "another study"
            run.state(state="queued", message=f"queued: waiting for study {who} to finish", waiting_for=who)
            time.sleep(1.0)
    holder.write_text(run.name)
    start = (read_json(folder / "state.json") or {}).get("fraction", 0.0) or 0.0
    run.state(state="running", waiting_for=None, started=time.time(), fraction_at_start=start, error=None)
    try:
        for stage, label in STAGES:
            if run.result(stage) is not None:
                continue  # finished before: kept
            run.check_cancel()
            run.stage = stage
            run.progress(0.0, label)
            began = time.time()
            result = STAGE_FUNCTIONS[stage](run)
            write_json(stage_file(folder, stage), {**result, "seconds": round(time.time() - began, 1)})
            print(f"{stage} done in {time.time() - began:.0f} s", flush=True)
        run.state(state="completed", stage=None, fraction=1.0, message="finished: the report is ready",
                  eta_s=None, finished=time.time())
        return 0
    except StudyCancelled:
        run.state(state="cancelled", message="cancelled; resume it to continue from its last finished stage",
                  eta_s=None, finished=time.time())
        return 0
    except Exception as exc:  # noqa: BLE001 - the study fails with its reason; what is stored stays
        traceback.print_exc()
        reason = str(exc) if isinstance(exc, LabError) else f"{type(exc).__name__}: {exc}"
        run.state(state="failed", error=f"{dict(STAGES).get(run.stage, 'starting')}: {reason}", eta_s=None,
                  finished=time.time())
        return 1
    finally:
        holder.unlink(missing_ok=True)
        queue_lock.release()


if __name__ == "__main__":  # core/__init__ has already set the offline environment
    sys.exit(run_study(Path(sys.argv[1])))

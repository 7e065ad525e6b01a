"""Training jobs: each runs in its own process, so a crash or a cancel never takes the app (or the CLI) down, and a
page refresh finds the job again on disk.

data_dir/jobs/<id>/ holds job.json (what to do), status.json (written by the job as it goes), log.txt (its output)
and `cancel` (a flag the job polls every step). One job per device at a time: a job waits for the device's lock
file, and says which job it waits for; jobs started meanwhile form a visible queue.

Run a job by hand: python -m core.jobs DATA_DIR/jobs/<id>
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from filelock import Timeout

from core.errors import InputError
from core.fileio import FolderRegistry, file_lock, read_json as _read_json, write_json as _write_json

ACTIVE = ("queued", "running")
FINAL = ("completed", "cancelled", "failed")


class JobStore(FolderRegistry):
    marker, what = "job.json", "training job"

    def __init__(self, data_dir: Path, lock_dir: Path | None = None):
        """`lock_dir`: where the device lock lives when several data folders share the device (demo
        workspaces); by default the jobs folder."""
        self.data_dir = Path(data_dir)
        super().__init__(self.data_dir / "jobs")
        self.lock_dir = Path(lock_dir) if lock_dir else None

    def existing(self) -> str:
        return "latest: " + (", ".join(self.names()[-3:]) or "none yet")

    # ---- starting and watching ------------------------------------------------------------------------------
    def start(self, job: dict) -> str:
        """Write the job and launch its process; returns the job id."""
        now = time.time()  # ids sort by start time, to the microsecond: the queue runs in that order
        job_id = time.strftime("%Y%m%d-%H%M%S-", time.localtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}"
        folder = self.root / job_id
        folder.mkdir(parents=True)
        job = {**job, "id": job_id, "created": time.time(), "data_dir": str(self.data_dir)}
        if self.lock_dir:
            job["lock_dir"] = str(self.lock_dir)
        _write_json(folder / "job.json", job)
        _write_json(folder / "status.json", {"state": "queued", "step": 0, "total_steps": None})
        self._launch(folder)
        return job_id

    def resume(self, job_id: str) -> str:
        """Start a cancelled or failed job again: it continues from its last checkpoint."""
        folder = self.path(job_id)
        state = self.get(job_id)["state"]
        if state in ACTIVE:
            raise InputError(f"the job is {state}; only a cancelled or failed job can be resumed", subject=job_id)
        (folder / "cancel").unlink(missing_ok=True)
        _write_json(folder / "status.json", {"state": "queued", "step": 0, "total_steps": None, "resumed": True})
        self._launch(folder)
        return job_id

    def _launch(self, folder: Path) -> None:
        job = json.loads((folder / "job.json").read_text())
        log = open(folder / "log.txt", "a")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "core.jobs", str(folder)]
        processes = int(job.get("processes") or 1)
        if processes > 1:
            # Data parallel: accelerate's multi-process launcher (torchrun underneath) starts one process per GPU.
            # Without GPUs the same launch gives CPU workers that the Trainer joins over gloo (accelerate's own
            # --cpu mode would need MPI for several processes).
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                       str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(_free_port()), "-m", "core.jobs", str(folder)]
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent, env=env,
            start_new_session=True,  # a Ctrl-C in the terminal or the app's exit does not kill the training
        )
        log.close()
        (folder / "pid").write_text(str(process.pid))

    def get(self, job_id: str) -> dict:
        folder = self.path(job_id)
        job = json.loads((folder / "job.json").read_text())
        status = _read_json(folder / "status.json") or {"state": "queued"}
        if status.get("state") in ACTIVE and not process_alive(folder):
            status = {**status, "state": "failed", "error": crash_reason(folder, self.log_tail(job_id, 20))}
        return {**job, **status, "log_tail": self.log_tail(job_id, 20)}

    def list(self) -> list[dict]:
        return [self.get(i) for i in reversed(self.names())]

    def cancel(self, job_id: str) -> dict:
        folder = self.path(job_id)
        (folder / "cancel").touch()
        return self.get(job_id)

    def log_tail(self, job_id: str, lines: int = 20) -> str:
        path = self.root / job_id / "log.txt"
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 20000))
            return "\n".join(handle.read().decode("utf-8", "replace").splitlines()[-lines:])

    def wait(self, job_id: str, on_status=None, poll_s: float = 1.0) -> dict:
        """Block until the job ends; `on_status(status)` sees every change."""
        return wait_until_final(lambda: self.get(job_id), lambda s: (s["state"], s.get("step"), s.get("waiting_for")),
                                on_status, poll_s)


def wait_until_final(get, change_key, on_status=None, poll_s: float = 1.0) -> dict:
    """Poll `get()` until its state is final; `on_status` sees each status whose `change_key` differs from the
    last one shown (a job's step, a study's stage and message)."""
    last = None
    while True:
        status = get()
        key = change_key(status)
        if on_status and key != last:
            on_status(status)
            last = key
        if status["state"] in FINAL:
            return status
        time.sleep(poll_s)


def device_lock(lock_dir: Path, device: str):
    """The lock that lets one heavy step at a time use a device, and the file that says who holds it (for the
    queue's message). Training jobs and a study's evaluation take the same lock."""
    stem = f"device-{device.replace(':', '-')}"
    return file_lock(lock_dir / f"{stem}.lock", timeout=0), lock_dir / f"{stem}.holder"


def _older_queued_job(folder: Path, device: str) -> str | None:
    """The oldest job for the same device, started before this one, that is still waiting: it goes first (job ids
    sort by start time)."""
    from core.config import pick_device

    for other in sorted(p for p in folder.parent.iterdir() if p.is_dir() and p.name < folder.name):
        status = _read_json(other / "status.json") or {}
        job = _read_json(other / "job.json") or {}
        if (status.get("state") == "queued" and not (other / "cancel").exists() and process_alive(other)
                and pick_device(job.get("device") or "auto") == device):
            return other.name
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(folder: Path) -> bool:
    """Whether the process whose pid is in folder/pid still runs (a zombie does not)."""
    try:
        pid = int((folder / "pid").read_text())
    except (OSError, ValueError):
        return True  # being launched right now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child of this process lingers as a zombie until reaped: that is not alive
        reaped, code = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    if reaped:  # how it ended is known only here, once: kept for crash_reason
        (folder / "exit").write_text(str(-os.WTERMSIG(code) if os.WIFSIGNALED(code) else os.WEXITSTATUS(code)))
    return not reaped


def crash_reason(folder: Path, log_tail: str) -> str:
    """Why a job's process ended without saying so in its status: its signal or exit code where this process
    launched it, and the last line of its log."""
    import signal

    try:
        code = int((folder / "exit").read_text())
    except (OSError, ValueError):
        code = None
    last = next((line.strip() for line in reversed(log_tail.splitlines()) if line.strip()), "")
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = f"the training process was killed ({name})"
        if -code == signal.SIGKILL:
            why += ": most often the system ran out of memory (lower the batch size or the max length), or it was " \
                   "stopped from outside"
    else:
        why = "the training process ended unexpectedly" + (f" (exit code {code})" if code is not None else "")
    return why + (f"; the last line of its log: {last[:300]}" if last else "; its log is empty")


# ---- inside the job's process ------------------------------------------------------------------------------

def run_job(folder: Path) -> int:
    from core.adapters import AdapterStore
    from core.config import pick_device
    from core.datasets import DatasetStore
    from core.training_run import train

    job = json.loads((folder / "job.json").read_text())
    status_path = folder / "status.json"
    cancel_flag = folder / "cancel"
    if int(os.environ.get("RANK", "0")) > 0:
        # Another data-parallel worker (under accelerate launch): it trains alongside the first process, which
        # alone holds the device lock, writes the status and registers the adapter.
        train(job, folder, lambda update: None, cancel_flag.exists)
        return 0
    device = pick_device(job["device"])
    lock, holder = device_lock(Path(job.get("lock_dir") or folder.parent), device)
    status: dict = {"state": "queued", "step": 0, "total_steps": None}

    def report(update: dict) -> None:
        status.update(update)
        _write_json(status_path, status)

    while True:  # wait for the device, visibly, in order of arrival, and let a queued job be cancelled
        if cancel_flag.exists():
            report({"state": "cancelled", "error": None, "message": "cancelled before it started"})
            return 0
        ahead = _older_queued_job(folder, device)
        if ahead is None:
            try:
                lock.acquire()
                break
            except Timeout:
                ahead = (holder.read_text().strip() if holder.exists() else "") or "another job"
        report({"state": "queued", "waiting_for": ahead})
        time.sleep(1.0)
    holder.write_text(job["id"])
    report({"state": "running", "waiting_for": None, "started": time.time()})
    try:
        result = train(job, folder, report, cancel_flag.exists)
        cancelled = cancel_flag.exists()
        data = DatasetStore(Path(job["data_dir"]))
        adapters = AdapterStore(Path(job["data_dir"]))
        meta = {
            "base_model": job["base_model"], "dataset": job["dataset"],
            "dataset_sha256": data.info(job["dataset"]).sha256, "settings": job["settings"],
            "job": job["id"], "created": time.time(), "complete": not cancelled,
            **{k: result.get(k) for k in ("train_loss", "eval_loss", "steps", "total_steps", "seconds",
                                          "tokens_per_s", "device", "quantized_4bit", "precision", "packing",
                                          "optimizer", "trainer", "peak_gpu_memory_gb", "peak_memory_gb",
                                          "history", "method", "tuning", "from_adapter", "margins")},
        }
        name = job["adapter"]
        if name in adapters.names() and adapters.info(name).get("job") == job["id"]:
            adapters.delete(name)  # a resumed job replaces what its earlier run saved
        name = adapters.add(adapters.free_name(name), folder / "adapter", meta)
        report({"state": "cancelled" if cancelled else "completed", "adapter": name, "result": result,
                "message": "cancelled; the last checkpoint was saved as a usable adapter" if cancelled else
                "finished"})
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure ends this job only, with its reason shown
        traceback.print_exc()
        report({"state": "failed", "error": failure_message(exc, job)})
        return 1
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def failure_message(exc: BaseException, job: dict) -> str:
    """A failed job's error line. Running out of memory says which setting to lower, from the job's settings and
    its estimate (the same advice as the refusal before a run that would not fit)."""
    import torch

    from core.config import pick_device
    from core.training import TrainSettings, memory_advice, use_4bit

    gpu = isinstance(exc, torch.OutOfMemoryError)
    if not (gpu or isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)):
        return f"{type(exc).__name__}: {exc}"
    settings = TrainSettings(**job["settings"])
    quantized = use_4bit(settings, pick_device(job.get("device") or "auto"))
    advice = memory_advice(settings, quantized, (job.get("estimate") or {}).get("memory_parts_gb"))
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return f"out of {'GPU ' if gpu else ''}memory while training: {advice} ({detail})"


if __name__ == "__main__":  # core/__init__ has already set the offline environment
    sys.exit(run_job(Path(sys.argv[1])))

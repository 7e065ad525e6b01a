"""Demo mode's workspaces in the engine: each visitor's data apart, caps and rate limits with clear messages, idle
workspaces cleaned up. (The two-browser isolation test through the real app is in test_app.py.)"""
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import ROOT
from core.config import load_settings
from core.errors import InputError, LabError
from core.limits import DemoLimits, RateLimiter
from core.workspaces import Workspaces, demo_mode_from_env

FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


@pytest.fixture
def workspaces(tmp_path):
    clock = {"now": 1_000_000.0}
    settings = load_settings(data_dir=tmp_path / "data", model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"]))
    spaces = Workspaces(settings, demo=True, limits=DemoLimits(max_eval_questions=2, idle_minutes=60),
                        clock=lambda: clock["now"])
    spaces.clock_state = clock
    return spaces


def test_each_visitor_has_their_own_data(workspaces, handbook):
    alice, bob = workspaces.lab("alice-0123456789"), workspaces.lab("bob-0123456789")
    assert workspaces.lab("alice-0123456789") is alice  # the same visitor gets the same workspace back
    assert alice.settings.data_dir != bob.settings.data_dir
    assert alice.settings.data_dir.parent == bob.settings.data_dir.parent == workspaces.root
    assert alice.settings.max_file_mb == 5
    alice.kbs.ingest([handbook], kb="mine")
    assert alice.kbs.store.kb_names() == ["mine"] and bob.kbs.store.kb_names() == []
    with pytest.raises(InputError, match="no such knowledge base"):
        bob.kbs.preview("mine", "handbook.md")
    for bad in (None, "", "../../etc", "short"):
        with pytest.raises(LabError, match="no session"):
            workspaces.lab(bad)


def test_caps_and_rate_limits_are_refused_with_the_wait(workspaces, handbook):
    lab = workspaces.lab("carol-0123456789")
    items = [{"question": f"q{i}", "answer": "a"} for i in range(3)]
    with pytest.raises(InputError, match="the demo evaluates at most 2"):
        lab.evaluation.run(items, "x", ["base"])
    for _ in range(5):
        lab.quota.spend("dataset")
    with pytest.raises(InputError, match=r"this demo allows 5 dataset generations per hour; try again in 60 min"):
        lab.quota.spend("dataset")
    now = [0.0]
    limiter = RateLimiter({"ingest": (2, 600)}, clock=lambda: now[0])
    limiter.spend("ingest"), limiter.spend("ingest")
    now[0] = 599.0
    with pytest.raises(InputError, match="2 uploads per 10 minutes; try again in 2 s"):
        limiter.spend("ingest")
    now[0] = 600.0
    limiter.spend("ingest")  # the oldest use has left the window
    limiter.spend("unlimited action")


def test_idle_workspaces_are_deleted_and_active_ones_kept(workspaces, handbook):
    idle, busy = workspaces.lab("idle-0123456789"), workspaces.lab("busy-0123456789")
    idle.kbs.ingest([handbook])
    folder = idle.settings.data_dir
    os.utime(folder / ".last_used", (0, workspaces.clock_state["now"] - 61 * 60))
    assert workspaces.sweep() == [folder.name]
    assert not folder.exists() and busy.settings.data_dir.exists()
    fresh = workspaces.lab("idle-0123456789")  # the visitor comes back: a new, empty workspace
    assert fresh is not idle and fresh.kbs.store.kb_names() == []


def test_demo_mode_setting(tmp_path):
    assert demo_mode_from_env({"SPACE_ID": "user/space"}) is True
    assert demo_mode_from_env({"SPACE_ID": "user/space", "LAB_DEMO_MODE": "0"}) is False
    assert demo_mode_from_env({"LAB_DEMO_MODE": "1"}) is True and demo_mode_from_env({}) is False
    shared = Workspaces(load_settings(data_dir=tmp_path / "data"), demo=False)
    assert shared.lab(None) is shared.lab("anyone-0123456789") is shared.shared


@pytest.fixture
def queued_job(workspaces):
    """A visitor whose real training job is queued: the device lock the demo's jobs share is held here, so the job's
    own process waits for it, alive, for as long as the test needs. Cancelled and released after."""
    from core.fileio import file_lock

    lab = workspaces.lab("trainer-0123456789")
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    device = lab.settings.resolved_device.replace(":", "-")
    lock = file_lock(workspaces.root / f"device-{device}.lock", timeout=0)
    lock.acquire()
    job = lab.training.start("facts", lab.training.preset("quick", max_steps=1))
    pid = int((lab.jobs.path(job["id"]) / "pid").read_text())
    try:
        deadline = time.time() + 120
        while lab.jobs.get(job["id"]).get("waiting_for") is None:  # its process is up and waiting for the device
            assert time.time() < deadline and lab.jobs.get(job["id"])["state"] == "queued", lab.jobs.get(job["id"])
            time.sleep(0.2)
        yield lab, job["id"]
    finally:
        if lab.settings.data_dir.exists():
            lab.jobs.cancel(job["id"])
            assert lab.jobs.wait(job["id"], poll_s=0.2)["state"] == "cancelled"
        else:  # its folder was swept away under it: stop the process the test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        lock.release()


def _idle(workspaces, lab) -> None:
    os.utime(lab.settings.data_dir / ".last_used", (0, workspaces.clock_state["now"] - 61 * 60))


def test_an_idle_workspace_whose_job_waits_is_kept(workspaces, queued_job):
    lab, job_id = queued_job
    _idle(workspaces, lab)
    assert workspaces.sweep() == []
    assert lab.settings.data_dir.exists() and lab.jobs.get(job_id)["state"] == "queued"


def test_an_idle_workspace_whose_job_waits_is_kept_after_a_restart(workspaces, queued_job):
    lab, job_id = queued_job
    _idle(workspaces, lab)
    restarted = Workspaces(workspaces.settings, demo=True, limits=workspaces.limits, clock=workspaces.clock)
    assert restarted.sweep() == []
    assert lab.settings.data_dir.exists() and lab.jobs.get(job_id)["state"] == "queued"


def test_an_idle_workspace_whose_study_waits_is_kept_and_a_demo_study_spends_its_limits(workspaces, handbook):
    """A visitor's study queued behind another (the studies' lock the demo's workspaces share is held here): the
    sweep keeps its workspace. A study counts as two fine-tunes against the visitor's rate limit, and needs room for
    3 test questions of each kind."""
    from core.fileio import file_lock

    with pytest.raises(InputError, match="evaluates at most 2 questions at a time; a study needs at least 6"):
        workspaces.lab("tiny-0123456789").studies.start("anything")
    roomy = Workspaces(workspaces.settings, demo=True, limits=DemoLimits(idle_minutes=60), clock=workspaces.clock)
    roomy.clock_state = workspaces.clock_state
    workspaces = roomy
    lab = workspaces.lab("student-0123456789")
    lab.kbs.ingest([handbook, ROOT / "assets" / "demo" / "policies.md"], kb="notes")  # 2 passages: enough to start
    lock = file_lock(workspaces.root / "study.lock", timeout=0)
    lock.acquire()
    try:
        study = lab.studies.start("notes")
        deadline = time.time() + 120
        while not lab.studies.get(study["name"]).get("waiting_for"):  # its runner is up and waiting
            assert time.time() < deadline, lab.studies.get(study["name"])
            time.sleep(0.2)
        assert lab.studies.get(study["name"])["state"] == "queued"
        _idle(workspaces, lab)
        assert workspaces.sweep() == []
        assert lab.settings.data_dir.exists()
        with pytest.raises(InputError, match="this demo allows 3 fine-tunes per hour"):
            lab.studies.start("notes")  # the first study spent two of the three
        lab.studies.cancel(study["name"])
    finally:
        lock.release()
    assert lab.studies.wait(study["name"], poll_s=0.2)["state"] == "cancelled"

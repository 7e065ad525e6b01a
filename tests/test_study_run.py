"""The whole study, as a user runs it: started from the browser on the demo pack, the page refreshed mid-run, the
app and the study's processes killed mid-training and the app started again (the study resumes by itself from its
last finished stage, and the interrupted fine-tune from its checkpoint: nothing is trained twice), then the report
opened in the page and read from the CLI. One real study (the shortest: 5 minutes, 3 questions of each kind) serves every check."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import cli_here, start_app
from core.config import load_settings
from core.fileio import read_json
from core.lab import Lab
from core.metrics import normalise
from test_app import UI_TIMEOUT_MS, browser, open_app  # noqa: F401 - the browser fixture

STUDY = "demo-study"


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def progress_value(page) -> float:
    return float(page.locator("#study-progress").get_attribute("value"))


def raft_step(folder: Path, data_dir: Path) -> int:
    job = (read_json(folder / "notes.json") or {}).get("job_raft")
    status = read_json(data_dir / "jobs" / job / "status.json") if job else None
    return (status or {}).get("step") or 0


def kill(pid_file: Path) -> None:
    try:
        os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # the process and anything it started
    except ProcessLookupError:
        pass


@pytest.fixture
def lab_on():
    """A Lab on a given data folder (the one the app used)."""
    return lambda data_dir: Lab(load_settings(data_dir=data_dir,
                                              model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"])))


@pytest.fixture(scope="module")
def finished_study(browser, tmp_path_factory):  # noqa: F811 - pytest's fixture injection
    data_dir = tmp_path_factory.mktemp("study") / "data"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    seen: dict = {}
    app = start_app(data_dir)
    try:
        url = next(app)
        open_app(page, url)
        page.get_by_role("tab", name="Study: all in one click").click()
        page.locator("#study-demo").click()
        page.get_by_text("Demo pack loaded").wait_for()
        for box, value in (("#study-minutes", "5"), ("#study-questions", "3")):  # the shortest study
            page.locator(f"{box} input").fill(value)
            page.locator(f"{box} input").press("Tab")
        page.locator("#study-run").click()
        page.get_by_text(f"study {STUDY}").first.wait_for()
        folder = data_dir / "studies" / STUDY
        # A refresh mid-run finds the study again, and it goes on.
        wait_for(lambda: (folder / "stage-questions.json").exists(), 240, "the questions stage")
        page.reload()
        page.wait_for_selector("#page-ready [data-ready]", state="attached")
        page.locator("#study-status").get_by_text(STUDY).wait_for()
        before = progress_value(page)
        seen["after_refresh"] = before
        wait_for(lambda: progress_value(page) > before, 120, "progress after the refresh")
        # Mid-RAFT, past its first checkpoint: the app, the study's runner and the training job all die.
        wait_for(lambda: raft_step(folder, data_dir) >= 6, 400, "the RAFT fine-tune's 6th step")
        job = read_json(folder / "notes.json")["job_raft"]
        next(app, None)  # stops the app
        kill(folder / "pid")
        kill(data_dir / "jobs" / job / "pid")
        seen["killed_at_step"] = raft_step(folder, data_dir)
        seen["stages_done_at_kill"] = sorted(p.stem for p in folder.glob("stage-*.json"))
        app = start_app(data_dir)
        url = next(app)
        # The restarted app resumed it: a new runner is alive and the study is running again.
        open_app(page, url)
        page.get_by_role("tab", name="Study: all in one click").click()
        page.locator("#study-status").get_by_text(STUDY).wait_for()
        seen["status_after_restart"] = page.locator("#study-status").inner_text()
        page.locator("#study-report-body").wait_for(timeout=600_000)
        seen["report_text"] = page.locator("#study-report-body").inner_text()
        seen["report_file_shown"] = page.locator("#study-report-file").is_visible()
        page.screenshot(path=str(data_dir.parent / "study.png"), full_page=True)
    finally:
        context.close()
        next(app, None)
    return data_dir, seen


def test_the_study_survives_a_refresh_and_a_restart_and_trains_nothing_twice(finished_study, lab_on):
    data_dir, seen = finished_study
    assert seen["stages_done_at_kill"] == ["stage-datasets", "stage-questions", "stage-train_facts"]
    assert "Running" in seen["status_after_restart"] or "Queued" in seen["status_after_restart"]
    lab = lab_on(data_dir)
    study = lab.studies.get(STUDY)
    assert study["state"] == "completed" and all(s["state"] == "done" for s in study["stages"])
    jobs = lab.jobs.list()
    assert len(jobs) == 2, [j["adapter"] for j in jobs]  # one fine-tune per adapter, none started again
    raft = lab.studies.stage_result(STUDY, "train_raft")
    assert raft["resumed_from_step"] and 5 <= raft["resumed_from_step"] <= seen["killed_at_step"]
    assert lab.studies.stage_result(STUDY, "train_facts")["resumed_from_step"] is None
    assert sorted(lab.adapters.names()) == [f"{STUDY}-facts", f"{STUDY}-raft"]
    assert {f"{STUDY}-facts", f"{STUDY}-raft"} <= set(lab.datasets.names())
    assert len(lab.evals.ids()) == 2


def test_the_saved_training_sets_hold_no_test_question_and_no_new_fact_passage(finished_study, lab_on):
    data_dir, _ = finished_study
    lab = lab_on(data_dir)
    plan = lab.studies.stage_result(STUDY, "datasets")
    passages = lab.studies.stage_result(STUDY, "questions")["passages"]
    texts = [normalise(m["content"]) for kind in ("facts", "raft")
             for e in lab.datasets.examples(f"{STUDY}-{kind}") for m in e["messages"]]
    items = plan["items"]
    assert {i["kind"] for i in items} == {"trained", "new"}
    for item in items:
        assert not any(normalise(item["question"]) in t for t in texts), item["question"]
    new_chunks = {i["chunk_id"] for i in items if i["kind"] == "new"}
    assert new_chunks and not new_chunks & {i["chunk_id"] for i in items if i["kind"] == "trained"}
    for chunk in new_chunks:
        assert not any(normalise(passages[chunk]["text"]) in t for t in texts)
    assert plan["overlap"]["fair"] and plan["overlap"]["test_questions"] == len(items)


def test_the_report_opens_in_the_page_and_from_the_cli(finished_study, tmp_path):
    data_dir, seen = finished_study
    assert "reworded questions about facts it was trained on" in seen["report_text"]
    assert "questions about new facts" in seen["report_text"] and seen["report_file_shown"]
    shown = cli_here(["study", "show", STUDY, "--json"], data_dir)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)["report"]
    for kind in ("trained", "new"):
        assert set(report["results"][kind]) == {"base", "rag", "finetuned", "finetuned+rag", "raft+rag"}
        rag = report["results"][kind]["rag"]
        assert 0 <= rag["low"] <= rag["mean"] <= rag["high"] <= 1 and rag["n"] >= 3
    assert report["split"]["overlap"]["test_questions_in_training"] == 0
    assert report["split"]["overlap"]["new_fact_passages_in_training"] == 0
    assert report["split"]["trained_facts"] >= 3 and report["split"]["new_facts"] >= 3
    assert report["learned"]["facts"]["questions"] >= 3
    assert report["split"]["trained_facts"] == 3 and report["split"]["new_facts"] == 3  # as asked
    for suffix in ("html", "md", "json"):
        exported = cli_here(["study", "export", STUDY, str(tmp_path / f"report.{suffix}")], data_dir)
        assert exported.returncode == 0, exported.stderr
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    refused = cli_here(["study", "export", STUDY, str(tmp_path / "report.pdf")], data_dir)
    assert refused.returncode == 1 and ".html, .md, .json" in refused.stderr

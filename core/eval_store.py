"""Saved evaluation runs: data_dir/evals/<id>/ holds run.json (settings, state, summary) and results.jsonl (one line
per question, appended as each is answered, so a cancelled run keeps what it did); export as CSV or JSON."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from core.errors import InputError
from core.fileio import FolderRegistry, write_json


class EvalStore(FolderRegistry):
    marker, what = "run.json", "evaluation run"

    def __init__(self, data_dir: Path):
        super().__init__(Path(data_dir) / "evals")

    def existing(self) -> str:
        return "latest: " + (", ".join(self.ids()[-5:]) or "none yet")

    def new_id(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + f"{time.time_ns() % 1_000_000:06d}"

    def ids(self) -> list[str]:
        return self.names()

    def write_run(self, run: dict) -> None:
        folder = self.root / run["id"]
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "run.json", run, indent=2)

    def append_result(self, run_id: str, result: dict) -> None:
        with open(self.root / run_id / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")

    def load(self, run_id: str) -> dict:
        folder = self.path(run_id)
        run = json.loads((folder / "run.json").read_text())
        path = folder / "results.jsonl"
        run["results"] = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
        return run

    def list(self) -> list[dict]:
        return [{k: v for k, v in json.loads((self.root / i / "run.json").read_text()).items() if k != "summary"}
                for i in self.ids()]


def export(run: dict, path: Path) -> Path:
    """A run as CSV (one row per question and variant) or JSON (everything), by the file's extension."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(run, indent=2, ensure_ascii=False), encoding="utf-8")
        return path
    if path.suffix.lower() != ".csv":
        raise InputError("export to a .csv or .json file", subject=str(path))
    metrics = ["contains", "exact_match", "f1", "rouge_l", "chrf", "bleu", "label", "correct", "groundedness", "hit",
               "rr"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "question", "gold", "variant", "answer", "error", "total_ms", *metrics])
        for r in run["results"]:
            for variant, a in r["answers"].items():
                scores = a.get("scores") or {}
                writer.writerow([r["index"], r["question"], r["gold"], variant, a["answer"], a.get("error") or "",
                                 (a.get("timings") or {}).get("total_ms", ""),
                                 *[scores.get(m, "") if scores.get(m) is not None else "" for m in metrics]])
    return path


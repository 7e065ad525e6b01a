"""Votes from the Compare tab: an append-only JSONL log (one fsynced line per vote, so a crash loses at most the
vote being written), a leaderboard per knowledge base, and an export as preference pairs for DPO training."""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

from core.comparison import Comparison, answered
from core.errors import InputError
from core.fileio import write_atomic

TIE, ALL_BAD = "tie", "all_bad"


class VoteStore:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "votes" / "votes.jsonl"
        self._lock = threading.Lock()

    def record(self, comparison: Comparison, choice: str, blind: bool = False, labels: dict | None = None,
               comment: str = "") -> dict:
        """Store one vote. `choice` is the variant judged best, TIE, or ALL_BAD; `labels` maps the letters shown
        in blind mode to variants."""
        shown = [a["variant"] for a in answered(comparison.answers)]
        if len(shown) < 2:
            raise InputError("a vote needs at least two answers side by side")
        if choice not in (*shown, TIE, ALL_BAD):
            raise InputError(f"choose one of the answered columns ({', '.join(shown)}), {TIE!r} or {ALL_BAD!r}",
                             subject=repr(choice))
        vote = {
            "id": uuid.uuid4().hex,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "choice": choice,
            "blind": bool(blind),
            "labels": labels or {},
            "comment": (comment or "").strip()[:2000],
            "comparison": comparison.to_dict(),
        }
        line = json.dumps(vote, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return vote

    def all(self, kb: str | None = None) -> list[dict]:
        """Every vote, oldest first; with `kb`, only the votes on that knowledge base."""
        if not self.path.exists():
            return []
        votes = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                votes.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write: the votes before and after it still count
        return [v for v in votes if kb is None or v["comparison"].get("kb") == kb]

    def leaderboard(self, kb: str | None = None) -> list[dict]:
        """Per variant: how often it was shown, won outright, tied, or was in an all-bad vote; win rate is wins
        over votes it appeared in. Sorted best first."""
        board: dict[str, dict] = {}
        for vote in self.all(kb):
            for variant in (a["variant"] for a in answered(vote["comparison"]["answers"])):
                row = board.setdefault(variant, {"variant": variant, "votes": 0, "wins": 0, "ties": 0, "all_bad": 0})
                row["votes"] += 1
                if vote["choice"] == variant:
                    row["wins"] += 1
                elif vote["choice"] == TIE:
                    row["ties"] += 1
                elif vote["choice"] == ALL_BAD:
                    row["all_bad"] += 1
        for row in board.values():
            row["win_rate"] = round(row["wins"] / row["votes"], 3) if row["votes"] else 0.0
        return sorted(board.values(), key=lambda r: (-r["win_rate"], -r["votes"], r["variant"]))

    def preference_pairs(self, kb: str | None = None) -> list[dict]:
        """One pair per (winner, other answer) of each decided vote, in TRL's conversational preference layout
        (prompt, chosen, rejected). The prompt is the question as asked (and the system prompt, if one was
        set), without retrieved passages: training on it teaches the model the answer users preferred. Ties,
        all-bad votes and identical answers give no pair."""
        pairs = []
        for vote in self.all(kb):
            comparison, choice = vote["comparison"], vote["choice"]
            if choice in (TIE, ALL_BAD):
                continue
            answers = {a["variant"]: a for a in answered(comparison["answers"])}
            if choice not in answers:
                continue
            prompt = []
            system_prompt = (comparison.get("settings") or {}).get("system_prompt")
            if system_prompt:
                prompt.append({"role": "system", "content": system_prompt})
            prompt.append({"role": "user", "content": comparison["question"]})
            chosen = answers[choice]["answer"]
            for variant, other in answers.items():
                if variant == choice or other["answer"].strip() == chosen.strip():
                    continue
                pairs.append({
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": other["answer"]}],
                })
        return pairs

    def export(self, path: str | Path, format: str = "dpo", kb: str | None = None) -> dict:
        """Write the votes as a file: `dpo` (preference pairs, JSONL) or `jsonl` (every vote, whole)."""
        if format == "dpo":
            rows = self.preference_pairs(kb)
        elif format == "jsonl":
            rows = self.all(kb)
        else:
            raise InputError("the export format must be 'dpo' or 'jsonl'", subject=repr(format))
        path = Path(path)
        if path.is_dir():
            raise InputError("is a folder; give a file name such as votes.jsonl", subject=str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return {"path": str(path), "format": format, "rows": len(rows), "votes": len(self.all())}

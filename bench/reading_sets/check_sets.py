"""Check the reading-comprehension sets in this folder against the PDFs they were written from.

Every ``*.jsonl`` here holds one question per line: ``id, file, page, question, answer, split, kind``.
For kind "answer" the answer must occur in the text of that page *as the project's own reader extracts it*
(``core.documents.read_pages``; compared whitespace-collapsed and case-insensitive), and the question must not
contain the answer. For kind "no_answer" the answer must be empty. Why: the sets score RAG answers and retrieval
by page, so a gold answer the reader cannot see on the cited page (a changed PDF, a changed extractor, a typo)
would silently mark correct answers wrong. The PDFs are read in place from ``../shared/data/pdfs/`` relative to
the repository root, never copied into the repo; where that folder is absent the check is skipped (exit 0).

Run:  .venv/bin/python bench/reading_sets/check_sets.py     (exit 1 and a list of failures if any check fails)
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent  # repo root = parent of bench/
DATA = REPO.parent / "shared" / "data"
PDFS = DATA / "pdfs"
KINDS = {"answer", "no_answer"}
SPLITS = {"tune", "heldout"}


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def load_items() -> list[tuple[str, int, dict]]:
    """(set file name, line number, item) for every set whose items name a PDF."""
    out = []
    for path in sorted(HERE.glob("*.jsonl")):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                rows.append((path.name, n, json.loads(line)))
        if any(row[2].get("file") for row in rows):
            out.extend(rows)
    return out


def main() -> int:
    if not DATA.is_dir():
        print(f"{DATA} is absent: nothing to check against; skipped")
        return 0
    sys.path.insert(0, str(REPO))
    from core.documents import read_pages

    items = load_items()
    pages: dict[str, dict[str, str] | None] = {}
    failures: list[str] = []
    per_file: dict[str, dict] = defaultdict(lambda: {"items": 0, "pages": set(), "failures": 0})
    seen_ids: set[str] = set()

    for set_name, line, item in items:
        where = f"{set_name}:{line} {item.get('id')}"
        name, kind = item.get("file"), item.get("kind")
        stats = per_file[name or "(no file: no_answer)"]
        stats["items"] += 1
        problems = []
        if item.get("id") in seen_ids:
            problems.append("duplicate id")
        seen_ids.add(item.get("id"))
        if kind not in KINDS:
            problems.append(f"kind {kind!r} is not one of {sorted(KINDS)}")
        if item.get("split") not in SPLITS:
            problems.append(f"split {item.get('split')!r} is not one of {sorted(SPLITS)}")
        question, answer = item.get("question") or "", item.get("answer")
        if not question.strip():
            problems.append("empty question")
        if kind == "no_answer":
            if answer != "":
                problems.append(f"no_answer item has answer {answer!r}")
        elif kind == "answer":
            if not name or not answer or not str(answer).strip():
                problems.append("answer item needs a file and a non-empty answer")
            else:
                if name not in pages:
                    pdf = PDFS / name
                    pages[name] = ({p.label: norm(p.text) for p in read_pages(pdf, name, 200)}
                                   if pdf.is_file() else None)
                if pages[name] is None:
                    problems.append(f"{name} not found in {PDFS}")
                elif str(item.get("page")) not in pages[name]:
                    problems.append(f"page {item.get('page')!r} not in {name} ({len(pages[name])} pages)")
                else:
                    stats["pages"].add(str(item["page"]))
                    if norm(answer) not in pages[name][str(item["page"])]:
                        problems.append(f"answer {answer!r} not on page {item['page']}")
                if norm(answer) in norm(question):
                    problems.append(f"question contains the answer {answer!r}")
        if problems:
            stats["failures"] += 1
            failures.append(f"{where}: " + "; ".join(problems))

    for name, s in sorted(per_file.items()):
        covered = ",".join(sorted(s["pages"], key=lambda p: (len(p), p))) or "-"
        print(f"{name}: {s['items']} items, pages covered [{covered}], {s['failures']} failures")
    if failures:
        print(f"\n{len(failures)} FAILURES:")
        for f in failures:
            print("  " + f)
        return 1
    print(f"OK: {len(items)} items checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())

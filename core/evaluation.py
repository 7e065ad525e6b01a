"""Evaluation runs: every chosen variant answers every question of a test set; each answer is scored (core.metrics)
and saved as it comes, so a cancelled run keeps what it did and a past run can be reopened. Runs live in
data_dir/evals/<id>/ as run.json (settings, state, summary) and results.jsonl (one line per question)."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Callable

from core.errors import InputError
from core.generation import GenerationConfig
from core.metrics import LABELS, normalise, paired_difference_ci, score_answer, summarise
from core.progress import ProgressFn
from core.store import check_name
from core.variants import VARIANTS

CLASSIFY_INSTRUCTION = "Answer with one word: yes, no or maybe."


def example_to_item(example: dict) -> dict:
    """A training-format example (chat messages) as a test item: question, gold answer, gold source file."""
    messages = example["messages"]
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    if question.startswith("Passages:") and "\n\nQuestion: " in question:  # a RAFT example: the bare question
        question = question.rsplit("\n\nQuestion: ", 1)[1]
    source = example.get("source") or {}
    item = {"question": question, "answer": messages[-1]["content"], "source": source.get("file")}
    if source.get("chunk_id"):
        item["chunk_id"] = source["chunk_id"]  # generated from this passage: lets overlap with training be seen
    return item


def is_yes_no_maybe(items: list[dict]) -> bool:
    return bool(items) and all(normalise(i["answer"]) in LABELS for i in items)


class EvalStore:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "evals"

    def new_id(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + f"{time.time_ns() % 1_000_000:06d}"

    def folder(self, run_id: str) -> Path:
        folder = self.root / check_name(run_id, "evaluation run")
        if not (folder / "run.json").exists():
            known = ", ".join(self.ids()[-5:]) or "none yet"
            raise InputError(f"no such evaluation run (latest: {known})", subject=run_id)
        return folder

    def ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "run.json").exists())

    def write_run(self, run: dict) -> None:
        folder = self.root / run["id"]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "run.json.tmp"
        tmp.write_text(json.dumps(run, indent=2, ensure_ascii=False))
        os.replace(tmp, folder / "run.json")

    def append_result(self, run_id: str, result: dict) -> None:
        with open(self.root / run_id / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")

    def load(self, run_id: str) -> dict:
        folder = self.folder(run_id)
        run = json.loads((folder / "run.json").read_text())
        path = folder / "results.jsonl"
        run["results"] = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
        return run

    def list(self) -> list[dict]:
        return [{k: v for k, v in json.loads((self.root / i / "run.json").read_text()).items() if k != "summary"}
                for i in self.ids()]


def run_evaluation(lab, items: list[dict], variants: list[str], testset: str, kb: str | None = None,
                   adapter: str | None = None, config: GenerationConfig | None = None, top_k: int | None = None,
                   progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Answer every item with every variant (the variants of one question share one decode batch), score and
    save each as it comes; returns the finished (or cancelled) run with its summary."""
    if not items:
        raise InputError("the test set has no questions")
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise InputError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if any(VARIANTS[v].uses_adapter for v in variants) and not adapter:
        raise InputError("the fine-tuned variants need an adapter (--adapter NAME)")
    if any(VARIANTS[v].uses_retrieval for v in variants):
        if not kb:
            raise InputError("the RAG variants need a knowledge base (--kb NAME)")
        lab.kb_show(kb)  # an unknown knowledge base fails here, before any question is asked
    classify = is_yes_no_maybe(items)
    config = (config or GenerationConfig(max_new_tokens=8 if classify else lab.settings.max_new_tokens)).checked()
    store = lab.evals
    run = {
        "id": store.new_id(), "testset": testset, "questions": len(items), "variants": variants, "kb": kb,
        "adapter": adapter, "model": lab.settings.base_model, "classify": classify,
        "instruction": CLASSIFY_INSTRUCTION if classify else None,
        "settings": {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                     "top_k": top_k or lab.settings.top_k},
        "state": "running", "started": time.time(), "done": 0,
    }
    uses_kb = any(VARIANTS[v].uses_retrieval for v in variants)
    run["costs"] = lab.costs(kb if uses_kb else None, adapter)
    if adapter:
        run["adapter_info"] = {k: lab.adapters.info(adapter).get(k) for k in ("dataset", "seconds", "steps")}
        run["warnings"] = overlap_warnings(lab, items, run["adapter_info"]["dataset"])
    store.write_run(run)
    report = progress or (lambda fraction, message: None)
    results = []
    for index, item in enumerate(items):
        if should_stop and should_stop():
            run["state"] = "cancelled"
            break
        question = item["question"] + (f"\n{CLASSIFY_INSTRUCTION}" if classify else "")
        answers = {a.variant: a for a in lab.compare(question, variants, kb=kb, adapter=adapter, config=config,
                                                     top_k=top_k)}
        result = {"index": index, "question": item["question"], "gold": item["answer"],
                  "source": item.get("source"), "answers": {}}
        for variant in variants:
            answer = answers[variant]
            entry = {"answer": answer.answer, "error": answer.error, "timings": answer.timings}
            if not answer.error:
                rag = VARIANTS[variant].uses_retrieval
                entry["scores"] = score_answer(
                    answer.answer, item["answer"], classify=classify,
                    passages=[s["text"] for s in answer.sources] if rag else None,
                    retrieved=[s["file"] for s in answer.sources] if rag else None,
                    gold_source=item.get("source"))
                entry["sources"] = [{"file": s["file"], "page": s["page"], "score": s["score"]}
                                    for s in answer.sources]
            result["answers"][variant] = entry
        store.append_result(run["id"], result)
        results.append(result)
        run["done"] = index + 1
        report((index + 1) / len(items), f"Question {index + 1}/{len(items)}")
    else:
        run["state"] = "completed"
    run["finished"] = time.time()
    run["summary"] = summary_of(run, results)
    store.write_run(run)
    return {**run, "results": results}


def overlap_warnings(lab, items: list[dict], trained_on: str | None) -> list[str]:
    """Test questions the adapter has seen in training, or that were made from passages it trained on."""
    if trained_on not in lab.datasets.names():
        return []
    train = [example_to_item(e) for e in lab.datasets.examples(trained_on, "train")]
    seen = {normalise(t["question"]) for t in train}
    passages = {t["chunk_id"] for t in train if t.get("chunk_id")}
    warnings = []
    same = sum(normalise(i["question"]) in seen for i in items)
    if same:
        warnings.append(f"{same} of {len(items)} test questions are in the adapter's training data ({trained_on}): "
                        "the fine-tuned scores on them measure recall, not generalisation")
    shared = sum(i.get("chunk_id") in passages for i in items if i.get("chunk_id"))
    if shared:
        warnings.append(f"{shared} of {len(items)} test questions were made from passages the adapter trained on "
                        f"({trained_on}): easier for the fine-tuned variants than new material would be")
    return warnings


def summary_of(run: dict, results: list[dict]) -> dict:
    """Per variant: the metrics with intervals, plus mean latency, tokens/s and the error count."""
    summary = {}
    for variant in run["variants"]:
        answered = [r for r in results if not r["answers"][variant].get("error")]
        scores = [r["answers"][variant]["scores"] for r in answered]
        out = summarise(scores, [r["gold"] for r in answered], run["classify"]) if answered else {"n": 0}
        timings = [r["answers"][variant]["timings"] for r in answered if r["answers"][variant].get("timings")]
        if timings:
            out["latency_ms"] = sum(t["total_ms"] for t in timings) / len(timings)
            out["ttft_ms"] = sum(t["ttft_ms"] for t in timings) / len(timings)
            out["tokens_per_s"] = sum(t["tokens_per_s"] for t in timings) / len(timings)
        out["errors"] = len(results) - len(answered)
        summary[variant] = out
    return summary


FEW_QUESTIONS = 20


def headline_metric(run: dict) -> str:
    """The score a run is ranked by: accuracy for yes/no/maybe sets, else 'contains the gold answer'."""
    return "correct" if run.get("classify") else "contains"


def ranking(run: dict) -> list[tuple[str, float]]:
    """(variant, headline score), best first."""
    metric = headline_metric(run)
    return sorted(((v, s[metric]["mean"]) for v, s in (run.get("summary") or {}).items() if metric in s),
                  key=lambda x: -x[1])


def lead(run: dict) -> dict | None:
    """The best variant against the runner-up on the questions both answered: the difference in the headline
    score and its paired 95% interval (`clear` when the interval is above 0)."""
    ranked = ranking(run)
    if len(ranked) < 2:
        return None
    metric = headline_metric(run)
    best, second = ranked[0][0], ranked[1][0]
    both = [r for r in run.get("results", []) if all(not r["answers"][v].get("error") for v in (best, second))]
    if not both:
        return None
    diff, low, high = paired_difference_ci([r["answers"][best]["scores"][metric] for r in both],
                                           [r["answers"][second]["scores"][metric] for r in both])
    return {"best": best, "second": second, "difference": diff, "low": low, "high": high, "clear": low > 0}


def verdict(run: dict) -> str:
    """A plain-language summary of a run: who answered how many right, and what each costs."""
    summary, n = run.get("summary") or {}, run.get("done", 0)
    metric = headline_metric(run)
    ranked = ranking(run)
    if not ranked:
        return "No answers were scored yet."
    parts = [f"{VARIANTS[v].label} {score:.0%}" for v, score in ranked]
    what = "right (yes/no/maybe accuracy)" if metric == "correct" else "with the gold answer in the answer"
    text = f"On these {n} questions: " + ", ".join(parts) + f" {what}."
    best = ranked[0][0]
    ahead = lead(run)
    if ahead:
        first, second = VARIANTS[ahead["best"]].label, VARIANTS[ahead["second"]].label
        if ahead["clear"]:
            text += (f" {first} is ahead of {second} by {ahead['difference']:.0%} (95% interval of the difference "
                     f"on the same questions: {ahead['low']:.0%} to {ahead['high']:.0%}).")
        else:
            text += (f" {first} and {second} cannot be told apart yet (95% interval of the difference: "
                     f"{ahead['low']:+.0%} to {ahead['high']:+.0%}); more questions would.")
    if run.get("classify") and "macro_f1" in summary.get(best, {}):
        text += f" Macro-F1 of {VARIANTS[best].label}: {summary[best]['macro_f1']['mean']:.3f}."
        gold = [normalise(r["gold"]) for r in run.get("results", [])]
        if gold:
            common = max(set(gold), key=gold.count)
            text += (f" For scale: always answering \"{common}\" would score {gold.count(common) / len(gold):.0%}"
                     " here.")
    if n < FEW_QUESTIONS:
        text += f" Only {n} questions: treat this as a first look."
    base_first = summary.get("base", {}).get("ttft_ms")
    rag_first = summary.get("rag", {}).get("ttft_ms")
    if base_first and rag_first:
        # First-token time, not total: total time mostly measures how long each variant chose to talk.
        text += (f" Retrieving and reading the passages makes RAG's first word come {rag_first - base_first:.0f} ms "
                 "later than the base model's.")
    seconds = (run.get("adapter_info") or {}).get("seconds")
    if seconds:
        text += f" The adapter took {seconds / 60:.1f} min to train."
    text += _cost_sentence(run.get("costs") or {})
    return text


def _size(mb: float) -> str:
    return f"{mb:.1f} MB" if mb >= 0.1 else f"{mb * 1024:.0f} KB"


def _cost_sentence(costs: dict) -> str:
    """Memory and disk next to quality: what each way costs to keep."""
    parts = []
    if "model_mb" in costs:
        parts.append(f"the model's weights take {costs['model_mb']:.0f} MB of memory")
    if "index" in costs:
        parts.append(f"RAG adds the search model ({costs['embedder_mb']:.0f} MB) and an index of "
                     f"{costs['index']['chunks']} passages ({_size(costs['index']['mb'])} of text and vectors)")
    if "adapter_mb" in costs:
        parts.append(f"the fine-tuned adapter is {_size(costs['adapter_mb'])} on top of the model")
    return (" Costs: " + "; ".join(parts) + ".") if parts else ""


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


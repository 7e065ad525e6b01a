"""The study's report: the scores of the five variants on each kind of held-out question with their intervals, the
paired differences that decide who wins, what each costs, whether training took, and the advisor's reasoning
beside the measurement; as JSON, Markdown and a self-contained HTML page (charts inline, opens offline)."""
from __future__ import annotations

import html
import time
from pathlib import Path

from core.advisor import Situation, advise
from core.fileio import write_atomic, write_json
from core.metrics import bootstrap_ci, paired_difference_ci

VARIANT_LABELS = {"base": "Base model", "rag": "RAG", "finetuned": "Fine-tuned", "finetuned+rag": "Fine-tuned + RAG",
                  "raft+rag": "RAFT + RAG"}
KIND_WORDS = {"trained": "reworded questions about facts it was trained on",
              "new": "questions about new facts (never trained on)"}
# The comparisons that answer the user's question, for each kind of question.
PAIRS = [("rag", "base"), ("finetuned", "base"), ("finetuned+rag", "rag"), ("raft+rag", "rag"),
         ("raft+rag", "finetuned+rag")]
FEW = 20


def per_question(runs: dict, items: list[dict]) -> dict:
    """{kind: {variant: [contains score per question, in item order]}} from the two evaluation runs."""
    out = {kind: {v: [] for v in VARIANT_LABELS} for kind in ("trained", "new")}
    rows = {}
    for source, run in runs.items():
        for result in run["results"]:
            for variant, answer in result["answers"].items():
                name = "raft+rag" if source == "raft" else variant
                score = None if answer.get("error") else answer["scores"]["contains"]
                rows.setdefault(result["index"], {})[name] = score
    for index, item in enumerate(items):
        for variant in VARIANT_LABELS:
            out[item["kind"]][variant].append(rows.get(index, {}).get(variant))
    return out


def _score(values: list) -> dict:
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "low": None, "high": None, "n": 0}
    low, high = bootstrap_ci(got)
    return {"mean": sum(got) / len(got), "low": low, "high": high, "n": len(got)}


def _difference(a: list, b: list) -> dict | None:
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not both:
        return None
    diff, low, high = paired_difference_ci([x for x, _ in both], [y for _, y in both])
    return {"difference": diff, "low": low, "high": high, "n": len(both), "clear": low > 0 or high < 0}


def build_report(study: dict, stages: dict, runs: dict, settings) -> dict:
    plan, found, check = stages["datasets"], stages["questions"], stages["check"]
    scores = per_question(runs, plan["items"])
    results, comparisons, winners = {}, {}, {}
    for kind, by_variant in scores.items():
        results[kind] = {v: _score(values) for v, values in by_variant.items()}
        comparisons[kind] = [{"a": a, "b": b, **d} for a, b in PAIRS if (d := _difference(by_variant[a],
                                                                                      by_variant[b]))]
        ranked = sorted((v for v in results[kind] if results[kind][v]["mean"] is not None),
                        key=lambda v: -results[kind][v]["mean"])
        if len(ranked) >= 2:
            lead = _difference(by_variant[ranked[0]], by_variant[ranked[1]])
            winners[kind] = {"best": ranked[0], "second": ranked[1], **(lead or {})}
    facts_run = runs["facts"]
    summary = facts_run.get("summary") or {}
    # From the run where the four variants answered in one batch, so the times compare; RAFT + RAG answered in a
    # run of its own and reads the same prompt as fine-tuned + RAG.
    first_token = {v: round(s["ttft_ms"]) for v, s in summary.items() if s.get("ttft_ms")}
    training = {kind: {k: stages[f"train_{kind}"].get(k) for k in ("adapter", "seconds", "steps", "train_loss",
                                                                    "tokens_per_s", "device", "quantized_4bit",
                                                                    "peak_gpu_memory_gb")}
                for kind in ("facts", "raft")}
    costs = {"training_minutes": {k: round((t["seconds"] or 0) / 60, 1) for k, t in training.items()},
             "first_token_ms": first_token, **(facts_run.get("costs") or {})}
    hardware = "gpu" if settings.resolved_device.startswith("cuda") else "cpu"
    advice = advise(Situation(changes="sometimes", goal="facts", sources="yes",
                              examples="some" if study.get("qa_file") else "none", hardware=hardware))
    report = {
        "study": study["name"], "kb": study["kb"], "model": settings.base_model, "device": settings.resolved_device,
        "created": study["created"], "finished": time.time(), "budget_minutes": study["minutes"],
        "questions": {**found["stats"], "phrasings": found["phrasings"], "passages_in_kb": found["passages_in_kb"]},
        "split": {"trained_facts": len(plan["split"]["trained"]), "new_facts": len(plan["split"]["new"]),
                  "trained_passages": len(plan["split"]["trained_chunks"]),
                  "new_passages": len(plan["split"]["new_chunks"]), "overlap": plan["overlap"],
                  "passages_shown_to_rag": plan["shown_passages"]},
        "training": training, "training_settings": plan["settings"], "cuts": plan["cuts"], "learned": check,
        "results": results, "comparisons": comparisons, "winners": winners, "costs": costs,
        "advisor": {"choice": advice["choice"], "label": advice["label"],
                    "reasons": [r["reason"] for r in advice["reasons"] if r["points"] > 0]},
        "runs": {k: r["id"] for k, r in runs.items()},
        "stage_seconds": {k: (v or {}).get("seconds") for k, v in stages.items()},
    }
    report["verdict"] = verdict_lines(report)
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def verdict_lines(report: dict) -> list[str]:
    """The report in plain words, one sentence a line."""
    lines = []
    for kind in ("trained", "new"):
        result, win = report["results"][kind], report["winners"].get(kind)
        n = max(r["n"] for r in result.values())
        if not win:
            lines.append(f"On {KIND_WORDS[kind]}: nothing was answered.")
            continue
        ranked = sorted((v for v in result if result[v]["mean"] is not None), key=lambda v: -result[v]["mean"])
        scores = ", ".join(f"{VARIANT_LABELS[v]} {_pct(result[v]['mean'])}" for v in ranked)
        text = f"On {n} {KIND_WORDS[kind]}: {scores} had the answer right. "
        best, second = VARIANT_LABELS[win["best"]], VARIANT_LABELS[win["second"]]
        if win.get("difference") == 0:
            text += f"{best} and {second} tie at {_pct(result[win['best']]['mean'])}."
        elif win.get("clear"):
            text += (f"{best} wins, {win['difference']:.0%} ahead of {second} (95% interval of the difference on the "
                     f"same questions: {win['low']:.0%} to {win['high']:.0%}).")
        else:
            text += (f"{best} leads, but {best} and {second} cannot be told apart on {n} questions (95% interval of "
                     f"the difference: {win.get('low', 0):+.0%} to {win.get('high', 0):+.0%}): too small to decide.")
        lines.append(text)
    raft = next((c for c in report["comparisons"]["new"] + report["comparisons"]["trained"]
                 if c["a"] == "raft+rag" and c["b"] == "rag"), None)
    if raft:
        lines.append(f"RAFT + RAG against RAG on new facts: {raft['difference']:+.0%} (95% interval {raft['low']:+.0%} "
                     f"to {raft['high']:+.0%}).")
    learned = report["learned"]
    lines.append(
        f"Did training take? On its own training questions the fact-tuned adapter answered "
        f"{learned['facts']['learned']} of {learned['facts']['questions']} (the base model "
        f"{learned['facts']['without_adapter']}), the RAFT adapter with RAG {learned['raft']['learned']} of "
        f"{learned['raft']['questions']} (RAG alone {learned['raft']['without_adapter']}).")
    costs = report["costs"]
    minutes = costs["training_minutes"]
    first = costs["first_token_ms"]
    total = (report["finished"] - report["created"]) / 60
    lines.append(f"Cost: the whole study took {total:.1f} min, of which training {minutes['facts']} min (fact-tuned) "
                 f"and {minutes['raft']} min (RAFT); first "
                 "word after " + ", ".join(f"{first[v]} ms ({VARIANT_LABELS[v]})" for v in first) + ".")
    if report["cuts"]:
        lines.append("To fit the time budget: " + "; ".join(report["cuts"]) + ".")
    if min(report["split"]["trained_facts"], report["split"]["new_facts"]) < FEW:
        lines.append(f"Fewer than {FEW} questions of a kind: read this as a first look, not a verdict; a larger "
                     "knowledge base or a longer budget gives more.")
    lines.append(f"The advisor, from rules of thumb alone, suggests {report['advisor']['label']}; where the "
                 "measurement above disagrees, trust the measurement on your own documents.")
    return lines


def write_report(folder: Path, report: dict) -> None:
    write_json(folder / "report.json", report, indent=2)
    write_atomic(folder / "report.md", markdown(report))
    write_atomic(folder / "report.html", html_page(report))


def _table_rows(report: dict) -> list[list[str]]:
    rows = []
    for variant, label in VARIANT_LABELS.items():
        row = [label]
        for kind in ("trained", "new"):
            s = report["results"][kind][variant]
            row.append("n/a" if s["mean"] is None else f"{s['mean']:.0%} [{s['low']:.0%}, {s['high']:.0%}]")
        row.append(f"{report['costs']['first_token_ms'].get(variant, '')}")
        rows.append(row)
    return rows


HEADERS = ["Variant", "Reworded, trained facts", "New facts", "First word (ms)"]


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def markdown(report: dict) -> str:
    split, q = report["split"], report["questions"]
    lines = [f"# Study {report['study']}: RAG, fine-tuning, both, or RAFT for `{report['kb']}`", "",
             *[f"- {line}" for line in report["verdict"]], "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS),
             *["| " + " | ".join(row) + " |" for row in _table_rows(report)], "",
             "Scores: share of answers containing the gold answer, with 95% bootstrap intervals.", "",
             "## How it was measured", "",
             f"- Model {report['model']} on {report['device']}; time budget {report['budget_minutes']:g} min.",
             f"- Questions: {q['kept']} facts kept of {q['candidates']} candidate sentences "
             f"({', '.join(f'{k}: {v}' for k, v in q['dropped'].items()) or 'none dropped'}); the model wrote "
             f"{q['phrasings']['kept']} usable training phrasings of {q['phrasings']['written']}.",
             f"- Split by passage: {split['trained_facts']} trained facts in {_n(split['trained_passages'], 'passage')}, "
             f"{split['new_facts']} new facts in {_n(split['new_passages'], 'passage')}. Test questions found in training "
             f"data: {split['overlap']['test_questions_in_training']}; new facts' passages found in training data: "
             f"{split['overlap']['new_fact_passages_in_training']}.",
             f"- Training examples: {split['overlap']['training_examples']['facts']} fact-tuned, "
             f"{split['overlap']['training_examples']['raft']} RAFT; settings: epochs "
             f"{report['training_settings']['epochs']}, learning rate {report['training_settings']['learning_rate']}, "
             f"rank {report['training_settings']['rank']}; RAG and RAFT show the model "
             f"{_n(split['passages_shown_to_rag'], 'passage')}.",
             f"- Evaluation runs: {', '.join(report['runs'].values())} (in the Evaluate tab).", "",
             "## The advisor's reasoning", "", *[f"- {r}" for r in report["advisor"]["reasons"]], ""]
    return "\n".join(lines)


def _bars(report: dict, kind: str) -> str:
    """An inline SVG bar chart of one kind's scores with their intervals."""
    width, row, left = 460, 26, 130
    results = report["results"][kind]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(results) + 10}" '
             f'role="img" aria-label="{html.escape(KIND_WORDS[kind])}">']
    for n, (variant, s) in enumerate(results.items()):
        y = 5 + n * row
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{VARIANT_LABELS[variant]}</text>')
        if s["mean"] is None:
            continue
        span = width - left - 50
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{span * s["mean"]:.1f}" height="16" fill="#4e79a7"/>')
        parts.append(f'<line x1="{left + span * s["low"]:.1f}" x2="{left + span * s["high"]:.1f}" y1="{y + 11}" '
                     f'y2="{y + 11}" stroke="#222" stroke-width="2"/>')
        parts.append(f'<text x="{left + span + 6}" y="{y + 15}" font-size="12">{s["mean"]:.0%}</text>')
    return "".join(parts) + "</svg>"


def html_fragment(report: dict) -> str:
    """The report's body: the verdict, the charts, the table and how it was measured (the app shows this)."""
    e = html.escape
    table = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _table_rows(report))
    charts = "".join(f"<figure><figcaption>{e(KIND_WORDS[k].capitalize())}</figcaption>{_bars(report, k)}</figure>"
                     for k in ("trained", "new"))
    measured, advisor = markdown(report).split("## How it was measured", 1)[1].split("## The advisor's reasoning")

    def items(text: str) -> str:
        return "".join(f"<li>{e(line[2:])}</li>" for line in text.splitlines() if line.startswith("- "))

    return f"""<div id="study-report-body">
<h2>Study {e(report['study'])}: RAG, fine-tuning, both, or RAFT for “{e(report['kb'])}”</h2>
<ul class="verdict">{''.join(f'<li>{e(line)}</li>' for line in report['verdict'])}</ul>
{charts}
<table><tr>{''.join(f'<th>{e(h)}</th>' for h in HEADERS)}</tr>{table}</table>
<p>Scores: share of answers containing the gold answer; bars show 95% bootstrap intervals.</p>
<h3>How it was measured</h3><ul>{items(measured)}</ul>
<h3>The advisor's reasoning (rules of thumb, before any measurement)</h3><ul>{items(advisor)}</ul>
</div>"""


def html_page(report: dict) -> str:
    """The report as a page of its own: no scripts, no outside files, so it opens offline anywhere."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Study {html.escape(report['study'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.5}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}figure{{display:inline-block;margin:1em}}
</style></head><body>
{html_fragment(report)}
</body></html>
"""

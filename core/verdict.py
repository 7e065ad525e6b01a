"""What an evaluation run says in plain words: the ranking by the headline score, the lead of the best variant
with its paired interval, and the costs beside the scores."""
from __future__ import annotations

from core.metrics import normalise, paired_difference_ci
from core.variants import VARIANTS

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



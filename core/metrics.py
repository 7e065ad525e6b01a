"""Answer-quality metrics that run offline, without an LLM judge: per answer, then per variant with bootstrap
confidence intervals. ROUGE-L comes from rouge-score and chrF/BLEU from sacrebleu; the small SQuAD-style
normalisation, exact match and token F1 are written here because they are a few lines each."""
from __future__ import annotations

import re
import string
from functools import lru_cache

import numpy as np

LABELS = ("yes", "no", "maybe")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# What a model writes before its final answer ("Answer: ...", "The answer is ...").
_FINAL = re.compile(r"(?:final answer|answer)\s*(?:is\s*:?|:)\s*(.+)", re.IGNORECASE | re.DOTALL)
_STOP = frozenset("a an the of to in on at for and or but is are was were be been it its this that with as by from "
                  "which who what when where how why do does did not no yes i you he she they we".split())


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the usual reading-comprehension normalisation)."""
    text = (text or "").lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def final_answer(text: str) -> str:
    """The part of an answer after "Answer:" / "the answer is", else its first sentence, without [1]-style
    citations."""
    text = re.sub(r"\s*\[\d+\]", "", text or "").strip()
    match = _FINAL.search(text)
    if match:
        text = match.group(1)
    first = re.split(r"(?<=[.!?])\s+|\n", text.strip(), maxsplit=1)[0]
    return first.strip()


def exact_match(answer: str, gold: str) -> float:
    return float(normalise(final_answer(answer)) == normalise(gold))


def token_f1(answer: str, gold: str) -> float:
    predicted, truth = normalise(final_answer(answer)).split(), normalise(gold).split()
    if not predicted or not truth:
        return float(predicted == truth)
    common = sum(min(predicted.count(t), truth.count(t)) for t in set(predicted))
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def contains(answer: str, gold: str) -> float:
    """Lenient: the normalised gold answer appears in the normalised answer."""
    gold = normalise(gold)
    return float(bool(gold) and f" {gold} " in f" {normalise(answer)} ")


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(answer: str, gold: str) -> float:
    return _rouge().score(gold or "", answer or "")["rougeL"].fmeasure


@lru_cache(maxsize=1)
def _sacrebleu():
    from sacrebleu.metrics import BLEU, CHRF

    return CHRF(), BLEU(effective_order=True)


def chrf(answer: str, gold: str) -> float:
    return _sacrebleu()[0].sentence_score(answer or "", [gold or ""]).score / 100


def bleu(answer: str, gold: str) -> float:
    return _sacrebleu()[1].sentence_score(answer or "", [gold or ""]).score / 100


def label_of(answer: str) -> str | None:
    """yes / no / maybe: the first of these words in the answer, or None."""
    for word in normalise(answer).split():
        if word in LABELS:
            return word
    return None


def macro_f1(predicted: list[str | None], gold: list[str]) -> float:
    from sklearn.metrics import f1_score

    # The labels in the gold answers or the predictions: on PubMedQA's 500 questions always-"yes" scores 0.237.
    labels = [label for label in LABELS if label in gold or label in predicted]
    return float(f1_score(gold, [p or "none" for p in predicted], labels=labels, average="macro", zero_division=0))


def content_words(text: str) -> list[str]:
    return [w for w in normalise(text).split() if w not in _STOP]


def groundedness(answer: str, passages: list[str]) -> float | None:
    """Share of the answer's content words that occur in the passages it read (None without passages)."""
    if not passages:
        return None
    words = content_words(answer)
    if not words:
        return 0.0
    seen = set(content_words(" ".join(passages)))
    return sum(w in seen for w in words) / len(words)


def retrieval_ranks(retrieved: list[str], gold_source: str | None) -> tuple[float | None, float | None]:
    """(hit@k, reciprocal rank) of the gold source among the retrieved sources, in order; None without a gold one."""
    if not gold_source:
        return None, None
    for rank, source in enumerate(retrieved, 1):
        if source == gold_source:
            return 1.0, 1.0 / rank
    return 0.0, 0.0


def score_answer(answer: str, gold: str, passages: list[str] | None = None, retrieved: list[str] | None = None,
                 gold_source: str | None = None, classify: bool = False) -> dict:
    """Every metric of one answer against its gold answer."""
    scores = {
        "contains": contains(answer, gold),
        "exact_match": exact_match(answer, gold),
        "f1": token_f1(answer, gold),
        "rouge_l": rouge_l(answer, gold),
        "chrf": chrf(answer, gold),
        "bleu": bleu(answer, gold),
    }
    if classify:
        predicted = label_of(answer)
        scores["label"] = predicted
        scores["correct"] = float(predicted == normalise(gold))
    if passages is not None:
        scores["groundedness"] = groundedness(answer, passages)
    if retrieved is not None:
        scores["hit"], scores["rr"] = retrieval_ranks(retrieved, gold_source)
    return scores


def bootstrap_ci(values: list[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if len(data) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_difference_ci(first: list[float], second: list[float], resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Mean of first - second over the same questions, with a 95% paired bootstrap interval: two variants answer
    the same questions, so their difference is much surer than their two separate intervals suggest."""
    diff = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_macro_f1_ci(predicted: list, gold: list[str], resamples: int = 500, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(gold)
    scores = []
    for _ in range(resamples):
        index = rng.integers(0, n, size=n)
        scores.append(macro_f1([predicted[i] for i in index], [gold[i] for i in index]))
    return float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))


QUALITY = ("contains", "exact_match", "f1", "rouge_l", "chrf", "bleu", "correct", "groundedness", "hit", "rr")


def summarise(per_answer: list[dict], gold: list[str], classify: bool) -> dict:
    """Means with 95% bootstrap intervals for each metric present, plus accuracy/macro-F1 for yes/no/maybe."""
    summary: dict = {"n": len(per_answer)}
    for metric in QUALITY:
        values = [s.get(metric) for s in per_answer if s.get(metric) is not None]
        if values:
            low, high = bootstrap_ci(values)
            summary[metric] = {"mean": float(np.mean(values)), "low": low, "high": high, "n": len(values)}
    if classify:
        predicted = [s.get("label") for s in per_answer]
        low, high = bootstrap_macro_f1_ci(predicted, [normalise(g) for g in gold])
        summary["macro_f1"] = {"mean": macro_f1(predicted, [normalise(g) for g in gold]), "low": low, "high": high,
                               "n": len(gold)}
    return summary

"""The study's questions: short-answer facts built from a knowledge base's passages, each with its answer span,
its source passage, one test question and several training phrasings, and the filter that keeps the usable ones.

A fact is a sentence of a passage that states something checkable (core/qa_generation.fact_sentences) and the span
of it that answers a question: a number with its unit, or a name. The test question is the sentence itself turned
into a question ("The company was founded in which year by Oswin Thackery?"): it is made, not generated, so it is
always answerable from its passage and never gives its answer away. Training phrasings are worded differently: the
sentence with a blank to fill in, and questions the model writes for the answer (kept only where they pass the
same checks). So a fine-tuned model is tested on a question it never saw, about a fact it did see.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from core.generation import GenerationConfig, RowDone, stream_chat
from core.metrics import normalise
from core.qa_generation import content_words, fact_sentences, first_question

_WORDS_AFTER_NUMBER = "of and in by the to on at for per from with a an or each every".split()
# A number with its unit ("27 days", "41 hours"), or a number that starts a name ("14 Candlewharf Lane").
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_UNIT = re.compile(r"\s+(?!(?:%s)\b)([a-z][a-z-]+)" % "|".join(_WORDS_AFTER_NUMBER))
_NAME = re.compile(r"[A-Z][\w'’-]*(?:\s+(?:of|the|de|van|von|and)?\s*[A-Z][\w'’-]*)*")
# A number that starts a name ends its clause: "at 14 Candlewharf Lane, ..."; "230 Saudi patients" is a count.
_NAMED_NUMBER = re.compile(r"\s+[A-Z][\w'’-]*(?:\s+[A-Z][\w'’-]*)*(?=[,.;:]|$)")
_ADJECTIVE_UNIT = re.compile(r"(?:\s+[A-Z][\w'’-]*)+\s+([a-z][a-z-]+)")
_YEAR = re.compile(r"^(1[5-9]|20)\d\d$")
_WEEKDAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
MIN_WORDS, MAX_WORDS = 4, 40
MAX_ANSWER_WORDS = 6
# Of the prompts tried with the bundled 135M model, this one gave the most questions that pass the checks.
PHRASING_PROMPT = 'Sentence: {sentence}\n\nWrite a question about this sentence. Its answer must be "{answer}".'


@dataclass
class Fact:
    id: str  # "<chunk id>#<n>"
    chunk_id: str
    file: str
    page: str | int | None
    sentence: str
    answer: str
    question: str  # the test question: never trained on
    phrasings: list[str] = field(default_factory=list)  # the training questions
    phrasings_by_model: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def answer_spans(sentence: str) -> list[tuple[int, int, str]]:
    """Candidate answers in a sentence, in order: (start, end, kind) with kind year / count / percent / number /
    name. Not a name: the first word of the sentence or of a clause (its subject, or just a capital), an acronym
    or a Roman numeral, anything in brackets (an abbreviation's expansion or a statistic)."""
    spans = []
    for match in _NUMBER.finditer(sentence):
        start, end = match.span()
        near = sentence[max(0, start - 2):start] + sentence[end:end + 2]
        if _bracketed(sentence, start) or any(mark in near for mark in "=<>±"):
            continue  # a statistic (p = 0.05, n = 12, 83.2 ± 29), not a fact
        named = _NAMED_NUMBER.match(sentence, end)
        unit = _UNIT.match(sentence, end) or _ADJECTIVE_UNIT.match(sentence, end)
        if sentence[end:end + 1] == "%":
            spans.append((start, end + 1, "percent"))
        elif named:
            spans.append((start, named.end(), "name"))
        elif unit:
            spans.append((start, unit.end(), "count"))
        else:
            spans.append((start, end, "year" if _YEAR.match(match.group()) else "number"))
    taken = [range(s, e) for s, e, _ in spans]
    for match in _NAME.finditer(sentence):
        start, end = match.span()
        text = match.group()
        if (start == 0 or sentence[:start].rstrip()[-1:] in (":", ";", ".") or any(start in r for r in taken)
                or _bracketed(sentence, start) or _acronym(text)):
            continue
        spans.append((start, end, "name"))
    return sorted(spans)


def _acronym(text: str) -> bool:
    """"DCIS", "OAB-q SS", "III": mostly capitals, a poor answer (and often expanded elsewhere in the sentence)."""
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) > 0.6 * len(letters)
_LABEL = re.compile(r"^(?:[A-Z][A-Z ]{2,30}):\s+")  # "METHODS: ", "RESULTS: " in structured abstracts


def _bracketed(sentence: str, at: int) -> bool:
    return sentence[:at].count("(") > sentence[:at].count(")")


def _wh(sentence: str, start: int, end: int, kind: str) -> str:
    before = sentence[:start].rstrip().split()
    previous = before[-1].lower() if before else ""
    if kind == "year":
        return "which year"
    if kind == "count":
        unit = sentence[start:end].split()[-1]
        return f"how many {unit}"
    if kind == "number":
        return "what number"
    if kind == "percent":
        return "what percentage"
    if sentence[start:end].split()[0].lower().rstrip("s") in _WEEKDAYS:
        return "which days" if sentence[start:end].split()[0].endswith("s") else "which day"
    return "whom" if previous == "by" else "what"


def echo_question(sentence: str, start: int, end: int, kind: str) -> str:
    """The sentence as a question, the answer replaced by a question word: "The mascot is a moth named what?"."""
    body = sentence[:start] + _wh(sentence, start, end, kind) + sentence[end:]
    return body.rstrip(" .!") + "?"


def cloze(sentence: str, start: int, end: int) -> str:
    return "Fill in the blank: " + sentence[:start] + "___" + sentence[end:]


def _gives_away(question: str, answer: str) -> bool:
    """The answer, or its number or any of its names, is in the question ("a 180-gram lantern" gives away
    "180 grams"; "Okonjo-Vale's" gives away "Maren Okonjo-Vale")."""
    if f" {normalise(answer)} " in f" {normalise(question)} ":
        return True
    keys = [normalise(w) for w in re.findall(r"\d[\d,.]*|[A-Z][\w'’-]+", answer)]
    asked = normalise(question.replace("-", " ")).split() + normalise(question).split()
    return any(key and any(word.startswith(key) for word in asked) for key in keys)


_PREAMBLE = re.compile(r"^[^?]*\bquestions?\b[^?:]*:\s*", re.I)
_META = re.compile(r"^(can|could|would) (you|the sentence|i)\b|\b(this|the) sentence\b", re.I)


def model_question(reply: str) -> str:
    """The question in a model's reply, without a preamble ('A question about this sentence would be: "...') or
    quotes."""
    text = _PREAMBLE.sub("", reply.strip().split("\n")[0]).strip().strip('"“”\'')
    return first_question(text).strip().strip('"“”\'')


def question_problem(question: str, answer: str, sentence: str) -> str | None:
    """Why a question is unusable for this fact (None: usable)."""
    words = question.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return "too short or too long"
    if "\n" in question.strip():
        return "more than one line"
    if _gives_away(question, answer):
        return "gives the answer away"
    if _META.search(question):
        return "about the sentence, not the fact"
    if not (content_words(question) & (content_words(sentence) - content_words(answer))):
        return "not about the sentence"
    return None


def facts_from_chunk(chunk: dict, per_chunk: int) -> tuple[list[Fact], Counter]:
    """The facts of one passage (at most `per_chunk`), and why other sentences were dropped."""
    facts, dropped = [], Counter()
    for sentence in fact_sentences(chunk["text"], limit=per_chunk * 2):
        if len(facts) >= per_chunk:
            break
        sentence = _LABEL.sub("", sentence)
        spans = answer_spans(sentence)
        if not spans:
            dropped["no short answer in the sentence"] += 1
            continue
        start, end, kind = spans[0]  # the first after the subject: what the sentence says about it
        answer = sentence[start:end].strip(" ,;:")
        if len(answer.split()) > MAX_ANSWER_WORDS:
            dropped["answer too long"] += 1
            continue
        if f" {normalise(answer)} " not in f" {normalise(chunk['text'])} ":
            dropped["answer not found in its passage"] += 1  # e.g. the sentence was re-joined across lines
            continue
        question = echo_question(sentence, start, end, kind)
        problem = question_problem(question, answer, sentence)
        if problem:
            dropped[f"question {problem}"] += 1
            continue
        facts.append(Fact(f"{chunk['id']}#{len(facts)}", chunk["id"], chunk["file"], chunk.get("page"), sentence,
                          answer, question, [cloze(sentence, start, end)]))
    return facts, dropped


def build_facts(chunks: list[dict], per_chunk: int = 3, limit: int | None = None) -> tuple[list[Fact], dict]:
    """The passages' facts, in the passages' order, up to `limit`; near-duplicates dropped (the same answer to a
    near-identical sentence); with the counts of what was kept and why the rest was dropped."""
    facts, dropped, seen = [], Counter(), {}
    candidates = 0
    for chunk in chunks:
        if limit is not None and len(facts) >= limit:
            break
        found, why = facts_from_chunk(chunk, per_chunk)
        dropped.update(why)
        candidates += len(found) + sum(why.values())
        for fact in found:
            key = normalise(fact.answer)
            words = set(normalise(fact.sentence).split())
            if any(_overlap(words, other) >= 0.8 for other in seen.get(key, [])):
                dropped["near-duplicate of another fact"] += 1
                continue
            seen.setdefault(key, []).append(words)
            facts.append(fact)
    return facts, {"candidates": candidates, "kept": len(facts), "dropped": dict(dropped)}


def _overlap(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def add_model_phrasings(facts: list[Fact], generator, per_fact: int = 2, progress=None) -> dict:
    """The model writes questions for each fact's answer (`per_fact` samples, one decode batch); those that pass
    the checks, and differ from the fact's test question and from each other, become training phrasings."""
    conversations = [[{"role": "user", "content": PHRASING_PROMPT.format(sentence=f.sentence, answer=f.answer)}]
                     for f in facts for _ in range(per_fact)]
    replies = [""] * len(conversations)
    config = GenerationConfig(max_new_tokens=40, temperature=0.7 if per_fact > 1 else 0.0)
    for event in stream_chat(generator, conversations, config, together=True):
        if isinstance(event, RowDone):
            replies[event.row] = event.text.strip()
            if progress:
                done = sum(bool(r) for r in replies)
                progress(done / len(replies), f"Writing questions {done}/{len(replies)}")
    kept, rejected = 0, Counter()
    for n, fact in enumerate(facts):
        taken = {normalise(fact.question)} | {normalise(p) for p in fact.phrasings}
        for reply in replies[n * per_fact:(n + 1) * per_fact]:
            question = model_question(reply)
            problem = question_problem(question, fact.answer, fact.sentence) or (
                None if question.endswith("?") else "not a question")
            if not problem and normalise(question) in taken:
                problem = "the same as another phrasing"
            if problem:
                rejected[problem] += 1
                continue
            taken.add(normalise(question))
            fact.phrasings.insert(fact.phrasings_by_model, question)
            fact.phrasings_by_model += 1
            kept += 1
    return {"written": len(replies), "kept": kept, "rejected": dict(rejected)}

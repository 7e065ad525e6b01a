"""Training data from a knowledge base: question/answer pairs grounded in its chunks, and RAFT examples.

The answers are extracted, not generated: each is a sentence of a chunk that states a fact (a number, a name, a
definition), so every answer is true to the documents whatever model is used. The model only writes the question
for that sentence; where its question is unusable (no question mark, no word in common with the sentence, a copy of
it), a template question is used instead. A bigger base model writes better questions; the bundled 135M one writes
usable ones for about half the sentences (measured in tests/test_qa_generation.py).

RAFT (Zhang et al. 2024): each example shows the question with the oracle chunk and k distractor chunks from the same
knowledge base, shuffled; a share P keep the oracle, the rest only distractors. The target quotes the oracle sentence
and then answers, and the prompt is exactly the one the RAG variants use, so training matches use.
"""
from __future__ import annotations

import random
import re

from core.documents import cite
from core.errors import InputError
from core.generation import GenerationConfig, RowDone, stream_chat
from core.progress import ProgressFn, silent
from core.retrieval import Hit

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+|\d[\d,.]*")
_FACT_SIGNAL = re.compile(r"\d|\b(is|was|are|were|has|have|called|named|founded|located|means|serves)\b")
_STOP = {"the", "a", "an", "of", "in", "on", "at", "to", "and", "or", "for", "by", "with", "is", "was", "are", "were",
         "it", "its", "this", "that", "what", "which", "who", "when", "where", "how", "does", "do", "did", "be", "as"}
# Of three phrasings tried with the bundled 135M model, this one gave usable questions (2 of 3 sentences); the
# others made it praise the question or repeat the sentence.
QUESTION_PROMPT = "Sentence: {sentence}\n\nWrite a question whose answer is in this sentence."
_CITATION_MARK = re.compile(r"\[\d+\]")


def fact_sentences(text: str, limit: int = 2) -> list[str]:
    """The sentences of a chunk most likely to state a checkable fact, best first."""
    # Wrapped lines (PDFs) are joined back into sentences; headings, list items, table rows and blank lines end a
    # block, so a heading never becomes the start of an answer.
    blocks, current = [], []
    for line in _CITATION_MARK.sub("", text).splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "|", "-", "*")):
            blocks.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    blocks.append(" ".join(current))
    sentences = [s.strip() for block in blocks for s in _SENTENCE.split(block) if s.strip()]
    scored = []
    for index, sentence in enumerate(sentences):
        words = _WORD.findall(sentence)
        numbers = sum(w[0].isdigit() for w in words)
        if (not 6 <= len(words) <= 45 or not sentence[0].isupper() or not sentence.endswith((".", "!"))
                or numbers > 0.3 * len(words) or "`" in sentence):
            continue  # fragments, headings, tables and code make poor answers
        score = len(_FACT_SIGNAL.findall(sentence.lower())) + sum(w[0].isupper() for w in words[1:]) * 0.5
        scored.append((score, -index, sentence))
    return [s for _, _, s in sorted(scored, reverse=True)[:limit]]


def content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP and len(w) > 2}


_GENERIC = re.compile(r"^(what is the answer to (this|the) question|what does (this|that) mean)\b", re.I)


def first_question(reply: str) -> str:
    """The model's first real question: it sometimes opens with a generic one ("What is the answer to this
    question?") before the real one."""
    parts = re.findall(r"[^?]*\?", reply.split("\n")[0])
    real = [p.strip() for p in parts if p.strip() and not _GENERIC.match(p.strip())]
    return real[0] if real else reply.strip()


def usable_question(question: str, sentence: str) -> bool:
    question = question.strip()
    words = _WORD.findall(question)
    return (question.endswith("?") and 4 <= len(words) <= 30 and "\n" not in question
            and bool(content_words(question) & content_words(sentence))
            and content_words(sentence) - content_words(question) != set())  # the question must not give it all away


_NAME_RUN = re.compile(r"[A-Z][\w'’.-]*(?:\s+(?:of|and|the|de|for)?\s*[A-Z][\w'’.-]*)*")


def template_question(sentence: str, file: str) -> str:
    """A deterministic question about the sentence's most specific name (its longest run of capitalised words),
    e.g. "What does handbook.md say about the Office of Quiet Hours?"."""
    runs = [m.group().strip() for m in _NAME_RUN.finditer(sentence)]
    first = sentence.split()[0]
    runs = [r for r in runs if r != first and not r.startswith(first + " ") or len(r.split()) > 2]
    topic = max(runs, key=lambda r: len(r.split()), default=" ".join(sentence.split()[:6]))
    return f"What does {file} say about {topic.rstrip('.,;:')}?"


def generate_pairs(chunks: list[dict], write_questions, count: int, seed: int = 42) -> list[dict]:
    """Q&A examples from chunks ({id, text, file, page}); `write_questions(sentences)` returns a question per
    sentence (the model), or None to use template questions only."""
    rng = random.Random(seed)
    candidates = []
    per_chunk = min(3, -(-count // len(chunks)))  # spread over many chunks; a small knowledge base gives up to 3 each
    for chunk in rng.sample(chunks, len(chunks)):
        for sentence in fact_sentences(chunk["text"], limit=per_chunk):
            candidates.append((chunk, sentence))
        if len(candidates) >= count:
            break
    candidates = candidates[:count]
    if not candidates:
        raise InputError("no sentences that state facts were found in this knowledge base")
    written = write_questions([s for _, s in candidates]) if write_questions else [None] * len(candidates)
    examples = []
    for (chunk, sentence), question in zip(candidates, written):
        question = first_question(question or "")
        by_model = usable_question(question, sentence)
        question = question if by_model else template_question(sentence, chunk["file"])
        examples.append({
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": sentence}],
            "gold": sentence,
            "source": {"chunk_id": chunk["id"], "file": chunk["file"], "page": chunk["page"],
                       "question_by": "model" if by_model else "template"},
        })
    return examples


def raft_examples(pairs: list[dict], chunks: list[dict], distractors: int = 3, oracle_share: float = 0.8,
                  seed: int = 42) -> list[dict]:
    """RAFT examples from grounded pairs: the RAG prompt with the oracle chunk (for a share `oracle_share`) and
    `distractors` other chunks, shuffled; the target quotes the oracle sentence, then answers."""
    from core.variants import get_variant

    if not 0 <= oracle_share <= 1:
        raise InputError(f"the oracle share must be between 0 and 1, got {oracle_share}")
    if distractors < 0 or distractors >= len(chunks):
        raise InputError(f"distractors must be between 0 and {len(chunks) - 1} (the knowledge base has "
                         f"{len(chunks)} chunks), got {distractors}")
    rng = random.Random(seed)
    by_id = {c["id"]: c for c in chunks}
    rag = get_variant("rag")
    out = []
    for pair in pairs:
        oracle = by_id[pair["source"]["chunk_id"]]
        others = [c for c in chunks if c["id"] != oracle["id"]]
        picked = rng.sample(others, distractors)
        with_oracle = rng.random() < oracle_share
        shown = picked + ([oracle] if with_oracle else [])
        rng.shuffle(shown)
        hits = [Hit(c["text"], c["file"], c["page"], 0.0, c["id"]) for c in shown]
        question = pair["messages"][0]["content"]
        sentence = pair["gold"]
        place = cite(oracle["file"], oracle["page"])
        target = f'{place} says: "{sentence}"\n\nAnswer: {sentence}'
        out.append({
            "messages": [*rag.messages(question, hits), {"role": "assistant", "content": target}],
            "gold": sentence,
            "source": {**pair["source"], "oracle_shown": with_oracle, "distractors": [c["id"] for c in picked]},
        })
    return out


def model_question_writer(generator, progress: ProgressFn | None = None):
    """`write_questions` for generate_pairs: the model writes one question per fact sentence, all in one decode
    batch."""
    report = progress or silent

    def write_questions(sentences: list[str]) -> list[str]:
        conversations = [[{"role": "user", "content": QUESTION_PROMPT.format(sentence=s)}] for s in sentences]
        questions = [""] * len(sentences)
        for event in stream_chat(generator, conversations, GenerationConfig(max_new_tokens=40), together=True):
            if isinstance(event, RowDone):
                questions[event.row] = event.text.strip()
                written = sum(bool(q) for q in questions)
                report(0.1 + 0.8 * written / len(questions), f"Writing questions {written}/{len(questions)}")
        return questions

    return write_questions

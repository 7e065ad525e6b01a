"""The study's fair split and its training sets.

Facts are split by passage: a passage's facts are either all trained on ("trained facts", tested with a question
worded differently from every training phrasing) or all kept out ("new facts", whose passage appears in no training
example at all, not even as a RAFT distractor). `overlap_check` proves it on the saved training sets.
"""
from __future__ import annotations

import random

from core.errors import InputError
from core.metrics import normalise
from core.retrieval import Hit
from core.study_questions import Fact

MIN_FACTS_PER_KIND = 3
KINDS = ("trained", "new")


def split_facts(facts: list[Fact], seed: int = 42, max_per_kind: int | None = None) -> dict:
    """{"trained": [fact ids], "new": [fact ids], "trained_chunks": [...], "new_chunks": [...]}: whole passages
    go to one side, the side with fewer facts so far taking the next passage (in a seeded random order)."""
    by_chunk: dict[str, list[Fact]] = {}
    for fact in facts:
        by_chunk.setdefault(fact.chunk_id, []).append(fact)
    chunks = sorted(by_chunk)
    random.Random(seed).shuffle(chunks)
    sides = {kind: [] for kind in KINDS}
    for chunk in chunks:
        count = {kind: sum(len(by_chunk[c]) for c in sides[kind]) for kind in KINDS}
        sides[min(KINDS, key=lambda k: (count[k], KINDS.index(k)))].append(chunk)
    out = {}
    for kind in KINDS:
        ids = [f.id for c in sides[kind] for f in by_chunk[c]]
        out[kind] = ids[:max_per_kind] if max_per_kind else ids
        kept = {fact.chunk_id for fact in facts if fact.id in set(out[kind])}  # the passages of the facts kept
        out[f"{kind}_chunks"] = [c for c in sides[kind] if c in kept]
    if len(chunks) < 2 or min(len(out[k]) for k in KINDS) < MIN_FACTS_PER_KIND:
        raise InputError(
            f"too small for a fair study: it needs at least 2 passages with facts and {MIN_FACTS_PER_KIND} facts on "
            f"each side ({2 * MIN_FACTS_PER_KIND} in all, in passages of their own); this knowledge base gave "
            f"{len(facts)} usable facts in {len(chunks)} passage(s). Add documents (a few pages of prose with "
            "names and numbers) and start again")
    return out


def fact_examples(facts: list[Fact]) -> list[dict]:
    """The fact-tuned adapter's training set: each phrasing of each trained fact, answered with its sentence."""
    return [{"messages": [{"role": "user", "content": phrasing}, {"role": "assistant", "content": fact.sentence}],
             "gold": fact.answer, "source": {"chunk_id": fact.chunk_id, "file": fact.file, "page": fact.page,
                                             "fact": fact.id}}
            for fact in facts for phrasing in fact.phrasings]


def raft_examples(facts: list[Fact], passages: dict[str, dict], allowed: list[str], shown: int,
                  oracle_share: float = 0.8, seed: int = 42) -> list[dict]:
    """RAFT examples in exactly the RAG prompt's form (core.variants), `shown` passages each, as many as the model
    reads at inference: the fact's own passage (for a share `oracle_share` of examples) among distractors drawn
    only from `allowed` (the trained passages). The target quotes the sentence from its passage, then answers."""
    from core.variants import get_variant

    if not 0 <= oracle_share <= 1:
        raise InputError(f"the oracle share must be between 0 and 1, got {oracle_share}")
    rng = random.Random(seed)
    rag = get_variant("rag")
    out = []
    for fact in facts:
        for phrasing in fact.phrasings:
            others = [c for c in allowed if c != fact.chunk_id]
            with_oracle = rng.random() < oracle_share or not others
            picked = rng.sample(others, min(len(others), shown - 1 if with_oracle else shown))
            chunk_ids = picked + ([fact.chunk_id] if with_oracle else [])
            rng.shuffle(chunk_ids)
            hits = [Hit(passages[c]["text"], passages[c]["file"], passages[c].get("page"), 0.0, c) for c in chunk_ids]
            if with_oracle:
                number = chunk_ids.index(fact.chunk_id) + 1
                target = f'[{number}] says: "{fact.sentence}"\nAnswer: {fact.answer}'
            else:  # RAFT's other share: the passages do not hold it, the answer comes from what was learned
                target = f"{fact.sentence}\nAnswer: {fact.answer}"
            out.append({"messages": [*rag.messages(phrasing, hits), {"role": "assistant", "content": target}],
                        "gold": fact.answer,
                        "source": {"chunk_id": fact.chunk_id, "file": fact.file, "page": fact.page, "fact": fact.id,
                                   "oracle_shown": with_oracle, "passages": chunk_ids}})
    return out


def held_out_items(facts: dict[str, Fact], split: dict) -> list[dict]:
    """The held-out questions, trained facts first: each with its kind, answer and source passage."""
    return [{"question": facts[i].question, "answer": facts[i].answer, "source": facts[i].file,
             "chunk_id": facts[i].chunk_id, "fact": i, "kind": kind}
            for kind in KINDS for i in split[kind]]


def overlap_check(items: list[dict], training_sets: dict[str, list[dict]], passages: dict[str, dict]) -> dict:
    """Proof that the test is fair, read off the saved training sets: how many test questions appear in any
    training example (as a message, or inside a RAFT prompt), and how many new facts' passages appear in any."""
    texts = [normalise(m["content"]) for examples in training_sets.values() for e in examples
             for m in e["messages"]]
    questions_seen = [i["question"] for i in items if any(normalise(i["question"]) in t for t in texts)]
    new_passages = sorted({i["chunk_id"] for i in items if i["kind"] == "new"})
    passages_seen = [c for c in new_passages if any(normalise(passages[c]["text"]) in t for t in texts)]
    return {"test_questions": len(items), "training_examples": {k: len(v) for k, v in training_sets.items()},
            "test_questions_in_training": len(questions_seen), "examples": questions_seen[:3],
            "new_fact_passages": len(new_passages), "new_fact_passages_in_training": len(passages_seen),
            "fair": not questions_seen and not passages_seen}

"""Checks a dataset before training for what quietly spoils a fine-tune, and says how to fix each: exact and
near-duplicate examples (over-weighted in training), answers with no words, examples longer than the training
length (their answers are cut), test questions that are also in the training part (the evaluation then measures
recall), and encoding debris (mojibake, HTML entities, control characters, lost characters).

ftfy repairs the encoding debris it can; datasketch's MinHash LSH finds near-duplicate candidates, which are then
confirmed on their exact character 5-gram overlap. A fix never edits the dataset in place: it is saved as a new
one with the same split (core/training_data.py)."""
from __future__ import annotations

import re
import unicodedata

NEAR_DUPLICATE_JACCARD = 0.8  # of character 5-grams: reworded punctuation or casing, a word or two changed
SHOWN = 3  # examples of each problem in the report
PART_ORDER = ("test", "validation", "train")  # of two copies, the one kept is in the earliest part here

PROBLEMS = {
    "exact_duplicates": ("the same example more than once (after casing and spacing)",
                         "keep the first copy (a test copy before a training one)"),
    "near_duplicates": ("almost the same example (at least 80% of its character 5-grams shared)",
                        "keep the first"),
    "empty_answers": ("an answer with no letters or digits", "remove"),
    "too_long": ("longer than the training length: its answer is cut short, or not seen at all", "remove"),
    "test_leakage": ("a training or validation example asks a test question", "remove it from training"),
    "encoding_debris": ("mojibake, HTML entities, control or zero-width characters, or lost characters (\ufffd)",
                        "repair what can be repaired (lost characters cannot)"),
}
REMOVED_BY = ("exact_duplicates", "near_duplicates", "empty_answers", "too_long", "test_leakage")


def example_text(example: dict) -> tuple[str, list[str]]:
    """(the prompt's text, the answers' texts) of a Q&A example, a preference pair, or a passage (no prompt)."""
    if "text" in example and "messages" not in example:
        return "", [example["text"]]
    if "chosen" in example:
        prompt = example["prompt"]
        answers = ["\n".join(m["content"] for m in example[key]) for key in ("chosen", "rejected")]
    else:
        prompt = example["messages"][:-1]
        answers = [example["messages"][-1]["content"]]
    return "\n".join(m["content"] for m in prompt), answers


def check(examples: list[dict], split: dict, lengths: list[int], max_length: int) -> dict:
    """Every problem found, as {kind: {about, fix, count, found: [{index, part, preview, detail}]}}, plus the
    indices each fix removes and the repaired examples. `lengths`: each example's tokens as training lays it out
    (the longer answer of a pair)."""
    part_of = {i: part for part, indices in split.items() for i in indices}
    order = sorted(range(len(examples)), key=lambda i: (PART_ORDER.index(part_of.get(i, "train")), i))
    texts = {i: example_text(examples[i]) for i in order}
    found: dict[str, list[dict]] = {kind: [] for kind in PROBLEMS}

    def note(kind: str, index: int, detail: str = "") -> None:
        prompt, answers = texts[index]
        found[kind].append({"index": index, "part": part_of.get(index, "train"), "detail": detail,
                            "preview": _preview(prompt) + " → " + _preview(answers[0])})

    seen: dict[str, int] = {}
    for i in order:
        key = _normal(texts[i][0] + "\n" + "\n".join(texts[i][1]))
        if key in seen:
            note("exact_duplicates", i, f"same as example {seen[key]}")
        else:
            seen[key] = i
    exact = {f["index"] for f in found["exact_duplicates"]}
    for i, first in _near_duplicates([i for i in order if i not in exact], texts):
        note("near_duplicates", i, f"like example {first}")
    for i in order:
        if any(not any(ch.isalnum() for ch in answer) for answer in texts[i][1]):
            note("empty_answers", i)
        if lengths[i] > max_length:
            note("too_long", i, f"{lengths[i]} tokens, training keeps {max_length}")
    test_questions = {_normal(texts[i][0]): i for i in split.get("test", []) if texts[i][0]}
    for i in order:
        if part_of.get(i) != "test" and _normal(texts[i][0]) in test_questions and i not in exact:
            note("test_leakage", i, f"test example {test_questions[_normal(texts[i][0])]} asks the same")
    repaired = {}
    for i in order:
        fixed, lost = _repaired(examples[i])
        if fixed != examples[i]:
            repaired[i] = fixed
        if fixed != examples[i] or lost:
            note("encoding_debris", i, "lost characters (\ufffd) cannot be repaired" if lost else "repairable")
    removed = sorted({f["index"] for kind in REMOVED_BY for f in found[kind]})
    report = {kind: {"about": PROBLEMS[kind][0], "fix": PROBLEMS[kind][1], "count": len(items),
                     "found": items[:SHOWN]} for kind, items in found.items()}
    return {"examples": len(examples), "problems": report, "removed": removed,
            "repaired": {i: e for i, e in repaired.items() if i not in removed}}


def _near_duplicates(indices: list[int], texts: dict) -> list[tuple[int, int]]:
    """(example, the earlier one it nearly repeats) for each near-duplicate, in `indices` order."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=NEAR_DUPLICATE_JACCARD * 0.9, num_perm=128)  # a little below: candidates only
    grams_of, out = {}, []
    for i in indices:
        text = _normal(texts[i][0] + "\n" + "\n".join(texts[i][1]))
        grams = {text[k:k + 5] for k in range(max(1, len(text) - 4))}
        signature = MinHash(num_perm=128, seed=1)
        signature.update_batch([g.encode() for g in grams])
        match = [j for j in lsh.query(signature)
                 if len(grams & grams_of[j]) / len(grams | grams_of[j]) >= NEAR_DUPLICATE_JACCARD]
        if match:
            out.append((i, min(match, key=indices.index)))
            continue
        grams_of[i] = grams
        lsh.insert(i, signature)
    return out


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def _repaired(example: dict) -> tuple[dict, bool]:
    """The example with ftfy's repairs in every message, and whether characters were lost before it was written."""
    import ftfy

    config = ftfy.TextFixerConfig(uncurl_quotes=False, fix_latin_ligatures=False, fix_character_width=False,
                                  fix_line_breaks=False, normalization=None, explain=False)
    lost = False

    def fix(message: dict) -> dict:
        nonlocal lost
        lost = lost or "\ufffd" in message["content"]
        return {**message, "content": ftfy.fix_text(message["content"], config).replace("\u200b", "")}

    if "text" in example and "messages" not in example:
        return {**example, "text": fix({"content": example["text"]})["content"]}, lost
    keys = ("prompt", "chosen", "rejected") if "chosen" in example else ("messages",)
    return {**example, **{key: [fix(m) for m in example[key]] for key in keys}}, lost


def _preview(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"

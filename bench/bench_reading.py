"""Answer quality on reading sets with known answers: does RAG read what it retrieved?

    .venv/bin/python bench/bench_reading.py [--set shared_pdfs,demo] [--split tune|heldout|all]
                                            [--configs app,oracle,k1,...] [--limit N] [--data-dir DIR]

For each answerable question it records where retrieval put the passage holding the answer, then has the bundled
model answer under each configuration, questions batched through the engine's own decoder (core.generation):
  app      what the app does: its retrieval, the passages it reads (core.reading), its prompt (core.variants),
           and "not in your documents" below its min_relevance; app-before: every relevant passage, always answering
  oracle   the ceiling: the same prompt with only the passage that holds the answer (the best-ranked one)
  base     no passages
  and the candidate configurations in CONFIGS (number and order of passages, prompt, stopping, repetition).
Printed per set and configuration: the answer rate (the gold span in the answer), the rate where the answer's
passage was among those shown, the ratio to the oracle there, answer length, how often the answer ran to the token
limit or looped, seconds per answer, and for the unanswerable questions how often the answer says so (refusals).

Sets: bench/reading_sets/*.jsonl (questions written from ../shared/data/pdfs, with answerable and unanswerable
items, split into `tune` and `heldout`; tune on `tune` only) and `demo` (assets/demo, 16 questions).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))

import core  # noqa: E402,F401
from core.config import load_settings  # noqa: E402
from core.generation import GenerationConfig, RowDone, RowStats, stream_chat  # noqa: E402
from core.lab import Lab  # noqa: E402
from core.metrics import contains, normalise  # noqa: E402
from core.models import parameter_count  # noqa: E402
from core.reading import NOT_IN_DOCUMENTS, read, passages_to_read  # noqa: E402
from core.retrieval import relevant  # noqa: E402
from core.variants import VARIANTS  # noqa: E402

SETS = ROOT / "bench" / "reading_sets"
PDFS = ROOT.parent / "shared" / "data" / "pdfs"
BATCH = 8  # questions decoded together


@dataclass(frozen=True)
class Config:
    """How the model is shown the passages and asked. `passages`: how many retrieved passages (0: none; None: the
    app's relevant() filter over its top_k); `oracle`: only the passage that holds the answer."""
    name: str
    passages: int | None = None
    oracle: bool = False
    best_last: bool = False  # the best passage nearest the question
    system: str | None = None  # None: the app's RAG prompt
    app: bool = False  # the app's own choice of passages (core.reading.read, with the settings' defaults)
    min_relevance: float | None = None  # with app: None the settings' own; 0 never says "not in the documents"
    generation: dict = field(default_factory=dict)


# A candidate reading prompt: the answer first and briefly, and a plain sentence when the passages lack it.
BRIEF = ("Answer the question from the passages of the user's documents. Reply with one short sentence that starts "
         "with the answer. If the passages do not contain the answer, reply: The documents do not say.")

CONFIGS = {c.name: c for c in [
    Config("app", app=True),
    Config("app-answer-all", app=True, min_relevance=0.0),
    Config("app-before"),  # what the app did before issue 15: every relevant passage of the top_k, always answers
    Config("app-before-no-loop-stop", generation={"stop_loops": False}),
    Config("oracle", oracle=True),
    Config("base", passages=0),
    Config("k1", passages=1),
    Config("k2", passages=2),
    Config("k2-best-last", passages=2, best_last=True),
    Config("k3", passages=3),
    Config("k4-best-last", passages=4, best_last=True),
    Config("oracle-brief", oracle=True, system=BRIEF),
    Config("k1-brief", passages=1, system=BRIEF),
    Config("k2-best-last-brief", passages=2, best_last=True, system=BRIEF),
    Config("k3-best-last-brief", passages=3, best_last=True, system=BRIEF),
]}


@dataclass
class Item:
    set: str
    id: str
    question: str
    answer: str
    files: list[Path]
    answerable: bool = True
    split: str = "tune"


def load_sets(names: list[str], split: str) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for name in names:
        if name == "demo":
            demo = ROOT / "assets" / "demo"
            with open(demo / "qa.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            docs = sorted(p for p in demo.glob("*.md") if p.name != "README.md")
            items = [Item("demo", f"demo-{i}", r["question"], r["answer"], docs,
                          split="tune" if i % 2 == 0 else "heldout") for i, r in enumerate(rows)]
        else:
            path = SETS / f"{name}.jsonl"
            if not PDFS.exists():
                print(f"skipping {name}: {PDFS} is not there")
                continue
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            files = sorted({PDFS / r["file"] for r in rows if r.get("file")})
            items = [Item(name, r["id"], r["question"], r["answer"], files, r.get("kind", "answer") == "answer",
                          r.get("split", "tune")) for r in rows]
        out[name] = [i for i in items if split == "all" or i.split == split]
    return out


def holds(text: str, answer: str) -> bool:
    return bool(answer) and normalise(answer) in normalise(text)


def refuses(answer: str) -> bool:
    """An answer that says the passages or documents do not hold it."""
    return answer == NOT_IN_DOCUMENTS or bool(re.search(r"(do(es)?n[o']?t|not) (contain|mention|say|provide|include|specify|state)|"
                          r"no (information|mention)|not (found|available|in the (passages|documents))|"
                          r"(cannot|can't|unable to) (find|answer|determine)|I don'?t know", answer, re.I))


def loops(text: str, n: int = 4, times: int = 3) -> bool:
    """The same n words three times or more: the model went round in circles."""
    words = text.lower().split()
    seen: dict[tuple, int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] >= times:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="shared_pdfs,demo")
    parser.add_argument("--split", default="tune", choices=["tune", "heldout", "all"])
    parser.add_argument("--configs", default="app,oracle,base,k1,k2")
    parser.add_argument("--limit", type=int, default=0, help="the first N questions of each set")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="override every config's answer length")
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse a data folder (its ingested documents)")
    parser.add_argument("--out", type=Path, default=None, help="write every answer here (JSON lines)")
    parser.add_argument("--summary", type=Path, default=None, help="write the table's rows here (JSON)")
    parser.add_argument("--weights", default="fp32", choices=["fp32", "bf16", "int8"],
                        help="the generator's weights while answering (bf16: issue 19's candidate, bench_decode.py)")
    parser.add_argument("--batch", type=int, default=BATCH, help="questions decoded together (1: one at a time)")
    parser.add_argument("--prompt-lookup", type=int, default=None,
                        help="draft tokens a row decoding alone checks per step (0: off; default: the engine's)")
    args = parser.parse_args()
    if args.prompt_lookup is not None:
        import core.decode_loop

        core.decode_loop.PROMPT_LOOKUP_TOKENS = args.prompt_lookup

    settings = load_settings(data_dir=args.data_dir or Path(tempfile.mkdtemp(prefix="reading-")),
                             decode_weights=args.weights)  # loaded as the app loads them
    lab = Lab(settings)
    generator = lab.models.generator
    configs = [CONFIGS[name] for name in args.configs.split(",")]
    sets = load_sets(args.set.split(","), args.split)
    print(f"model {settings.base_model} ({generator.model.dtype}) on {settings.resolved_device}; top_k {settings.top_k}, "
          f"min_score {settings.min_score}, max_new_tokens {settings.max_new_tokens}")
    out = open(args.out, "w") if args.out else None
    rows = []
    for set_name, items in sets.items():
        if args.limit:
            items = items[:args.limit]
        kb = f"reading-{set_name}".replace("_", "-")
        if kb not in lab.kbs.names():
            lab.kbs.ingest(items[0].files, kb)
        searched = {i.id: lab.kbs.search(i.question, kb, 20)[0] for i in items}
        print_retrieval(set_name, items, searched, settings.top_k)
        for config in configs:
            rows.append(run_config(lab, generator, set_name, kb, items, searched, config, args, out))
            if out:
                out.flush()
    if out:
        out.close()
    print_table(rows)
    if args.summary:
        args.summary.write_text(json.dumps(rows, indent=1))


def passages_for(item: Item, hits: list, config: Config, settings, lab) -> tuple[list, bool]:
    """(passages shown, whether to answer at all)."""
    if config.app:
        reading = read(item.question, relevant(hits[:settings.top_k], settings.min_score), lab.models.encode,
                       passages_to_read(parameter_count(lab.models.generator.model), settings.read_passages),
                       settings.min_relevance if config.min_relevance is None else config.min_relevance,
                       lab.models.reranker)
        return reading.shown, reading.covered
    if config.oracle:
        holding = [h for h in hits if holds(h.text, item.answer)]
        return holding[:1], True
    if config.passages == 0:
        return [], True
    shown = relevant(hits[:settings.top_k], settings.min_score) if config.passages is None else hits[:config.passages]
    return (list(reversed(shown)) if config.best_last else shown), True


def run_config(lab, generator, set_name, kb, items, searched, config: Config, args, out) -> dict:
    settings = lab.settings
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens or settings.max_new_tokens)
    generation = replace(generation, **config.generation)
    variant = VARIANTS["base" if config.passages == 0 else "rag"]
    todo, answers = [], {}
    started = time.perf_counter()
    for item in items:
        hits = searched[item.id]
        shown, answer = passages_for(item, hits, config, settings, lab)
        if config.oracle and not shown:
            continue  # no passage holds the answer: no ceiling to measure
        if not answer:
            answers[item.id] = (NOT_IN_DOCUMENTS, RowStats(0))
        todo.append((item, shown, variant.messages(item.question, shown, config.system)))
    generate = [entry for entry in todo if entry[0].id not in answers]
    batch_size = args.batch
    for start in range(0, len(generate), batch_size):
        batch = generate[start:start + batch_size]
        for event in stream_chat(generator, [m for _, _, m in batch], generation):
            if isinstance(event, RowDone):
                answers[batch[event.row][0].id] = (event.text.strip(), event.stats)
    seconds = time.perf_counter() - started
    right_retrieved = {}
    right, right_shown, shown_count, refused, refused_wrongly, lengths, at_limit, looped = ([] for _ in range(8))
    for item, shown, _ in todo:
        text, stats = answers[item.id]
        lengths.append(stats.new_tokens)
        at_limit.append(stats.new_tokens >= generation.max_new_tokens)
        looped.append(loops(text))
        if item.answerable:
            ok = contains(text, item.answer) > 0
            right.append(ok)
            if any(holds(h.text, item.answer) for h in shown):
                right_shown.append(ok)
            if any(holds(h.text, item.answer) for h in searched[item.id][:settings.top_k]):
                right_retrieved[item.id] = ok
            refused_wrongly.append(refuses(text))
        else:
            refused.append(refuses(text))
        if out:
            out.write(json.dumps({"set": set_name, "config": config.name, "id": item.id, "question": item.question,
                                  "gold": item.answer, "answer": text, "tokens": stats.new_tokens,
                                  "shown": [h.chunk_id for h in shown]}) + "\n")
    return {"set": set_name, "config": config.name, "answered": _rate(right), "n": len(right),
            "when_shown": _rate(right_shown), "n_shown": len(right_shown), "retrieved": right_retrieved,
            "tokens": statistics.mean(lengths) if lengths else 0.0, "at_limit": _rate(at_limit),
            "looped": _rate(looped), "s_per_answer": seconds / max(1, len(todo)),
            "refused_unanswerable": _rate(refused), "n_unanswerable": len(refused),
            "refused_answerable": _rate(refused_wrongly)}


def print_retrieval(set_name: str, items: list[Item], searched: dict, top_k: int) -> None:
    """Where the answer's passage ranked, and how the best passage's similarity separates questions the documents
    answer from those they do not (what a "not in your documents" threshold would get right and wrong)."""
    ranks = []
    for item in (i for i in items if i.answerable):
        hits = searched[item.id]
        ranks.append(next((n for n, h in enumerate(hits, 1) if holds(h.text, item.answer)), None))
    found = lambda k: sum(r is not None and r <= k for r in ranks)  # noqa: E731
    print(f"\n{set_name}: the answer's passage is retrieved first for {found(1)}/{len(ranks)}, in the top 2 for "
          f"{found(2)}, top {top_k} for {found(top_k)}, top 20 for {found(20)}")
    best = {True: [], False: []}
    for item in items:
        hits = searched[item.id]
        best[item.answerable].append(max((h.score for h in hits), default=0.0))
    if best[False]:
        print("  threshold on the best similarity: answerable questions refused / unanswerable ones refused")
        for threshold in (0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6):
            wrong = sum(b < threshold for b in best[True]) / max(1, len(best[True]))
            right = sum(b < threshold for b in best[False]) / max(1, len(best[False]))
            print(f"  {threshold:.2f}: {100 * wrong:4.0f}% / {100 * right:4.0f}%")


def _rate(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def print_table(rows: list[dict]) -> None:
    """`retrieved`: the answer rate on the questions whose answer's passage was among the top_k retrieved, and its
    ratio to the oracle's rate on those same questions (the issue's aim: >= 0.9)."""
    def pct(value):
        return "   -" if value is None else f"{100 * value:4.0f}%"

    oracle = {r["set"]: r["retrieved"] for r in rows if r["config"] == "oracle"}
    print(f"\n{'set':12} {'config':18} {'answered':>12} {'retrieved':>12} {'/oracle':>7} {'tokens':>6} "
          f"{'at limit':>8} {'looped':>6} {'s/ans':>6} {'refused: no answer':>19} {'with answer':>11}")
    for r in rows:
        got = r["retrieved"]
        ratio = "      -"
        if r["set"] in oracle:
            both = [i for i in got if i in oracle[r["set"]]]
            ceiling = sum(oracle[r["set"]][i] for i in both)
            if ceiling:
                ratio = f"{sum(got[i] for i in both) / ceiling:7.2f}"
        print(f"{r['set']:12} {r['config']:18} {pct(r['answered'])} of {r['n']:3d} {pct(_rate(list(got.values())))} of "
              f"{len(got):3d} {ratio} {r['tokens']:6.1f} {pct(r['at_limit']):>8} {pct(r['looped']):>6} "
              f"{r['s_per_answer']:6.2f} {pct(r['refused_unanswerable']):>12} of {r['n_unanswerable']:3d} "
              f"{pct(r['refused_answerable']):>11}")


if __name__ == "__main__":
    main()

"""The study's stages, in order. Each takes the StudyRun (core/study_runner.py) and returns its result, which the
runner saves before the next stage starts; every artefact is a normal one (datasets, adapters, evaluation runs),
named after the study."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

from core.errors import InputError, LabError
from core.evaluation import TIMED_QUESTIONS
from core.generation import GenerationConfig
from core.metrics import contains, normalise
from core.reading import sentences
from core.study import DEFAULT_QUESTIONS
from core.study_plan import fact_examples, overlap_check, raft_examples, split_facts, held_out_items
from core.study_questions import Fact, add_model_phrasings, build_facts, cloze, question_problem

class StudyCancelled(Exception):
    """The user cancelled the study: it stops where it is, and resume continues from its last finished stage."""


MIN_EPOCHS = 3
ORACLE_SHARE = 0.8
CHECK_QUESTIONS = 8
# The answers are a name or a number, or a quoted sentence and the answer (RAFT): 64 tokens hold any of them, and
# a model that rambles on is cut at half the app's default length (the time is the evaluation's largest part).
ANSWER_TOKENS = 64
# Seconds to answer one test question with all five variants, and one learned-check question, on each kind of
# device (measured on the demo pack: 2-core CPU; a GPU is much faster). Used to keep time for evaluation.
EVAL_SECONDS = {"cpu": 7.0, "cuda": 2.0}
CHECK_SECONDS = {"cpu": 2.5, "cuda": 0.7}


def _device_kind(run) -> str:
    return "cuda" if run.lab.settings.resolved_device.startswith("cuda") else "cpu"


def _per_kind(run) -> int:
    caps = run.study.get("caps") or {}
    return min(run.study.get("questions") or DEFAULT_QUESTIONS, caps.get("eval_questions", 10**6) // 2)


# ---- 1. questions -------------------------------------------------------------------------------------------

def questions(run) -> dict:
    lab, kb = run.lab, run.study["kb"]
    chunks = lab.kbs.fact_chunks(kb)
    random.Random(run.study["seed"]).shuffle(chunks)
    # Many passages: one fact each, so the split has many passages to share out; few: as many as it takes.
    wanted = 3 * _per_kind(run)  # some are lost to the split's balance and the filter
    per_chunk = max(1, min(10, math.ceil(wanted / len(chunks))))
    run.progress(0.02, f"Finding facts in {len(chunks)} passages")
    facts, stats = build_facts(chunks, per_chunk, limit=wanted)
    if run.study.get("qa_file"):
        own, own_stats = facts_from_qa_file(run, run.study["qa_file"], {c["id"]: c for c in chunks})
        facts = own + facts
        stats["from_your_file"] = own_stats
    run.check_cancel()
    if not facts:
        raise InputError("no usable facts were found in this knowledge base (sentences with a name or a number "
                         "to ask about); add documents with more prose", subject=kb)
    written = add_model_phrasings(facts, lab.models.generator, per_fact=2,
                                  progress=lambda f, m: run.progress(0.1 + 0.85 * f, m))
    used = {f.chunk_id for f in facts}
    passages = {c["id"]: {"text": c["text"], "file": c["file"], "page": c["page"]} for c in chunks if c["id"] in used}
    return {"facts": [f.to_dict() for f in facts], "stats": stats, "phrasings": written, "passages": passages,
            "passages_in_kb": len(chunks)}


def facts_from_qa_file(run, path: str, chunks: dict) -> tuple[list[Fact], dict]:
    """Your own questions as facts: each is tested with your wording and trained on other phrasings of the
    passage sentence that holds its answer (found by searching the knowledge base)."""
    from core.datasets import parse_examples
    from core.evaluation import example_to_item

    examples, _ = parse_examples(Path(path))
    facts, dropped = [], {}
    for n, item in enumerate(example_to_item(e) for e in examples):
        answer = item["answer"].strip()
        hits, _ = run.lab.kbs.search(item["question"], run.study["kb"], 10)
        hit = next((h for h in hits if f" {normalise(answer)} " in f" {normalise(h.text)} "), None)
        why = None if hit else "answer not found in the knowledge base"
        sentence = hit and next((s for s in sentences(hit.text) if normalise(answer) in normalise(s)), None)
        if hit and not sentence:
            why = "answer not found in one sentence"
        why = why or question_problem(item["question"], answer, sentence)
        if why:
            dropped[why] = dropped.get(why, 0) + 1
            continue
        start = sentence.lower().find(answer.lower())
        phrasing = cloze(sentence, start, start + len(answer)) if start >= 0 else f"{sentence.split(answer)[0]}___?"
        facts.append(Fact(f"qa{n + 1}", hit.chunk_id, hit.file, hit.page, sentence, answer, item["question"],
                          [phrasing]))
    return facts, {"pairs": len(examples), "kept": len(facts), "dropped": dropped}


# ---- 2. split, training sets, and fitting the budget --------------------------------------------------------

def datasets(run) -> dict:
    from core.models import parameter_count
    from core.reading import passages_to_read

    lab, name, seed = run.lab, run.name, run.study["seed"]
    found = run.result("questions")
    facts = {f["id"]: Fact(**f) for f in found["facts"]}
    passages = found["passages"]
    split = split_facts(list(facts.values()), seed, _per_kind(run))
    items = held_out_items(facts, split)
    trained = [facts[i] for i in split["trained"]]
    shown = passages_to_read(parameter_count(lab.models.generator.model), lab.settings.read_passages) \
        or lab.settings.top_k  # as many passages as RAG shows this model
    device = _device_kind(run)
    spent = found.get("seconds", 0) / 60  # the questions stage (time waiting in a queue is not the study's)
    reserve = (len(items) * EVAL_SECONDS[device] + 2 * CHECK_QUESTIONS * CHECK_SECONDS[device]) / 60
    available = run.study["minutes"] - spent - reserve
    caps = run.study.get("caps") or {}
    cuts, plans = [], {}
    for keep in (None, 2, 1):  # fewer phrasings per fact, if the budget needs it
        chosen = [_with_phrasings(f, keep) for f in trained]
        sets = {"facts": fact_examples(chosen),
                "raft": raft_examples(chosen, passages, split["trained_chunks"], shown, ORACLE_SHARE, seed)}
        for kind, examples in sets.items():
            lab.datasets.save(f"{name}-{kind}", examples, "study", f"study {name}", replace=True, validation=0.0,
                              test=0.0, seed=seed)
        preset = lab.training.preset("quick")
        plans = {kind: lab.training.estimate(f"{name}-{kind}", preset) for kind in sets}
        full = sum(p["minutes"] for p in plans.values())
        epochs = min(preset.epochs, math.floor(preset.epochs * available / full)) if full > 0 else preset.epochs
        for kind, plan in plans.items():  # a demo workspace's cap on one fine-tune
            if caps.get("train_minutes") and plan["minutes"] > 0:
                epochs = min(epochs, math.floor(preset.epochs * caps["train_minutes"] / plan["minutes"]))
        if epochs >= MIN_EPOCHS:
            break
    else:
        least = sum(p["minutes"] for p in plans.values()) * MIN_EPOCHS / preset.epochs
        raise InputError(f"the time budget ({run.study['minutes']:g} min) is too short to train anything useful "
                         f"here: training alone needs about {least:.1f} min at the least, and answering the test "
                         f"questions about {reserve:.1f}; give at least {math.ceil(spent + least + reserve + 1)} "
                         "minutes (study run --minutes N)")
    if keep:
        cuts.append(f"kept {keep} phrasing(s) per trained fact to fit the time budget")
    if epochs < preset.epochs:
        cuts.append(f"trained {epochs} epochs instead of the Quick preset's {preset.epochs:g} to fit the time budget")
    settings = lab.training.preset("quick", epochs=epochs).to_dict()
    overlap = overlap_check(items, sets, passages)
    if not overlap["fair"]:  # cannot happen by construction; checked on what was saved all the same
        raise LabError(f"the split is not fair: {overlap}")
    return {"split": split, "items": items, "overlap": overlap, "shown_passages": shown, "settings": settings,
            "datasets": {kind: f"{name}-{kind}" for kind in sets}, "cuts": cuts,
            "estimates": {kind: round(p["minutes"] * epochs / preset.epochs, 1) for kind, p in plans.items()},
            "budget": {"minutes": run.study["minutes"], "for_training": round(available, 1),
                       "reserved_for_answers": round(reserve, 1)}}


def _with_phrasings(fact: Fact, keep: int | None) -> Fact:
    if keep is None:
        return fact
    return Fact(**{**fact.to_dict(), "phrasings": fact.phrasings[:keep]})


# ---- 3, 4. training -------------------------------------------------------------------------------------------

def train_facts(run) -> dict:
    return _train(run, "facts")


def train_raft(run) -> dict:
    return _train(run, "raft")


def _train(run, kind: str) -> dict:
    """Launch the fine-tune through the job queue, or find the one this stage launched before it was interrupted
    (resumed from its checkpoint when it stopped): an adapter is never trained twice."""
    from core.training import TrainSettings

    lab, plan = run.lab, run.result("datasets")
    job_id = run.noted(f"job_{kind}")
    if job_id and job_id in lab.jobs.names():
        status = lab.jobs.get(job_id)
        if status["state"] in ("cancelled", "failed"):
            lab.jobs.resume(job_id)
    else:
        job = lab.training.start(plan["datasets"][kind], TrainSettings(**plan["settings"]),
                                 adapter=f"{run.name}-{kind}")
        job_id = job["id"]
        run.note(f"job_{kind}", job_id)
    label = {"facts": "fact-tuned", "raft": "RAFT"}[kind]
    while True:
        status = lab.jobs.get(job_id)
        if status["state"] in ("completed", "cancelled", "failed"):
            break
        if run.cancelled():
            lab.jobs.cancel(job_id)
            lab.jobs.wait(job_id)
            raise StudyCancelled()
        if status["state"] == "queued":
            behind = status.get("waiting_for")
            run.progress(0.0, f"Training the {label} adapter: " +
                         (f"queued behind job {behind}" if behind else "starting"))
        else:
            step, total = status.get("step") or 0, status.get("total_steps") or 0
            eta = f", about {status['eta_s'] / 60:.1f} min left" if status.get("eta_s") else ""
            run.progress(step / total if total else 0.0, f"Training the {label} adapter: " +
                         (f"step {step}/{total}{eta}" if total else "loading the model"))
        time.sleep(1.0)
    if status["state"] != "completed":
        raise LabError(f"the {label} fine-tune {status['state']}: {status.get('error') or status.get('message')}")
    result = status.get("result") or {}
    return {"job": job_id, "adapter": status["adapter"],
            **{k: result.get(k) for k in ("seconds", "steps", "train_loss", "tokens_per_s", "device",
                                          "quantized_4bit", "peak_gpu_memory_gb", "resumed_from_step")}}


# ---- 5. did training take? ------------------------------------------------------------------------------------

def check(run) -> dict:
    """Each adapter's answer rate on (a sample of) its own training questions, beside the base model's and RAG's on
    the same: an adapter that did not learn its facts cannot be judged on reworded questions about them."""
    lab, plan, found = run.lab, run.result("datasets"), run.result("questions")
    facts = {f["id"]: Fact(**f) for f in found["facts"]}
    sample = [facts[i] for i in plan["split"]["trained"]][:CHECK_QUESTIONS]
    out = {}
    with run.device():
        for n, (kind, variants) in enumerate((("facts", ["base", "finetuned"]), ("raft", ["rag", "finetuned+rag"]))):
            adapter = run.result(f"train_{kind}")["adapter"]
            learned, answered = {v: 0 for v in variants}, []

            def on_done(_answer, n=n, kind=kind, answered=answered, rows=len(sample) * len(variants)):
                answered.append(_answer)
                run.progress((n + len(answered) / rows) / 2,
                             f"Checking the {kind} adapter on {len(sample)} of its training questions")

            # Each fact's first training question, as it was trained; all of them in one decode batch.
            answers = lab.answers.compare_many(
                [fact.phrasings[0] for fact in sample], variants, kb=run.study["kb"], adapter=adapter,
                config=GenerationConfig(max_new_tokens=ANSWER_TOKENS), on_done=on_done, should_stop=run.cancelled)
            run.check_cancel()
            for fact, question in zip(sample, answers):
                for answer in question:
                    learned[answer.variant] += int(not answer.error and contains(answer.answer, fact.answer) > 0)
            out[kind] = {"adapter": adapter, "questions": len(sample), "learned": learned[variants[1]],
                         "without_adapter": learned[variants[0]], "compared_with": variants[0]}
    return out


# ---- 6. evaluation ------------------------------------------------------------------------------------------

def evaluate(run) -> dict:
    """Base, RAG, fine-tuned and fine-tuned + RAG (the fact-tuned adapter) in one run, RAFT + RAG in a second on
    the same questions: both are normal evaluation runs, listed in the Evaluate tab."""
    lab, plan = run.lab, run.result("datasets")
    items, kb = plan["items"], run.study["kb"]
    runs = {}
    with run.device():
        for kind, variants, start, end, what in (
                ("facts", ["base", "rag", "finetuned", "finetuned+rag"], 0.0, 0.8,
                 "base, RAG, fine-tuned, fine-tuned + RAG"),
                ("raft", ["finetuned+rag"], 0.8, 1.0, "RAFT + RAG")):
            adapter = run.result(f"train_{kind}")["adapter"]
            result = lab.evaluation.run(
                items, f"study {run.name} ({kind})", variants, kb=kb, adapter=adapter,
                config=GenerationConfig(max_new_tokens=ANSWER_TOKENS),
                progress=lambda f, m, a=start, b=end, w=what: run.progress(a + (b - a) * f, f"Evaluating {w}: {m}"),
                should_stop=run.cancelled, timed=TIMED_QUESTIONS if kind == "facts" else 0)  # the report's latency
            # figures come from the first run; the second needs none, and answers all its questions in one batch
            if result["state"] != "completed":
                raise StudyCancelled()
            runs[kind] = result["id"]
    return {"runs": runs}


# ---- 7. the report ----------------------------------------------------------------------------------------------

def report(run) -> dict:
    from core.study_report import build_report, write_report

    runs = {kind: run.lab.evals.load(run_id) for kind, run_id in run.result("evaluate")["runs"].items()}
    stages = {stage: run.result(stage) for stage in ("questions", "datasets", "train_facts", "train_raft", "check")}
    report = build_report(run.study, stages, runs, run.lab.settings)
    write_report(run.folder, report)
    return {"verdict": report["verdict"]}


STAGE_FUNCTIONS = {"questions": questions, "datasets": datasets, "train_facts": train_facts,
                   "train_raft": train_raft, "check": check, "evaluate": evaluate, "report": report}

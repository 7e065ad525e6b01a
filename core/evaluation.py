"""Evaluation as a service: test items (a dataset's held-out part, a Q&A file, or questions generated from a
knowledge base), runs where every chosen variant answers every question and each answer is scored (core.metrics)
and saved as it comes (core/eval_store.py), what the variants cost, and the advisor beside the measured winner.
The plain-language verdict is core/verdict.py's."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

from core.adapters import AdapterStore
from core.advisor import Situation, advise
from core.answers import STOPPED, Answers
from core.config import Settings
from core.datasets import DatasetStore, parse_examples
from core.errors import InputError
from core.eval_store import EvalStore
from core.generation import GenerationConfig
from core.knowledge import KnowledgeBases
from core.limits import Quota
from core.metrics import LABELS, normalise, score_answer, summarise
from core.models import Models
from core.progress import ProgressFn, silent
from core.qa_generation import generate_pairs, model_question_writer
from core.reading import check_reading
from core.variants import VARIANTS
from core.verdict import lead, verdict

CLASSIFY_INSTRUCTION = "Answer with one word: yes, no or maybe."


def example_to_item(example: dict) -> dict:
    """A training-format example (chat messages) as a test item: question, gold answer, gold source file. A
    preference pair's gold answer is its chosen one; a passage of text has no question."""
    if "text" in example and "messages" not in example:
        raise InputError("a text dataset (passages for continued pre-training) has no questions to evaluate on: "
                         "pick a Q&A dataset, or generate questions from the knowledge base")
    messages = example.get("messages") or example["prompt"] + example["chosen"]
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


# The first questions are answered one at a time (their variants together, as Compare does): their timings are the
# run's latency figures, and the first result shows soon. The rest share decode batches of up to this many rows,
# which on this 2-core CPU answers 8 questions x 4 variants 2.2x faster than one question at a time, with the
# same greedy answers.
TIMED_QUESTIONS = 2
ROWS_PER_BATCH = {"cpu": 32, "cuda": 64}


class Evaluation:
    def __init__(self, settings: Settings, runs: EvalStore, answers: Answers, kbs: KnowledgeBases,
                 datasets: DatasetStore, adapters: AdapterStore, models: Models, quota: Quota):
        self.settings, self.runs, self.answers, self.kbs = settings, runs, answers, kbs
        self.datasets, self.adapters, self.models, self.quota = datasets, adapters, models, quota

    # ---- test sets ------------------------------------------------------------------------------------------------
    def items(self, dataset: str | None = None, file: str | Path | None = None, part: str = "test",
              limit: int | None = None, generate_from: str | None = None,
              progress: ProgressFn | None = None) -> tuple[list[dict], str]:
        """A test set as items (question, answer, source): a dataset's held-out part, a Q&A file, or questions
        generated from a knowledge base's passages (`limit` of them, 20 by default; not saved as a dataset, so
        they never end up in training data)."""
        if sum(map(bool, (dataset, file, generate_from))) != 1:
            raise InputError("give one of: a dataset (its test part is used), a Q&A file, or a knowledge base to "
                             "generate questions from")
        if generate_from:
            return self._generated_items(generate_from, limit or 20, progress), f"generated from {generate_from}"
        if file:
            path = Path(file)
            if not path.is_file():
                raise InputError("no such file", subject=str(path))
            examples, _ = parse_examples(path)
            label = path.name
        else:
            examples = self.datasets.examples(dataset, part)
            if not examples:
                raise InputError(f"the {part!r} part is empty; split it again with a test share "
                                 "(dataset split NAME --test 0.2)", subject=dataset)
            label = f"{dataset} ({part})"
        items = [example_to_item(e) for e in examples]
        if limit is not None:
            if limit < 1:
                raise InputError(f"the question limit must be at least 1, not {limit}")
            items = items[:limit]
        return items, label

    def _generated_items(self, kb: str, count: int, progress: ProgressFn | None) -> list[dict]:
        if count < 1:
            raise InputError(f"the question limit must be at least 1, not {count}")
        chunks = self.kbs.fact_chunks(kb)
        self.quota.spend("dataset")
        # Another seed than dataset generation's default, so a small knowledge base's test questions are not
        # simply its training questions again (the overlap warning tells where they still are).
        examples = generate_pairs(chunks, model_question_writer(self.models.generator, progress), count, seed=7)
        return [example_to_item(e) for e in examples]

    # ---- runs -------------------------------------------------------------------------------------------------
    def run(self, items: list[dict], testset: str, variants: list[str], kb: str | None = None,
            adapter: str | None = None, config: GenerationConfig | None = None, top_k: int | None = None,
            progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
            read_passages: int | None = None, min_relevance: float | None = None,
            timed: int = TIMED_QUESTIONS) -> dict:
        """Answer every item with every variant (several questions' variants share one decode batch), score and
        save each question as its batch finishes; returns the finished (or cancelled) run with its summary and
        results. The first `timed` questions are answered alone, for the latency figures."""
        run = None
        for run in self.steps(items, testset, variants, kb, adapter, config, top_k, progress, should_stop,
                              read_passages, min_relevance, timed):
            pass
        return run

    def steps(self, items: list[dict], testset: str, variants: list[str], kb: str | None = None,
              adapter: str | None = None, config: GenerationConfig | None = None, top_k: int | None = None,
              progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
              read_passages: int | None = None, min_relevance: float | None = None,
              timed: int = TIMED_QUESTIONS) -> Iterator[dict]:
        """`run` one batch at a time: yields the run after each batch of questions (its `done` counts them) and
        last the finished run with its results. Closing the iterator early cancels the run: what was answered is
        kept."""
        read_passages, min_relevance = check_reading(self.settings, read_passages, min_relevance)
        if adapter:
            self.answers.use_adapter(adapter)  # refuse an adapter for another base model before the first question
        self.quota.check_eval_questions(len(items))
        self.quota.spend("evaluate")
        variants = self._checked(items, variants, kb, adapter)
        classify = is_yes_no_maybe(items)
        config = (config or GenerationConfig(max_new_tokens=8 if classify else self.settings.max_new_tokens)).checked()
        run = {
            "id": self.runs.new_id(), "testset": testset, "questions": len(items), "variants": variants, "kb": kb,
            "adapter": adapter, "model": self.settings.base_model, "classify": classify,
            "instruction": CLASSIFY_INSTRUCTION if classify else None,
            "settings": {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                         "top_k": top_k or self.settings.top_k,
                         "read_passages": read_passages, "min_relevance": min_relevance,
                         "stop_loops": config.stop_loops},
            "state": "running", "started": time.time(), "done": 0,
        }
        run["costs"] = self.costs(kb if any(VARIANTS[v].uses_retrieval for v in variants) else None, adapter)
        if adapter:
            run["adapter_info"] = {k: self.adapters.info(adapter).get(k) for k in ("dataset", "seconds", "steps")}
            run["warnings"] = overlap_warnings(self.datasets, items, run["adapter_info"]["dataset"])
        self.runs.write_run(run)
        report = progress or silent
        results = []
        run["state"] = "cancelled"  # until every question is answered
        try:
            for batch in question_batches(len(items), len(variants), self.settings.resolved_device, timed):
                if should_stop and should_stop():
                    break
                rows_before, answered = batch[0] * len(variants), []

                def on_done(_answer, batch=batch, rows_before=rows_before, answered=answered):
                    answered.append(1)
                    report((rows_before + len(answered)) / (len(items) * len(variants)),
                           f"Question {batch[0] + 1}/{len(items)}" if len(batch) == 1 else
                           f"Questions {batch[0] + 1}-{batch[-1] + 1}/{len(items)}: {len(answered)} of "
                           f"{len(batch) * len(variants)} answers")

                # The instruction goes to the model, not into the search (it is not what the question is about).
                answers = self.answers.compare_many(
                    [items[i]["question"] for i in batch], variants, kb=kb, adapter=adapter, config=config,
                    top_k=top_k, read_passages=read_passages, min_relevance=min_relevance,
                    instruction=CLASSIFY_INSTRUCTION if classify else None, on_done=on_done, should_stop=should_stop)
                if any(a.error == STOPPED for question in answers for a in question):
                    break  # cancelled mid-batch: its questions are not kept half answered
                for index, question in zip(batch, answers):
                    result = scored(index, items[index], {a.variant: a for a in question}, variants, classify)
                    result["batch"] = len(batch)
                    self.runs.append_result(run["id"], result)
                    results.append(result)
                run["done"] = batch[-1] + 1
                if run["done"] < len(items):
                    yield run
            else:
                run["state"] = "completed"
        except Exception:
            run["state"] = "failed"
            raise
        finally:  # also when the caller stops early (the iterator is closed): the run is saved as cancelled
            run["finished"] = time.time()
            run["summary"] = summary_of(run, results)
            self.runs.write_run(run)
        yield {**run, "results": results}

    def _checked(self, items: list[dict], variants: list[str], kb: str | None, adapter: str | None) -> list[str]:
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
            self.kbs.show(kb)  # an unknown knowledge base fails here, before any question is asked
        return variants

    # ---- costs and advice ------------------------------------------------------------------------------------------
    def costs(self, kb: str | None = None, adapter: str | None = None) -> dict:
        """What the variants cost to keep, beside what they score: model weights in memory, the index, the adapter."""
        out = {"model_mb": _megabytes(_weight_bytes(self.models.generator.model))}
        if kb:
            size = self.kbs.index_size(kb)
            # A small index is kilobytes: kept to 3 decimals so the verdict can say how many.
            out["index"] = {"chunks": size["chunks"], "mb": _megabytes(size["text_bytes"] + size["vector_bytes"], 3)}
            out["embedder_mb"] = _megabytes(_weight_bytes(self.models.embedder))
        if adapter:
            folder = self.adapters.path(adapter)
            out["adapter_mb"] = _megabytes(sum(f.stat().st_size for f in folder.rglob("*.safetensors")))
        return out

    def advise(self, situation: Situation) -> dict:
        """The advisor's recommendation; where this workspace has a finished evaluation, its measured winner
        comes with it, and says so when it disagrees (a measurement on your questions beats a rule of thumb)."""
        advice = advise(situation)
        for run_id in reversed(self.runs.ids()):
            run = self.runs.load(run_id)
            ahead = lead(run) if run.get("state") == "completed" else None
            if not ahead:
                continue
            choice = {"base": None, "rag": "rag", "finetuned": "finetune", "finetuned+rag": "both"}[ahead["best"]]
            # An unclear lead neither confirms nor contradicts the advice.
            agrees = None if not ahead["clear"] else choice == advice["choice"]
            note = {None: "It could not tell the best two apart yet, so it neither confirms nor contradicts this "
                          "advice.",
                    False: "It disagrees with this advice: trust the measurement on your own questions.",
                    True: None}[agrees]
            advice["measured"] = {"run": run_id, "best": ahead["best"], "clear": ahead["clear"],
                                  "verdict": verdict(run), "agrees": agrees, "note": note}
            break
        return advice


def _megabytes(n: int, digits: int = 1) -> float:
    return round(n / 2**20, digits)


def _weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def question_batches(questions: int, variants: int, device: str, timed: int = TIMED_QUESTIONS) -> list[list[int]]:
    """Question indices in decode batches: the first `timed` ones alone, then as many as the rows allow."""
    rows = ROWS_PER_BATCH["cuda" if device.startswith("cuda") else "cpu"]
    size = max(1, rows // max(1, variants))
    timed = min(timed, questions)
    return [[i] for i in range(timed)] + [list(range(start, min(start + size, questions)))
                                          for start in range(timed, questions, size)]


def scored(index: int, item: dict, answers: dict, variants: list[str], classify: bool) -> dict:
    """One question's result line: every variant's answer, timings, passages and scores."""
    result = {"index": index, "question": item["question"], "gold": item["answer"], "source": item.get("source"),
              "answers": {}}
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
            entry["sources"] = [{"file": s["file"], "page": s["page"], "score": s["score"]} for s in answer.sources]
        result["answers"][variant] = entry
    return result


def overlap_warnings(datasets: DatasetStore, items: list[dict], trained_on: str | None) -> list[str]:
    """Test questions the adapter has seen in training, or that were made from passages it trained on."""
    if trained_on not in datasets.names():
        return []
    if datasets.info(trained_on).kind == "text":  # continued pre-training: it read passages, not questions
        read = {(e.get("source") or {}).get("chunk_id") for e in datasets.examples(trained_on, "train")}
        shared = sum(i.get("chunk_id") in read for i in items if i.get("chunk_id"))
        return [f"{shared} of {len(items)} test questions were made from passages the adapter read in training "
                f"({trained_on}): that is the point of continued pre-training, but new material would be harder"
                ] if shared else []
    train = [example_to_item(e) for e in datasets.examples(trained_on, "train")]
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
        # Latency from the questions answered alone (runs before batching: every question was).
        timed = [r for r in answered if r.get("batch", 1) == 1]
        timings = [r["answers"][variant]["timings"] for r in timed if r["answers"][variant].get("timings")]
        if timings:
            out["latency_ms"] = sum(t["total_ms"] for t in timings) / len(timings)
            out["ttft_ms"] = sum(t["ttft_ms"] for t in timings) / len(timings)
            out["tokens_per_s"] = sum(t["tokens_per_s"] for t in timings) / len(timings)
        out["errors"] = len(results) - len(answered)
        summary[variant] = out
    return summary

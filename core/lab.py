"""The engine's front door: everything the UI and the CLI do goes through a Lab."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from core.config import Settings, load_settings
from core.errors import InputError, LabError
from core.comparison import Comparison
from core.advisor import Situation, advise
from core.evaluation import EvalStore, example_to_item, lead, run_evaluation, verdict
from core.generation import Delta, GenerationConfig, RowDone, stream_chat
from core.ingest import IngestResult, check_chunking, ingest_files, reindex_files
from core.adapters import AdapterStore
from core.datasets import DatasetStore, parse_examples, render
from core.jobs import JobStore
from core.models import attach_adapter, describe_model, load_embedder, load_generator
from core.training import TrainSettings, estimate
from core.progress import ProgressFn
from core.store import DEFAULT_KB, Chunking, Hit, check_kb_name, close_store, open_store
from core.variants import Variant, get_variant
from core.votes import VoteStore
from core.workspaces import DemoLimits, RateLimiter

MAX_QUESTION_CHARS = 4000


@dataclass
class Answer:
    variant: str
    question: str
    answer: str = ""
    sources: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AnswerEvent:
    """One step of a streamed answer: `sources` (RAG passages found), `delta` (new text), `done`, or `error`."""

    kind: str
    variant: str
    text: str = ""
    answer: Answer | None = None


def relevant(hits: list[Hit], min_score: float) -> list[Hit]:
    """The hits worth showing the model: the best one, those at or above min_score, and keyword matches
    (an exact name or number can matter even where the embedding sees little similarity)."""
    return [h for i, h in enumerate(hits) if i == 0 or h.score >= min_score or h.keyword_rank is not None]


def hit_to_source(hit: Hit, question: str | None = None) -> dict:
    """A passage as the UI, the CLI and saved results show it; `matched`: [start, end] of the question's words in it."""
    from core.retrieval import matched_spans

    found_by = [name for name, rank in (("vector", hit.vector_rank), ("keyword", hit.keyword_rank)) if rank]
    matched = [list(span) for span in matched_spans(question, hit.text)] if question else []
    return {"file": hit.file, "page": hit.page, "score": round(hit.score, 4), "text": hit.text, "found_by": found_by,
            "matched": matched}


class Lab:
    def __init__(self, settings: Settings | None = None, background_indexing: bool = False,
                 limits: "DemoLimits | None" = None, device_lock_dir: Path | None = None):
        """`background_indexing`: rebuild the keyword index in a thread after each change, for a long-running app.
        Off by default: a short-lived process (the CLI) would exit with that thread inside Chroma's native code,
        which crashed the interpreter at exit (seen as a segfault with two CLI ingests at once).
        `limits`: a demo workspace's caps and rate limits (core.workspaces); `device_lock_dir`: where training
        jobs queue for the device, when several data folders share one (demo workspaces)."""
        self.settings = settings or load_settings()
        self.store = open_store(self.settings.data_dir, self.settings.chroma_url)
        self.datasets = DatasetStore(self.settings.data_dir)
        self.adapters = AdapterStore(self.settings.data_dir)
        self.jobs = JobStore(self.settings.data_dir, device_lock_dir)
        self.votes = VoteStore(self.settings.data_dir)
        self.evals = EvalStore(self.settings.data_dir)
        self.background_indexing = background_indexing
        self.limits = limits
        self._rates = RateLimiter(limits.rates) if limits else None

    def spend(self, action: str) -> None:
        """Count one expensive action against a demo workspace's rate limit (refused with the wait when over)."""
        if self._rates:
            self._rates.spend(action)

    def close(self) -> None:
        """Let go of this data folder's store (before the folder is deleted)."""
        close_store(self.settings.data_dir, self.settings.chroma_url)

    # ---- models (loaded lazily, once per process) ------------------------------------------
    @property
    def embedder(self):
        return load_embedder(self.settings)

    @property
    def generator(self):
        return load_generator(self.settings)

    def warm_up(self) -> None:
        warm_up(self.settings)

    def info(self) -> dict:
        return {
            "base_model": describe_model(self.settings.base_model),
            "embed_model": describe_model(self.settings.embed_model),
            "device": self.settings.resolved_device,
            "data_dir": str(self.settings.data_dir),
            "vector_store": self.settings.chroma_url or f"embedded Chroma in {self.settings.data_dir / 'chroma'}",
        }

    # ---- knowledge bases ----------------------------------------------------------------------
    def kb_list(self) -> list[dict]:
        out = []
        for name in self.store.kb_names():
            files = self.store.files(name)
            out.append({"name": name, "files": len(files), "chunks": sum(f.chunks for f in files)})
        return out

    def kb_show(self, kb: str) -> dict:
        kb = self.store.require_kb(kb)
        chunking = self.kb_chunking(kb)
        files = [
            {"file": f.name, "pages": f.pages, "chunks": f.chunks,
             "added": time.strftime("%Y-%m-%d %H:%M", time.localtime(f.added)), "sha256": f.sha256,
             "chunk_size": f.chunk_size, "chunk_overlap": f.chunk_overlap,
             # split with other settings than the knowledge base's (an interrupted re-index): re-index finishes it
             "needs_reindex": (f.chunk_size, f.chunk_overlap) != (chunking.size, chunking.overlap)}
            for f in self.store.files(kb)
        ]
        return {"name": kb, **chunking.to_dict(), "files": files, "chunks": sum(f["chunks"] for f in files)}

    def kb_chunking(self, kb: str) -> Chunking:
        """The knowledge base's chunk settings; the configured defaults for one that does not exist yet."""
        stored = self.store.chunking(kb)
        return stored or Chunking(self.settings.chunk_size, self.settings.chunk_overlap)

    def _chunking(self, kb: str, chunk_size: int | None, chunk_overlap: int | None) -> Chunking:
        current = self.kb_chunking(kb)
        wanted = Chunking(current.size if chunk_size is None else chunk_size,
                          current.overlap if chunk_overlap is None else chunk_overlap)
        return check_chunking(wanted, self.embedder)

    def kb_create(self, kb: str, chunk_size: int | None = None, chunk_overlap: int | None = None) -> str:
        kb = check_kb_name(kb)
        if self.store.has_kb(kb):
            raise InputError("a knowledge base with this name already exists", subject=kb)
        return self.store.create_kb(kb, self.settings.embed_model, self._chunking(kb, chunk_size, chunk_overlap))

    def kb_configure(self, kb: str, chunk_size: int | None = None, chunk_overlap: int | None = None,
                     progress: ProgressFn | None = None) -> dict:
        """Change a knowledge base's chunk settings and re-index its files with them (from their stored text).
        Files already split this way are left alone, so running it again after an interruption finishes the job."""
        kb = self.store.require_kb(kb)
        self._check_embedder(kb)
        chunking = self._chunking(kb, chunk_size, chunk_overlap)
        self.store.set_chunking(kb, chunking)
        stale = [f for f in self.store.files(kb) if (f.chunk_size, f.chunk_overlap) != (chunking.size, chunking.overlap)]
        results = reindex_files(kb, stale, chunking, self.store, self.embedder, progress) if stale else []
        if any(r.status == "updated" for r in results):
            self._prepare_keyword_index(kb)
        return {"name": kb, **chunking.to_dict(), "results": [r.to_dict() for r in results]}

    def file_preview(self, kb: str, name: str) -> dict:
        """A file's chunks as the model will read them, with page labels and token counts."""
        kb = self.store.require_kb(kb)
        record = self.store.file(kb, name)
        if record is None:
            raise InputError(f"no such file in knowledge base {kb!r}", subject=name)
        tokenizer = self.embedder.tokenizer
        chunks = [{"page": c["page"], "tokens": len(tokenizer.encode(c["text"], add_special_tokens=False)),
                   "text": c["text"]} for c in self.store.file_chunks(record)]
        return {"kb": kb, "file": name, "pages": record.pages, "chunks": chunks}

    def _check_embedder(self, kb: str) -> None:
        """A knowledge base's vectors only make sense with the embedding model that made them."""
        built_with = self.store.embed_model(kb)
        if built_with and built_with != self.settings.embed_model:
            raise InputError(
                f"built with the embedding model {describe_model(built_with)}, but the app now uses "
                f"{describe_model(self.settings.embed_model)}; set LAB_EMBED_MODEL back, or use a new knowledge base",
                subject=kb,
            )

    def kb_rename(self, kb: str, new_name: str) -> str:
        return self.store.rename_kb(kb, new_name)

    def kb_delete(self, kb: str) -> None:
        self.store.delete_kb(kb)

    def delete_file(self, kb: str, name: str) -> dict:
        record = self.store.delete_file(kb, name)
        self._prepare_keyword_index(kb)
        return {"file": record.name, "chunks_removed": record.chunks}

    def ingest(self, paths: list[str | Path], kb: str = DEFAULT_KB, progress: ProgressFn | None = None,
               chunk_size: int | None = None, chunk_overlap: int | None = None) -> list[IngestResult]:
        """Add files or web pages. Chunk settings apply to a new knowledge base; an existing one keeps its own
        (change them with kb_configure, which re-indexes)."""
        kb = check_kb_name(kb)
        if not paths:
            raise InputError("no files given")
        if self.limits:
            held = sum(k["chunks"] for k in self.kb_list())
            if held >= self.limits.max_chunks:
                raise InputError(f"this demo workspace holds {held} passages, its limit is "
                                 f"{self.limits.max_chunks}; delete a file or a knowledge base first")
            self.spend("ingest")
        self._check_embedder(kb)  # a knowledge base that does not exist yet passes
        chunking = self._chunking(kb, chunk_size, chunk_overlap)
        current = self.store.chunking(kb)
        if current is not None and current != chunking:
            raise InputError(
                f"it splits text into chunks of {current.size} tokens with {current.overlap} overlap; to change "
                f"that, re-index it (Knowledge base tab, or: python -m core kb configure {kb} --chunk-size N "
                f"--overlap N)", subject=kb)
        results = ingest_files(paths, kb, chunking, self.settings.embed_model, self.settings.max_file_mb,
                               self.store, self.embedder, progress)
        if any(r.status in ("added", "updated") for r in results):
            self._prepare_keyword_index(kb)
        return results

    def _prepare_keyword_index(self, kb: str) -> None:
        """Rebuild the keyword index in the background after a change, so the next question does not wait for it
        (about 11 s at 100k chunks, see docs/BENCHMARKS.md)."""
        if not self.background_indexing:
            return

        def build():
            try:
                self.store.keyword_index(kb)
            except Exception:  # noqa: BLE001 - a failed warm-up only means the next search builds it
                logging.getLogger(__name__).exception("background keyword index build failed")

        threading.Thread(target=build, name=f"keyword-index-{kb}").start()  # not a daemon: finishes before exit

    # ---- training data ------------------------------------------------------------------------------
    def dataset_import(self, path: str | Path, name: str | None = None, replace: bool = False,
                       validation: float = 0.1, test: float = 0.1, seed: int = 42) -> dict:
        """Import a Q&A file (format detected) as a named dataset, split into train / validation / test."""
        path = Path(path)
        if not path.is_file():
            raise InputError("no such file", subject=str(path))
        examples, fmt = parse_examples(path)
        name = name or Path(path.name).stem
        info = self.datasets.save(name, examples, fmt, path.name, replace, validation, test, seed)
        return info.summary()

    def dataset_generate(self, kb: str, name: str, count: int = 50, raft: bool = False, distractors: int = 3,
                         oracle_share: float = 0.8, use_model: bool = True, replace: bool = False,
                         validation: float = 0.1, test: float = 0.1, seed: int = 42,
                         progress: ProgressFn | None = None) -> dict:
        """Q&A pairs grounded in a knowledge base's chunks (answers extracted, questions written by the model with
        a template fallback), optionally as RAFT examples; saved as a dataset with its split."""
        from core.qa_generation import generate_pairs, raft_examples

        if not 1 <= count <= 5000:
            raise InputError(f"count must be between 1 and 5000, got {count}")
        self.spend("dataset")
        chunks = self._fact_chunks(kb)
        report = progress or (lambda fraction, message: None)
        report(0.05, f"Picking fact sentences from {len(chunks)} chunks")
        examples = generate_pairs(chunks, self._question_writer(progress) if use_model else None, count, seed)
        if raft:
            examples = raft_examples(examples, chunks, distractors, oracle_share, seed)
        fmt = "raft" if raft else "generated-qa"
        info = self.datasets.save(name, examples, fmt, f"knowledge base {kb}", replace, validation, test, seed)
        report(1.0, "Done")
        by_model = sum(e["source"]["question_by"] == "model" for e in examples)
        return {**info.summary(), "questions_by_model": by_model, "questions_by_template": len(examples) - by_model}

    def _fact_chunks(self, kb: str) -> list[dict]:
        """The searchable chunks that questions are generated from; refused when there are none."""
        chunks = self.store.listed_chunks(kb)
        if not chunks:
            raise InputError("the knowledge base has no documents yet", subject=kb)
        return chunks

    def _question_writer(self, progress: ProgressFn | None):
        """The model writing one question per fact sentence, all in one decode batch."""
        from core.qa_generation import QUESTION_PROMPT

        report = progress or (lambda fraction, message: None)

        def write_questions(sentences: list[str]) -> list[str]:
            conversations = [[{"role": "user", "content": QUESTION_PROMPT.format(sentence=s)}] for s in sentences]
            questions = [""] * len(sentences)
            for event in stream_chat(self.generator, conversations, GenerationConfig(max_new_tokens=40)):
                if isinstance(event, RowDone):
                    questions[event.row] = event.text.strip()
                    report(0.1 + 0.8 * sum(bool(q) for q in questions) / len(questions),
                           f"Writing questions {sum(bool(q) for q in questions)}/{len(questions)}")
            return questions

        return write_questions

    def dataset_show(self, name: str, part: str = "train", limit: int = 3) -> dict:
        """A dataset's summary and its first examples exactly as the model sees them, with token counts."""
        info = self.datasets.info(name)
        tokenizer = self.generator.tokenizer
        shown = [render(e, tokenizer) for e in self.datasets.examples(name, part)[:limit]]
        return {**info.summary(), "part": part, "preview": shown}

    def dataset_split(self, name: str, validation: float = 0.1, test: float = 0.1, seed: int = 42) -> dict:
        return self.datasets.resplit(name, validation, test, seed).summary()

    # ---- fine-tuning ------------------------------------------------------------------------------------
    def train_settings(self, preset: str = "quick", **overrides) -> TrainSettings:
        return TrainSettings.from_preset(preset, **overrides)

    def train_estimate(self, dataset: str, settings: TrainSettings) -> dict:
        """Memory and time this fine-tune needs here, and whether it fits; computed before loading anything big."""
        from transformers import AutoConfig

        from core.models import resolve_base_model

        train = self.datasets.examples(dataset, "train")
        tokenizer = self.generator.tokenizer
        rendered = [render(e, tokenizer) for e in train]
        lengths = [min(r["prompt_tokens"] + r["answer_tokens"], settings.max_length) for r in rendered]
        config = AutoConfig.from_pretrained(resolve_base_model(self.settings.base_model, self.settings))
        return estimate(config, sum(lengths), len(train), settings, self.settings.resolved_device, max(lengths))

    def train_start(self, dataset: str, settings: TrainSettings, adapter: str | None = None,
                    processes: int = 1) -> dict:
        """Check, estimate, and launch a fine-tune in its own process; returns the job (poll lab.jobs.get).
        `processes` > 1 trains data-parallel under `accelerate launch` (one process per GPU, or CPU workers)."""
        if not 1 <= processes <= 64:
            raise InputError(f"processes must be between 1 and 64, got {processes}")
        info = self.datasets.info(dataset)
        if not info.split.get("train"):
            raise InputError("the dataset has no training examples", subject=dataset)
        plan = self.train_estimate(dataset, settings)
        if self.limits and plan["minutes"] > self.limits.max_train_minutes:
            raise InputError(f"this fine-tune would take about {plan['minutes']} min; the demo allows "
                             f"{self.limits.max_train_minutes:g} min: use the Quick preset, fewer epochs or a "
                             "smaller dataset", subject=dataset)
        self.spend("train")
        if not plan["fits"]:
            raise InputError(
                f"this fine-tune needs about {plan['memory_gb']} GB but {plan['available_gb']} GB is free; lower "
                f"the batch size or max length, or use 4-bit", subject=dataset)
        name = self.adapters.free_name(adapter or f"{dataset}-{settings.preset}")
        job_id = self.jobs.start({"dataset": dataset, "settings": settings.to_dict(), "adapter": name,
                                  "base_model": self.settings.base_model, "device": self.settings.device,
                                  "estimate": plan, "processes": processes})
        return self.jobs.get(job_id)

    def adapter_export_merged(self, name: str, folder: str | Path) -> Path:
        """The base model with the adapter merged in, saved as a full-precision model folder (loadable with plain
        transformers, no peft). Refused for adapters trained on a 4-bit base: merging into quantized weights loses
        what the adapter learned."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from core.models import resolve_base_model

        info = self.adapters.info(name)
        if info.get("quantized_4bit"):
            raise InputError("trained on a 4-bit base model: export the adapter zip instead of a merged model",
                             subject=name)
        target = Path(folder)
        if target.exists() and any(target.iterdir()):
            raise InputError("the folder exists and is not empty", subject=str(target))
        source = resolve_base_model(info["base_model"], self.settings)
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)  # a fresh copy: the served one stays
        merged = PeftModel.from_pretrained(base, str(self.adapters.path(name))).merge_and_unload()
        merged.save_pretrained(str(target))
        AutoTokenizer.from_pretrained(source).save_pretrained(str(target))
        return target

    def _adapter_key(self, name: str) -> str:
        """Attach a registered adapter to the loaded base model; refuse one trained on another base model."""
        info = self.adapters.info(name)
        if info.get("base_model") != self.settings.base_model:
            raise InputError(
                f"trained on {describe_model(info.get('base_model', '?'))}, but the app uses "
                f"{describe_model(self.settings.base_model)}", subject=name)
        return attach_adapter(self.generator, f"{name}@{info.get('created')}", self.adapters.path(name))

    # ---- retrieval and answers ---------------------------------------------------------------
    def search(self, question: str, kb: str = DEFAULT_KB, top_k: int | None = None) -> tuple[list[Hit], float]:
        """Return the top passages and the retrieval time in ms."""
        question = check_question(question)
        top_k = self.settings.top_k if top_k is None else top_k
        if not 1 <= top_k <= 50:
            raise InputError(f"top-k must be between 1 and 50, got {top_k}")
        kb = self.store.require_kb(kb)
        self._check_embedder(kb)
        embedder = self.embedder  # loaded before the clock starts: timings measure retrieval, not loading
        t0 = time.perf_counter()
        vector = embedder.encode([question], normalize_embeddings=True, convert_to_numpy=True)[0]
        hits = self.store.query(kb, vector.tolist(), top_k, text=question)
        return hits, (time.perf_counter() - t0) * 1000

    def ask_stream(
        self,
        question: str,
        variants: list[str] = ("base", "rag"),
        kb: str = DEFAULT_KB,
        top_k: int | None = None,
        config: GenerationConfig | None = None,
        system_prompt: str | None = None,
        adapter: str | None = None,
        history: dict[str, list[dict]] | None = None,
    ) -> Iterator[AnswerEvent]:
        """Answer one question with several variants at once (one decode batch), streaming every column.
        `history` maps a variant to its own earlier turns (user/assistant messages) for a multi-turn chat."""
        question = check_question(question)
        config = config or GenerationConfig(max_new_tokens=self.settings.max_new_tokens)
        chosen: list[Variant] = [get_variant(name) for name in dict.fromkeys(variants)]
        if not chosen:
            raise InputError("choose at least one variant")
        answers = {v.name: Answer(v.name, question) for v in chosen}
        generator = self.generator  # load before any timing starts
        runnable, conversations, row_adapters = [], [], []
        hits, retrieval_ms = None, 0.0
        for variant in chosen:
            answer = answers[variant.name]
            passages: list[Hit] = []
            adapter_key = None
            if variant.uses_adapter:
                try:
                    if not adapter:
                        raise InputError("choose a fine-tuned adapter for this variant (train one first)")
                    adapter_key = self._adapter_key(adapter)
                except LabError as exc:
                    answer.error = str(exc)
                    yield AnswerEvent("error", variant.name, str(exc), answer)
                    continue
            if variant.uses_retrieval:
                try:
                    if hits is None:
                        hits, retrieval_ms = self.search(question, kb, top_k)
                    if not hits:
                        raise InputError(f"knowledge base {kb!r} has no documents yet; add some first")
                except LabError as exc:
                    answer.error = str(exc)
                    yield AnswerEvent("error", variant.name, str(exc), answer)
                    continue
                passages = relevant(hits, self.settings.min_score)
                answer.sources = [hit_to_source(h, question) for h in passages]
                answer.timings["retrieval_ms"] = round(retrieval_ms, 1)
                yield AnswerEvent("sources", variant.name, answer=answer)
            runnable.append(variant)
            row_adapters.append(adapter_key)
            conversations.append(variant.messages(question, passages, system_prompt, (history or {}).get(variant.name)))
        if not runnable:
            return
        try:
            for event in stream_chat(generator, conversations, config, row_adapters):
                variant = runnable[event.row]
                answer = answers[variant.name]
                if isinstance(event, Delta):
                    answer.answer += event.text
                    yield AnswerEvent("delta", variant.name, event.text, answer)
                elif isinstance(event, RowDone):
                    answer.answer = event.text.strip()
                    s = event.stats
                    extra = answer.timings.get("retrieval_ms", 0.0)
                    answer.timings.update(
                        ttft_ms=round((s.ttft_s or s.total_s) * 1000 + extra, 1),
                        total_ms=round(s.total_s * 1000 + extra, 1),
                        prompt_tokens=s.prompt_tokens,
                        new_tokens=s.new_tokens,
                        tokens_per_s=round(s.tokens_per_s, 2),
                    )
                    yield AnswerEvent("done", variant.name, answer.answer, answer)
        except LabError as exc:
            for variant in runnable:
                answers[variant.name].error = str(exc)
                yield AnswerEvent("error", variant.name, str(exc), answers[variant.name])

    def ask(self, question: str, variant: str = "rag", **kwargs) -> Answer:
        answer = None
        for event in self.ask_stream(question, [variant], **kwargs):
            answer = event.answer
        if answer is not None and answer.error:
            raise LabError(answer.error)
        return answer

    def compare(self, question: str, variants: list[str], **kwargs) -> list[Answer]:
        final: dict[str, Answer] = {}
        for event in self.ask_stream(question, variants, **kwargs):
            if event.kind in ("done", "error"):
                final[event.variant] = event.answer
        return [final[v] for v in dict.fromkeys(variants) if v in final]

    def comparison(self, question: str, answers: list[Answer], kb: str | None = None, adapter: str | None = None,
                   settings: dict | None = None, history: dict | None = None) -> Comparison:
        """The record of one side-by-side turn, with the model and the adapter's identity, for votes and export."""
        adapter_info = None
        if adapter and any(get_variant(a.variant).uses_adapter for a in answers):
            meta = self.adapters.info(adapter)
            adapter_info = {k: meta.get(k) for k in ("name", "base_model", "dataset", "dataset_sha256", "job", "created")}
        else:
            adapter = None
        return Comparison(
            question=question, answers=[a.to_dict() for a in answers], kb=kb, model=self.settings.base_model,
            adapter=adapter, adapter_info=adapter_info, settings=dict(settings or {}),
            history={k: v for k, v in (history or {}).items() if v and any(a.variant == k for a in answers)},
        )

    # ---- evaluation ---------------------------------------------------------------------------
    def eval_items(self, dataset: str | None = None, file: str | Path | None = None, part: str = "test",
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
        from core.qa_generation import generate_pairs

        if count < 1:
            raise InputError(f"the question limit must be at least 1, not {count}")
        chunks = self._fact_chunks(kb)
        self.spend("dataset")
        # Another seed than dataset generation's default, so a small knowledge base's test questions are not
        # simply its training questions again (the overlap warning tells where they still are).
        examples = generate_pairs(chunks, self._question_writer(progress), count, seed=7)
        return [example_to_item(e) for e in examples]

    def eval_run(self, items: list[dict], testset: str, variants: list[str], kb: str | None = None,
                 adapter: str | None = None, config: GenerationConfig | None = None, top_k: int | None = None,
                 progress: ProgressFn | None = None, should_stop=None) -> dict:
        if adapter:
            self._adapter_key(adapter)  # refuse an adapter for another base model before the first question
        if self.limits and len(items) > self.limits.max_eval_questions:
            raise InputError(f"{len(items)} questions; the demo evaluates at most {self.limits.max_eval_questions} "
                             "at a time (set 'Questions (at most)' lower)")
        self.spend("evaluate")
        return run_evaluation(self, items, variants, testset, kb=kb, adapter=adapter, config=config, top_k=top_k,
                              progress=progress, should_stop=should_stop)

    def costs(self, kb: str | None = None, adapter: str | None = None) -> dict:
        """What the variants cost to keep, beside what they score: model weights in memory, the index, the adapter."""
        def megabytes(n: int, digits: int = 1) -> float:
            return round(n / 2**20, digits)

        def weights(model) -> int:
            return sum(p.numel() * p.element_size() for p in model.parameters())

        out = {"model_mb": megabytes(weights(self.generator.model))}
        if kb:
            size = self.store.index_bytes(self.store.require_kb(kb))
            # A small index is kilobytes: kept to 3 decimals so the verdict can say how many.
            out["index"] = {"chunks": size["chunks"], "mb": megabytes(size["text_bytes"] + size["vector_bytes"], 3)}
            out["embedder_mb"] = megabytes(weights(self.embedder))
        if adapter:
            folder = self.adapters.path(adapter)
            out["adapter_mb"] = megabytes(sum(f.stat().st_size for f in folder.rglob("*.safetensors")))
        return out

    def advise(self, situation: Situation) -> dict:
        """The advisor's recommendation; where this workspace has a finished evaluation, its measured winner
        comes with it, and says so when it disagrees (a measurement on your questions beats a rule of thumb)."""
        advice = advise(situation)
        for run_id in reversed(self.evals.ids()):
            run = self.evals.load(run_id)
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


def warm_up(settings: Settings) -> None:
    """Load both models and run each once, so the first real question is not slowed by first-call costs."""
    load_embedder(settings).encode(["warm up"], normalize_embeddings=True)
    for _ in stream_chat(load_generator(settings), [[{"role": "user", "content": "Hi"}]],
                         GenerationConfig(max_new_tokens=2)):
        pass


def check_question(question: str) -> str:
    question = (question or "").strip()
    if not question:
        raise InputError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise InputError(f"the question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question

"""Training data as a service: import a Q&A file, generate Q&A or RAFT examples from a knowledge base, preview
examples as the model sees them, split again. Storage and formats are core/datasets.py's."""
from __future__ import annotations

from pathlib import Path

from core.dataset_cleaning import check
from core.datasets import DatasetStore, parse_examples, render
from core.errors import InputError
from core.knowledge import KnowledgeBases
from core.limits import Quota
from core.models import Models
from core.progress import ProgressFn, silent
from core.qa_generation import generate_pairs, model_question_writer, raft_examples
from core.votes import VoteStore


class Datasets(DatasetStore):
    def __init__(self, data_dir: Path, kbs: KnowledgeBases, models: Models, quota: Quota, votes: VoteStore):
        super().__init__(data_dir)
        self.kbs, self.models, self.quota, self.votes = kbs, models, quota, votes

    def import_file(self, path: str | Path, name: str | None = None, replace: bool = False,
                    validation: float = 0.1, test: float = 0.1, seed: int = 42) -> dict:
        """Import a Q&A file (format detected) as a named dataset, split into train / validation / test."""
        path = Path(path)
        if not path.is_file():
            raise InputError("no such file", subject=str(path))
        examples, fmt = parse_examples(path)
        info = self.save(name or Path(path.name).stem, examples, fmt, path.name, replace, validation, test, seed)
        return info.summary()

    def generate(self, kb: str, name: str, count: int = 50, raft: bool = False, distractors: int = 3,
                 oracle_share: float = 0.8, use_model: bool = True, replace: bool = False,
                 validation: float = 0.1, test: float = 0.1, seed: int = 42,
                 progress: ProgressFn | None = None) -> dict:
        """Q&A pairs grounded in a knowledge base's chunks (answers extracted, questions written by the model with
        a template fallback), optionally as RAFT examples; saved as a dataset with its split."""
        if not 1 <= count <= 5000:
            raise InputError(f"count must be between 1 and 5000, got {count}")
        self.quota.spend("dataset")
        chunks = self.kbs.fact_chunks(kb)
        report = progress or silent
        report(0.05, f"Picking fact sentences from {len(chunks)} chunks")
        writer = model_question_writer(self.models.generator, progress) if use_model else None
        examples = generate_pairs(chunks, writer, count, seed)
        if raft:
            examples = raft_examples(examples, chunks, distractors, oracle_share, seed)
        fmt = "raft" if raft else "generated-qa"
        info = self.save(name, examples, fmt, f"knowledge base {kb}", replace, validation, test, seed)
        report(1.0, "Done")
        by_model = sum(e["source"]["question_by"] == "model" for e in examples)
        return {**info.summary(), "questions_by_model": by_model, "questions_by_template": len(examples) - by_model}

    def from_votes(self, name: str = "votes", kb: str | None = None, replace: bool = True,
                   validation: float = 0.1, seed: int = 42) -> dict:
        """The Compare tab's decided votes as a preference dataset (one pair per winner and other answer), for
        DPO. Replaces an earlier one of the same name by default: the votes only grow."""
        pairs = self.votes.preference_pairs(kb)
        if not pairs:
            where = f" on knowledge base {kb}" if kb else ""
            raise InputError(f"no usable votes{where} yet: in Compare, ask a question in two or more columns and "
                             "vote for the best answer (ties, all-bad votes and identical answers give no pair)")
        info = self.save(name, pairs, "preference-votes", f"votes{f' on {kb}' if kb else ''}", replace,
                         validation if len(pairs) >= 10 else 0.0, 0.0, seed)
        return info.summary()

    def clean(self, name: str, apply: bool = False, to: str | None = None, max_length: int = 384) -> dict:
        """Check a dataset for duplicates, near-duplicates, answers without words, examples over `max_length`
        tokens, test questions in the training part and encoding debris (core/dataset_cleaning.py). With `apply`,
        save the fixed examples as a new dataset (`to`, by default NAME-clean) with the same split: the original
        stays as it is, and so does what adapters trained on it record."""
        if not 32 <= max_length <= 32768:
            raise InputError(f"max length must be between 32 and 32768 tokens, got {max_length}")
        info = self.info(name)
        examples = self.examples(name)
        tokenizer = self.models.generator.tokenizer
        lengths = []
        for shown in (render(e, tokenizer) for e in examples):
            lengths.append(shown["prompt_tokens"] + max(shown["answer_tokens"], shown.get("rejected_tokens", 0)))
        found = check(examples, info.split, lengths, max_length)
        repaired = found.pop("repaired")
        out = {"name": name, "max_length": max_length, **found, "repaired": sorted(repaired),
               "clean": not found["removed"] and not repaired}
        if not apply:
            return out
        if out["clean"]:
            raise InputError("nothing to fix", subject=name)
        target = to or f"{name}-clean"
        if target == name:
            raise InputError("the cleaned copy needs another name: the original stays as it is", subject=name)
        cleaned_from = f"cleaned from {name}"
        replace = target in self.names() and self.info(target).source == cleaned_from
        kept = [i for i in range(len(examples)) if i not in set(found["removed"])]
        new_index = {old: new for new, old in enumerate(kept)}
        split = {part: [new_index[i] for i in indices if i in new_index] for part, indices in info.split.items()}
        if not split.get("train"):
            raise InputError("the fixes would leave nothing to train on", subject=name)
        saved = self.save(target, [repaired.get(i, examples[i]) for i in kept], info.format, cleaned_from, replace,
                          seed=info.seed, split=split)
        return {**out, "saved_as": saved.summary()}

    def from_kb(self, kb: str, name: str | None = None) -> dict:
        """A knowledge base's passages as a text dataset for continued pre-training (every token learned), named
        KB-text by default and made again each time (the knowledge base may have changed)."""
        chunks = self.kbs.fact_chunks(kb)
        examples = [{"text": c["text"], "source": {"file": c["file"], "page": c["page"], "chunk_id": c["id"]}}
                    for c in chunks if c["text"].strip()]
        target = name or f"{kb}-text"
        made_from = f"knowledge base {kb}"
        replace = target in self.names() and self.info(target).source == made_from
        info = self.save(target, examples, "kb-text", made_from, replace, 0.1 if len(examples) >= 20 else 0.0, 0.0)
        return info.summary()

    def show(self, name: str, part: str = "train", limit: int = 3) -> dict:
        """A dataset's summary and its first examples exactly as the model sees them, with token counts."""
        info = self.info(name)
        tokenizer = self.models.generator.tokenizer
        shown = [render(e, tokenizer) for e in self.examples(name, part)[:limit]]
        return {**info.summary(), "part": part, "preview": shown}

    def split(self, name: str, validation: float = 0.1, test: float = 0.1, seed: int = 42) -> dict:
        return self.resplit(name, validation, test, seed).summary()

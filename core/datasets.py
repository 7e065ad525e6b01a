"""Training data: import Q&A files (OpenAI chat JSONL, Alpaca JSON/JSONL, CSV), validate them line by line,
keep them as named datasets with a fixed train / validation / test split, and preview them as the model sees them.

Every example is stored the same way, as a chat: {"messages": [{"role": ..., "content": ...}, ...]} ending with the
assistant message to learn, plus optional "source" (where a generated example came from) and "gold" (the short
answer, for evaluation). A preference dataset (for DPO) holds pairs instead, in core/preference_data.py's form:
{"prompt": [...], "chosen": [...], "rejected": [...]}; a text dataset (continued pre-training) holds passages,
{"text": ...}, all of it learned. A file is one kind only.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.documents import decode_text
from core.errors import InputError
from core.fileio import FolderRegistry, write_json
from core.names import check_name
from core.preference_data import is_preference, preference_pair

ROLES = ("system", "user", "assistant")
QUESTION_COLUMNS = ("question", "prompt", "instruction", "input", "query")
ANSWER_COLUMNS = ("answer", "response", "output", "completion", "target")
MAX_ERRORS_SHOWN = 5


@dataclass
class DatasetInfo:
    name: str
    examples: int
    format: str
    source: str
    sha256: str  # of the stored examples: what a trained adapter records, so it can say what it was trained on
    created: float
    split: dict = field(default_factory=dict)  # part -> list of example indices
    seed: int = 0
    kind: str = "sft"  # "sft": Q&A examples to learn; "preference": chosen/rejected pairs (DPO); "text": passages

    def summary(self) -> dict:
        out = asdict(self)
        out["split"] = {part: len(indices) for part, indices in self.split.items()}
        out["created"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))
        return out


def parse_examples(path: Path, name: str | None = None) -> tuple[list[dict], str]:
    """Read a Q&A or preference file into stored examples and say which format it was. Raises InputError naming
    the file and the first problems with their line (or item) numbers."""
    name = name or path.name
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise InputError(f"unsupported training data type {suffix or '(none)'}; use .jsonl, .json or .csv",
                         subject=name)
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError("the file is empty", subject=name)
    text = decode_text(raw, name, "text")
    errors: list[str] = []
    if suffix == ".csv":
        examples, kind = _from_csv(text, errors, name)
    elif suffix == ".jsonl":
        examples, kind = _from_records(_jsonl_records(text, errors), errors)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", subject=name) from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None) or [data]
        if not isinstance(data, list):
            raise InputError("a .json file must hold a list of examples", subject=name)
        examples, kind = _from_records([(f"item {i}", r) for i, r in enumerate(data, 1)], errors)
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise InputError("; ".join(errors[:MAX_ERRORS_SHOWN]) + more, subject=name)
    if not examples:
        raise InputError("no examples found", subject=name)
    return examples, kind


def _jsonl_records(text: str, errors: list[str]) -> list[tuple[str, object]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg})")
    return records


def _from_records(records: list[tuple[str, object]], errors: list[str]) -> tuple[list[dict], str]:
    examples, kinds = [], set()
    first_kind = None  # a file is Q&A examples or preference pairs, not both
    for where, record in records:
        if not isinstance(record, dict):
            errors.append(f"{where}: expected an object, got {type(record).__name__}")
            continue
        kind = record_kind(record)
        first_kind = first_kind or (kind, where)
        if kind != first_kind[0]:
            errors.append(f"{where}: a {_KIND_WORDS[kind]}, but {first_kind[1]} is a {_KIND_WORDS[first_kind[0]]}; "
                          "a file holds one kind")
            continue
        try:
            if kind == "preference":
                pair, layout = preference_pair(record)
                examples.append(pair)
                kinds.add(f"preference-{layout}")
            elif kind == "text":
                examples.append({"text": _text(record["text"], "text")})
                if not examples[-1]["text"]:
                    raise ValueError("the text is empty")
                kinds.add("text")
            elif "messages" in record:
                examples.append(_check_chat(record["messages"]))
                kinds.add("openai-chat")
            elif "instruction" in record and "output" in record:
                prompt = _text(record["instruction"], "instruction")
                extra = _text(record.get("input") or "", "input")
                examples.append(_qa(f"{prompt}\n\n{extra}" if extra else prompt, _text(record["output"], "output"),
                                    record.get("system")))
                kinds.add("alpaca")
            elif "question" in record and "answer" in record:
                examples.append(_qa(_text(record["question"], "question"), _text(record["answer"], "answer")))
                kinds.add("question-answer")
            else:
                raise ValueError(f"has keys {sorted(record)[:6]}; expected 'messages' (chat), 'instruction' and "
                                 f"'output' (Alpaca), 'question' and 'answer', 'prompt', 'chosen' and "
                                 f"'rejected' (preference pairs), or 'text' (passages to read)")
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        for key in ("gold", "source"):
            if key in record:
                examples[-1][key] = record[key]
    return examples, "+".join(sorted(kinds)) or "empty"


_KIND_WORDS = {"sft": "Q&A example", "preference": "preference pair", "text": "text passage"}


def record_kind(record: dict) -> str:
    if is_preference(record):
        return "preference"
    return "text" if "text" in record and "messages" not in record and "question" not in record else "sft"


def dataset_kind(examples: list[dict]) -> str:
    return record_kind(examples[0]) if examples else "sft"


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{what}' must be text, got {type(value).__name__}")
    return value.strip()


def _qa(question: str, answer: str, system=None) -> dict:
    if not question:
        raise ValueError("the question is empty")
    if not answer:
        raise ValueError("the answer is empty")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return {"messages": [*messages, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _check_chat(messages) -> dict:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content}")
    clean = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} must have 'role' and 'content'")
        if message["role"] not in ROLES:
            raise ValueError(f"message {i} has role {message['role']!r}; use one of {', '.join(ROLES)}")
        clean.append({"role": message["role"], "content": _text(message["content"], f"message {i} content")})
    if clean[-1]["role"] != "assistant" or not clean[-1]["content"]:
        raise ValueError("the last message must be a non-empty assistant message (the answer to learn)")
    if not any(m["role"] == "user" for m in clean):
        raise ValueError("there is no user message")
    return {"messages": clean}


def _from_csv(text: str, errors: list[str], name: str) -> tuple[list[dict], str]:
    reader = csv.DictReader(io.StringIO(text))
    headers = {h.strip().lower(): h for h in (reader.fieldnames or []) if h}
    if "chosen" in headers or "rejected" in headers:  # preference pairs: prompt (or question), chosen, rejected
        records = [(f"line {number}", {key: (row.get(header) or "") for key, header in headers.items()})
                   for number, row in enumerate(reader, 2)]
        examples, _ = _from_records(records, errors)
        return examples, "preference-csv"
    question = next((headers[c] for c in QUESTION_COLUMNS if c in headers), None)
    answer = next((headers[c] for c in ANSWER_COLUMNS if c in headers), None)
    if question is None or answer is None:
        missing = "question" if question is None else "answer"
        raise InputError(f"no {missing} column; the header has {list(headers.values())}, expected e.g. "
                         f"'question' and 'answer' (or 'prompt', 'chosen' and 'rejected' for preference pairs)",
                         subject=name)
    examples = []
    for number, row in enumerate(reader, 2):
        try:
            examples.append(_qa((row.get(question) or "").strip(), (row.get(answer) or "").strip()))
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
    return examples, "csv"


class DatasetStore(FolderRegistry):
    """Named datasets under data_dir/datasets/<name>/: examples.jsonl and info.json, written atomically."""

    marker, what, hint = "info.json", "dataset", "none yet: import one first"

    def __init__(self, data_dir: Path):
        super().__init__(Path(data_dir) / "datasets")

    def info(self, name: str) -> DatasetInfo:
        return DatasetInfo(**json.loads((self.path(name) / "info.json").read_text()))

    def examples(self, name: str, part: str | None = None) -> list[dict]:
        info = self.info(name)
        rows = [json.loads(line) for line in (self.root / name / "examples.jsonl").read_text().splitlines() if line]
        if part is None:
            return rows
        if part not in info.split:
            raise InputError(f"no {part!r} part; the dataset has {', '.join(info.split) or 'no split'}", subject=name)
        return [rows[i] for i in info.split[part]]

    def save(self, name: str, examples: list[dict], fmt: str, source: str, replace: bool = False,
             validation: float = 0.1, test: float = 0.1, seed: int = 42, split: dict | None = None) -> DatasetInfo:
        """Store examples under `name`, split by the shares and seed (or as `split` says), written whole or not at
        all."""
        name = check_name(name, "dataset")
        final = self.root / name
        if final.exists() and not replace:
            raise InputError("a dataset with this name already exists (choose another name, or replace it)",
                             subject=name)
        body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
        info = DatasetInfo(name, len(examples), fmt, source, hashlib.sha256(body.encode()).hexdigest(), time.time(),
                           split or make_split(len(examples), validation, test, seed), seed, dataset_kind(examples))
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{name}.{time.time_ns()}"
        staging.mkdir()
        (staging / "examples.jsonl").write_text(body)
        (staging / "info.json").write_text(json.dumps(asdict(info)))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return info

    def resplit(self, name: str, validation: float, test: float, seed: int) -> DatasetInfo:
        info = self.info(name)
        info.split, info.seed = make_split(info.examples, validation, test, seed), seed
        write_json(self.root / name / "info.json", asdict(info), indent=None)
        return info

    def delete(self, name: str) -> None:
        self.info(name)
        shutil.rmtree(self.root / name)


def make_split(count: int, validation: float, test: float, seed: int) -> dict:
    """Shuffle with a fixed seed, then cut: the test part is kept out of training (it is for evaluation)."""
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise InputError(f"validation ({validation}) and test ({test}) shares must be between 0 and 1, "
                         f"leaving some for training")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_test = round(count * test) if test else 0
    n_val = round(count * validation) if validation else 0
    if count - n_test - n_val < 1:
        raise InputError(f"{count} examples are too few for this split")
    return {"train": sorted(order[n_test + n_val:]), "validation": sorted(order[n_test: n_test + n_val]),
            "test": sorted(order[:n_test])}


def render(example: dict, tokenizer) -> dict:
    """An example exactly as training sees it: the chat template applied; the prompt part is not learned. A
    preference pair shows its prompt with the chosen answer, and the rejected answer beside it."""
    if "text" in example and "messages" not in example:  # a passage: every token is learned
        return {"text": example["text"], "prompt_tokens": 0,
                "answer_tokens": len(tokenizer(example["text"], add_special_tokens=False)["input_ids"])}
    if "chosen" in example:
        shown = render({"messages": example["prompt"] + example["chosen"]}, tokenizer)
        rejected = render({"messages": example["prompt"] + example["rejected"]}, tokenizer)
        return {**shown, "rejected": "\n".join(m["content"] for m in example["rejected"]),
                "rejected_tokens": rejected["answer_tokens"]}
    prompt = tokenizer.apply_chat_template(example["messages"][:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example["messages"], tokenize=False)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    full_tokens = len(tokenizer(full, add_special_tokens=False)["input_ids"])
    return {"text": full, "prompt_tokens": prompt_tokens, "answer_tokens": full_tokens - prompt_tokens}

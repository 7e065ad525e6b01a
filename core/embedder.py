"""Sentence embeddings. A sentence-transformers model of the common layout (a transformer, mean or [CLS] pooling, an
optional normalize step, no prompts) runs here directly on transformers; any other layout goes to the
sentence-transformers library itself.

Why: importing sentence-transformers takes ~6.6 s of every process start on this 2-core machine (measured with
cProfile: `python -m core ingest` of one small file, 13.7 s in all), and every CLI command that searches or
ingests, the app and each test process pay it. The vectors are the library's (tests/test_models.py compares them),
so a store filled by either path is searched by the other."""
from __future__ import annotations

import json
from pathlib import Path

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"


def plain_layout(folder: Path) -> dict | None:
    """The pooling mode and window of a sentence-transformers folder this module can run, or None."""
    try:
        listed = json.loads((folder / "modules.json").read_text())
        modules = [m["type"] for m in listed]
        pooling = json.loads((folder / listed[1]["path"] / "config.json").read_text())
        config = json.loads((folder / "sentence_bert_config.json").read_text())
        extra = json.loads((folder / "config_sentence_transformers.json").read_text()) \
            if (folder / "config_sentence_transformers.json").exists() else {}
    except (OSError, ValueError, KeyError, IndexError):
        return None
    if modules[:2] != [TRANSFORMER, POOLING] or modules[2:] not in ([], [NORMALIZE]):
        return None
    if extra.get("prompts") or extra.get("default_prompt_name") or config.get("do_lower_case"):
        return None
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]) or pooling.get("include_prompt") is False:
        return None
    return {"pooling": "mean" if modes == ["pooling_mode_mean_tokens"] else "cls",
            "normalize": modules[2:] == [NORMALIZE], "max_seq_length": int(config.get("max_seq_length") or 512)}


class TransformerEmbedder:
    """What the engine uses of a SentenceTransformer: encode, tokenizer, max_seq_length, parameters."""

    def __init__(self, folder: Path, device: str, layout: dict):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device, self.pooling, self.normalize = device, layout["pooling"], layout["normalize"]
        self.max_seq_length = layout["max_seq_length"]

    def parameters(self):
        return self.model.parameters()

    def encode(self, texts, batch_size: int = 32, normalize_embeddings: bool = False, convert_to_numpy: bool = True,
               **_):
        import torch

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        # Longest first, as the library does: batches of similar length waste less on padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = self.tokenizer([texts[i].strip() for i in rows], padding=True, truncation="longest_first",
                                       max_length=self.max_seq_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                if self.pooling == "cls":
                    vectors = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if self.normalize or normalize_embeddings:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                for i, vector in zip(rows, vectors.float().cpu()):
                    out[i] = vector
        stacked = torch.stack(out) if out else torch.empty(0, self.model.config.hidden_size)
        result = stacked.numpy() if convert_to_numpy else stacked
        return result[0] if single else result


def load(source: str, device: str):
    """The embedder for a model folder or hub id: the direct path when the layout allows, else the library's."""
    folder = Path(source)
    layout = plain_layout(folder) if folder.is_dir() else None
    if layout is not None:
        return TransformerEmbedder(folder, device, layout)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(source, device=device)

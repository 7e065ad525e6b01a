"""A finished side-by-side comparison as a record: what was asked, with which settings, model and adapter, and
what each variant answered (with sources and timings). Votes store it whole; users export it as Markdown or JSON."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from core.variants import VARIANTS


def answered(answers: list[dict]) -> list[dict]:
    """The answers (Answer.to_dict()) that can be judged: they have text and no error."""
    return [a for a in answers if a.get("answer") and not a.get("error")]


@dataclass
class Comparison:
    question: str
    answers: list[dict]  # Answer.to_dict() per variant, in column order
    kb: str | None = None
    model: str = ""
    adapter: str | None = None  # the adapter's name, and below its identity (name@created, base model, dataset)
    adapter_info: dict | None = None
    settings: dict = field(default_factory=dict)  # temperature, top_p, max_new_tokens, top_k, system_prompt
    history: dict = field(default_factory=dict)  # variant -> earlier turns of that column's conversation
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Comparison":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def to_markdown(self) -> str:
        lines = [f"# Comparison: {self.question}", "",
                 f"- Asked: {self.created}", f"- Model: {self.model}"]
        if self.adapter:
            lines.append(f"- Adapter: {self.adapter}")
        if self.kb:
            lines.append(f"- Knowledge base: {self.kb}")
        if self.settings:
            lines.append("- Settings: " + ", ".join(f"{k} {v!r}" for k, v in self.settings.items() if v not in (None, "")))
        for answer in self.answers:
            variant = VARIANTS.get(answer["variant"])
            lines += ["", f"## {variant.label if variant else answer['variant']}", ""]
            turns = self.history.get(answer["variant"]) or []
            if turns:
                lines.append(f"*(after {len(turns) // 2} earlier turn(s) in this column)*")
                lines.append("")
            lines.append(f"**Error:** {answer['error']}" if answer.get("error") else answer.get("answer", ""))
            t = answer.get("timings") or {}
            if "total_ms" in t:
                lines += ["", f"*first token {t['ttft_ms'] / 1000:.2f} s · total {t['total_ms'] / 1000:.2f} s · "
                              f"{t['tokens_per_s']:.1f} tokens/s · {t['prompt_tokens']} tokens in, "
                              f"{t['new_tokens']} out*"]
            for i, source in enumerate(answer.get("sources") or [], 1):
                where = source["file"] + (f", page {source['page']}" if source.get("page") else "")
                quoted = " ".join(source["text"].split())
                lines += ["", f"> [{i}] {where} (score {source['score']:.3f}): {quoted}"]
        return "\n".join(lines) + "\n"

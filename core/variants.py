"""The answer variants. Each says whether it retrieves passages and whether it needs an adapter, and builds
its own prompt; callers only ever look at these flags."""
from __future__ import annotations

from dataclasses import dataclass

from core.documents import cite
from core.errors import InputError
from core.retrieval import Hit

RAG_SYSTEM_PROMPT = (
    "Answer the question using only the numbered passages from the user's documents. "
    "Cite the passages you use like [1]. If the passages do not contain the answer, say so."
)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    description: str
    uses_retrieval: bool
    uses_adapter: bool = False

    def messages(self, question: str, passages: list[Hit], system_prompt: str | None = None,
                 history: list[dict] | None = None) -> list[dict]:
        """The conversation to generate from. `history` holds this column's earlier turns as plain user/assistant
        messages; only the newest question carries passages (earlier ones would crowd the context)."""
        messages = []
        if self.uses_retrieval:
            numbered = "\n\n".join(
                f"[{i}] ({cite(hit.file, hit.page)})\n{hit.text}"
                for i, hit in enumerate(passages, start=1)
            )
            messages.append({"role": "system", "content": system_prompt or RAG_SYSTEM_PROMPT})
            messages.extend(history or [])
            messages.append({"role": "user", "content": f"Passages:\n{numbered}\n\nQuestion: {question}"})
        else:
            if system_prompt:
                messages.append({"role": "system", "content": system_prompt})
            messages.extend(history or [])
            messages.append({"role": "user", "content": question})
        return messages


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("base", "Base model", "The model alone, answering from what it learned in pre-training.", False),
        Variant("rag", "RAG", "The model reading passages retrieved from your knowledge base.", True),
        Variant("finetuned", "Fine-tuned", "The model with a fine-tuned adapter, answering from what it was trained on.",
                False, uses_adapter=True),
        Variant("finetuned+rag", "Fine-tuned + RAG", "The fine-tuned model, also reading retrieved passages.",
                True, uses_adapter=True),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise InputError(f"unknown variant; choose from {', '.join(VARIANTS)}", subject=repr(name)) from None

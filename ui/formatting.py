"""Small display helpers shared by the tabs (text only; no engine logic)."""
from __future__ import annotations

import html
import re
from contextlib import contextmanager

# Plain words, not emoji: emoji fonts are missing on many Linux desktops and headless browsers.
STATUS_LABEL = {"added": "Added", "updated": "Updated", "unchanged": "Unchanged", "skipped": "Skipped",
                "failed": "Not added", "cancelled": "Cancelled"}


def escape(text: str) -> str:
    """Model output is shown as text, never as HTML (its Markdown formatting is kept)."""
    return html.escape(text or "", quote=False)


# What can make links, images, emphasis or code mid-line; "-", "#" and "+" only matter at a line start,
# which these texts never are (each line starts with a label).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]!|~])")


def escape_plain(text: str) -> str:
    """File names, URLs and messages from elsewhere: shown literally, neither HTML nor Markdown (no links)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", escape(text))


def timing_line(timings: dict) -> str:
    if not timings or "total_ms" not in timings:
        return ""
    parts = [
        f"first token {timings['ttft_ms'] / 1000:.1f} s",
        f"total {timings['total_ms'] / 1000:.1f} s",
        f"{timings['tokens_per_s']:.1f} tokens/s",
        f"{timings['prompt_tokens']} tokens in, {timings['new_tokens']} out",
    ]
    if "retrieval_ms" in timings:
        parts.insert(0, f"retrieval {timings['retrieval_ms']:.0f} ms")
    return " · ".join(parts)


def highlight(text: str, spans: list) -> str:
    """The passage as safe HTML: everything escaped, the question's words marked."""
    out, last = [], 0
    for start, end in spans:
        out.append(html.escape(text[last:start]))
        out.append(f"<mark>{html.escape(text[start:end])}</mark>")
        last = end
    out.append(html.escape(text[last:]))
    return "".join(out)


def sources_rows(sources: list[dict]) -> list[list]:
    return [
        [i, s["file"], s["page"] or "–", round(s["score"], 3), " + ".join(s.get("found_by", [])),
         highlight(s["text"], s.get("matched", []))]
        for i, s in enumerate(sources, 1)
    ]


SOURCES_HEADERS = ["#", "File", "Page", "Score", "Found by", "Passage"]
SOURCES_TYPES = ["number", "str", "str", "number", "str", "html"]


def sources_html(sources: list[dict]) -> str:
    """A RAG column's passages as a collapsible numbered list (file, page, score, how found, highlighted text)."""
    if not sources:
        return ""
    items = []
    for s in sources:
        where = html.escape(s["file"]) + (f" · page {html.escape(str(s['page']))}" if s.get("page") else "")
        found = " + ".join(s.get("found_by", []))
        unread = " · <i>retrieved, not shown to the model</i>" if s.get("read") is False else ""
        items.append(f"<li><b>{where}</b> · score {s['score']:.3f}" + (f" · {html.escape(found)}" if found else "")
                     + unread + f"<br><span class='passage'>{highlight(s['text'], s.get('matched', []))}</span></li>")
    read = sum(s.get("read") is not False for s in sources)
    count = f"{len(sources)}, the model read {read}" if read < len(sources) else f"{len(sources)}"
    return (f"<details open><summary>Sources ({count}): score is cosine similarity, 1 is identical; "
            f"the question's words are highlighted</summary><ol>{''.join(items)}</ol></details>")


@contextmanager
def user_errors():
    """Engine errors (bad input, missing things) reach the user as a Gradio error popup with their message."""
    import gradio as gr

    from core.errors import LabError

    try:
        yield
    except LabError as exc:
        raise gr.Error(str(exc)) from None

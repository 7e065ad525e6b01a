"""Small display helpers shared by the tabs (text only; no engine logic)."""
from __future__ import annotations

import html
import re

# Plain words, not emoji: emoji fonts are missing on many Linux desktops and headless browsers.
STATUS_LABEL = {"added": "Added", "updated": "Updated", "unchanged": "Unchanged", "failed": "Not added"}


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
        f"{timings['new_tokens']} tokens",
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

"""Names of the things a user creates (knowledge bases, datasets, adapters, runs): one rule, importable by anyone."""
from __future__ import annotations

import re

from core.errors import InputError

DEFAULT_KB = "default"
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,60}[A-Za-z0-9])?$")


def check_name(name: str, what: str) -> str:
    """Safe as a folder name, a Chroma collection name and in a URL."""
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InputError(
            f"a {what} name is 1-62 letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
            subject=repr(name),
        )
    return name


def check_kb_name(name: str) -> str:
    return check_name(name, "knowledge base")

"""What the tabs' dropdowns offer, read from the visitor's Lab (None: a page built before any Lab, as in demo mode)."""
from __future__ import annotations

from core.lab import Lab
from core.names import DEFAULT_KB


def kb_choices(lab: Lab | None) -> list[str]:
    names = lab.kbs.names() if lab else []
    return names if DEFAULT_KB in names else [DEFAULT_KB, *names]


def kb_to_show(lab: Lab | None) -> str:
    """The knowledge base a page starts on: the one files were last added to (else the newest), else the default
    name, where the first files go."""
    return (lab.kbs.last_used() if lab else None) or DEFAULT_KB


def dataset_choices(lab: Lab | None) -> list[str]:
    return lab.datasets.names() if lab else []


def dataset_to_show(lab: Lab | None, shown: str | None = None) -> str | None:
    """The dataset a page shows: the one shown if it still exists, else the newest made."""
    names = dataset_choices(lab)
    if shown in names:
        return shown
    return max(names, key=lambda name: lab.datasets.info(name).created) if names else None


def adapter_choices(lab: Lab | None, matching: bool = False) -> list[str]:
    """The adapters; with `matching`, only those trained on the base model in use (the ones that can answer)."""
    if lab is None:
        return []
    if not matching:
        return lab.adapters.names()
    return [a["name"] for a in lab.adapters.list() if a.get("base_model") == lab.settings.base_model]


def job_choices(lab: Lab | None) -> list[tuple[str, str]]:
    if lab is None:
        return []
    return [(f"{j['id']} · {j.get('adapter')} · {j['state']}", j["id"]) for j in lab.jobs.list()]


def run_ids(lab: Lab | None) -> list[str]:
    """Past evaluation runs, newest first."""
    return list(reversed(lab.evals.ids())) if lab else []

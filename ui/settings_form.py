"""A settings dataclass rendered as form fields, from its one declaration (core/schema.py): a number box for
numbers (whole numbers for int fields), a dropdown for choices, a text box for the rest."""
from __future__ import annotations

import gradio as gr

from core.schema import field_type, settings_of


def settings_fields(cls, defaults, per_row: int = 4) -> dict[str, gr.components.Component]:
    """One component per UI-offered field of `cls`, showing `defaults`' values, laid out `per_row` to a row;
    returns them by field name, in declaration order."""
    fields = settings_of(cls, "ui")
    components = {}
    for start in range(0, len(fields), per_row):
        with gr.Row():
            for f in fields[start:start + per_row]:
                components[f.name] = _component(cls, f, getattr(defaults, f.name))
    return components


def _component(cls, f, value):
    meta = f.metadata
    common = dict(label=meta["label"], info=meta["help"], elem_id=meta.get("elem_id"))
    if meta["choices"]:
        return gr.Dropdown(list(meta["choices"]), value=value, **common)
    kind = field_type(cls, f)
    if kind in (int, float):
        return gr.Number(value, precision=0 if kind is int else None, **common)
    return gr.Textbox(value, **common)


def values_of(cls, names: list[str], values) -> dict:
    """The form's values as keyword arguments for `cls` (int fields as int; empty boxes left out)."""
    kinds = {f.name: field_type(cls, f) for f in settings_of(cls, "ui")}
    out = {}
    for name, value in zip(names, values):
        if value is None or value == "":
            continue
        out[name] = int(value) if kinds[name] is int else value
    return out

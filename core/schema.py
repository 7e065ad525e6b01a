"""Settings declared once, as dataclass fields with a label and help, and rendered from that declaration into the
CLI's flags (core/cli) and the UI's panels (ui/settings_form.py). A new setting is one field."""
from __future__ import annotations

import dataclasses
import typing
from typing import Literal, Optional


def setting(default, label: str, help: str, *, choices: tuple | None = None, cli: bool = True, ui: bool = True,
            elem_id: str | None = None):
    """A user-facing setting: `label` names it in the UI, `help` explains it in both; `choices` makes it a pick
    from a list; `cli`/`ui` say where it is offered."""
    return dataclasses.field(default=default, metadata={
        "label": label, "help": help, "choices": choices, "cli": cli, "ui": ui, "elem_id": elem_id})


def settings_of(cls, where: str) -> list[dataclasses.Field]:
    """The fields of a settings dataclass offered `where` ("cli" or "ui"), in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get(where)]


def field_type(cls, field: dataclasses.Field) -> type:
    return typing.get_type_hints(cls)[field.name]


def overrides_dataclass(cls):
    """A dataclass of the same CLI settings, each optional and None by default: what the command line overrides
    on top of a preset. Its fields carry only what argparse understands (help; choices as a Literal type)."""
    spec = []
    for f in settings_of(cls, "cli"):
        kind = Literal[f.metadata["choices"]] if f.metadata["choices"] else field_type(cls, f)
        spec.append((f.name, Optional[kind], dataclasses.field(default=None, metadata={"help": f.metadata["help"]})))
    return dataclasses.make_dataclass(f"{cls.__name__}Overrides", spec)

"""The `models` commands: list the base models, switch, download from the Hub, remove."""
from __future__ import annotations

from core.cli.registry import arg, command


def _list_text(payload: dict, args) -> None:
    from core.model_library import ModelEntry, describe

    for row in payload["models"]:
        entry = ModelEntry(**row)
        print(f"{'*' if entry.current else ' '} {entry.name}\t{describe(entry)}")
    print(f"(* in use; memory on {payload['device']}; models folder: {payload['folder']})")


@command("models list", "the base models: bundled, in the models folder, and suggested Hub models", text=_list_text,
         args=[arg("--local", action="store_true", help="only the models here (no suggested Hub models)")])
def models_list(lab, args, out):
    return {"models": [e.to_dict() for e in lab.base_models.list(hub=not args.local)],
            "device": lab.settings.resolved_device, "folder": str(lab.base_models.root)}


def _entry_text(payload: dict, args) -> None:
    from core.model_library import ModelEntry, describe

    print(("now using " if payload.get("current") else "") + describe(ModelEntry(**payload)))


@command("models use", "answer, train and evaluate with another base model from now on",
         "Switch the base model of this data folder (kept for the next start; LAB_BASE_MODEL, when set, wins at "
         "start-up). NAME: as `models list` shows it, a Hub id that was downloaded, or `bundled`.",
         args=[arg("name")], text=_entry_text)
def models_use(lab, args, out):
    from core.config import BUNDLED_BASE_MODEL

    name = BUNDLED_BASE_MODEL if args.name.strip().lower() == "bundled" else args.name
    return lab.use_model(name)


@command("models download", "download a Hub model (safetensors only) into the models folder; resumes if interrupted",
         args=[arg("repo_id", metavar="OWNER/NAME")], text=_entry_text)
def models_download(lab, args, out):
    return lab.base_models.download(args.repo_id, progress=out.progress).to_dict()


@command("models remove", "delete a model from the models folder (or a partial download)", args=[arg("name")],
         text=lambda payload, args: print(f"removed {payload['removed']}"))
def models_remove(lab, args, out):
    return lab.base_models.remove(args.name)

"""The commands for training data, fine-tuning, jobs and adapters: one function each (see core/cli/commands.py)."""
from __future__ import annotations

import core.cli.render as render
from core.cli.registry import EXIT_FAILED, SPLIT_ARGS, arg, command
from core.errors import InputError
from core.schema import overrides_dataclass
from core.training import TrainSettings


# ---- training data ----------------------------------------------------------------------------------------------
@command("dataset import", "import a Q&A file as a dataset",
         args=[arg("path"), arg("--name", help="dataset name (default: the file name without extension)"),
               arg("--replace", action="store_true", help="replace a dataset of the same name"), *SPLIT_ARGS],
         text=render.dataset_summary)
def dataset_import(lab, args, out):
    return lab.datasets.import_file(args.path, args.name, args.replace, args.validation, args.test, args.seed)


@command("dataset generate", "make Q&A pairs (or RAFT examples) from a knowledge base",
         "Answers are fact sentences extracted from the knowledge base's chunks; questions are written by the base "
         "model (with a template fallback). --raft adds the oracle chunk and distractor chunks to each prompt, as "
         "the RAG variants see them.",
         args=[arg("--kb", required=True), arg("--name", required=True, help="dataset name"),
               arg("--count", type=int, default=50, help="how many examples (default: 50)"),
               arg("--raft", action="store_true", help="RAFT examples: oracle + distractor passages"),
               arg("--distractors", type=int, default=3, help="RAFT: distractor chunks per example (default: 3)"),
               arg("--oracle-share", type=float, default=0.8,
                   help="RAFT: share of examples that keep the oracle (default: 0.8)"),
               arg("--no-model", action="store_true", help="template questions only (fast, deterministic)"),
               arg("--replace", action="store_true"), *SPLIT_ARGS],
         text=render.dataset_summary)
def dataset_generate(lab, args, out):
    return lab.datasets.generate(args.kb, args.name, args.count, args.raft, args.distractors, args.oracle_share,
                                 not args.no_model, args.replace, args.validation, args.test, args.seed,
                                 progress=out.progress)


@command("dataset from-votes", "make a preference dataset (for DPO) from the Compare tab's votes",
         "One pair per vote's winner and each other answer shown; ties, all-bad votes and identical answers give "
         "none. Replaces an earlier dataset of the same name (the votes only grow).",
         args=[arg("--name", default="votes", help="dataset name (default: votes)"),
               arg("--kb", help="only the votes on this knowledge base")],
         text=render.dataset_summary)
def dataset_from_votes(lab, args, out):
    return lab.datasets.from_votes(args.name, args.kb)


@command("dataset clean", "check a dataset for duplicates, empty or over-long answers, test leakage, encoding debris",
         "Reports each kind of problem with its count and first examples. --apply saves the fixed examples as a new "
         "dataset (default NAME-clean) with the same split; the original is never changed.",
         args=[arg("name"), arg("--apply", action="store_true", help="save the fixed copy"),
               arg("--to", help="name of the fixed copy (default: NAME-clean)"),
               arg("--max-length", type=int, default=384,
                   help="training length in tokens to check against (default: 384, the Quick preset's)")],
         text=render.dataset_clean)
def dataset_clean(lab, args, out):
    return lab.datasets.clean(args.name, args.apply, args.to, args.max_length)


@command("dataset from-kb", "a knowledge base's passages as a text dataset (for continued pre-training)",
         "Every passage is learned whole. Made again each time under the same name (the knowledge base may have "
         "changed).",
         args=[arg("--kb", required=True), arg("--name", help="dataset name (default: KB-text)")],
         text=render.dataset_summary)
def dataset_from_kb(lab, args, out):
    return lab.datasets.from_kb(args.kb, args.name)


@command("dataset list", "list datasets", text=render.dataset_list)
def dataset_list(lab, args, out):
    return {"datasets": [lab.datasets.info(n).summary() for n in lab.datasets.names()]}


@command("dataset show", "a dataset's split and its first examples as the model sees them",
         args=[arg("name"), arg("--part", default="train", choices=["train", "validation", "test"]),
               arg("--limit", type=int, default=3)], text=render.dataset_show)
def dataset_show(lab, args, out):
    return lab.datasets.show(args.name, args.part, args.limit)


@command("dataset split", "split again into train / validation / test", args=[arg("name"), *SPLIT_ARGS],
         text=render.dataset_summary)
def dataset_split(lab, args, out):
    return lab.datasets.split(args.name, args.validation, args.test, args.seed)


@command("dataset delete", "delete a dataset", args=[arg("name")],
         text=lambda payload, args: print(f"deleted dataset {payload['deleted']}"))
def dataset_delete(lab, args, out):
    lab.datasets.delete(args.name)
    return {"deleted": args.name}


# ---- training -----------------------------------------------------------------------------------------------------
TrainOverrides = overrides_dataclass(TrainSettings)  # every CLI-offered training setting, None unless given


@command("train", "fine-tune the base model on a dataset (LoRA on CPU, QLoRA on CUDA; SFT or DPO)",
         "Fine-tune in a separate process; progress goes to stderr and the result to stdout. Presets: quick, "
         "balanced, thorough; any setting can be overridden (unset ones come from the preset). A preference "
         "dataset (prompt, chosen, rejected) trains with DPO, a Q&A one with SFT; --kb NAME reads a knowledge "
         "base's passages (continued pre-training).",
         args=[arg("--dataset", help="the training data (or --kb)"),
               arg("--kb", help="continued pre-training on this knowledge base's passages (dataset KB-text)"),
               arg("--from-adapter", help="go on training this adapter (e.g. DPO on top of an SFT adapter)"),
               arg("--preset", default="quick", help="quick, balanced or thorough (default: quick)"),
               arg("--adapter", help="name for the trained adapter (default: DATASET-PRESET)"),
               arg("--processes", type=int, default=1,
                   help="data-parallel processes under accelerate launch (one per GPU; on CPU, workers)"),
               arg("--estimate", action="store_true", help="only print the memory and time estimate"),
               arg("--detach", action="store_true", help="start the job and return (see: jobs show ID)")],
         settings=(TrainOverrides,), text=render.train)
def train(lab, args, out):
    from dataclasses import fields

    if bool(args.dataset) == bool(args.kb):
        raise InputError("give the training data: --dataset NAME, or --kb NAME for continued pre-training")
    if args.kb:
        args.dataset = lab.datasets.from_kb(args.kb)["name"]
        out.note(f"dataset {args.dataset}: the passages of knowledge base {args.kb}")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainOverrides)}
    settings = lab.training.preset(args.preset, args.dataset, **overrides)
    if args.estimate:
        plan = lab.training.estimate(args.dataset, settings)
        return plan, 0 if plan["fits"] else EXIT_FAILED
    job = lab.training.start(args.dataset, settings, args.adapter, args.processes, args.from_adapter)
    out.note(f"job {job['id']}: training adapter {job['adapter']} (cancel: python -m core jobs cancel {job['id']})")
    if args.detach:
        return {"job": job["id"], "adapter": job["adapter"]}
    try:
        final = lab.jobs.wait(job["id"], lambda status: out.note(f"  {render.job_line(status)}"))
    except KeyboardInterrupt:  # Ctrl-C cancels the job (it keeps its last checkpoint), not just the watching
        lab.jobs.cancel(job["id"])
        out.note("cancelling; the last checkpoint is kept as an adapter")
        final = lab.jobs.wait(job["id"])
    summary = {k: final.get(k) for k in ("id", "state", "adapter", "error", "message", "result")}
    if final["state"] == "failed":  # the reason, and what the worker printed last
        summary["log_tail"] = final.get("log_tail")
    return summary, 0 if final["state"] in ("completed", "cancelled") else EXIT_FAILED


@command("jobs list", "list training jobs", text=render.jobs_list)
def jobs_list(lab, args, out):
    return {"jobs": [{k: j.get(k) for k in ("id", "state", "dataset", "adapter", "step", "total_steps")}
                     for j in lab.jobs.list()]}


@command("jobs show", "a job's status", args=[arg("id")], text=render.job)
def jobs_show(lab, args, out):
    return lab.jobs.get(args.id)


@command("jobs cancel", "cancel a job (it keeps its last checkpoint)", args=[arg("id")], text=render.job)
def jobs_cancel(lab, args, out):
    return lab.jobs.cancel(args.id)


@command("jobs resume", "resume a cancelled or failed job from its last checkpoint", args=[arg("id")],
         text=render.job)
def jobs_resume(lab, args, out):
    return lab.jobs.get(lab.jobs.resume(args.id))


# ---- adapters -------------------------------------------------------------------------------------------------------
@command("adapters list", "list trained adapters", text=render.adapters_list)
def adapters_list(lab, args, out):
    adapters = lab.adapters.list()
    for a in adapters:
        a.pop("history", None)
    return {"adapters": adapters}


@command("adapters show", "what made an adapter", args=[arg("name")], text=lambda payload, args: render.print_json(payload))
def adapters_show(lab, args, out):
    return lab.adapters.info(args.name)


@command("adapters delete", "delete an adapter", args=[arg("name")], text=render.key_values)
def adapters_delete(lab, args, out):
    lab.adapters.delete(args.name)
    return {"deleted": args.name}


@command("adapters rename", "rename an adapter", args=[arg("name"), arg("new_name")], text=render.key_values)
def adapters_rename(lab, args, out):
    return {"renamed": args.name, "to": lab.adapters.rename(args.name, args.new_name)}


@command("adapters export", "write the adapter folder as a zip, the merged model with --merged, or GGUF with --gguf",
         "--gguf merges the adapter into its base and writes NAME-f16.gguf and NAME-q8_0.gguf (chat template and "
         "special tokens inside) and an Ollama Modelfile, then loads each file back with transformers and compares "
         "its greedy answers with the in-app fine-tuned variant's.",
         args=[arg("name"), arg("path", help="a .zip file or a folder (with --merged or --gguf: a new, empty folder)"),
               arg("--merged", action="store_true",
                   help="save the base model with the adapter merged in (full precision, plain transformers)"),
               arg("--gguf", action="store_true", help="write GGUF files and an Ollama Modelfile"),
               arg("--types", default="f16,q8_0", help="GGUF types, comma-separated (default: f16,q8_0)"),
               arg("--no-check", action="store_true", help="skip loading the GGUF files back to compare answers")],
         text=render.adapter_export)
def adapters_export(lab, args, out):
    if args.gguf:
        kinds = tuple(t.strip() for t in args.types.split(",") if t.strip())
        return lab.exports.gguf(args.name, args.path, kinds, check=not args.no_check)
    if args.merged:
        return {"exported": args.name, "merged_model": str(lab.training.export_merged(args.name, args.path))}
    return {"exported": args.name, "path": str(lab.adapters.export_zip(args.name, args.path))}




@command("adapters push", "upload an adapter (or the merged model) with its model card to the Hugging Face Hub",
         "The model card records the base model, the dataset and its hash, the method, settings, losses and the "
         "evaluation runs that used the adapter. Needs a network and a token (huggingface-cli login); "
         "--to-folder writes the same files locally instead.",
         args=[arg("name"), arg("--repo", help="USER/REPO on the Hub"),
               arg("--merged", action="store_true", help="the base model with the adapter merged in"),
               arg("--to-folder", help="write the files here (a new, empty folder) instead of uploading"),
               arg("--public", action="store_true", help="make a new repository public (default: private)")],
         text=render.key_values)
def adapters_push(lab, args, out):
    if args.to_folder:
        return lab.hub.folder(args.name, args.to_folder, args.repo, args.merged)
    if not args.repo:
        raise InputError("give --repo USER/REPO to upload, or --to-folder DIR to write the files locally")
    return lab.hub.push(args.name, args.repo, args.merged, private=not args.public)

"""The commands for knowledge bases, answers, votes, evaluation, the demo and the advisor: one function each. A
command takes the Lab, the parsed arguments and the output channel, works through the Lab's services, and returns
what --json prints (or that and an exit code); text output is core/cli/render.py's."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import core.cli.render as render
from core.cli.registry import (ADAPTER_ARG, EXIT_FAILED, EXIT_INTERRUPTED, GENERATION_ARGS, READING_ARGS, arg,
                               chunk_args, command, generation_config, reading_overrides, variant_list)
from core.errors import LabError
from core.names import DEFAULT_KB


# ---- knowledge bases ------------------------------------------------------------------------------------------
@command("ingest", "add files, folders, .zip archives or web pages to a knowledge base",
         "Add files (PDF, .txt, .md, .html, .docx, .xlsx, .pptx, .csv), folders, .zip archives or web pages by "
         "http(s) URL to a knowledge base (created if missing). A folder or archive gives one line per file in it "
         "(files of other kinds are listed as skipped); a file inside is stored under its path there, flattened "
         "(guides/setup.md -> guides_setup.md). A URL is fetched and its main text kept; it is stored under a name "
         "made from the URL. Re-adding identical content is a no-op; a changed file replaces its older version.",
         args=[arg("paths", nargs="+", metavar="PATH_OR_URL",
                   help="a file, a folder, a .zip, or a web address starting with http:// or https://"),
               arg("--recursive", action="store_true", help="take a folder's subfolders too"),
               arg("--kb", default=DEFAULT_KB, help=f"knowledge base name (default: {DEFAULT_KB})"),
               *chunk_args("for a new knowledge base; an existing one keeps its own (see: kb configure)")],
         text=render.ingest)
def ingest(lab, args, out):
    with first_ctrl_c_stops(out, "cancelling: the file being written is finished, the rest is not added "
                                 "(Ctrl-C again to quit at once)") as stop:
        results = lab.kbs.ingest(args.paths, args.kb, progress=out.progress, chunk_size=args.chunk_size,
                                 chunk_overlap=args.overlap, recursive=args.recursive, should_stop=stop.is_set)
    payload = {"kb": args.kb, "results": [r.to_dict() for r in results]}
    if any(r.status == "cancelled" for r in results):
        return payload, EXIT_INTERRUPTED
    return payload, EXIT_FAILED if any(r.status == "failed" for r in results) else 0


@contextmanager
def first_ctrl_c_stops(out, message: str):
    """The first Ctrl-C sets the event the work polls (so it stops cleanly and says what was done); a second one
    interrupts as usual. Outside the main thread (signals cannot be caught there) Ctrl-C interrupts as usual."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def first(signum, frame):
        stop.set()
        out.note(message)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@command("search", "retrieve passages without generating", "Show the passages retrieval finds for a query.",
         args=[arg("query"), arg("--kb", default=DEFAULT_KB), arg("--top-k", type=int, default=None)],
         text=render.search)
def search(lab, args, out):
    from core.retrieval import hit_to_source

    hits, ms = lab.kbs.search(args.query, args.kb, args.top_k)
    return {"query": args.query, "kb": args.kb, "retrieval_ms": round(ms, 1),
            "hits": [hit_to_source(h, args.query) for h in hits]}


@command("kb list", "list knowledge bases", text=render.kb_list)
def kb_list(lab, args, out):
    return {"knowledge_bases": lab.kbs.list()}


@command("kb show", "list the files in a knowledge base, or preview one file's chunks",
         args=[arg("name"), arg("--file", help="show this file's chunks, as the model will read them")],
         text=render.kb_show)
def kb_show(lab, args, out):
    return lab.kbs.preview(args.name, args.file) if args.file else lab.kbs.show(args.name)


@command("kb create", "create an empty knowledge base", args=[arg("name"), *chunk_args()],
         text=lambda payload, args: print(f"created {payload['created']}"))
def kb_create(lab, args, out):
    name = lab.kbs.create(args.name, args.chunk_size, args.overlap)
    return {"created": name, **lab.kbs.chunking(name).to_dict()}


@command("kb configure", "change chunk settings and re-index",
         "Change a knowledge base's chunk settings and re-index its files (from the text stored when they were added). "
         "Run it again to finish an interrupted re-index.", args=[arg("name"), *chunk_args()], text=render.kb_configure)
def kb_configure(lab, args, out):
    done = lab.kbs.configure(args.name, args.chunk_size, args.overlap, progress=out.progress)
    return done, EXIT_FAILED if any(r["status"] == "failed" for r in done["results"]) else 0


@command("kb rename", "rename a knowledge base", args=[arg("name"), arg("new_name")],
         text=lambda payload, args: print(f"renamed {payload['renamed']} to {payload['to']}"))
def kb_rename(lab, args, out):
    return {"renamed": args.name, "to": lab.kbs.rename(args.name, args.new_name)}


@command("kb delete", "delete a knowledge base, or one file from it with --file",
         args=[arg("name"), arg("--file", help="delete only this file's chunks")], text=render.kb_delete)
def kb_delete(lab, args, out):
    if args.file:
        return lab.kbs.delete_file(args.name, args.file)
    lab.kbs.delete(args.name)
    return {"deleted": args.name}


# ---- answers ----------------------------------------------------------------------------------------------------
@command("ask", "answer a question with one variant",
         "Answer a question. 'base' is the model alone; 'rag' reads passages retrieved from the knowledge base.",
         args=[arg("question"), arg("--variant", default="rag", help="base, rag, finetuned or finetuned+rag (default: rag)"),
               ADAPTER_ARG, arg("--kb", default=DEFAULT_KB, help=f"knowledge base for rag (default: {DEFAULT_KB})"),
               *GENERATION_ARGS],
         text=render.ask)
def ask(lab, args, out):
    answer, streamed = None, False
    for event in lab.answers.ask_stream(args.question, [args.variant], kb=args.kb, top_k=args.top_k,
                                        config=generation_config(lab, args), adapter=args.adapter,
                                        system_prompt=args.system_prompt, **reading_overrides(args)):
        answer = event.answer
        if not out.json and event.kind == "delta":
            print(event.text, end="", flush=True)
            streamed = True
        elif not out.json and event.kind == "done" and not streamed:  # said without generating ("not in ...")
            print(event.text, end="", flush=True)
    if answer.error:
        raise LabError(answer.error)
    return answer.to_dict()


@command("compare", "answer one question with several variants side by side",
         "Run the Compare tab's side-by-side comparison: every chosen variant answers the same question in one "
         "batch; prints each answer with its timings and sources.",
         args=[arg("question"),
               arg("--variants", default=None, help="comma-separated, from base,finetuned,rag,finetuned+rag (default: "
                                                    "base,rag, plus the two fine-tuned variants when --adapter is given)"),
               ADAPTER_ARG,
               arg("--kb", default=DEFAULT_KB, help=f"knowledge base for the RAG variants (default: {DEFAULT_KB})"),
               *GENERATION_ARGS, arg("--markdown", metavar="PATH", help="also write the comparison as Markdown to PATH")],
         text=render.compare)
def compare(lab, args, out):
    from core.reading import check_reading

    config = generation_config(lab, args)
    variants = variant_list(args.variants) if args.variants else (
        ["base", "rag"] + (["finetuned", "finetuned+rag"] if args.adapter else []))
    read_passages, min_relevance = check_reading(lab.settings, args.read_passages, args.min_relevance)
    answers = lab.answers.compare(args.question, variants, kb=args.kb, top_k=args.top_k, config=config,
                                  adapter=args.adapter, system_prompt=args.system_prompt, read_passages=read_passages,
                                  min_relevance=min_relevance)
    settings = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p,
                "top_k": args.top_k or lab.settings.top_k, "system_prompt": args.system_prompt,
                "read_passages": read_passages, "min_relevance": min_relevance, "stop_loops": config.stop_loops}
    comparison = lab.answers.record(args.question, answers, kb=args.kb, adapter=args.adapter, settings=settings)
    if args.markdown:
        Path(args.markdown).write_text(comparison.to_markdown(), encoding="utf-8")
    return comparison.to_dict(), EXIT_FAILED if all(a.error for a in answers) else 0


# ---- votes ------------------------------------------------------------------------------------------------------
KB_FILTER = arg("--kb", help="only votes on this knowledge base")


@command("votes list", "list the votes", args=[KB_FILTER], text=render.votes_list)
def votes_list(lab, args, out):
    return {"votes": lab.votes.all(args.kb)}


@command("votes leaderboard", "win rates per variant", args=[KB_FILTER], text=render.leaderboard)
def votes_leaderboard(lab, args, out):
    return {"kb": args.kb, "leaderboard": lab.votes.leaderboard(args.kb)}


@command("votes export", "write the votes to a JSONL file",
         args=[arg("path", metavar="PATH"),
               arg("--format", default="dpo", choices=["dpo", "jsonl"],
                   help="dpo: preference pairs for DPO training (default); jsonl: every vote, whole"), KB_FILTER],
         text=render.votes_export)
def votes_export(lab, args, out):
    return lab.votes.export(args.path, args.format, kb=args.kb)


# ---- evaluation ---------------------------------------------------------------------------------------------------
@command("eval run", "answer every test question with every variant and score the answers",
         args=[arg("--testset", metavar="DATASET", help="a dataset: its held-out part is used (see --part)"),
               arg("--testset-file", metavar="PATH", help="or a Q&A file (the formats `dataset import` reads)"),
               arg("--generate-from", metavar="KB", help="or questions generated from this knowledge base's passages "
                                                          "(--limit of them, default 20; never saved as training data)"),
               arg("--part", default="test", help="the dataset's part to use (default: test)"),
               arg("--variants", default="base,rag", help="comma-separated (default: base,rag)"),
               arg("--kb", default=None, help="knowledge base for the RAG variants"),
               arg("--adapter", help="the adapter for the fine-tuned variants"),
               arg("--limit", type=int, default=None, help="only the first N questions"),
               *READING_ARGS,
               arg("--max-new-tokens", type=int, default=None,
                   help="answer length (default: 8 for yes/no/maybe test sets, else 128)")],
         text=render.eval_run)
def eval_run(lab, args, out):
    from core.generation import GenerationConfig
    from core.verdict import verdict

    config = GenerationConfig(max_new_tokens=args.max_new_tokens) if args.max_new_tokens is not None else None
    items, label = lab.evaluation.items(args.testset, args.testset_file, args.part, args.limit, args.generate_from,
                                        progress=out.progress)
    run = lab.evaluation.run(items, label, variant_list(args.variants), kb=args.kb or args.generate_from,
                             adapter=args.adapter, config=config, top_k=args.top_k, progress=out.progress,
                             **reading_overrides(args))
    return {**{k: v for k, v in run.items() if k != "results"}, "verdict": verdict(run)}


@command("eval list", "list past runs", text=render.eval_list)
def eval_list(lab, args, out):
    return {"runs": lab.evals.list()}


@command("eval show", "a past run's results table and verdict", args=[arg("run", metavar="RUN")],
         text=render.eval_run)
def eval_show(lab, args, out):
    from core.verdict import verdict

    run = lab.evals.load(args.run)
    return {**{k: v for k, v in run.items() if k != "results"}, "verdict": verdict(run)}


@command("eval export", "write a run as CSV (a row per question and variant) or JSON",
         args=[arg("run", metavar="RUN"), arg("path", metavar="PATH", help="a .csv or .json file")],
         text=lambda payload, args: print(f"wrote {payload['path']}"))
def eval_export(lab, args, out):
    from core.eval_store import export

    run = lab.evals.load(args.run)
    return {"path": str(export(run, args.path)), "questions": len(run["results"])}


# ---- demo and advice --------------------------------------------------------------------------------------------
@command("demo load", "load the demo pack",
         args=[arg("--train", action="store_true", help="also start the Quick fine-tune (adapter 'demo-quick')")],
         text=render.demo)
def demo_load(lab, args, out):
    from core.demo import load_demo

    return load_demo(lab.kbs, lab.datasets, lab.training, train=args.train, progress=out.progress)


def _advise_args() -> list:
    from core.advisor import QUESTIONS, Situation

    return [arg(f"--{key}", choices=list(answers), default=getattr(Situation, key),
                help=f"{question} ({'; '.join(f'{k}: {v}' for k, v in answers.items())}; "
                     f"default: {getattr(Situation, key)})")
            for key, (question, answers) in QUESTIONS.items()]


@command("advise", "RAG, fine-tuning or both? a recommendation from five answers",
         "Answer five questions about your documents and get a recommendation with its reasons. A finished "
         "evaluation in this data folder is shown beside it.", args=_advise_args(), text=render.advice)
def advise(lab, args, out):
    from core.advisor import QUESTIONS, Situation

    return lab.evaluation.advise(Situation(**{key: getattr(args, key) for key in QUESTIONS}))


@command("info", "show models, device and data folder", text=render.key_lines)
def info(lab, args, out):
    return lab.info()

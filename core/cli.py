"""Command line for the engine: `python -m core --help`. With --json a command prints one JSON object on stdout;
progress and streamed text go to stderr/stdout as a person would expect without it."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.documents import cite
from core.errors import LabError
from core.store import DEFAULT_KB

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _progress_to_stderr(fraction: float, message: str) -> None:
    print(f"\r[{fraction * 100:5.1f}%] {message[:100]:<100}", end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="RAG & Fine-Tune Lab engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="add files or web pages to a knowledge base", description="Add files (PDF, .txt, .md, .html, .docx, .csv) or web pages by http(s) URL to a knowledge base (created if missing). A URL is fetched and its main text kept; it is stored under a name made from the URL. Re-adding identical content is a no-op; a changed file replaces its older version.")
    p.add_argument("paths", nargs="+", metavar="PATH_OR_URL", help="a file, or a web address starting with http:// or https://")
    p.add_argument("--kb", default=DEFAULT_KB, help=f"knowledge base name (default: {DEFAULT_KB})")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("ask", help="answer a question with one variant", description="Answer a question. 'base' is the model alone; 'rag' reads passages retrieved from the knowledge base.")
    p.add_argument("question")
    p.add_argument("--variant", default="rag", help="base or rag (default: rag)")
    p.add_argument("--kb", default=DEFAULT_KB, help=f"knowledge base for rag (default: {DEFAULT_KB})")
    p.add_argument("--top-k", type=int, default=None, help="passages to retrieve (default: 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit in tokens (default: 128)")
    p.add_argument("--json", action="store_true", help="print one JSON object: answer, variant, sources, timings")

    p = sub.add_parser("search", help="retrieve passages without generating", description="Show the passages retrieval finds for a query.")
    p.add_argument("query")
    p.add_argument("--kb", default=DEFAULT_KB)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("kb", help="list, show, create, rename or delete knowledge bases", description="Manage knowledge bases.")
    kb_sub = p.add_subparsers(dest="kb_command", required=True, metavar="ACTION")
    q = kb_sub.add_parser("list", help="list knowledge bases")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("show", help="list the files in a knowledge base")
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("create", help="create an empty knowledge base")
    q.add_argument("name")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("rename", help="rename a knowledge base")
    q.add_argument("name")
    q.add_argument("new_name")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("delete", help="delete a knowledge base, or one file from it with --file")
    q.add_argument("name")
    q.add_argument("--file", help="delete only this file's chunks")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="show models, device and data folder")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    from core.lab import Lab

    try:
        lab = Lab()
        handler = {"ingest": _ingest, "ask": _ask, "search": _search, "kb": _kb, "info": _info}[args.command]
        return handler(lab, args)
    except LabError as exc:
        if getattr(args, "json", False):
            _print_json({"error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _ingest(lab, args) -> int:
    results = lab.ingest(args.paths, args.kb, progress=None if args.json else _progress_to_stderr)
    failed = [r for r in results if r.status == "failed"]
    if args.json:
        _print_json({"kb": args.kb, "results": [r.to_dict() for r in results]})
    else:
        for r in results:
            print(f"{r.status:>9}  {r.file}: {r.message}")
    return EXIT_FAILED if failed else EXIT_OK


def _ask(lab, args) -> int:
    from core.generation import GenerationConfig

    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= 4096:
        raise LabError(f"--max-new-tokens must be between 1 and 4096, got {args.max_new_tokens}")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens or lab.settings.max_new_tokens)
    answer = None
    for event in lab.ask_stream(args.question, [args.variant], kb=args.kb, top_k=args.top_k, config=config):
        answer = event.answer
        if not args.json and event.kind == "delta":
            print(event.text, end="", flush=True)
    if answer.error:
        raise LabError(answer.error)
    if args.json:
        _print_json(answer.to_dict())
        return EXIT_OK
    print()
    if answer.sources:
        print("\nSources:")
        for i, s in enumerate(answer.sources, 1):
            print(f"  [{i}] {cite(s['file'], s['page'])} (score {s['score']:.2f})")
    t = answer.timings
    print(f"\n{t['new_tokens']} tokens, first after {t['ttft_ms']:.0f} ms, {t['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    return EXIT_OK


def _search(lab, args) -> int:
    from core.lab import hit_to_source

    hits, ms = lab.search(args.query, args.kb, args.top_k)
    if args.json:
        _print_json({"query": args.query, "kb": args.kb, "retrieval_ms": round(ms, 1), "hits": [hit_to_source(h) for h in hits]})
        return EXIT_OK
    for i, h in enumerate(hits, 1):
        print(f"[{i}] {cite(h.file, h.page)}  score {h.score:.3f}\n    {h.text[:300].replace(chr(10), ' ')}\n")
    print(f"({len(hits)} passages in {ms:.0f} ms)", file=sys.stderr)
    return EXIT_OK


def _kb(lab, args) -> int:
    if args.kb_command == "list":
        kbs = lab.kb_list()
        if args.json:
            _print_json({"knowledge_bases": kbs})
        else:
            for kb in kbs:
                print(f"{kb['name']}\t{kb['files']} files\t{kb['chunks']} chunks")
            if not kbs:
                print("no knowledge bases yet; add files with: python -m core ingest FILE", file=sys.stderr)
    elif args.kb_command == "show":
        shown = lab.kb_show(args.name)
        if args.json:
            _print_json(shown)
        else:
            print(f"{shown['name']}: {len(shown['files'])} files, {shown['chunks']} chunks")
            for f in shown["files"]:
                print(f"  {f['file']}\t{f['pages']} pages\t{f['chunks']} chunks\tadded {f['added']}")
    elif args.kb_command == "create":
        name = lab.kb_create(args.name)
        _print_json({"created": name}) if args.json else print(f"created {name}")
    elif args.kb_command == "rename":
        name = lab.kb_rename(args.name, args.new_name)
        _print_json({"renamed": args.name, "to": name}) if args.json else print(f"renamed {args.name} to {name}")
    elif args.kb_command == "delete":
        if args.file:
            removed = lab.delete_file(args.name, args.file)
            _print_json(removed) if args.json else print(f"deleted {removed['file']} ({removed['chunks_removed']} chunks)")
        else:
            lab.kb_delete(args.name)
            _print_json({"deleted": args.name}) if args.json else print(f"deleted knowledge base {args.name}")
    return EXIT_OK


def _info(lab, args) -> int:
    info = lab.info()
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return EXIT_OK

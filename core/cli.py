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
    _chunk_args(p, "for a new knowledge base; an existing one keeps its own (see: kb configure)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("ask", help="answer a question with one variant", description="Answer a question. 'base' is the model alone; 'rag' reads passages retrieved from the knowledge base.")
    p.add_argument("question")
    p.add_argument("--variant", default="rag", help="base, rag, finetuned or finetuned+rag (default: rag)")
    p.add_argument("--adapter", help="the fine-tuned adapter, for finetuned and finetuned+rag")
    p.add_argument("--kb", default=DEFAULT_KB, help=f"knowledge base for rag (default: {DEFAULT_KB})")
    _generation_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object: answer, variant, sources, timings")

    p = sub.add_parser("compare", help="answer one question with several variants side by side",
                       description="Run the Compare tab's side-by-side comparison: every chosen variant answers the "
                                   "same question in one batch; prints each answer with its timings and sources.")
    p.add_argument("question")
    p.add_argument("--variants", default=None,
                   help="comma-separated, from base,finetuned,rag,finetuned+rag (default: base,rag, plus the two "
                        "fine-tuned variants when --adapter is given)")
    p.add_argument("--adapter", help="the fine-tuned adapter, for finetuned and finetuned+rag")
    p.add_argument("--kb", default=DEFAULT_KB, help=f"knowledge base for the RAG variants (default: {DEFAULT_KB})")
    _generation_args(p)
    p.add_argument("--markdown", metavar="PATH", help="also write the comparison as Markdown to PATH")
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON object")

    p = sub.add_parser("votes", help="list votes, show the leaderboard, or export preference data",
                       description="Votes cast in the Compare tab. Export them as preference pairs (prompt, chosen, "
                                   "rejected: the JSONL layout TRL's DPO trainer reads) or whole.")
    vs = p.add_subparsers(dest="votes_command", required=True, metavar="ACTION")
    q = vs.add_parser("list", help="list the votes")
    q.add_argument("--kb", help="only votes on this knowledge base")
    q.add_argument("--json", action="store_true")
    q = vs.add_parser("leaderboard", help="win rates per variant")
    q.add_argument("--kb", help="only votes on this knowledge base")
    q.add_argument("--json", action="store_true")
    q = vs.add_parser("export", help="write the votes to a JSONL file")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--format", default="dpo", choices=["dpo", "jsonl"],
                   help="dpo: preference pairs for DPO training (default); jsonl: every vote, whole")
    q.add_argument("--kb", help="only votes on this knowledge base")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="evaluate variants on a test set: run, list, show, export",
                       description="Evaluate the variants on held-out questions, scored offline (no LLM judge).")
    es = p.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    q = es.add_parser("run", help="answer every test question with every variant and score the answers")
    q.add_argument("--testset", metavar="DATASET", help="a dataset: its held-out part is used (see --part)")
    q.add_argument("--testset-file", metavar="PATH", help="or a Q&A file (the formats `dataset import` reads)")
    q.add_argument("--generate-from", metavar="KB",
                   help="or questions generated from this knowledge base's passages (--limit of them, default 20; "
                        "never saved as training data)")
    q.add_argument("--part", default="test", help="the dataset's part to use (default: test)")
    q.add_argument("--variants", default="base,rag", help="comma-separated (default: base,rag)")
    q.add_argument("--kb", default=None, help="knowledge base for the RAG variants")
    q.add_argument("--adapter", help="the adapter for the fine-tuned variants")
    q.add_argument("--limit", type=int, default=None, help="only the first N questions")
    q.add_argument("--top-k", type=int, default=None, help="passages to retrieve (default: 4)")
    q.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length (default: 8 for yes/no/maybe test sets, else 128)")
    q.add_argument("--json", action="store_true", help="print the run (settings, summary, verdict) as JSON")
    q = es.add_parser("list", help="list past runs")
    q.add_argument("--json", action="store_true")
    q = es.add_parser("show", help="a past run's results table and verdict")
    q.add_argument("run", metavar="RUN")
    q.add_argument("--json", action="store_true")
    q = es.add_parser("export", help="write a run as CSV (a row per question and variant) or JSON")
    q.add_argument("run", metavar="RUN")
    q.add_argument("path", metavar="PATH", help="a .csv or .json file")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="load the demo pack (a fictional company's documents and questions)",
                       description="Add the demo documents to the knowledge base 'demo' and its questions as the "
                                   "dataset 'demo-qa' (12 to train on, 4 held out).")
    ds = p.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    q = ds.add_parser("load", help="load the demo pack")
    q.add_argument("--train", action="store_true", help="also start the Quick fine-tune (adapter 'demo-quick')")
    q.add_argument("--json", action="store_true")

    from core.advisor import QUESTIONS, Situation

    p = sub.add_parser("advise", help="RAG, fine-tuning or both? a recommendation from five answers",
                       description="Answer five questions about your documents and get a recommendation with its "
                                   "reasons. A finished evaluation in this data folder is shown beside it.")
    for key, (question, answers) in QUESTIONS.items():
        p.add_argument(f"--{key}", choices=list(answers), default=getattr(Situation, key),
                       help=f"{question} ({'; '.join(f'{k}: {v}' for k, v in answers.items())}; "
                            f"default: {getattr(Situation, key)})")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("search", help="retrieve passages without generating", description="Show the passages retrieval finds for a query.")
    p.add_argument("query")
    p.add_argument("--kb", default=DEFAULT_KB)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("kb", help="list, show, create, configure, rename or delete knowledge bases", description="Manage knowledge bases.")
    kb_sub = p.add_subparsers(dest="kb_command", required=True, metavar="ACTION")
    q = kb_sub.add_parser("list", help="list knowledge bases")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("show", help="list the files in a knowledge base, or preview one file's chunks")
    q.add_argument("name")
    q.add_argument("--file", help="show this file's chunks, as the model will read them")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("create", help="create an empty knowledge base")
    q.add_argument("name")
    _chunk_args(q, "")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("configure", help="change chunk settings and re-index",
                          description="Change a knowledge base's chunk settings and re-index its files (from the text "
                                      "stored when they were added). Run it again to finish an interrupted re-index.")
    q.add_argument("name")
    _chunk_args(q, "")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("rename", help="rename a knowledge base")
    q.add_argument("name")
    q.add_argument("new_name")
    q.add_argument("--json", action="store_true")
    q = kb_sub.add_parser("delete", help="delete a knowledge base, or one file from it with --file")
    q.add_argument("name")
    q.add_argument("--file", help="delete only this file's chunks")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("dataset", help="import, show, split or delete training data",
                       description="Training data for fine-tuning. Import OpenAI chat JSONL ({\"messages\": [...]}), "
                                   "Alpaca JSON/JSONL (instruction, input, output) or CSV with question/answer columns; "
                                   "the format is detected and every problem is reported with its line.")
    ds = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    q = ds.add_parser("import", help="import a Q&A file as a dataset")
    q.add_argument("path")
    q.add_argument("--name", help="dataset name (default: the file name without extension)")
    q.add_argument("--replace", action="store_true", help="replace a dataset of the same name")
    _split_args(q)
    q.add_argument("--json", action="store_true")
    q = ds.add_parser("generate", help="make Q&A pairs (or RAFT examples) from a knowledge base",
                      description="Answers are fact sentences extracted from the knowledge base's chunks; questions are "
                                  "written by the base model (with a template fallback). --raft adds the oracle chunk "
                                  "and distractor chunks to each prompt, as the RAG variants see them.")
    q.add_argument("--kb", required=True)
    q.add_argument("--name", required=True, help="dataset name")
    q.add_argument("--count", type=int, default=50, help="how many examples (default: 50)")
    q.add_argument("--raft", action="store_true", help="RAFT examples: oracle + distractor passages")
    q.add_argument("--distractors", type=int, default=3, help="RAFT: distractor chunks per example (default: 3)")
    q.add_argument("--oracle-share", type=float, default=0.8, help="RAFT: share of examples that keep the oracle (default: 0.8)")
    q.add_argument("--no-model", action="store_true", help="template questions only (fast, deterministic)")
    q.add_argument("--replace", action="store_true")
    _split_args(q)
    q.add_argument("--json", action="store_true")
    q = ds.add_parser("list", help="list datasets")
    q.add_argument("--json", action="store_true")
    q = ds.add_parser("show", help="a dataset's split and its first examples as the model sees them")
    q.add_argument("name")
    q.add_argument("--part", default="train", choices=["train", "validation", "test"])
    q.add_argument("--limit", type=int, default=3)
    q.add_argument("--json", action="store_true")
    q = ds.add_parser("split", help="split again into train / validation / test")
    q.add_argument("name")
    _split_args(q)
    q.add_argument("--json", action="store_true")
    q = ds.add_parser("delete", help="delete a dataset")
    q.add_argument("name")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("train", help="fine-tune the base model on a dataset (LoRA on CPU, QLoRA on CUDA)",
                       description="Fine-tune in a separate process; progress goes to stderr and the result to stdout. "
                                   "Presets: quick, balanced, thorough; any setting can be overridden.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--preset", default="quick", help="quick, balanced or thorough (default: quick)")
    p.add_argument("--adapter", help="name for the trained adapter (default: DATASET-PRESET)")
    for flag, kind, what in (("--rank", int, "LoRA rank"), ("--alpha", int, "LoRA alpha"),
                             ("--dropout", float, "LoRA dropout"), ("--learning-rate", float, "learning rate"),
                             ("--epochs", float, "passes over the training data"), ("--batch-size", int, "batch size"),
                             ("--grad-accum", int, "gradient accumulation steps"),
                             ("--max-length", int, "max tokens per example"), ("--seed", int, "random seed"),
                             ("--eval-every", int, "steps between validation-loss checks"),
                             ("--max-steps", int, "stop after this many steps")):
        p.add_argument(flag, type=kind, default=None, help=what)
    p.add_argument("--target-modules", default=None, help='"all-linear" or e.g. "q_proj,v_proj"')
    p.add_argument("--quantize", choices=["auto", "4bit", "none"], default=None,
                   help="auto: 4-bit NF4 on CUDA, none on CPU (4-bit on CPU is about 20x slower)")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel processes under accelerate launch (one per GPU; on CPU, workers)")
    p.add_argument("--estimate", action="store_true", help="only print the memory and time estimate")
    p.add_argument("--detach", action="store_true", help="start the job and return (see: jobs show ID)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("jobs", help="list, show, cancel or resume training jobs")
    js = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    q = js.add_parser("list")
    q.add_argument("--json", action="store_true")
    for action in ("show", "cancel", "resume"):
        q = js.add_parser(action)
        q.add_argument("id")
        q.add_argument("--json", action="store_true")

    p = sub.add_parser("adapters", help="list, show, rename, delete or export trained adapters")
    ad = p.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    q = ad.add_parser("list")
    q.add_argument("--json", action="store_true")
    for action in ("show", "delete"):
        q = ad.add_parser(action)
        q.add_argument("name")
        q.add_argument("--json", action="store_true")
    q = ad.add_parser("rename")
    q.add_argument("name")
    q.add_argument("new_name")
    q.add_argument("--json", action="store_true")
    q = ad.add_parser("export", help="write the adapter folder as a zip, or the merged model with --merged")
    q.add_argument("name")
    q.add_argument("path", help="a .zip file or a folder (with --merged: a new, empty folder)")
    q.add_argument("--merged", action="store_true",
                   help="save the base model with the adapter merged in (full precision, plain transformers)")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="show models, device and data folder")
    p.add_argument("--json", action="store_true")
    return parser


def _generation_args(parser) -> None:
    parser.add_argument("--top-k", type=int, default=None, help="passages to retrieve (default: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit in tokens (default: 128)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default) always picks the likeliest word: the same question gives the same answer")
    parser.add_argument("--top-p", type=float, default=0.9, help="with temperature > 0: sample from this share of "
                                                                 "the probability (default: 0.9)")
    parser.add_argument("--seed", type=int, default=None, help="with temperature > 0: repeatable samples")
    parser.add_argument("--system-prompt", default=None, help="instructions for every variant (RAG has its own default)")


def _generation_config(lab, args):
    from core.generation import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens or lab.settings.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed).checked()


def _split_args(parser) -> None:
    parser.add_argument("--validation", type=float, default=0.1, help="share for validation (default: 0.1)")
    parser.add_argument("--test", type=float, default=0.1, help="share kept out for evaluation (default: 0.1)")
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (default: 42)")


def _chunk_args(parser, note: str) -> None:
    note = f"; {note}" if note else ""
    parser.add_argument("--chunk-size", type=int, default=None, metavar="N",
                        help=f"chunk size in the embedding model's tokens (default: 200){note}")
    parser.add_argument("--overlap", type=int, default=None, metavar="N",
                        help=f"tokens shared by neighbouring chunks (default: 30){note}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    from core.lab import Lab

    try:
        lab = Lab()
        handler = {"ingest": _ingest, "ask": _ask, "search": _search, "kb": _kb, "info": _info, "dataset": _dataset,
                   "train": _train, "jobs": _jobs, "adapters": _adapters, "compare": _compare,
                   "votes": _votes, "eval": _eval, "demo": _demo, "advise": _advise}[args.command]
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
    results = lab.ingest(args.paths, args.kb, progress=None if args.json else _progress_to_stderr,
                         chunk_size=args.chunk_size, chunk_overlap=args.overlap)
    failed = [r for r in results if r.status == "failed"]
    if args.json:
        _print_json({"kb": args.kb, "results": [r.to_dict() for r in results]})
    else:
        for r in results:
            print(f"{r.status:>9}  {r.file}: {r.message}")
    return EXIT_FAILED if failed else EXIT_OK


def _ask(lab, args) -> int:
    config = _generation_config(lab, args)
    answer = None
    for event in lab.ask_stream(args.question, [args.variant], kb=args.kb, top_k=args.top_k, config=config,
                                adapter=args.adapter, system_prompt=args.system_prompt):
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


def _compare(lab, args) -> int:
    from core.variants import VARIANTS

    config = _generation_config(lab, args)
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    else:
        variants = ["base", "rag"] + (["finetuned", "finetuned+rag"] if args.adapter else [])
    answers = lab.compare(args.question, variants, kb=args.kb, top_k=args.top_k, config=config,
                          adapter=args.adapter, system_prompt=args.system_prompt)
    settings = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p,
                "top_k": args.top_k or lab.settings.top_k, "system_prompt": args.system_prompt}
    comparison = lab.comparison(args.question, answers, kb=args.kb, adapter=args.adapter, settings=settings)
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).write_text(comparison.to_markdown(), encoding="utf-8")
    if args.json:
        _print_json(comparison.to_dict())
    else:
        for a in answers:
            print(f"== {VARIANTS[a.variant].label} ==")
            print(f"error: {a.error}" if a.error else a.answer)
            t = a.timings
            if "total_ms" in t:
                print(f"   ({t['new_tokens']} tokens; first after {t['ttft_ms']:.0f} ms, total {t['total_ms']:.0f} ms, "
                      f"{t['tokens_per_s']:.1f} tokens/s; {t['prompt_tokens']} prompt tokens)")
            for i, s in enumerate(a.sources, 1):
                print(f"   [{i}] {cite(s['file'], s['page'])} (score {s['score']:.2f})")
            print()
    return EXIT_FAILED if all(a.error for a in answers) else EXIT_OK


def _votes(lab, args) -> int:
    from core.variants import VARIANTS

    if args.votes_command == "export":
        result = lab.votes.export(args.path, args.format, kb=args.kb)
        if args.json:
            _print_json(result)
        else:
            what = "preference pairs" if args.format == "dpo" else "votes"
            print(f"wrote {result['rows']} {what} from {result['votes']} votes to {result['path']}")
        return EXIT_OK
    if args.votes_command == "leaderboard":
        board = lab.votes.leaderboard(args.kb)
        if args.json:
            _print_json({"kb": args.kb, "leaderboard": board})
        elif not board:
            print("no votes yet: vote in the Compare tab")
        else:
            print(f"{'variant':<18}{'win rate':>9}{'wins':>6}{'ties':>6}{'all bad':>9}{'votes':>7}")
            for r in board:
                print(f"{VARIANTS[r['variant']].label:<18}{r['win_rate']:>9.0%}{r['wins']:>6}{r['ties']:>6}"
                      f"{r['all_bad']:>9}{r['votes']:>7}")
        return EXIT_OK
    votes = lab.votes.all(args.kb)
    if args.json:
        _print_json({"votes": votes})
    else:
        for v in votes:
            print(f"{v['time']}  {v['choice']:<14} {v['comparison']['question'][:70]}")
        print(f"({len(votes)} votes)", file=sys.stderr)
    return EXIT_OK


def _eval_table(run: dict) -> str:
    from core.variants import VARIANTS

    metrics = (["correct", "macro_f1"] if run.get("classify") else []) + [
        "contains", "exact_match", "f1", "rouge_l", "chrf", "groundedness", "hit", "rr"]
    names = {"correct": "accuracy", "macro_f1": "macro-F1", "contains": "contains", "exact_match": "EM", "f1": "F1",
             "rouge_l": "ROUGE-L", "chrf": "chrF", "groundedness": "grounded", "hit": "hit@k", "rr": "MRR"}
    lines = [f"{'variant':<17}" + "".join(f"{names[m]:>20}" for m in metrics) + f"{'ms/answer':>11}"]
    for variant, s in (run.get("summary") or {}).items():
        cells = []
        for m in metrics:
            v = s.get(m)
            cells.append(f"{v['mean']:.3f} [{v['low']:.2f}-{v['high']:.2f}]" if v else "–")
        lines.append(f"{VARIANTS[variant].label:<17}" + "".join(f"{c:>20}" for c in cells)
                     + f"{s.get('latency_ms', 0):>11.0f}")
    return "\n".join(lines)


def _eval(lab, args) -> int:
    from core.evaluation import export, verdict

    if args.eval_command == "list":
        runs = lab.evals.list()
        if args.json:
            _print_json({"runs": runs})
        for r in [] if args.json else runs:
            print(f"{r['id']}  {r['state']:<9} {r['done']}/{r['questions']}  {','.join(r['variants'])}  {r['testset']}")
        return EXIT_OK
    if args.eval_command == "run":
        config = None
        if args.max_new_tokens is not None:
            from core.generation import GenerationConfig

            config = GenerationConfig(max_new_tokens=args.max_new_tokens)
        items, label = lab.eval_items(args.testset, args.testset_file, args.part, args.limit, args.generate_from,
                                      progress=None if args.json else _progress_to_stderr)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        run = lab.eval_run(items, label, variants, kb=args.kb or args.generate_from, adapter=args.adapter,
                           config=config, top_k=args.top_k, progress=None if args.json else _progress_to_stderr)
    else:
        run = lab.evals.load(args.run)
    if args.eval_command == "export":
        path = export(run, args.path)
        _print_json({"path": str(path), "questions": len(run["results"])}) if args.json else print(f"wrote {path}")
        return EXIT_OK
    if args.json:
        _print_json({**{k: v for k, v in run.items() if k != "results"}, "verdict": verdict(run)})
        return EXIT_OK
    print(f"run {run['id']} · {run['testset']} · {run['done']}/{run['questions']} questions · {run['state']}")
    for warning in run.get("warnings", []):
        print(f"warning: {warning}")
    print(_eval_table(run))
    print("\n" + verdict(run))
    return EXIT_OK


def _demo(lab, args) -> int:
    from core.demo import load_demo

    done = load_demo(lab, train=args.train, progress=None if args.json else _progress_to_stderr)
    if args.json:
        _print_json(done)
        return EXIT_OK
    print(f"knowledge base {done['kb']}: " + ", ".join(f"{f['file']} {f['status']}" for f in done["files"]))
    print(f"dataset {done['dataset']['name']}: {done['dataset']['examples']} questions")
    if done["job"]:
        print(f"training job {done['job']['id']} started (adapter {done['adapter']}): python -m core jobs show "
              f"{done['job']['id']}")
    print(f"try: python -m core compare \"{done['first_question']}\" --kb {done['kb']}")
    return EXIT_OK


def _advise(lab, args) -> int:
    from core.advisor import QUESTIONS, Situation

    advice = lab.advise(Situation(**{key: getattr(args, key) for key in QUESTIONS}))
    if args.json:
        _print_json(advice)
        return EXIT_OK
    print(f"Recommendation: {advice['label']}")
    for reason in advice["reasons"]:
        print(f"  {reason['points']:+d} {reason['side']}: {reason['reason']}")
    for caution in advice["cautions"]:
        print(f"Note: {caution}")
    measured = advice.get("measured")
    if measured:
        print(f"Measured (evaluation {measured['run']}): {measured['verdict']}")
        if measured["note"]:
            print(measured["note"])
    print(advice["next_step"])
    return EXIT_OK


def _search(lab, args) -> int:
    from core.lab import hit_to_source

    hits, ms = lab.search(args.query, args.kb, args.top_k)
    if args.json:
        _print_json({"query": args.query, "kb": args.kb, "retrieval_ms": round(ms, 1), "hits": [hit_to_source(h, args.query) for h in hits]})
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
    elif args.kb_command == "show" and args.file:
        preview = lab.file_preview(args.name, args.file)
        if args.json:
            _print_json(preview)
        else:
            for i, c in enumerate(preview["chunks"], 1):
                print(f"--- chunk {i}/{len(preview['chunks'])} · {cite(preview['file'], c['page'])} · {c['tokens']} tokens")
                print(c["text"])
    elif args.kb_command == "show":
        shown = lab.kb_show(args.name)
        if args.json:
            _print_json(shown)
        else:
            print(f"{shown['name']}: {len(shown['files'])} files, {shown['chunks']} chunks "
                  f"(chunk size {shown['chunk_size']}, overlap {shown['chunk_overlap']})")
            for f in shown["files"]:
                stale = "\tneeds re-index (kb configure)" if f["needs_reindex"] else ""
                print(f"  {f['file']}\t{f['pages']} pages\t{f['chunks']} chunks\tadded {f['added']}{stale}")
    elif args.kb_command == "create":
        name = lab.kb_create(args.name, args.chunk_size, args.overlap)
        _print_json({"created": name, **lab.kb_chunking(name).to_dict()}) if args.json else print(f"created {name}")
    elif args.kb_command == "configure":
        done = lab.kb_configure(args.name, args.chunk_size, args.overlap,
                                progress=None if args.json else _progress_to_stderr)
        if args.json:
            _print_json(done)
        else:
            print(f"{done['name']}: chunk size {done['chunk_size']}, overlap {done['chunk_overlap']}; "
                  f"{len(done['results'])} file(s) re-indexed")
            for r in done["results"]:
                print(f"{r['status']:>9}  {r['file']}: {r['message']}")
        return EXIT_FAILED if any(r["status"] == "failed" for r in done["results"]) else EXIT_OK
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


def _dataset(lab, args) -> int:
    command = args.dataset_command
    if command == "import":
        out = lab.dataset_import(args.path, args.name, args.replace, args.validation, args.test, args.seed)
    elif command == "generate":
        out = lab.dataset_generate(args.kb, args.name, args.count, args.raft, args.distractors, args.oracle_share,
                                   not args.no_model, args.replace, args.validation, args.test, args.seed,
                                   progress=None if args.json else _progress_to_stderr)
    elif command == "list":
        out = {"datasets": [lab.datasets.info(n).summary() for n in lab.datasets.names()]}
    elif command == "show":
        out = lab.dataset_show(args.name, args.part, args.limit)
    elif command == "split":
        out = lab.dataset_split(args.name, args.validation, args.test, args.seed)
    else:
        lab.datasets.delete(args.name)
        out = {"deleted": args.name}
    if args.json:
        _print_json(out)
    elif command == "list":
        for d in out["datasets"]:
            print(f"{d['name']}\t{d['examples']} examples\t{d['format']}\tsplit {d['split']}")
    elif command == "show":
        print(f"{out['name']}: {out['examples']} examples ({out['format']}, from {out['source']}), split {out['split']}")
        for i, e in enumerate(out["preview"], 1):
            print(f"--- {out['part']} example {i}: {e['prompt_tokens']} prompt + {e['answer_tokens']} answer tokens "
                  f"(only the answer is learned)\n{e['text']}")
    elif command == "delete":
        print(f"deleted dataset {args.name}")
    else:
        print(f"{out['name']}: {out['examples']} examples ({out['format']}), split {out['split']}")
    return EXIT_OK


def _job_line(status: dict) -> str:
    state = status["state"]
    if state == "queued":
        return f"queued (waiting for {status.get('waiting_for') or 'the device'})"
    if state == "running":
        loss = (status.get("history") or {}).get("train") or []
        eta = f", ~{status['eta_s']:.0f}s left" if status.get("eta_s") else ""
        rate = f", {status['tokens_per_s']:.0f} tokens/s" if status.get("tokens_per_s") else ""
        return f"step {status.get('step')}/{status.get('total_steps')}{eta}{rate}" + (f", loss {loss[-1][1]}" if loss else "")
    return state + (f": {status['error']}" if status.get("error") else "")


def _train(lab, args) -> int:
    overrides = {key: getattr(args, key) for key in ("rank", "alpha", "dropout", "learning_rate", "epochs", "batch_size",
                                                      "grad_accum", "max_length", "seed", "eval_every", "max_steps",
                                                      "target_modules", "quantize")}
    settings = lab.train_settings(args.preset, **overrides)
    if args.estimate:
        plan = lab.train_estimate(args.dataset, settings)
        _print_json(plan) if args.json else print(
            f"about {plan['minutes']} min, {plan['memory_gb']} GB of {plan['available_gb']} GB free, "
            f"{plan['steps']} steps; {'fits' if plan['fits'] else 'does NOT fit'}")
        return EXIT_OK if plan["fits"] else EXIT_FAILED
    job = lab.train_start(args.dataset, settings, args.adapter, args.processes)
    print(f"job {job['id']}: training adapter {job['adapter']} (cancel: python -m core jobs cancel {job['id']})",
          file=sys.stderr)
    if args.detach:
        _print_json({"job": job["id"], "adapter": job["adapter"]}) if args.json else print(job["id"])
        return EXIT_OK
    try:
        final = lab.jobs.wait(job["id"], lambda st: print(f"  {_job_line(st)}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:  # Ctrl-C cancels the job (it keeps its last checkpoint), not just the watching
        lab.jobs.cancel(job["id"])
        print("cancelling; the last checkpoint is kept as an adapter", file=sys.stderr)
        final = lab.jobs.wait(job["id"])
    summary = {k: final.get(k) for k in ("id", "state", "adapter", "error", "message", "result")}
    if args.json:
        _print_json(summary)
    else:
        result = final.get("result") or {}
        print(f"{final['state']}: adapter {final.get('adapter')}, {result.get('steps')} steps in "
              f"{result.get('seconds')} s, train loss {result.get('train_loss')}, validation loss "
              f"{result.get('eval_loss')}" if final["state"] != "failed" else f"failed: {final.get('error')}")
    return EXIT_OK if final["state"] in ("completed", "cancelled") else EXIT_FAILED


def _jobs(lab, args) -> int:
    command = args.jobs_command
    if command == "list":
        out = {"jobs": [{k: j.get(k) for k in ("id", "state", "dataset", "adapter", "step", "total_steps")}
                        for j in lab.jobs.list()]}
        if not args.json:
            for j in out["jobs"]:
                print(f"{j['id']}\t{j['state']}\t{j['dataset']} -> {j['adapter']}\tstep {j['step']}/{j['total_steps']}")
            return EXIT_OK
    elif command == "show":
        out = lab.jobs.get(args.id)
    elif command == "cancel":
        out = lab.jobs.cancel(args.id)
    else:
        out = lab.jobs.get(lab.jobs.resume(args.id))
    _print_json(out) if args.json else print(f"{out['id']}: {_job_line(out)}")
    return EXIT_OK


def _adapters(lab, args) -> int:
    command = args.adapters_command
    if command == "list":
        out = {"adapters": lab.adapters.list()}
        for a in out["adapters"]:
            a.pop("history", None)
        if not args.json:
            for a in out["adapters"]:
                print(f"{a['name']}\t{a['dataset']}\t{a.get('steps')} steps\ttrain loss {a.get('train_loss')}\t"
                      f"validation loss {a.get('eval_loss')}")
            return EXIT_OK
    elif command == "show":
        out = lab.adapters.info(args.name)
    elif command == "rename":
        out = {"renamed": args.name, "to": lab.adapters.rename(args.name, args.new_name)}
    elif command == "delete":
        lab.adapters.delete(args.name)
        out = {"deleted": args.name}
    elif args.merged:
        out = {"exported": args.name, "merged_model": str(lab.adapter_export_merged(args.name, args.path))}
    else:
        out = {"exported": args.name, "path": str(lab.adapters.export_zip(args.name, args.path))}
    _print_json(out) if args.json or command == "show" else print(", ".join(f"{k}: {v}" for k, v in out.items()))
    return EXIT_OK


def _info(lab, args) -> int:
    info = lab.info()
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return EXIT_OK

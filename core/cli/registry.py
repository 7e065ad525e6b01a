"""The command registry: each command is one function, registered with its path (`kb show`), help and arguments;
core/cli/__init__.py builds the parser from COMMANDS. Also the argument lists several commands share."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import core.cli.render as render
from core.progress import ProgressFn

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT), as shells report it


@dataclass
class Command:
    path: tuple[str, ...]
    run: Callable
    help: str
    description: str | None = None
    arguments: list = field(default_factory=list)
    settings: tuple = ()  # settings dataclasses whose fields become flags
    render: Callable | None = None


COMMANDS: list[Command] = []
# The order `python -m core --help` lists them in: the everyday commands first.
TOP_LEVEL = ("ingest", "ask", "compare", "votes", "eval", "study", "demo", "advise", "search", "kb", "dataset", "train", "jobs",
             "adapters", "models", "info")
GROUPS = {
    ("votes",): ("list votes, show the leaderboard, or export preference data",
                 "Votes cast in the Compare tab. Export them as preference pairs (prompt, chosen, rejected: the JSONL "
                 "layout TRL's DPO trainer reads) or whole."),
    ("eval",): ("evaluate variants on a test set: run, list, show, export",
                "Evaluate the variants on held-out questions, scored offline (no LLM judge)."),
    ("study",): ("the whole experiment in one command: run, list, show, export, cancel, resume",
                 "From a knowledge base to a fair verdict on RAG, fine-tuning, both, and RAFT: questions from the "
                 "passages, a split by passage, two fine-tunes within a time budget, five variants evaluated, a "
                 "report (HTML, Markdown, JSON)."),
    ("demo",): ("load the demo pack (a fictional company's documents and questions)",
                "Add the demo documents to the knowledge base 'demo' and its questions as the dataset 'demo-qa' "
                "(12 to train on, 4 held out)."),
    ("kb",): ("list, show, create, configure, rename or delete knowledge bases", "Manage knowledge bases."),
    ("dataset",): ("import, show, split or delete training data",
                   "Training data for fine-tuning. Import OpenAI chat JSONL ({\"messages\": [...]}), Alpaca JSON/JSONL "
                   "(instruction, input, output) or CSV with question/answer columns; the format is detected and "
                   "every problem is reported with its line."),
    ("jobs",): ("list, show, cancel or resume training jobs", None),
    ("adapters",): ("list, show, rename, delete or export trained adapters", None),
    ("models",): ("list, switch, download or remove base models",
                  "The base model the app answers, trains and evaluates with: the bundled one, a Hugging Face folder "
                  "or .gguf file in the data folder's models folder, or a Hub model downloaded there."),
}


def arg(*flags, **options) -> tuple:
    return flags, options


def command(path: str, help: str, description: str | None = None, args=(), settings=(), text=None):
    """Register a command; `text` renders its result without --json."""
    def register(run):
        COMMANDS.append(Command(tuple(path.split()), run, help, description, list(args), tuple(settings), text))
        return run
    return register


@dataclass
class Output:
    """Where a command shows what happens while it runs: nothing extra with --json."""

    json: bool

    @property
    def progress(self) -> ProgressFn | None:
        return None if self.json else render.progress_to_stderr

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


# ---- shared argument lists ------------------------------------------------------------------------------------
def chunk_args(note: str = "") -> list:
    note = f"; {note}" if note else ""
    return [arg("--chunk-size", type=int, default=None, metavar="N",
                help=f"chunk size in the embedding model's tokens (default: 200){note}"),
            arg("--overlap", type=int, default=None, metavar="N",
                help=f"tokens shared by neighbouring chunks (default: 30){note}")]


READING_ARGS = [
    arg("--top-k", type=int, default=None, help="passages to retrieve (default: 4)"),
    arg("--read-passages", type=int, default=None, metavar="N",
        help="of those, how many the model reads, best first (default: 0, as suits the model: 1 under 1B parameters)"),
    arg("--min-relevance", type=float, default=None, metavar="X",
        help="below this question-to-sentence similarity RAG says the documents do not seem to answer "
             "(default: 0.45; 0 turns it off)"),
]
GENERATION_ARGS = [
    *READING_ARGS,
    arg("--max-new-tokens", type=int, default=None, help="answer length limit in tokens (default: 128)"),
    arg("--temperature", type=float, default=0.0,
        help="0 (default) always picks the likeliest word: the same question gives the same answer"),
    arg("--top-p", type=float, default=0.9, help="with temperature > 0: sample from this share of the probability "
                                                 "(default: 0.9)"),
    arg("--seed", type=int, default=None, help="with temperature > 0: repeatable samples"),
    arg("--no-loop-stop", action="store_true", help="let an answer that repeats itself run on to the length limit "
                                                    "(by default it stops where the repetition began)"),
    arg("--system-prompt", default=None, help="instructions for every variant (RAG has its own default)"),
]
SPLIT_ARGS = [
    arg("--validation", type=float, default=0.1, help="share for validation (default: 0.1)"),
    arg("--test", type=float, default=0.1, help="share kept out for evaluation (default: 0.1)"),
    arg("--seed", type=int, default=42, help="shuffle seed (default: 42)"),
]
ADAPTER_ARG = arg("--adapter", help="the fine-tuned adapter, for finetuned and finetuned+rag")


def generation_config(lab, args):
    from core.generation import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens or lab.settings.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                            stop_loops=not args.no_loop_stop).checked()


def reading_overrides(args) -> dict:
    return {"read_passages": args.read_passages, "min_relevance": args.min_relevance}


def variant_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]



"""One RAG column answering alone: the engine's decoder (core.generation, with and without prompt lookup) against
plain transformers `generate` on the same prompts, in the same run. Prompts are the app's own RAG prompts (its
retrieval, reading and wording) for the guided demo's 16 questions and, where ../shared is present, the reading
set's questions on United_States_PDF.pdf. Greedy, natural length up to --tokens.

    .venv/bin/python bench/bench_one_column.py [--repeats 3] [--tokens 64] [--limit 16] [--lookups 0,1,4]

The baseline is the model as `from_pretrained` loads it (the engine's is the app's, with its own linear-layer
layout for a few rows). Printed: the whole answers' time (prompt included) and tokens per second over all
questions, the decode rate after each answer's first token (the prompt's reading left out), per repeat the median
and min-max, the ratio to the faster plain `generate`, and how many answers are token for token plain `generate`'s in the
same precision.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))
PDF = ROOT.parent / "shared" / "data" / "pdfs" / "United_States_PDF.pdf"
READING_SET = ROOT / "bench" / "reading_sets" / "shared_pdfs.jsonl"

import core  # noqa: E402,F401
import core.decode_loop  # noqa: E402
from core.config import load_settings  # noqa: E402
from core.demo import DEMO_DIR, DEMO_DOCUMENTS, DEMO_KB, DEMO_QUESTIONS  # noqa: E402
from core.generation import GenerationConfig, RowDone, stream_chat  # noqa: E402
from core.lab import Lab  # noqa: E402


def rag_prompts(lab: Lab, limit: int) -> list[list[dict]]:
    """The app's RAG conversation for each question whose passages answer it (the others need no model)."""
    lab.kbs.ingest([DEMO_DIR / name for name in DEMO_DOCUMENTS], kb=DEMO_KB)
    with open(DEMO_DIR / DEMO_QUESTIONS, newline="") as f:
        asked = [(row["question"], DEMO_KB) for row in csv.DictReader(f)][:limit]
    if PDF.exists():
        lab.kbs.ingest([PDF], kb="us")
        items = [json.loads(line) for line in READING_SET.read_text().splitlines()]
        asked += [(i["question"], "us") for i in items if i["file"] == PDF.name and i.get("kind") == "answer"][:limit]
    conversations = []
    for question, kb in asked:
        turn = lab.answers._prepare(question, ["rag"], kb, None, None, None, None, None, None, None)
        conversations += [conversation for _, conversation, _ in turn.rows]
    return conversations


def variant(lab: Lab, name: str):
    """The app's bf16 model with one optimisation switched off: "bf16-unpacked", torch's own product (the weight
    repacked on every call); "bf16-apart", packed, but sibling layers (query/key/value, gate/up) each with its own
    product; "bf16-forward", decode steps through transformers' forward instead of core.lean_step's."""
    import core.cpu_linear
    from core import lean_step
    from core.models import _load_chat_model, resolve_base_model

    if name == "bf16-forward":
        generator = _load_chat_model(resolve_base_model(lab.settings.base_model, lab.settings), name, "cpu", "bf16")
        lean_step._verdicts[lean_step.causal_lm(generator.model)] = False  # this model alone: as if its probe failed
        return generator
    switch = {"bf16-unpacked": "PACK_BF16", "bf16-apart": "SHARE_SIBLINGS"}[name]
    setattr(core.cpu_linear, switch, False)
    try:
        return _load_chat_model(resolve_base_model(lab.settings.base_model, lab.settings), name, "cpu", "bf16")
    finally:
        setattr(core.cpu_linear, switch, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--limit", type=int, default=16, help="questions per set")
    parser.add_argument("--lookups", default="0,1,4", help="prompt lookup draft lengths to run the engine with")
    parser.add_argument("--weights", default="app",
                        help="the engine's weights on a CPU, comma-separated: app (the app's choice), fp32, bf16, "
                             "bf16-unpacked (bf16 with each linear layer's weight repacked per call, as before), "
                             "bf16-apart (packed, sibling layers each with its own product), bf16-forward "
                             "(decode steps through transformers' forward, not core.lean_step's)")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from core.models import resolve_base_model

    lab = Lab(load_settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-one-column-"))))
    conversations = rag_prompts(lab, args.limit)
    weights = [lab.settings.resolved_decode_weights if w == "app" else w for w in args.weights.split(",")]
    generators = {w: variant(lab, w) if w.startswith("bf16-")
                  else Lab(lab.settings.with_(decode_weights=w)).models.generator for w in dict.fromkeys(weights)}
    tokenizer = lab.models.generator.tokenizer
    device = lab.models.generator.model.device
    # The baselines are the model as a user loads it (`from_pretrained`, without the engine's own layer layout and
    # attention), in each precision the engine runs in: on this CPU a competent user would pick bf16 too.
    baselines = {str(g.model.dtype).removeprefix("torch."): AutoModelForCausalLM.from_pretrained(
        resolve_base_model(lab.settings.base_model, lab.settings), dtype=g.model.dtype).to(device).eval()
        for g in generators.values()}
    config = GenerationConfig(max_new_tokens=args.tokens, stop_loops=False)  # `generate` has no loop stop

    decode_s: dict[str, list[float]] = {}  # per decoder: seconds after each answer's first token, summed

    def plain(model, name: str):
        from transformers import StoppingCriteria

        class FirstToken(StoppingCriteria):  # asked after every new token: the first call follows the prefill
            at = None

            def __call__(self, input_ids, scores, **kwargs):
                self.at = self.at or time.perf_counter()
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        def answer(conversation) -> list[int]:
            first = FirstToken()
            encoded = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True).to(device)
            with torch.inference_mode():
                out = model.generate(**encoded, max_new_tokens=args.tokens, do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id, stopping_criteria=[first])
            decode_s[name][-1] += time.perf_counter() - first.at
            return out[0, encoded["input_ids"].shape[1]:].tolist()
        return answer

    def engine(generator, lookup: int, name: str):
        def answer(conversation) -> list[int]:
            core.decode_loop.PROMPT_LOOKUP_TOKENS = lookup
            done = next(e for e in stream_chat(generator, [conversation], config) if isinstance(e, RowDone))
            decode_s[name][-1] += done.stats.total_s - done.stats.ttft_s
            return tokenizer(done.text, add_special_tokens=False)["input_ids"]
        return answer

    default_lookup = core.decode_loop.PROMPT_LOOKUP_TOKENS
    runs, reference_of = {}, {}  # name -> answering function; name -> the plain run of the same precision
    for precision, model in baselines.items():
        runs[f"plain generate, {precision}"] = plain(model, f"plain generate, {precision}")
    for w, generator in generators.items():
        precision = str(generator.model.dtype).removeprefix("torch.") + {
            "bf16-unpacked": " unpacked", "bf16-apart": " apart", "bf16-forward": " forward", "int8": " int8"}.get(w, "")
        for lookup in (int(n) for n in args.lookups.split(",")):
            name = f"engine {precision}, " + (f"prompt lookup of {lookup}" if lookup else "prompt lookup off")
            runs[name], reference_of[name] = engine(generator, lookup, name), f"plain generate, {precision.split()[0]}"
    decode_s.update({name: [0.0] for name in runs})
    texts = {name: [tokenizer.decode(fn(c), skip_special_tokens=True) for c in conversations]
             for name, fn in runs.items()}  # also the warm-up
    for values in decode_s.values():
        values.clear()
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[next(iter(runs))])
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate, so a slow moment of the machine hits each alike
        for name, fn in runs.items():
            decode_s[name].append(0.0)
            started = time.perf_counter()
            for conversation in conversations:
                fn(conversation)
            seconds[name].append(time.perf_counter() - started)
    core.decode_loop.PROMPT_LOOKUP_TOKENS = default_lookup
    plains = [name for name in runs if name.startswith("plain")]
    best = min(plains, key=lambda name: statistics.median(seconds[name]))
    base, base_decode = statistics.median(seconds[best]), statistics.median(decode_s[best])
    print(f"\n{len(conversations)} RAG answers, {tokens} tokens in all (the first plain run's), one row, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} (min-max); ratios against the faster plain "
          f"run ({best}); the app decodes in {lab.settings.resolved_decode_weights}\n")
    print("| decoder | s for all answers | tokens/s | x best plain generate | decode tokens/s, after the first | x best "
          "plain generate | answers = plain generate's, same precision |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    decoded = tokens - len(conversations)  # the tokens after each answer's first
    for name, values in seconds.items():
        median = statistics.median(values)
        decode = statistics.median(decode_s[name])
        reference = texts[reference_of.get(name, name)]
        same = sum(a.strip() == b.strip() for a, b in zip(texts[name], reference))
        print(f"| {name} | {median:.1f} ({min(values):.1f}-{max(values):.1f}) | {tokens / median:.1f} | "
              f"{base / median:.2f}x | {decoded / decode:.1f} ({decoded / max(decode_s[name]):.1f}-"
              f"{decoded / min(decode_s[name]):.1f}) | {base_decode / decode:.2f}x | {same}/{len(conversations)} |")


if __name__ == "__main__":
    main()

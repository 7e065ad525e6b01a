"""What the commands print without --json: text for a person. Each function takes a command's result (the same
dict --json prints) and the parsed arguments."""
from __future__ import annotations

import json
import sys

from core.documents import cite, page_ranges
from core.models import describe_model
from core.variants import VARIANTS


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def progress_to_stderr(fraction: float, message: str) -> None:
    print(f"\r[{fraction * 100:5.1f}%] {message[:100]:<100}", end="" if fraction < 1 else "\n", file=sys.stderr,
          flush=True)


def key_values(payload: dict, args=None) -> None:
    print(", ".join(f"{k}: {v}" for k, v in payload.items()))


def key_lines(payload: dict, args=None) -> None:
    for key, value in payload.items():
        print(f"{key}: {value}")


def result_lines(results: list[dict]) -> None:
    for r in results:
        print(f"{r['status']:>9}  {r['file']}: {r['message']}")


# ---- knowledge bases ------------------------------------------------------------------------------------------
def ingest(payload: dict, args) -> None:
    result_lines(payload["results"])


def search(payload: dict, args) -> None:
    hits = payload["hits"]
    for i, h in enumerate(hits, 1):
        print(f"[{i}] {cite(h['file'], h['page'])}  score {h['score']:.3f}\n    {h['text'][:300].replace(chr(10), ' ')}\n")
    print(f"({len(hits)} passages in {payload['retrieval_ms']:.0f} ms)", file=sys.stderr)


def kb_list(payload: dict, args) -> None:
    kbs = payload["knowledge_bases"]
    for kb in kbs:
        print(f"{kb['name']}\t{kb['files']} files\t{kb['chunks']} chunks")
    if not kbs:
        print("no knowledge bases yet; add files with: python -m core ingest FILE", file=sys.stderr)


def kb_show(payload: dict, args) -> None:
    if args.file:  # one file's chunks
        chunks = payload["chunks"]
        for i, c in enumerate(chunks, 1):
            print(f"--- chunk {i}/{len(chunks)} · {cite(payload['file'], c['page'])} · {c['tokens']} tokens")
            print(c["text"])
        return
    print(f"{payload['name']}: {len(payload['files'])} files, {payload['chunks']} chunks "
          f"(chunk size {payload['chunk_size']}, overlap {payload['chunk_overlap']})")
    for f in payload["files"]:
        stale = "\tneeds re-index (kb configure)" if f["needs_reindex"] else ""
        ocr = ""
        if f["ocr_pages"]:
            ranges = page_ranges(f["ocr_pages"])
            ocr = f"\tread by OCR: page(s) {ranges}" if ranges else "\tread by OCR"
        print(f"  {f['file']}\t{f['pages']} pages\t{f['chunks']} chunks\tadded {f['added']}{ocr}{stale}")


def kb_configure(payload: dict, args) -> None:
    print(f"{payload['name']}: chunk size {payload['chunk_size']}, overlap {payload['chunk_overlap']}; "
          f"{len(payload['results'])} file(s) re-indexed")
    result_lines(payload["results"])


def kb_delete(payload: dict, args) -> None:
    if "file" in payload:
        print(f"deleted {payload['file']} ({payload['chunks_removed']} chunks)")
    else:
        print(f"deleted knowledge base {payload['deleted']}")


# ---- answers ----------------------------------------------------------------------------------------------------
def sources(items: list[dict], indent: str) -> None:
    for i, s in enumerate(items, 1):
        unread = ", retrieved, not shown to the model" if s.get("read") is False else ""
        print(f"{indent}[{i}] {cite(s['file'], s['page'])} (score {s['score']:.2f}{unread})")


def ask(payload: dict, args) -> None:
    print()  # the answer itself was streamed as it came
    if payload["sources"]:
        print("\nSources:")
        sources(payload["sources"], "  ")
    t = payload["timings"]
    if not t["prompt_tokens"]:  # nothing was generated: RAG said the documents do not seem to answer
        print("\n(said without generating: no passage was close enough; --min-relevance 0 answers anyway)",
              file=sys.stderr)
        return
    print(f"\n{t['new_tokens']} tokens, first after {t['ttft_ms']:.0f} ms, {t['tokens_per_s']:.1f} tokens/s",
          file=sys.stderr)


def compare(payload: dict, args) -> None:
    for a in payload["answers"]:
        print(f"== {VARIANTS[a['variant']].label} ==")
        print(f"error: {a['error']}" if a["error"] else a["answer"])
        t = a["timings"]
        if "total_ms" in t:
            print(f"   ({t['new_tokens']} tokens; first after {t['ttft_ms']:.0f} ms, total {t['total_ms']:.0f} ms, "
                  f"{t['tokens_per_s']:.1f} tokens/s; {t['prompt_tokens']} prompt tokens)")
        sources(a["sources"], "   ")
        print()


# ---- votes ------------------------------------------------------------------------------------------------------
def votes_list(payload: dict, args) -> None:
    for v in payload["votes"]:
        print(f"{v['time']}  {v['choice']:<14} {v['comparison']['question'][:70]}")
    print(f"({len(payload['votes'])} votes)", file=sys.stderr)


def leaderboard(payload: dict, args) -> None:
    board = payload["leaderboard"]
    if not board:
        print("no votes yet: vote in the Compare tab")
        return
    print(f"{'variant':<18}{'win rate':>9}{'wins':>6}{'ties':>6}{'all bad':>9}{'votes':>7}")
    for r in board:
        print(f"{VARIANTS[r['variant']].label:<18}{r['win_rate']:>9.0%}{r['wins']:>6}{r['ties']:>6}"
              f"{r['all_bad']:>9}{r['votes']:>7}")


def votes_export(payload: dict, args) -> None:
    what = "preference pairs" if payload["format"] == "dpo" else "votes"
    print(f"wrote {payload['rows']} {what} from {payload['votes']} votes to {payload['path']}")


# ---- evaluation ---------------------------------------------------------------------------------------------------
METRIC_NAMES = {"correct": "accuracy", "macro_f1": "macro-F1", "contains": "contains", "exact_match": "EM",
                "f1": "F1", "rouge_l": "ROUGE-L", "chrf": "chrF", "groundedness": "grounded", "hit": "hit@k",
                "rr": "MRR"}


def eval_table(run: dict) -> str:
    metrics = (["correct", "macro_f1"] if run.get("classify") else []) + [
        "contains", "exact_match", "f1", "rouge_l", "chrf", "groundedness", "hit", "rr"]
    lines = [f"{'variant':<17}" + "".join(f"{METRIC_NAMES[m]:>20}" for m in metrics) + f"{'ms/answer':>11}"]
    for variant, s in (run.get("summary") or {}).items():
        cells = []
        for m in metrics:
            v = s.get(m)
            cells.append(f"{v['mean']:.3f} [{v['low']:.2f}-{v['high']:.2f}]" if v else "–")
        lines.append(f"{VARIANTS[variant].label:<17}" + "".join(f"{c:>20}" for c in cells)
                     + f"{s.get('latency_ms', 0):>11.0f}")
    return "\n".join(lines)


def eval_run(run: dict, args) -> None:
    print(f"run {run['id']} · {run['testset']} · {run['done']}/{run['questions']} questions · {run['state']}")
    for warning in run.get("warnings", []):
        print(f"warning: {warning}")
    print(eval_table(run))
    print("\n" + run["verdict"])


def eval_list(payload: dict, args) -> None:
    for r in payload["runs"]:
        print(f"{r['id']}  {r['state']:<9} {r['done']}/{r['questions']}  {','.join(r['variants'])}  {r['testset']}")


# ---- demo and advice --------------------------------------------------------------------------------------------
def demo(done: dict, args) -> None:
    print(f"knowledge base {done['kb']}: " + ", ".join(f"{f['file']} {f['status']}" for f in done["files"]))
    print(f"dataset {done['dataset']['name']}: {done['dataset']['examples']} questions")
    if done["job"]:
        print(f"training job {done['job']['id']} started (adapter {done['adapter']}): python -m core jobs show "
              f"{done['job']['id']}")
    print(f"try: python -m core compare \"{done['first_question']}\" --kb {done['kb']}")


def advice(advice: dict, args) -> None:
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


# ---- training data and training ---------------------------------------------------------------------------------
def dataset_summary(out: dict, args) -> None:
    what = {"preference": "preference pairs (trains with DPO)",
            "text": "passages (continued pre-training)"}.get(out.get("kind"), "examples")
    print(f"{out['name']}: {out['examples']} {what} ({out['format']}), split {out['split']}")


def dataset_clean(out: dict, args) -> None:
    problems = {kind: p for kind, p in out["problems"].items() if p["count"]}
    if not problems:
        print(f"{out['name']}: {out['examples']} examples, no problems found")
        return
    print(f"{out['name']}: {out['examples']} examples; {len(out['removed'])} would be removed and "
          f"{len(out['repaired'])} repaired")
    for kind, problem in problems.items():
        print(f"- {kind.replace('_', ' ')}: {problem['count']} ({problem['about']}; fix: {problem['fix']})")
        for item in problem["found"]:
            detail = f" ({item['detail']})" if item["detail"] else ""
            print(f"    {item['part']} example {item['index']}: {item['preview']}{detail}")
    if out.get("saved_as"):
        saved = out["saved_as"]
        print(f"saved the fixed copy as {saved['name']}: {saved['examples']} examples, split {saved['split']}")
    else:
        print(f"to save a fixed copy: python -m core dataset clean {out['name']} --apply")


def dataset_list(payload: dict, args) -> None:
    for d in payload["datasets"]:
        print(f"{d['name']}\t{d['examples']} examples\t{d['format']}\tsplit {d['split']}")


def dataset_show(out: dict, args) -> None:
    print(f"{out['name']}: {out['examples']} examples ({out['format']}, from {out['source']}), split {out['split']}")
    for i, e in enumerate(out["preview"], 1):
        if out.get("kind") == "text":
            print(f"--- {out['part']} passage {i}: {e['answer_tokens']} tokens, all learned\n{e['text']}")
            continue
        if "rejected" in e:
            print(f"--- {out['part']} pair {i}: {e['prompt_tokens']} prompt tokens; chosen answer "
                  f"({e['answer_tokens']} tokens) in the template, then the rejected one ({e['rejected_tokens']} "
                  f"tokens)\n{e['text']}\n--- rejected:\n{e['rejected']}")
            continue
        print(f"--- {out['part']} example {i}: {e['prompt_tokens']} prompt + {e['answer_tokens']} answer tokens "
              f"(only the answer is learned)\n{e['text']}")


def job_line(status: dict) -> str:
    state = status["state"]
    if state == "queued":
        return f"queued (waiting for {status.get('waiting_for') or 'the device'})"
    if state == "running":
        loss = (status.get("history") or {}).get("train") or []
        eta = f", ~{status['eta_s']:.0f}s left" if status.get("eta_s") else ""
        rate = f", {status['tokens_per_s']:.0f} tokens/s" if status.get("tokens_per_s") else ""
        return f"step {status.get('step')}/{status.get('total_steps')}{eta}{rate}" + (f", loss {loss[-1][1]}" if loss else "")
    return state + (f": {status['error']}" if status.get("error") else "")


def job(status: dict, args) -> None:
    print(f"{status['id']}: {job_line(status)}")


def jobs_list(payload: dict, args) -> None:
    for j in payload["jobs"]:
        print(f"{j['id']}\t{j['state']}\t{j['dataset']} -> {j['adapter']}\tstep {j['step']}/{j['total_steps']}")


def train(out: dict, args) -> None:
    if args.estimate:
        from core.finetuning import memory_parts_text

        print(f"about {out['minutes']} min, {out['memory_gb']} GB ({memory_parts_text(out['memory_parts_gb'])}) "
              f"of {out['available_gb']} GB free, {out['steps']} steps; {'fits' if out['fits'] else 'does NOT fit: ' + out['advice']}")
    elif args.detach:
        print(out["job"])
    elif out["state"] == "failed":
        print(f"failed: {out.get('error')}")
        if out.get("log_tail"):
            print("last lines of the job's log:\n" + out["log_tail"])
    else:
        result = out.get("result") or {}
        print(f"{out['state']}: adapter {out.get('adapter')}, {result.get('steps')} steps in {result.get('seconds')} s, "
              f"train loss {result.get('train_loss')}, validation loss {result.get('eval_loss')}")
        if result.get("tensorboard"):
            print(f"  curves: tensorboard --logdir {result['tensorboard']}")
        margins = result.get("margins") or {}
        for part in ("train", "validation"):
            before, after = margins.get(f"{part}_before"), margins.get(f"{part}_after")
            if before and after:
                print(f"  {part} pairs ({before['pairs']}): chosen over rejected log-probability margin "
                      f"{before['mean_margin']} -> {after['mean_margin']}, chosen the more likely in "
                      f"{before['chosen_more_likely']:.0%} -> {after['chosen_more_likely']:.0%}")


def adapter_export(out: dict, args) -> None:
    if "files" not in out:
        key_values(out, args)
        return
    for file in out["files"]:
        check = (f", greedy answers the same as in the app on {file['same_answers']}/{file['checked']} questions"
                 if "checked" in file else "")
        print(f"{file['path']}: {file['type']}, {file['size_mb']} MB, {file['seconds']} s{check}")
        for difference in file.get("differences", []):
            print(f"  differs on {difference['question']!r}: app {difference['in_app']!r}, "
                  f"GGUF {difference['gguf']!r}")
    print(f"Ollama: {out['ollama']}")


def adapters_list(payload: dict, args) -> None:
    for a in payload["adapters"]:
        print(f"{a['name']}\t{a['dataset']}\ton {describe_model(a.get('base_model') or '?')}\t{a.get('steps')} steps\t"
              f"train loss {a.get('train_loss')}\t"
              f"validation loss {a.get('eval_loss')}")

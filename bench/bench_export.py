"""GGUF export: time and size per type, against llama.cpp's own converter, and whether the files answer like the app.

    .venv/bin/python bench/bench_export.py [--repeats 3] [--llama-cpp DIR] [--llama-cpp-python PYTHON]

Trains the Quick adapter on the 12 Zorblat facts (or reuses it in --data-dir), then:
- exports it `--repeats` times (merge + write, `lab.exports.gguf` without its check), median seconds per type;
- with --llama-cpp (a llama.cpp source tree, e.g. the one inside the llama-cpp-python sdist: pip download
  --no-binary :all: llama-cpp-python), runs its convert_hf_to_gguf.py on the same merged folder, alternating, and
  compares the two files tensor by tensor and field by field (it needs the sentencepiece package importable);
- answers the 12 fact questions greedily in the app (adapter on the base), from each GGUF read back by
  transformers, and, with --llama-cpp-python (a Python with llama_cpp installed), in llama.cpp itself.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"
LLAMA_CPP_ANSWERS = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=512, verbose=False, n_threads=2)
for q in json.loads(sys.argv[2]):
    out = llm.create_chat_completion(messages=[{"role": "user", "content": q}], max_tokens=24, temperature=0.0)
    print(json.dumps(out["choices"][0]["message"]["content"]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree (convert_hf_to_gguf.py)")
    parser.add_argument("--llama-cpp-python", help="a Python interpreter with llama_cpp installed")
    args = parser.parse_args()
    os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    os.environ["LAB_DATA_DIR"] = str(data_dir)
    from core.config import load_settings
    from core.generation import GenerationConfig
    from core.lab import Lab
    from core.model_export import outside_answers

    lab = Lab(load_settings())
    if "facts-quick" not in lab.adapters.names():
        if "facts" not in lab.datasets.names():
            lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
        final = lab.jobs.wait(lab.training.start("facts", lab.training.preset("quick"), "facts-quick")["id"])
        assert final["state"] == "completed", final.get("error")
    rows = [json.loads(line) for line in FACTS.read_text().splitlines()]
    questions = [r["messages"][0]["content"] for r in rows]

    ours: dict[str, list[float]] = {"f16": [], "q8_0": []}
    theirs: dict[str, list[float]] = {"f16": [], "q8_0": []}
    work = Path(tempfile.mkdtemp(prefix="bench-export-files-"))
    merged = lab.training.export_merged("facts-quick", work / "merged")
    for run in range(args.repeats):
        for kind in ours:
            t0 = time.perf_counter()
            lab.exports.gguf("facts-quick", work / f"ours-{run}-{kind}", (kind,), check=False)
            ours[kind].append(time.perf_counter() - t0)
            if args.llama_cpp:  # the converter as a user runs it, on the merged folder (the merge is ours to time)
                t0 = time.perf_counter()
                subprocess.run([sys.executable, str(args.llama_cpp / "convert_hf_to_gguf.py"), str(merged),
                                "--outtype", kind, "--outfile", str(work / f"theirs-{run}-{kind}.gguf")],
                               check=True, capture_output=True)
                theirs[kind].append(time.perf_counter() - t0)

    in_app = [r[0].answer for r in lab.answers.compare_many(questions, ["finetuned"], adapter="facts-quick",
                                                            config=GenerationConfig(max_new_tokens=24))]
    print(f"{'type':6} {'size MB':>8} {'export s (ours, merge incl.)':>30} {'llama.cpp convert s':>20} "
          f"{'same tensors':>13} {'= app (transformers)':>21} {'= app (llama.cpp)':>18} {'facts (llama.cpp)':>18}")
    for kind in ours:
        path = work / f"ours-0-{kind}" / f"facts-quick-{kind}.gguf"
        same = "-"
        if args.llama_cpp:
            same = str(_same_tensors(path, work / f"theirs-0-{kind}.gguf"))
        read_back = outside_answers(path, questions)
        agree = sum(a.strip() == b.strip() for a, b in zip(in_app, read_back))
        llama_agree = llama_facts = "-"
        if args.llama_cpp_python:
            out = subprocess.run([args.llama_cpp_python, "-c", LLAMA_CPP_ANSWERS, str(path), json.dumps(questions)],
                                 check=True, capture_output=True, text=True).stdout.splitlines()
            answers = [json.loads(line) for line in out]
            llama_agree = f"{sum(a.strip() == b.strip() for a, b in zip(in_app, answers))}/{len(questions)}"
            llama_facts = f"{sum(r['gold'].lower() in a.lower() for r, a in zip(rows, answers))}/{len(questions)}"
        spread = lambda xs: f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})" if xs else "-"  # noqa: E731
        print(f"{kind:6} {path.stat().st_size / 1e6:8.1f} {spread(ours[kind]):>30} {spread(theirs[kind]):>20} "
              f"{same:>13} {f'{agree}/{len(questions)}':>21} {llama_agree:>18} {llama_facts:>18}")


def _same_tensors(ours: Path, theirs: Path) -> bool:
    import numpy as np
    from gguf import GGUFReader

    a = {t.name: t for t in GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in GGUFReader(str(theirs)).tensors}
    return set(a) == set(b) and all(a[n].tensor_type == b[n].tensor_type
                                    and np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)) for n in a)


if __name__ == "__main__":
    main()

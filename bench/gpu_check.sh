#!/usr/bin/env bash
# The GPU path end to end, in one go, on a machine with an NVIDIA GPU and no internet (the bundled models only);
# about 5 minutes, under 8:
#   1. the GPU tests (tests/test_gpu.py, pytest -m gpu)
#   2. a QLoRA fine-tune of the demo Q&A with the Quick preset: loss, tokens/s, peak GPU memory
#   3. bench/bench_compare.py, short: the Compare tab's four columns on the GPU
#   4. bench/bench_training.py, short (this benchmark trains on the CPU, whatever the machine)
# and, named in GPU_CHECK_PARTS (default "tests,qlora,compare,training"), two more:
#   one_column: bench/bench_one_column.py on the GPU, prompt lookup off and on, against plain `generate`
#   reading: the reading sets' held-out half answered one question at a time, prompt lookup off and on (two
#            processes side by side): what lookup costs in answers on a GPU, where 16-bit sums round by shape
# Everything goes to the screen and to a log (GPU_CHECK_LOG, default .cache/gpu_check-DATE.log). A part that fails
# is reported and the next one still runs; the exit status is non-zero if any failed.
#
# Without a .venv it runs `bash scripts/install.sh test` first. A GPU needs the CUDA build of torch 2.13.0: on Linux
# `pip install torch==2.13.0` from PyPI is one (that is what install.sh runs); a "+cpu" build is refused below.
# GPU_CHECK_PYTHON=python3 uses that interpreter instead and installs nothing: a machine without a package registry
# gets the rest from bench/gpu_bundle.py on PYTHONPATH.
# On a machine without a CUDA GPU it stops at once, before installing anything, with one line and exit status 2.
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi lists none); run it on a machine with a CUDA GPU" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
mkdir -p .cache
log=${GPU_CHECK_LOG:-.cache/gpu_check-$(date +%Y%m%d-%H%M%S).log}
export LAB_MODEL_CACHE=${LAB_MODEL_CACHE:-$PWD/.cache/models}
py=${GPU_CHECK_PYTHON:-.venv/bin/python}
work=$(mktemp -d)
failed=()

part() {  # part NAME COMMAND...: one timed part; a failure is noted and the next part still runs
  local name=$1 started=$SECONDS status=0
  shift
  echo
  echo "== $name ($(date +%T))"
  "$@" || status=$?
  if [ "$status" = 0 ]; then
    echo "== $name: ok, $((SECONDS - started)) s"
  else
    echo "== $name: FAILED (exit $status), $((SECONDS - started)) s"
    failed+=("$name")
  fi
}

gpu_tests() {
  timeout 300 "$py" -m pytest -p no:cacheprovider -q -rs -s -m gpu tests/test_gpu.py
}

qlora_quick() {  # the demo's Q&A (12 to train on, 4 held out), the Quick preset; on CUDA `auto` means 4-bit
  local data=$work/data
  LAB_DATA_DIR=$data "$py" -m core dataset import assets/demo/qa.csv --name demo-qa --validation 0 --test 0.25 \
    || return
  LAB_DATA_DIR=$data "$py" -m core train --dataset demo-qa --preset quick --estimate || return
  LAB_DATA_DIR=$data timeout 240 "$py" -m core train --dataset demo-qa --preset quick --adapter demo-qlora --json \
    >"$work/train.json" || { cat "$work/train.json"; return 1; }
  "$py" - "$work/train.json" <<'PY'
import json, sys

out = json.load(open(sys.argv[1]))
r = out["result"]
losses = [loss for _, loss in r["history"]["train"]]
print(f"{out['state']}: adapter {out['adapter']}, {r['steps']} steps in {r['seconds']} s on {r['device']}")
print(f"4-bit {r['quantized_4bit']}, optimizer {r['optimizer']}, trainer {r['trainer']}, packing {r['packing']}")
print(f"loss {losses[0]} -> {losses[-1]} (lowest {min(losses)})")
print(f"tokens/s {r['tokens_per_s']}, peak GPU memory {r['peak_gpu_memory_gb']} GB")
PY
}

bench_compare() {
  local pdf=../shared/data/pdfs/United_States_PDF.pdf question=()
  if [ ! -f "$pdf" ]; then
    echo "($pdf is not here: the demo handbook instead)"
    pdf=assets/demo/handbook.md question=(--question "How many days of paid leave does each employee get?")
  fi
  timeout 240 "$py" bench/bench_compare.py --pdf "$pdf" "${question[@]}" --repeats 3 --max-new-tokens 32 --no-switches
}

bench_training() {
  if [ ! -f ../shared/data/pubmedqa_test/questions.jsonl ]; then
    echo "skipped: ../shared/data/pubmedqa_test/questions.jsonl is not here"
    return 0
  fi
  timeout 240 "$py" bench/bench_training.py --examples 24 --steps 4 --batch-size 4 --max-length 256
}

one_column() {
  timeout 200 "$py" bench/bench_one_column.py --repeats 3 --tokens 64 --limit 16 --lookups 0,1
}

reading() {  # both lookups at once: a 135M model leaves the GPU idle between its kernel launches
  local sets=demo pids=() status=0 n
  [ -d ../shared/data/pdfs ] && sets=shared_pdfs,demo
  for n in 0 1; do
    timeout 300 "$py" bench/bench_reading.py --set "$sets" --split heldout --configs app --batch 1 \
      --prompt-lookup $n --out "$work/reading-lookup$n.jsonl" >"$work/reading-lookup$n.txt" 2>&1 &
    pids+=($!)
  done
  for n in 0 1; do
    wait "${pids[$n]}" || status=$?
    echo "-- prompt lookup $n"
    tail -n 12 "$work/reading-lookup$n.txt"
  done
  if [ -n "${OUT:-}" ]; then cp "$work"/reading-lookup*.jsonl "$OUT"/ 2>/dev/null || true; fi
  return $status
}

wanted() { [[ ",${GPU_CHECK_PARTS:-tests,qlora,compare,training}," == *",$1,"* ]]; }

main() {
  echo "gpu_check $(date -Is) on $(hostname)"
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv
  if [ -z "${GPU_CHECK_PYTHON:-}" ] && [ ! -x "$py" ]; then
    part "set-up (scripts/install.sh test)" bash scripts/install.sh test
  fi
  "$py" - <<'PY' || return 2
import sys

import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) usable")
if not torch.cuda.is_available():
    sys.exit("gpu_check: this torch cannot use the GPU; install PyPI's CUDA wheel: "
             ".venv/bin/python -m pip install --force-reinstall torch==2.13.0")
PY
  "$py" -c 'import bitsandbytes, peft, transformers, trl
print("bitsandbytes", bitsandbytes.__version__, "peft", peft.__version__, "transformers", transformers.__version__,
      "trl", trl.__version__)'
  "$py" -c 'import flash_attn; print("flash_attn", flash_attn.__version__)' 2>/dev/null \
    || echo "flash_attn not installed: training pads batches instead of packing"
  wanted tests && part "GPU tests" gpu_tests
  wanted qlora && part "QLoRA Quick fine-tune of the demo Q&A" qlora_quick
  wanted compare && part "bench_compare (short)" bench_compare
  wanted training && part "bench_training (short, CPU)" bench_training
  wanted reading && part "reading sets, held-out half, one at a time, lookup off and on" reading
  wanted one_column && part "bench_one_column (GPU, lookup off and on)" one_column
  echo
  if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]} (log: $log)"
    return 1
  fi
  echo "gpu_check: all parts passed in $SECONDS s (log: $log)"
}

main 2>&1 | tee "$log"

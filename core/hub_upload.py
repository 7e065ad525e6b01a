"""An adapter (or the model with it merged in) made ready for the Hugging Face Hub: its files and a model card that
says where it came from (base model, dataset and its hash, method, settings, losses, evaluation results), written
into a folder, and uploaded with huggingface_hub when online. Offline it stops at once and says so; the folder can
still be written and uploaded later."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from core.adapters import META, AdapterStore
from core.config import hub_online
from core.errors import InputError
from core.eval_store import EvalStore
from core.finetuning import Training

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
CARD_SETTINGS = ("method", "tuning", "preset", "rank", "alpha", "dropout", "learning_rate", "epochs", "batch_size",
                 "grad_accum", "max_length", "target_modules", "beta", "dpo_sft_weight", "seed")


class HubUpload:
    def __init__(self, training: Training, adapters: AdapterStore, evals: EvalStore):
        self.training, self.adapters, self.evals = training, adapters, evals

    def folder(self, name: str, target: str | Path, repo: str | None = None, merged: bool = False) -> dict:
        """Write what would be uploaded into `target` (new or empty): the adapter's files, or the merged model,
        and README.md, the model card."""
        info = self.adapters.info(name)
        target = Path(target)
        if target.exists() and any(target.iterdir()):
            raise InputError("the folder exists and is not empty", subject=str(target))
        if merged:
            self.training.export_merged(name, target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            for file in self.adapters.path(name).iterdir():  # peft's files; the lab's own record goes in the card
                if file.is_file() and file.name != META:
                    shutil.copy2(file, target / file.name)
        whole = merged or (info.get("settings") or {}).get("tuning") == "full"  # a model folder, not an adapter
        (target / "README.md").write_text(model_card(info, self.evaluations(name), repo, whole))
        return {"adapter": name, "folder": str(target), "merged": merged,
                "files": sorted(p.name for p in target.iterdir())}

    def push(self, name: str, repo: str, merged: bool = False, private: bool = True) -> dict:
        """Upload to the Hub repo USER/REPO (created if missing, private by default). Refused at once offline or
        without a token, before anything is written."""
        if not REPO_ID.match(repo or ""):
            raise InputError("the Hub repository must be written USER/REPO (letters, digits, '-', '_', '.')",
                             subject=repr(repo))
        self.adapters.info(name)
        if not hub_online():
            raise InputError("offline: HF_HUB_OFFLINE=1, the default outside a Space (set HF_HUB_OFFLINE=0 to reach "
                             "the Hub). Or write the folder with --to-folder DIR and upload it later "
                             "(huggingface-cli upload REPO DIR)")
        from huggingface_hub import HfApi, get_token

        if not get_token():
            raise InputError("no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN (a token with "
                             "write access)")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lab-hub-") as scratch:
            made = self.folder(name, Path(scratch) / "upload", repo, merged)
            api = HfApi()
            try:
                api.create_repo(repo, private=private, exist_ok=True)
                commit = api.upload_folder(repo_id=repo, folder_path=made["folder"],
                                           commit_message=f"{name} from RAG & Fine-Tune Lab")
            except Exception as exc:  # noqa: BLE001 - network, auth and Hub errors all reach the user as they are
                raise InputError(f"the upload to {repo} failed: {type(exc).__name__}: {exc}") from None
        return {"adapter": name, "repo": repo, "url": f"https://huggingface.co/{repo}", "files": made["files"],
                "commit": getattr(commit, "oid", None)}

    def evaluations(self, name: str) -> list[dict]:
        """The finished evaluation runs that used this adapter (by name and creation time), newest first."""
        created = self.adapters.info(name).get("created")
        found = []
        for run_id in reversed(self.evals.ids()):
            run = self.evals.load(run_id)
            used = run.get("adapter_info") or {}
            if run.get("adapter") != name or run.get("state") != "completed" or not run.get("summary"):
                continue
            if used.get("created") not in (None, created):
                continue
            found.append(run)
        return found


def model_card(info: dict, runs: list[dict], repo: str | None, merged: bool) -> str:
    """README.md for the Hub: YAML front matter (base model, library, tags) and the provenance in words and
    numbers."""
    base = info.get("base_model") or "?"
    settings = info.get("settings") or {}
    method = info.get("method") or settings.get("method") or "sft"
    hub_base = _hub_id(base)
    front = ["---", *([f"base_model: {hub_base}"] if hub_base else []),
             f"library_name: {'transformers' if merged else 'peft'}", "tags:", "- rag-finetune-lab",
             f"- {method}", f"- {settings.get('tuning') or 'lora'}", "---", ""]
    title = repo or info["name"]
    what = ("the base model, fully fine-tuned (every weight)" if settings.get("tuning") == "full" else
            "the base model with a fine-tuned adapter merged in" if merged else "a fine-tuned adapter (peft)")
    lines = [f"# {title}", "", f"{what.capitalize()}, trained with RAG & Fine-Tune Lab.", "",
             "## Provenance", "", "| | |", "|---|---|",
             f"| Base model | `{base}` |", f"| Dataset | `{info.get('dataset')}` |",
             f"| Dataset SHA-256 | `{info.get('dataset_sha256')}` |", f"| Method | {method} |",
             f"| Adapter type | {settings.get('tuning') or 'lora'} |",
             f"| Started from adapter | {info.get('from_adapter') or '-'} |",
             f"| Steps | {info.get('steps')} of {info.get('total_steps')} |",
             f"| Train loss | {info.get('train_loss')} |", f"| Validation loss | {info.get('eval_loss')} |",
             f"| Training time | {info.get('seconds')} s on {info.get('device')} ({info.get('precision')}) |",
             f"| Tokens/s | {info.get('tokens_per_s')} |",
             f"| 4-bit base (QLoRA) | {'yes' if info.get('quantized_4bit') else 'no'} |",
             f"| Created | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(info.get('created') or 0))} |", ""]
    if base.startswith("bundled:"):
        lines += ["Trained on the lab's bundled copy of the base model: its Q4_1 GGUF build, de-quantized. On the "
                  "Hub's original weights the answers can differ slightly.", ""]
    lines += ["## Settings", "", "```json",
             json.dumps({k: settings[k] for k in CARD_SETTINGS if k in settings}, indent=2), "```", ""]
    margins = info.get("margins") or {}
    if margins.get("train_after"):
        lines += ["## Preference margin (DPO)", "",
                  f"Mean log-probability margin of chosen over rejected answers on the training pairs: "
                  f"{margins['train_before']['mean_margin']} before, {margins['train_after']['mean_margin']} after.",
                  ""]
    lines += ["## Evaluation", ""]
    if not runs:
        lines += ["No evaluation run in the lab used this adapter yet.", ""]
    for run in runs:
        lines += [f"Test set `{run['testset']}`, {run['questions']} questions ({run.get('kb') or 'no knowledge base'}):",
                  "", "| Variant | " + " | ".join(_metrics(run)) + " |",
                  "|---|" + "---|" * len(_metrics(run))]
        for variant, summary in run["summary"].items():
            cells = [f"{summary[m]['mean']:.3f}" if isinstance(summary.get(m), dict) else "-" for m in _metrics(run)]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    if not merged:
        lines += ["## Use", "", "```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"base = AutoModelForCausalLM.from_pretrained({(hub_base or base)!r})",
                  f"model = PeftModel.from_pretrained(base, {(repo or 'THIS_FOLDER')!r})", "```", ""]
    return "\n".join(front + lines)


def _metrics(run: dict) -> list[str]:
    names = []
    for summary in run["summary"].values():
        names += [k for k, v in summary.items() if isinstance(v, dict) and "mean" in v and k not in names]
    return names


def _hub_id(base: str) -> str | None:
    """The Hub id of the base model where there is one (the bundled model is SmolLM2-135M-Instruct's GGUF)."""
    if base.startswith("bundled:"):
        return "HuggingFaceTB/" + base.split(":", 1)[1]
    return base if REPO_ID.match(base) and not Path(base).exists() else None

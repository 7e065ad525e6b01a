"""A fine-tuned model taken out of the lab into the tools people run models with: merged into its base and written
as GGUF files (core/gguf_export.py) with an Ollama Modelfile, then loaded back the way another tool would (plain
transformers reading the GGUF, greedy decoding) to check that it answers as the in-app fine-tuned variant does."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from core.adapters import AdapterStore
from core.answers import Answers
from core.datasets import DatasetStore
from core.errors import InputError
from core.finetuning import Training
from core.generation import GenerationConfig
from core.gguf_export import FILE_TYPES, ollama_modelfile, write_gguf
from core.models import Models

CHECK_QUESTIONS = 5
CHECK_TOKENS = 24


class ModelExport:
    def __init__(self, training: Training, answers: Answers, adapters: AdapterStore, datasets: DatasetStore):
        self.training, self.answers, self.adapters, self.datasets = training, answers, adapters, datasets

    def gguf(self, name: str, folder: str | Path, kinds: tuple[str, ...] = ("f16", "q8_0"),
             check: bool = True) -> dict:
        """Write NAME-<kind>.gguf for each kind and a Modelfile (for the last kind) into `folder` (new or empty).
        With `check`, load each file back and compare its greedy answers with the in-app fine-tuned variant's on
        a few of the adapter's own questions."""
        unknown = [k for k in kinds if k not in FILE_TYPES]
        if not kinds or unknown:
            raise InputError(f"GGUF types are {', '.join(FILE_TYPES)}", subject=", ".join(unknown) or "(none)")
        target = Path(folder)
        if target.exists() and any(target.iterdir()):
            raise InputError("the folder exists and is not empty", subject=str(target))
        info = self.adapters.info(name)
        started = time.perf_counter()
        created = not target.exists()
        try:
            files = self._write(name, target, kinds)
        except BaseException:  # a refused or failed export leaves nothing half-written behind
            if created:
                shutil.rmtree(target, ignore_errors=True)
            else:
                for leftover in target.iterdir():
                    leftover.unlink()
            raise
        result = {"adapter": name, "base_model": info.get("base_model"), "folder": str(target), "files": files,
                  "modelfile": str(target / "Modelfile"), "seconds": round(time.perf_counter() - started, 1),
                  "ollama": f"cd {target} && ollama create {name} -f Modelfile && ollama run {name}"}
        if check:
            questions = self.check_questions(name)
            in_app = [row[0].answer for row in self._fp32_answers().compare_many(
                questions, ["finetuned"], adapter=name, config=GenerationConfig(max_new_tokens=CHECK_TOKENS))]
            for file in files:
                outside = outside_answers(Path(file["path"]), questions)
                file["same_answers"] = sum(a.strip() == b.strip() for a, b in zip(in_app, outside))
                file["checked"] = len(questions)
                file["differences"] = [{"question": q, "in_app": a, "gguf": b}
                                       for q, a, b in zip(questions, in_app, outside) if a.strip() != b.strip()]
        return result

    def _fp32_answers(self) -> Answers:
        """The in-app variant computed as the readers of the file compute it, in fp32: in bf16 (the default on a
        CPU with native bf16) the app's own answers differ from any fp32 reader's on near-ties, which is not the export's doing."""
        if self.answers.settings.resolved_decode_weights == "fp32":
            return self.answers
        fp32 = self.answers.settings.with_(decode_weights="fp32")
        return Answers(fp32, self.answers.kbs, self.answers.adapters, Models(fp32))

    def _write(self, name: str, target: Path, kinds: tuple[str, ...]) -> list[dict]:
        from transformers import AutoConfig

        from core.gguf_export import check_exportable

        with tempfile.TemporaryDirectory(prefix="lab-merged-") as scratch:
            merged = self.training.export_merged(name, Path(scratch) / "merged")  # refuses a 4-bit adapter
            check_exportable(AutoConfig.from_pretrained(merged))  # before anything is written
            target.mkdir(parents=True, exist_ok=True)
            files = []
            for kind in kinds:
                t0 = time.perf_counter()
                path = write_gguf(merged, target / f"{name}-{kind}.gguf", kind, name)
                files.append({"type": kind, "path": str(path), "size_mb": round(path.stat().st_size / 1e6, 1),
                              "seconds": round(time.perf_counter() - t0, 1)})
            tokenizer = self.answers.models.generator.tokenizer
            (target / "Modelfile").write_text(ollama_modelfile(Path(files[-1]["path"]).name, tokenizer,
                                                              tokenizer.chat_template))
        return files

    def check_questions(self, name: str) -> list[str]:
        """A few questions of the adapter's own dataset (its test part first), else general ones."""
        info = self.adapters.info(name)
        dataset = info.get("dataset")
        questions: list[str] = []
        if dataset in self.datasets.names():
            for part in ("test", "validation", "train"):
                for example in self.datasets.examples(dataset, part):
                    if "text" in example and "messages" not in example:
                        break  # passages (continued pre-training): no questions
                    prompt = example["messages"][:-1] if "messages" in example else example["prompt"]
                    question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), None)
                    if question and question not in questions:
                        questions.append(question)
        return (questions or ["What is the capital of France?", "Name three primary colours.",
                              "What does a fine-tuned model learn?"])[:CHECK_QUESTIONS]


def outside_answers(gguf_file: Path, questions: list[str]) -> list[str]:
    """Greedy answers from the GGUF file as another tool would give them: transformers reads the file (model and
    tokenizer), applies the chat template inside it and decodes greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.models import _quiet_transformers

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                 dtype=torch.float32).eval()
    answers = []
    for question in questions:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=CHECK_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers

"""The engine's front door: a Lab assembles the services for one data folder and hands them out. It holds no logic
of its own; each capability lives in its service:

  lab.kbs         knowledge bases: create, ingest, search, files        (core/knowledge.py)
  lab.datasets    training data: import, generate, check, show, split   (core/training_data.py)
  lab.training    fine-tuning: presets, estimate, start, merged export  (core/finetuning.py)
  lab.jobs        training jobs in their own processes                  (core/jobs.py)
  lab.adapters    trained adapters                                      (core/adapters.py)
  lab.exports     GGUF files and an Ollama Modelfile, checked           (core/model_export.py)
  lab.hub         a model card and upload to the Hugging Face Hub       (core/hub_upload.py)
  lab.answers     ask, stream, compare, the record of a comparison      (core/answers.py)
  lab.votes       votes, leaderboard, preference export                 (core/votes.py)
  lab.evaluation  test items, scored runs, costs, advice                (core/evaluation.py)
  lab.evals       saved evaluation runs                                 (core/eval_store.py)
  lab.studies     the whole experiment in one go, and its report         (core/study.py)
  lab.models      the loaded models: generator, embedder, reranker       (core/models.py)
  lab.base_models the base models to choose from, downloads              (core/model_library.py)

lab.use_model(name) switches the base model: loaded once, the choice kept, every service then uses it.
"""
from __future__ import annotations

from pathlib import Path

from core.adapters import AdapterStore
from core.answers import Answers
from core.config import Settings, load_settings
from core.eval_store import EvalStore
from core.evaluation import Evaluation
from core.finetuning import Training
from core.hub_upload import HubUpload
from core.jobs import JobStore
from core.knowledge import KnowledgeBases
from core.limits import DemoLimits, Quota
from core.model_export import ModelExport
from core.model_library import ModelLibrary
from core.models import Models, describe_model
from core.store import close_store, open_store
from core.study import Studies
from core.training_data import Datasets
from core.votes import VoteStore


class Lab:
    def __init__(self, settings: Settings | None = None, limits: DemoLimits | None = None,
                 device_lock_dir: Path | None = None):
        """`limits`: a demo workspace's caps and rate limits;
        `device_lock_dir`: where training jobs queue for the device, when several data folders share one."""
        self.limits, self.device_lock_dir = limits, device_lock_dir
        self.quota = Quota(limits)
        self._assemble(settings or load_settings())

    def _assemble(self, settings: Settings) -> None:
        self.settings = settings
        data_dir, limits, device_lock_dir = settings.data_dir, self.limits, self.device_lock_dir
        self.models = Models(settings)
        self.base_models = ModelLibrary(settings, demo=limits is not None)
        self.kbs = KnowledgeBases(settings, open_store(data_dir, settings.chroma_url), self.models, self.quota)
        self.votes = VoteStore(data_dir)
        self.datasets = Datasets(data_dir, self.kbs, self.models, self.quota, self.votes)
        self.adapters = AdapterStore(data_dir)
        self.jobs = JobStore(data_dir, device_lock_dir)
        self.training = Training(settings, self.datasets, self.adapters, self.jobs, self.models, self.quota)
        self.answers = Answers(settings, self.kbs, self.adapters, self.models)
        self.exports = ModelExport(self.training, self.answers, self.adapters, self.datasets)
        self.evals = EvalStore(data_dir)
        self.hub = HubUpload(self.training, self.adapters, self.evals)
        self.evaluation = Evaluation(settings, self.evals, self.answers, self.kbs, self.datasets, self.adapters,
                                     self.models, self.quota)
        self.studies = Studies(data_dir, self.kbs, self.quota, device_lock_dir, base_model=settings.base_model)

    def use_model(self, name: str) -> dict:
        """Switch the base model (core.model_library says when it is refused); every service then uses it."""
        self._assemble(self.base_models.switch(name))
        return self.base_models.find(self.settings.base_model).to_dict()

    def info(self) -> dict:
        s = self.settings
        return {"base_model": describe_model(s.base_model), "embed_model": describe_model(s.embed_model),
                "device": s.resolved_device, "data_dir": str(s.data_dir),
                "vector_store": s.chroma_url or f"embedded Chroma in {s.data_dir / 'chroma'}"}

    def close(self) -> None:
        """Let go of this data folder's store (before the folder is deleted)."""
        close_store(self.settings.data_dir, self.settings.chroma_url)

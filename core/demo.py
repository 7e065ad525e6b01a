"""The guided demo: a fictional company's documents and questions (assets/demo), loaded in one step into the
knowledge base `demo` and the dataset `demo-qa`, and, on request, the Quick fine-tune on it."""
from __future__ import annotations

from core.config import PROJECT_ROOT
from core.finetuning import Training
from core.knowledge import KnowledgeBases
from core.progress import ProgressFn
from core.training_data import Datasets

DEMO_DIR = PROJECT_ROOT / "assets" / "demo"
DEMO_KB, DEMO_DATASET, DEMO_ADAPTER = "demo", "demo-qa", "demo-quick"
DEMO_DOCUMENTS = ("handbook.md", "policies.md", "products.md")
DEMO_QUESTIONS = "qa.csv"
FIRST_QUESTION = "Who founded the Brindlewick Lantern Company?"


def load_demo(kbs: KnowledgeBases, datasets: Datasets, training: Training, train: bool = False,
              progress: ProgressFn | None = None) -> dict:
    """Add the documents (unchanged ones are skipped) and the questions: 12 to train on, 4 held out, so the
    Evaluate tab can show what fine-tuning does with questions it has not seen. With `train`, start the Quick
    fine-tune (unless the demo adapter exists); returns what was done."""
    results = kbs.ingest([DEMO_DIR / name for name in DEMO_DOCUMENTS], kb=DEMO_KB, progress=progress)
    if DEMO_DATASET in datasets.names():
        dataset = datasets.info(DEMO_DATASET).summary()
    else:
        dataset = datasets.import_file(DEMO_DIR / DEMO_QUESTIONS, DEMO_DATASET, validation=0.0, test=0.25)
    job = None
    if train and DEMO_ADAPTER not in training.adapters.names():
        job = training.start(DEMO_DATASET, training.preset("quick"), adapter=DEMO_ADAPTER)
    return {"kb": DEMO_KB, "files": [r.to_dict() for r in results], "dataset": dataset, "job": job,
            "adapter": DEMO_ADAPTER, "first_question": FIRST_QUESTION}

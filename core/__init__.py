"""RAG & Fine-Tune Lab engine. Never imports gradio; the UI and the CLI both call into this package."""
import os

# Set before any HF/Chroma/Gradio import anywhere in the process: the defaults must work with no network.
# setdefault so a user who does have the Hub (or a Space) can opt back in with HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "0" if os.environ.get("SPACE_ID") else "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # Chroma's posthog telemetry
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from core.errors import LabError  # noqa: E402

__all__ = ["LabError"]

"""The model picker in the page header: the base models with their size and memory, switching, Hub downloads with
progress and cancel, removal. Layout here; the work is core.model_library's and Lab.use_model's."""
from __future__ import annotations

import gradio as gr

from core.lab import Lab
from core.model_library import describe
from core.models import describe_model
from ui.cancel import CancelFlags
from ui.formatting import user_errors
from ui.workspace import LabOf


def header_text(lab: Lab | None, settings) -> str:
    model = lab.settings.base_model if lab else settings.base_model
    where = "a workspace of your own" if lab is None else f"`{settings.data_dir}`"
    return (f"<sub>Model: **{describe_model(model)}** · Embeddings: **{describe_model(settings.embed_model)}** · "
            f"Device: **{settings.resolved_device.upper()}** · Data: {where}</sub>")


def model_choices(lab: Lab | None) -> list[tuple[str, str]]:
    return [(("● " if e.current else "") + describe(e), e.name) for e in lab.base_models.list()] if lab else []


class ModelHandlers:
    def __init__(self, lab_of: LabOf):
        self.lab_of, self.flags = lab_of, CancelFlags()

    def _after(self, lab: Lab, message: str, chosen: str | None = None) -> tuple:
        return (header_text(lab, lab.settings), gr.update(choices=model_choices(lab), value=chosen or lab.settings.base_model),
                message)

    def use(self, name, request: gr.Request):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Pick a model first.")
        with user_errors():
            entry = lab.use_model(name)
        return self._after(lab, f"Now answering, training and evaluating with **{entry['label']}**. Adapters trained "
                                "on another base model are not offered in Compare and Evaluate.")

    def download(self, picked, typed, request: gr.Request, progress=gr.Progress()):
        lab = self.lab_of(request)
        repo = (typed or "").strip() or picked
        if not repo:
            raise gr.Error("Type a Hub model id (OWNER/NAME) or pick a suggested model first.")
        flag = self.flags.start(request)
        with user_errors():
            entry = lab.base_models.download(repo, progress=lambda f, m: progress(f, desc=m), should_stop=flag.is_set)
        return self._after(lab, f"Downloaded **{entry.label}** ({describe(entry)}). Press *Use this model* to switch.",
                           chosen=entry.name)

    def cancel(self, request: gr.Request):
        return self.flags.cancel(request, "Stopping the download; downloading it again resumes where it stopped.")

    def remove(self, name, request: gr.Request):
        lab = self.lab_of(request)
        if not name:
            raise gr.Error("Pick a model first.")
        with user_errors():
            removed = lab.base_models.remove(name)
        return self._after(lab, f"Removed {describe_model(removed['removed'])}.")

    def opened(self, request: gr.Request):
        """A page opened: the model in use now (another page may have switched it) and the models there are."""
        return self._after(self.lab_of(request), "")[:2]


def build(lab_of: LabOf):
    """The header line (model, embeddings, device, data) and, outside demo mode, the picker under it."""
    first, settings = lab_of.initial, lab_of.workspaces.settings
    handlers = ModelHandlers(lab_of)
    header = gr.Markdown(header_text(first, settings), elem_id="model-header")
    if lab_of.demo:  # the Space's model stays fixed: no picker, no downloads
        return None
    with gr.Accordion("Choose the model", open=False, elem_id="model-panel"):
        gr.Markdown(f"The bundled model is small and quick. A bigger one answers better and needs more memory and "
                    f"time: put a Hugging Face folder or a `.gguf` file in `{first.base_models.root}`, or download one "
                    "from the Hub (needs HF_HUB_OFFLINE=0 and a network). Memory figures are for this machine's "
                    "device; *train* is a Quick LoRA fine-tune.")
        with gr.Row():
            picker = gr.Dropdown(choices=model_choices(first), value=first.settings.base_model, label="Model",
                                 elem_id="model-pick", scale=3)
            use_button = gr.Button("Use this model", variant="primary", elem_id="model-use", scale=1)
        with gr.Row():
            typed = gr.Textbox(label="…or a Hub model id", placeholder="OWNER/NAME, e.g. Qwen/Qwen2.5-0.5B-Instruct",
                               elem_id="model-hub-id", scale=3)
            download_button = gr.Button("Download", elem_id="model-download", scale=1)
            cancel_button = gr.Button("Cancel download", elem_id="model-cancel", scale=1)
            remove_button = gr.Button("Remove", variant="stop", elem_id="model-remove", scale=1)
        status = gr.Markdown("", elem_id="model-status")
    outputs = [header, picker, status]
    use_button.click(handlers.use, [picker], outputs, api_name="use_model", concurrency_id="generate",
                     concurrency_limit=1)
    download_button.click(handlers.download, [picker, typed], outputs, api_name="download_model",
                          concurrency_limit=None)
    cancel_button.click(handlers.cancel, None, [status], api_name="cancel_download", concurrency_limit=None)
    remove_button.click(handlers.remove, [picker], outputs, api_name="remove_model")
    return handlers.opened, None, [header, picker]

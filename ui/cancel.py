"""Cancel buttons: a flag per page session, set by a tab's Cancel event and polled by the long engine call that the
same page started (`should_stop=flag.is_set`). Gradio's own `cancels=` would stop the event only for the page, not
for an API client's cancel endpoint, and left a stray error badge on the outputs when the work in progress ended."""
from __future__ import annotations

import threading

import gradio as gr


class CancelFlags:
    def __init__(self):
        self._flags: dict[str, threading.Event] = {}

    def start(self, request: gr.Request) -> threading.Event:
        """A fresh flag for this page's new run (a cancel of an earlier run does not carry over)."""
        flag = self._flags[request.session_hash] = threading.Event()
        return flag

    def cancel(self, request: gr.Request, message: str):
        """Set this page's flag; `message` for the status, or no change when this page started nothing."""
        flag = self._flags.get(request.session_hash)
        if flag is None:
            return gr.update()
        flag.set()
        return message

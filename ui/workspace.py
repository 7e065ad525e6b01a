"""Which Lab an event works on: the one shared Lab, or in demo mode (a public Space) the visitor's own workspace.

The visitor is a random id the page keeps in a cookie, so a workspace survives a page refresh; where the browser
refuses the cookie (a Space runs in a third-party iframe), the page's Gradio session is the workspace instead."""
from __future__ import annotations

import gradio as gr

from core.errors import LabError
from core.lab import Lab
from core.workspaces import VISITOR_KEY, Workspaces

COOKIE = "lab_visitor"
# getRandomValues works on plain http too (randomUUID needs a secure context).
COOKIE_SCRIPT = """<script>
(() => {
  if (document.cookie.split('; ').some((c) => c.startsWith('%(name)s='))) return;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  const id = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  const where = location.protocol === 'https:' ? '; SameSite=None; Secure' : '; SameSite=Lax';
  document.cookie = '%(name)s=' + id + '; path=/; max-age=604800' + where;
})();
</script>""" % {"name": COOKIE}


class LabOf:
    """Called with an event's request, gives the Lab to use; `initial` is the Lab whose contents a freshly built
    page shows (none in demo mode: a new visitor's workspace is empty)."""

    def __init__(self, workspaces: Workspaces):
        self.workspaces = workspaces
        self.demo = workspaces.demo
        self.initial: Lab | None = workspaces.shared

    def __call__(self, request: gr.Request | None) -> Lab:
        if not self.demo:
            return self.workspaces.shared
        cookie = (getattr(request, "cookies", None) or {}).get(COOKIE) if request else None
        visitor = cookie if cookie and VISITOR_KEY.match(cookie) else getattr(request, "session_hash", None)
        try:
            return self.workspaces.lab(visitor)
        except LabError as exc:
            raise gr.Error(str(exc)) from None

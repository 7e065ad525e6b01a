"""Demo mode, for a public Space: every visitor works in their own workspace (knowledge bases, datasets, adapters,
jobs, votes and evaluations under data_dir/workspaces/<id>/), with caps and rate limits on the expensive actions,
and idle workspaces are deleted after a while. Outside demo mode there is one Lab for everyone, as before.

The models are loaded once per process and shared by all workspaces (core.models caches them by name); only the
data is per visitor. Training jobs of all workspaces share one device lock, so a free CPU Space trains one at a
time."""
from __future__ import annotations

import hashlib
import re
import shutil
import threading
import time

from core.config import Settings, demo_mode_from_env, load_settings
from core.errors import LabError
from core.jobs import ACTIVE, JobStore
from core.study import running_studies
from core.lab import Lab
from core.limits import DemoLimits

# A visitor key comes from the browser (a cookie, or Gradio's session id): long, random, and never a path.
VISITOR_KEY = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
# demo_mode_from_env (the rule for LAB_DEMO_MODE and SPACE_ID) lives in core.config; app.py imports it from here.
__all__ = ["VISITOR_KEY", "Workspaces", "demo_mode_from_env"]


class Workspaces:
    """Hands out the Lab for a visitor: the one shared Lab, or in demo mode the visitor's own."""

    SWEEP_EVERY_S = 60.0

    def __init__(self, settings: Settings | None = None, demo: bool = False, limits: DemoLimits | None = None,
                 clock=time.time):
        self.settings = settings or load_settings()
        self.demo, self.limits = demo, (limits or DemoLimits()) if demo else None
        self.clock = clock
        self.root = self.settings.data_dir / "workspaces"
        self._labs: dict[str, Lab] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self.shared = None if demo else Lab(self.settings)

    def lab(self, visitor: str | None):
        """The visitor's Lab (created on first use); the shared one outside demo mode."""
        if not self.demo:
            return self.shared
        if not visitor or not VISITOR_KEY.match(visitor):
            raise LabError("this page has no session; reload it")
        folder = self.root / hashlib.sha256(visitor.encode()).hexdigest()[:32]
        self._maybe_sweep()
        with self._lock:
            lab = self._labs.get(folder.name)
            if lab is None:
                folder.mkdir(parents=True, exist_ok=True)
                # model_cache_dir stays the shared one: model files are converted once for all visitors. A
                # visitor's Lab is in demo mode whatever the environment says (e.g. web pages: public ones only).
                settings = self.settings.with_(data_dir=folder, max_file_mb=self.limits.max_file_mb, demo_mode=True)
                lab = Lab(settings, limits=self.limits, device_lock_dir=self.root)
                self._labs[folder.name] = lab
            (folder / ".last_used").touch()
            return lab

    def _maybe_sweep(self) -> None:
        now = self.clock()
        if now - self._last_sweep >= self.SWEEP_EVERY_S:
            self._last_sweep = now
            self.sweep(now)

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete workspaces idle for longer than the limit, except one whose training job or study is still
        going."""
        if not self.demo or not self.root.exists():
            return []
        now = self.clock() if now is None else now
        removed = []
        for folder in self.root.iterdir():
            marker = folder / ".last_used"
            if not folder.is_dir() or not marker.exists():
                continue
            if now - marker.stat().st_mtime < self.limits.idle_minutes * 60:
                continue
            with self._lock:
                lab = self._labs.get(folder.name)
                # The job records on disk, not only this process's Labs: after an app restart a workspace's job
                # may still run (its process outlives the app) while no Lab for it exists yet.
                jobs = lab.jobs if lab is not None else JobStore(folder)
                if any(j["state"] in ACTIVE for j in jobs.list()) or running_studies(folder):
                    continue
                self._labs.pop(folder.name, None)
            if lab is not None:
                lab.close()
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        return removed

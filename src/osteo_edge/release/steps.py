"""Resumable steps: each step is skipped when its sealed output exists and matches the step log.

A step names its outputs (bundle directories, identified by their seal, or files, by their sha256),
the options it depends on and the earlier steps whose outputs it reads. Its fingerprint is the hash
of its name, options and the recorded outputs of those earlier steps. The step log
(``release.json``, plus a human-readable ``steps.log``) records, per step, the fingerprint and the
outputs as the step left them. A step is skipped when the log has its fingerprint and every output is
still there and still that output: a bundle that verifies and whose seal, or one of its earlier
revisions' seals (a later step may re-seal it), is the recorded one; a file with the recorded hash.
Anything else runs the step again, and with it every step that reads its outputs (their fingerprints
change).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..artifact import atomic_write_json, canonical_json, load_bundle, sha256_file
from ..core.progress import Progress, no_progress
from ..errors import OsteoEdgeError

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One step: ``run()`` does the work and returns a one-line summary; ``done()`` (optional) is an
    extra check that the outputs are complete (e.g. a signature by the right key)."""

    name: str
    outputs: Sequence[Path]
    run: Callable[[], str]
    options: dict[str, Any] = field(default_factory=dict)
    inputs: Sequence[str] = ()
    done: Callable[[], bool] | None = None


@dataclass
class Outcome:
    name: str
    status: str  # ran | skipped
    summary: str
    seconds: float


def output_digest(path: Path) -> str | None:
    """A bundle directory's seal (None unless it verifies), a file's sha256 (None if absent)."""
    if path.is_dir():
        try:
            return load_bundle(path).seal
        except OsteoEdgeError:
            return None
    return sha256_file(path) if path.is_file() else None


def _matches(path: Path, recorded: str | None) -> bool:
    if recorded is None:
        return False
    if path.is_dir():
        try:
            return recorded in load_bundle(path).known_seals()
        except OsteoEdgeError:
            return False
    return path.is_file() and sha256_file(path) == recorded


class StepLog:
    """``release.json`` (machine-readable, rewritten atomically after every step) and ``steps.log``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "release.json"
        self.text = self.folder / "steps.log"
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OsteoEdgeError(f"{self.path}: unreadable step log ({exc}); remove it to start this release again") from exc
        if not isinstance(data, dict) or not isinstance(data.get("steps") or {}, dict) or not isinstance(data.get("release") or {}, dict):
            raise OsteoEdgeError(f"{self.path}: not a release step log; remove it to start this release again")
        self.entries: dict[str, dict[str, Any]] = dict(data.get("steps") or {})
        self.meta: dict[str, Any] = dict(data.get("release") or {})

    def fingerprint(self, step: Step) -> str:
        upstream = {name: (self.entries.get(name) or {}).get("outputs") for name in step.inputs}
        doc = {"step": step.name, "options": step.options, "inputs": upstream}
        return hashlib.sha256(canonical_json(json.loads(json.dumps(doc, default=str)))).hexdigest()

    def is_done(self, step: Step) -> bool:
        e = self.entries.get(step.name)
        if not e or e.get("fingerprint") != self.fingerprint(step):
            return False
        outs = e.get("outputs") or {}
        if set(outs) != {str(p) for p in step.outputs}:
            return False
        return all(_matches(Path(p), d) for p, d in outs.items()) and (step.done is None or step.done())

    def record(self, step: Step, fingerprint: str, summary: str, seconds: float) -> None:
        self.entries[step.name] = {
            "fingerprint": fingerprint, "outputs": {str(p): output_digest(Path(p)) for p in step.outputs},
            "summary": summary, "seconds": round(seconds, 1), "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"release": self.meta, "steps": self.entries})

    def line(self, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with open(self.text, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {text}\n")


def run_steps(steps: Sequence[Step], step_log: StepLog, progress: Progress | None = None) -> list[Outcome]:
    """Run ``steps`` in order, skipping those already done (see the module docstring)."""
    progress = progress or no_progress
    outcomes: list[Outcome] = []
    for i, step in enumerate(steps, 1):
        if step_log.is_done(step):
            e = step_log.entries[step.name]
            step_log.line(f"skip {step.name}: its output is there and matches ({e.get('summary', '')})")
            outcomes.append(Outcome(step.name, "skipped", str(e.get("summary", "")), 0.0))
            continue
        fingerprint = step_log.fingerprint(step)  # before running: the inputs as they were read
        progress(f"step {i}/{len(steps)}: {step.name}")
        step_log.line(f"run {step.name}")
        t0 = time.perf_counter()
        summary = step.run()
        seconds = time.perf_counter() - t0
        missing = [str(p) for p in step.outputs if output_digest(Path(p)) is None]
        if missing:
            raise OsteoEdgeError(f"release step {step.name!r} left no valid output at {', '.join(missing)}")
        step_log.record(step, fingerprint, summary, seconds)
        step_log.line(f"done {step.name} in {seconds:.1f} s: {summary}")
        log.info("release step %s: %s (%.1f s)", step.name, summary, seconds)
        outcomes.append(Outcome(step.name, "ran", summary, seconds))
    return outcomes

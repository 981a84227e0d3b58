"""Windowed-accuracy timeline of a run, with drift onset, detection, training and swaps marked.

Why: the demo's claim is "accuracy drops when traffic drifts, driftd notices, retrains and
recovers". Counters on /metrics cannot show that story; one picture can. The recorder is cheap
enough to sit in the labelled-outcome path (O(1) per outcome, bounded memory: the last ``window``
outcomes plus at most ``max_points`` plotted points), serialises to JSON so a run can be
re-rendered later, and ``render_png`` draws it headless with matplotlib's Agg canvas (no pyplot,
so no global backend state and no display needed).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MARK_KINDS", "Mark", "TimelineRecorder", "render_png"]

# kind -> (colour, linestyle, legend text). Order is the legend order.
_MARK_STYLES: dict[str, tuple[str, Any, str]] = {
    "drift_onset": ("tab:red", "-", "drift onset"),
    "detection": ("tab:orange", "--", "drift detected"),
    "training_started": ("tab:purple", ":", "training started"),
    "swap": ("tab:green", "-", "model swap"),
    "rollback": ("black", "-.", "rollback"),
    "gate_rejected": ("tab:brown", (0, (1, 3)), "gate rejected"),
}
MARK_KINDS: frozenset[str] = frozenset(_MARK_STYLES)

_SEGMENT_SHADES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


@dataclass(frozen=True)
class Mark:
    """One event on the timeline, drawn as a vertical line at ``at_event``."""

    kind: str
    at_event: int
    ts: float
    label: str = ""


@dataclass
class TimelineRecorder:
    """Accumulates labelled outcomes into a windowed-accuracy series plus marks.

    Windowed accuracy at an outcome is the mean correctness of the last ``window`` outcomes
    (of all outcomes so far while fewer than ``window`` have arrived). Every outcome yields a
    point until ``max_points`` is exceeded; then every other point is dropped and only every
    ``stride``-th outcome is recorded from there on, so the series stays evenly spaced and
    bounded. ``series()`` always ends at the latest outcome.
    """

    window: int = 200
    max_points: int = 2000
    points: list[tuple[int, float]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    # (first at_event, model_version) each time a version answers for the
    # first time. Labels arrive late, so outcomes of the previous version
    # still trickle in after a swap; they do not start a segment again.
    segments: list[tuple[int, str]] = field(default_factory=list)
    n_outcomes: int = 0
    stride: int = 1
    _recent: deque[bool] = field(default_factory=deque, init=False, repr=False)
    _correct_in_window: int = field(default=0, init=False, repr=False)
    _last: tuple[int, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {self.max_points}")

    @property
    def accuracy(self) -> float | None:
        """Accuracy over the current window, or None before any outcome."""
        return self._correct_in_window / len(self._recent) if self._recent else None

    def add_outcome(
        self,
        correct: bool,
        at_event: int | None = None,
        ts: float | None = None,
        model_version: str = "",
    ) -> float:
        """Record one labelled outcome; returns the windowed accuracy after it.

        ``at_event`` defaults to the number of labelled outcomes so far (this one included).
        ``ts`` is accepted for symmetry with ``mark`` and for callers that log it; the x axis
        is the event index.
        """
        del ts  # the x axis is labelled events; wall time is not plotted
        self.n_outcomes += 1
        x = self.n_outcomes if at_event is None else int(at_event)
        if not self.segments or (
            self.segments[-1][1] != model_version
            and all(v != model_version for _, v in self.segments)
        ):
            self.segments.append((x, model_version))

        c = bool(correct)
        self._recent.append(c)
        self._correct_in_window += c
        if len(self._recent) > self.window:
            self._correct_in_window -= self._recent.popleft()
        acc = self._correct_in_window / len(self._recent)
        self._last = (x, acc)

        if self.n_outcomes % self.stride == 0:
            self.points.append((x, acc))
            if len(self.points) > self.max_points:
                # Points sit at outcomes stride, 2*stride, ...; keep the even multiples.
                self.points = self.points[1::2]
                self.stride *= 2
        return acc

    def mark(
        self, kind: str, at_event: int | None = None, ts: float | None = None, label: str = ""
    ) -> Mark:
        """Record a vertical marker; ``at_event`` defaults to the current outcome count."""
        if kind not in MARK_KINDS:
            raise ValueError(f"unknown mark kind {kind!r}; expected one of {sorted(MARK_KINDS)}")
        m = Mark(
            kind=kind,
            at_event=self.n_outcomes if at_event is None else int(at_event),
            ts=time.time() if ts is None else float(ts),
            label=label,
        )
        self.marks.append(m)
        return m

    def series(self) -> list[tuple[int, float]]:
        """The plotted points, ending with the latest outcome even when it fell between strides."""
        if self._last is not None and (not self.points or self.points[-1] != self._last):
            return [*self.points, self._last]
        return list(self.points)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; ``from_json`` restores it, rolling window included."""
        return {
            "version": 1,
            "window": self.window,
            "max_points": self.max_points,
            "n_outcomes": self.n_outcomes,
            "stride": self.stride,
            "points": [[x, y] for x, y in self.points],
            "last": list(self._last) if self._last is not None else None,
            "recent": [int(c) for c in self._recent],
            "segments": [[x, v] for x, v in self.segments],
            "marks": [
                {"kind": m.kind, "at_event": m.at_event, "ts": m.ts, "label": m.label}
                for m in self.marks
            ],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TimelineRecorder:
        rec = cls(
            window=int(d.get("window", 200)),
            max_points=int(d.get("max_points", 2000)),
            points=[(int(x), float(y)) for x, y in d.get("points", [])],
            marks=[
                Mark(
                    kind=str(m["kind"]),
                    at_event=int(m["at_event"]),
                    ts=float(m.get("ts", 0.0)),
                    label=str(m.get("label", "")),
                )
                for m in d.get("marks", [])
            ],
            segments=[(int(x), str(v)) for x, v in d.get("segments", [])],
            n_outcomes=int(d.get("n_outcomes", 0)),
            stride=int(d.get("stride", 1)),
        )
        recent = [bool(c) for c in d.get("recent", [])][-rec.window :]
        rec._recent = deque(recent)
        rec._correct_in_window = sum(recent)
        last = d.get("last")
        rec._last = (int(last[0]), float(last[1])) if last is not None else None
        return rec

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``to_json()`` atomically; returns the path."""
        text = json.dumps(self.to_json(), separators=(",", ":"))
        return _atomic_write(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def render_png(
    recorder_or_dict: TimelineRecorder | Mapping[str, Any],
    path: str | os.PathLike[str],
    title: str = "driftd: windowed accuracy",
    *,
    reference: float | None = None,
    figsize: tuple[float, float] = (10.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Draw the timeline to a PNG of ``figsize * dpi``
    pixels, written atomically; returns the path."""
    # Figure + Agg canvas directly: no pyplot, so no global backend or figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rec = (
        recorder_or_dict
        if isinstance(recorder_or_dict, TimelineRecorder)
        else TimelineRecorder.from_json(recorder_or_dict)
    )
    series = rec.series()
    xs = [x for x, _ in series]
    ys = [y for _, y in series]

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    x_lo = min([*xs, *(m.at_event for m in rec.marks)], default=0)
    x_hi = max([*xs, *(m.at_event for m in rec.marks)], default=1)
    if x_hi <= x_lo:
        x_hi = x_lo + 1

    _shade_segments(ax, rec.segments, x_hi)

    ax.plot(xs, ys, color="tab:blue", lw=1.5, label=f"accuracy (last {rec.window})")

    if reference is not None:
        ax.axhline(reference, color="0.4", ls="--", lw=1, label=f"reference {reference:.2f}")

    _draw_marks(ax, rec.marks)

    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("labelled events")
    ax.set_ylabel("windowed accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()

    return _atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=dpi))


def _shade_segments(ax: Axes, segments: list[tuple[int, str]], x_hi: float) -> None:
    """Shade each model-version segment, labelled at the top of the axes."""
    if len(segments) > 1 or (segments and segments[0][1]):
        bounds = [x for x, _ in segments[1:]] + [x_hi]
        for i, ((start, version), end) in enumerate(zip(segments, bounds, strict=True)):
            ax.axvspan(
                start, end, color=_SEGMENT_SHADES[i % len(_SEGMENT_SHADES)], alpha=0.08, lw=0
            )
            if version:
                ax.text(
                    start,
                    1.0,
                    f" {version}",
                    va="top",
                    ha="left",
                    fontsize=8,
                    color="0.3",
                    clip_on=True,
                )


def _draw_marks(ax: Axes, marks: list[Mark]) -> None:
    """A vertical line per mark (swap, decay, ...), each kind once in the legend."""
    seen: set[str] = set()
    order = {kind: i for i, kind in enumerate(_MARK_STYLES)}
    for m in sorted(marks, key=lambda m: order.get(m.kind, len(order))):
        colour, style, legend = _MARK_STYLES.get(m.kind, ("0.5", ":", m.kind))
        ax.axvline(
            m.at_event, color=colour, ls=style, lw=1.5, label=None if m.kind in seen else legend
        )
        seen.add(m.kind)

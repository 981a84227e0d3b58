"""The learning loop, measured: how fast decay is detected on real intent data, and how rarely it cries wolf.

Sections (``--sections``, comma separated; each prints its own table):

  detection  Trains the default classifier (``train_classifier``, ``--epochs``) on
             (1) CLINC150: the train split of the daemon's 5 ``bootstrap_groups`` domains;
             (2) BANKING77: the train split of half its classes (a fixed random half).
             Every utterance is predicted once; the streams are then orders of those predictions, every
             event labelled:
               drift   CLINC150: 3,000 test+val utterances of the 5 trained domains, then test+val utterances
                       of all 10 domains (half of them intents the model never saw). BANKING77: the test
                       utterances of the trained classes, then those of all 77.
               stable  --stable-events events drawn from the trained classes' test(+val) utterances only
                       (the pool is smaller than the stream, so it is re-shuffled and reused: no drift).
             Each event goes through a ``DecayMonitor`` (``observe_prediction`` then ``observe_outcome``)
             with the ``MonitorConfig`` defaults, every signal listed, mode "any" and no cooldown, so every
             fire of every signal becomes a decision and is counted. Per signal, that is the same as a
             policy listing that signal alone (decisions clear all latches; the detectors are independent).
             delay = labelled events from the onset to the first decision naming the signal (max over
             seeds; "miss" when none before the stream ends); false alarms = decisions before the onset
             plus decisions on the stable stream, summed over seeds; no-drift peak = how close a signal came
             to firing on drift-free traffic (max over seeds; 0 at its reference, 1 on its firing line; ADWIN
             has no such scale). A peak well below 1 is the false-alarm margin.
             Goals: delay <= 300 labelled events after an abrupt drift, 0 false alarms; PASS/FAIL per row.
             The default policy is the "ewma" row.

    .venv/bin/python bench/loop.py [--sections detection] [--seeds N] [--epochs E] [--stable-events N]

Fewer training epochs than the architecture's default keep the run short; a less accurate model makes
the stable stream noisier, so the false-alarm figures are, if anything, pessimistic. The exit code is 0
whether goals pass or fail (non-zero only when the benchmark itself fails).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, exit_on_sigterm, positive_int  # noqa: E402 - after the path set-up above
from streams.monitor import SIGNALS, DecayMonitor, MonitorConfig, Outcome  # noqa: E402

GOAL_DELAY = 300  # labelled events from an abrupt drift's onset to the first decision
GOAL_FALSE_ALARMS = 0
CLINC_BOOTSTRAP = ("banking", "credit_cards", "kitchen_and_dining", "home", "auto_and_commute")  # config.toml models.bootstrap_groups
CLINC_PRE_EVENTS = 3000


# -- data and model ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One trained model and its predictions on the pre-drift (trained classes) and post-drift pools."""

    name: str
    labels: list[str]
    pre: list[Outcome]  # predictions on held-out utterances of the trained classes
    post: list[Outcome]  # predictions on held-out utterances of all classes
    pre_events: int
    train_seconds: float


def _train(texts: Sequence[str], intents: Sequence[str], epochs: int) -> Any:
    from models.train import TrainSettings, train_classifier

    return train_classifier(list(texts), list(intents), settings=TrainSettings(epochs=epochs))


def _predict(result: Any, texts: Sequence[str], intents: Sequence[str], tag: str) -> list[Outcome]:
    """Top-1 intent and its softmax probability for each text, as labelled outcomes."""
    import torch

    out: list[Outcome] = []
    result.model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), 512):
            chunk = texts[start : start + 512]
            probs = torch.softmax(result.model(torch.from_numpy(result.featurizer.batch(chunk))), dim=1).numpy()
            for k, row in enumerate(probs):
                i = int(row.argmax())
                predicted, truth = result.labels[i], intents[start + k]
                out.append(Outcome(f"{tag}-{start + k}", predicted, float(row[i]), truth, predicted == truth, "bench", 0.0, 0.0))
    return out


def clinc_scenario(epochs: int) -> Scenario:
    from streams.datasets import groups, load_examples

    domains = groups("clinc150")
    trained = {i for d in CLINC_BOOTSTRAP for i in domains[d]}
    everything = {i for intents in domains.values() for i in intents}  # the 10 domains: 5 trained + travel, utility, work, small_talk, meta
    train = [e for e in load_examples("clinc150", "train") if e.intent in trained]
    held_out = load_examples("clinc150", "test") + load_examples("clinc150", "val")
    started = time.perf_counter()
    result = _train([e.text for e in train], [e.intent for e in train], epochs)
    seconds = time.perf_counter() - started
    pre = [e for e in held_out if e.intent in trained]
    post = [e for e in held_out if e.intent in everything]
    return Scenario(
        "clinc150",
        result.labels,
        _predict(result, [e.text for e in pre], [e.intent for e in pre], "pre"),
        _predict(result, [e.text for e in post], [e.intent for e in post], "post"),
        CLINC_PRE_EVENTS,
        seconds,
    )


def banking_scenario(epochs: int) -> Scenario:
    from streams.datasets import load_examples

    train, test = load_examples("banking77", "train"), load_examples("banking77", "test")
    classes = sorted({e.intent for e in train})
    trained = set(random.Random(77).sample(classes, len(classes) // 2))
    fit = [e for e in train if e.intent in trained]
    started = time.perf_counter()
    result = _train([e.text for e in fit], [e.intent for e in fit], epochs)
    seconds = time.perf_counter() - started
    pre = [e for e in test if e.intent in trained]
    return Scenario(
        "banking77",
        result.labels,
        _predict(result, [e.text for e in pre], [e.intent for e in pre], "pre"),
        _predict(result, [e.text for e in test], [e.intent for e in test], "post"),
        len(pre),  # every held-out utterance of the trained classes once, then drift
        seconds,
    )


# -- streams and the monitor --------------------------------------------------------------------------


def _draw(pool: Sequence[Outcome], n: int, rng: random.Random) -> list[Outcome]:
    """n events from the pool in random order, re-shuffling the pool each time it runs out."""
    out: list[Outcome] = []
    while len(out) < n:
        order = list(pool)
        rng.shuffle(order)
        out += order[: n - len(out)]
    return out


def _closeness(monitor: DecayMonitor) -> dict[str, float]:
    """How far each signal has gone towards its firing line: 0 at its reference, 1 on the line (nan: no such scale)."""
    c = monitor.config
    ewma = monitor.detectors["ewma"].evidence()
    ph = monitor.detectors["page_hinkley"].evidence()
    values, refs = monitor.label_free.values(), monitor.label_free.references()
    out = {
        "ewma": ewma["drop"] / c.ewma_relative_drop if ewma["warmed_up"] else math.nan,
        "adwin": math.nan,
        "page_hinkley": ph["statistic"] / ph["threshold"],
    }
    if monitor.label_free.warmed_up:
        out["confidence"] = (refs["confidence"] - values["confidence"]) / (refs["confidence"] * c.label_free_relative_change)
        for name in ("low_confidence_share", "oos_share"):
            out[name] = (values[name] - refs[name]) / c.label_free_relative_change
    return out


def _fires(events: Sequence[Outcome], config: MonitorConfig, until: int | None = None) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Signal -> indices of the events whose decision named it; and each signal's peak closeness to its
    firing line over the first ``until`` events (the drift-free part)."""
    tick = iter(range(1 << 62))
    monitor = DecayMonitor(config, clock=lambda: float(next(tick)))
    fires: dict[str, list[int]] = {s: [] for s in config.signals}
    peak: dict[str, float] = dict.fromkeys(config.signals, -math.inf)
    until = len(events) if until is None else until
    for i, outcome in enumerate(events):
        for decision in (monitor.observe_prediction(outcome.confidence, outcome.predicted), monitor.observe_outcome(outcome)):
            if decision is not None:
                for s in decision.signals:
                    fires[s].append(i)
        if i < until and i % 5 == 0:  # sampled: the EWMAs move little in 5 events
            for s, v in _closeness(monitor).items():
                if s in peak and not math.isnan(v):
                    peak[s] = max(peak[s], v)
    return fires, peak


def detection_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (dataset, signal): max/mean delay over seeds, misses, false alarms, PASS/FAIL."""
    import logging

    import torch

    logging.getLogger("driftd.monitor").setLevel(logging.ERROR)  # every decision would log a warning
    torch.set_num_threads(1)  # the embedding update is memory-bound: a second thread only contends (4x slower measured on 2 busy cores)
    config = replace(MonitorConfig(), signals=SIGNALS, mode="any", cooldown_s=0.0)
    rows: list[dict[str, Any]] = []
    for build in (clinc_scenario, banking_scenario):
        scenario = build(args.epochs)
        pre_acc = float(np.mean([o.correct for o in scenario.pre]))
        post_acc = float(np.mean([o.correct for o in scenario.post]))
        print(
            f"{scenario.name}: trained {len(scenario.labels)} intents in {scenario.train_seconds:.1f}s; "
            f"accuracy {pre_acc:.3f} before the drift, {post_acc:.3f} after; "
            f"mean confidence {np.mean([o.confidence for o in scenario.pre]):.3f} -> {np.mean([o.confidence for o in scenario.post]):.3f}; "
            f"onset after {scenario.pre_events} events"
        )
        delays: dict[str, list[int | None]] = {s: [] for s in SIGNALS}
        early: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        stable: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        peak: dict[str, float] = dict.fromkeys(SIGNALS, -math.inf)
        for seed in range(args.seeds):
            rng = random.Random(seed)
            onset = scenario.pre_events
            drift = _draw(scenario.pre, onset, rng) + _draw(scenario.post, args.post_events, rng)
            fired, closest = _fires(drift, config, until=onset)
            for signal, at in fired.items():
                early[signal] += sum(i < onset for i in at)
                after = [i - onset + 1 for i in at if i >= onset]
                delays[signal].append(after[0] if after else None)
            fired, closest_stable = _fires(_draw(scenario.pre, args.stable_events, rng), config)
            for signal, at in fired.items():
                stable[signal] += len(at)
            for signal in SIGNALS:
                peak[signal] = max(peak[signal], closest[signal], closest_stable[signal])
        for signal in SIGNALS:
            found = [d for d in delays[signal] if d is not None]
            missed = len(delays[signal]) - len(found)
            applicable = signal != "oos_share" or any(i in config.oos_intents for i in scenario.labels)
            false_alarms = early[signal] + stable[signal]
            ok = not missed and max(found) <= GOAL_DELAY and false_alarms <= GOAL_FALSE_ALARMS
            rows.append(
                {
                    "dataset": scenario.name,
                    "signal": signal + (" (default policy)" if signal == MonitorConfig().signals[0] else ""),
                    "acc before/after": f"{pre_acc:.3f}/{post_acc:.3f}",
                    "max delay": max(found) if found else "-",
                    "mean delay": f"{np.mean(found):.0f}" if found else "-",
                    "missed": f"{missed}/{args.seeds}",
                    "false alarms (pre-onset + stable)": f"{false_alarms} ({early[signal]} + {stable[signal]})",
                    "no-drift peak": f"{peak[signal]:.2f}" if math.isfinite(peak[signal]) else "-",
                    "result": ("PASS" if ok else "FAIL") if applicable else "n/a (model has no oos intent)",
                }
            )
    return rows


# -- driver -----------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict[str, Any]]]] = {"detection": detection_section}


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated sections to run, of: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--seeds", type=positive_int, default=5, help="stream orders per scenario (default 5)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="training epochs of the benchmarked models (default 3)")
    parser.add_argument("--post-events", type=positive_int, default=2000, help="events after the drift onset (default 2000)")
    parser.add_argument("--stable-events", type=positive_int, default=6000, help="events of the stable (no drift) stream (default 6000)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    exit_on_sigterm()
    print(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, Python {platform.python_version()}")
    for name in sections:
        started = time.perf_counter()
        print(f"\n== {name} ==")
        rows = SECTIONS[name](args)
        print()
        print_table(rows)
        if name == "detection":
            print(f"\ngoals: detection within {GOAL_DELAY} labelled events of an abrupt drift (max over {args.seeds} seeds); {GOAL_FALSE_ALARMS} false alarms")
        print(f"({name}: {time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

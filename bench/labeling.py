"""Active labelling, measured: how many human labels
uncertainty sampling needs against random sampling.

The Banking77 half-then-all scenario, once per strategy, each on a fresh
daemon (``python -m daemon run``) and topic on the embedded broker:

  * The daemon serves a seed model trained on the train
    split of half the 77 intents (the fixed random half
    of the learning-loop test) and has ``labeling.enabled`` with the strategy under test:
    ``margin`` (or ``--strategy``) and ``random``, its baseline (a hash of the event id,
    through the same percentile, diversity guard and budget). ``labeling.percentile`` is
    ``--percentile`` (default 40), so the daemon requests more (about 60% of the predictions)
    than the annotator labels. Its automatic learning is off: this bench retrains by hand, so
    both strategies get the same number of fine-tunes at the same label counts.
  * The stream: ``--utterances`` train-split utterances,
    the seed intents until ``--onset``, then all 77,
    unlabelled, sent in rounds of ``--round`` utterances (default 500). The default, 30,000,
    is three passes over the split (``plan_events`` starts its shuffled order over once every
    example was sent): real traffic repeats itself, and one pass (10,003) gives the default
    budget of 20% only 2,000 labels, fewer than random sampling needs to come within 3 points
    (5,000 or more). After each round a simulated annotator reads the round's requests from
    ``labeling-requests``, works them most uncertain first (the order of ``driftd labels
    export``) and answers the first ``--budget`` x round of them with the true intent
    (``label`` events on the input topic, through the broker), passing over any text it has
    labelled before: a person does not label the same utterance twice, and a second label
    would add nothing to train on. Then ``POST /admin/v1/retrain``: the real fine-tune, gate
    and hot swap, with ``learning.holdout_fraction`` ``--holdout``, ``learning.holdout_span``
    ``--holdout-span`` (default 4: 1 in 4 of the newest labels kept out, not the newest block;
    see models/withhold.py) and ``learning.gate_margin`` ``--gate-margin`` (default -0.02, the
    non-inferiority margin follow-ups use: retraining after every round of a hundred labels, a
    required gain on a holdout of 50-300 turns noise into rejections for both strategies). The
    served model is scored on the Banking77 test split through ``POST /v1/predict``.
  * The bound: the default model trained offline on
    the seed data plus every distinct streamed text with
    its true intent. "Labels needed" = human labels given when test accuracy first came within
    3 points of it; the table also shows how many of them came after the onset (those before
    it are the same for both). A strategy's stream stops at that point (``--full-curves``: it
    goes on to the end): the figure needed is known, and the rest would only add minutes.

Prints a table (labels needed, the ratio uncertainty / random, the goal <= 0.6), the labels each
strategy needed to reach the accuracy random sampling ended at, and the curve of each strategy, and
draws them into a PNG (``--png``). A budget above the share requested (1 - percentile / 100) binds
nowhere. The lower the budget share, the more the annotator can pick from: at 40% of 250-utterance
rounds margin needed 0.68x the labels of random sampling, at the default 20% of 500 less than 0.48x.
About 25 minutes on 2 cores with the defaults, most of it random sampling streaming to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_model, exit_on_sigterm, positive_int
from bench.loop import print_table
from bench.processes import BenchDaemon
from streams.labeling import UNCERTAINTY_STRATEGIES

TOKEN = "bench-labeling-token"
GOAL_RATIO = 0.6
WITHIN = 0.03


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--strategy",
        default="margin",
        choices=UNCERTAINTY_STRATEGIES,
        help="the uncertainty strategy (default margin)",
    )
    parser.add_argument(
        "--utterances",
        type=positive_int,
        default=30000,
        help="streamed utterances (default 30000, three passes over the 10,003 of the train split)",
    )
    parser.add_argument(
        "--onset",
        type=positive_int,
        default=500,
        help="utterance index where all 77 intents start (default 500)",
    )
    parser.add_argument(
        "--round",
        type=positive_int,
        default=500,
        help="utterances per round: annotate, retrain, score (default 500)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.2,
        help="share of each round's utterances a human labels (default 0.2)",
    )
    parser.add_argument(
        "--percentile",
        type=float,
        default=40.0,
        help="labeling.percentile of the daemon (default 40: about 60%% of predictions requested)",
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        help="learning.holdout_fraction of the daemon (default 0.1, its own default)",
    )
    parser.add_argument(
        "--gate-margin",
        type=float,
        default=-0.02,
        help="learning.gate_margin of the daemon (default -0.02: a candidate may trail "
        "by 2 points on the holdout, as follow-ups may)",
    )
    parser.add_argument(
        "--holdout-span",
        type=positive_int,
        default=4,
        help="learning.holdout_span of the daemon (default 4: fresh labels mostly "
        "trained on at once)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        help="learning.batch_size of the daemon (default 64: a few thousand labels "
        "still get hundreds of steps)",
    )
    parser.add_argument(
        "--full-curves",
        action="store_true",
        help="stream to the end even after a strategy came within 3 points of the bound",
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=Path("labeling.png"),
        help="where to draw the accuracy curves (default labeling.png)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (daemon logs, registries)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.budget <= 1:
        parser.error(f"--budget must be in (0, 1], got {args.budget}")
    if not 0 <= args.percentile < 100:
        parser.error(f"--percentile must be in [0, 100), got {args.percentile}")
    exit_on_sigterm()
    print(
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"{cpu_model()}, Python {platform.python_version()}"
    )
    print(
        f"settings: {args.utterances} utterances in rounds of {args.round}, onset "
        f"at {args.onset}, budget {args.budget:g}, labeling.percentile "
        f"{args.percentile:g}, "
        f"learning.holdout_fraction {args.holdout:g}, holdout_span "
        f"{args.holdout_span}, gate_margin {args.gate_margin:g}, batch_size "
        f"{args.batch_size}"
    )

    from daemon.broker import EmbeddedBroker, free_port
    from models.export import build_version_files
    from models.registry import Registry
    from models.train import TrainSettings, accuracy, train_classifier
    from streams.datasets import load_examples
    from streams.replay import DriftSchedule, Phase, plan_events

    train = load_examples("banking77", "train")
    everything = sorted({e.intent for e in train})
    seed_intents = set(random.Random(77).sample(everything, len(everything) // 2))
    seed_examples = [e for e in train if e.intent in seed_intents]
    test = load_examples("banking77", "test")
    schedule = DriftSchedule(
        (
            Phase(0, ("half",), frozenset(seed_intents)),
            Phase(args.onset, ("all",), frozenset(everything)),
        )
    )
    planned = list(
        plan_events(
            train,
            schedule,
            limit=args.utterances,
            label_fraction=1.0,
            label_delay=0,
            seed=11,
            dataset="bench",
        )
    )
    truth = {e["ref_event_id"]: e["intent"] for e in planned if e["type"] == "label"}
    utterances = [e for e in planned if e["type"] == "utterance"]

    started = time.perf_counter()
    seed = train_classifier(
        [e.text for e in seed_examples],
        [e.intent for e in seed_examples],
        settings=TrainSettings(batch_size=256),
    )
    # a later pass repeats texts: each counts once
    seen = {u["text"]: truth[u["event_id"]] for u in utterances}
    offline = train_classifier(
        [e.text for e in seed_examples] + list(seen),
        [e.intent for e in seed_examples] + list(seen.values()),
        settings=TrainSettings(batch_size=256),
    )
    bound = accuracy(
        offline.model,
        offline.featurizer,
        offline.labels,
        [e.text for e in test],
        [e.intent for e in test],
    )
    # where a strategy stops streaming and the table counts its labels: one level for both
    target = bound - WITHIN
    print(
        f"offline bound (seed data + the {len(seen)} distinct texts of the "
        f"{len(utterances)} streamed utterances, labelled): {bound:.4f}; "
        f"target {target:.4f}  ({time.perf_counter() - started:.0f}s)"
    )

    work = Path(tempfile.mkdtemp(prefix="driftd-bench-labeling-"))
    broker = EmbeddedBroker(free_port(), log_path=work / "broker.log").start()
    curves: dict[str, list[dict[str, Any]]] = {}
    try:
        files, _ = build_version_files(
            seed.model, seed.featurizer, seed.labels, [e.text for e in seed_examples[::100]][:64]
        )
        for strategy in (args.strategy, "random"):
            registry = Registry(work / strategy / "registry")
            registry.set_current(
                registry.publish(files, parent=None, info={"source": "bench seed"}).version
            )
            curves[strategy] = run_strategy(
                broker.bootstrap,
                work / strategy,
                registry.root,
                strategy,
                utterances,
                truth,
                test,
                args,
                target=target,
            )
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows, needed = [], {}
    for strategy, curve in curves.items():
        reached = next((point for point in curve if point["accuracy"] >= target), None)
        needed[strategy] = None if reached is None else reached["labels"]
        # Labels given before the drift are the same for
        # both strategies whatever they pick: shown apart.
        before_onset = max((p["labels"] for p in curve if p["utterances"] <= args.onset), default=0)
        rows.append(
            {
                "strategy": strategy,
                "labels given": curve[-1]["labels"],
                "final accuracy": f"{curve[-1]['accuracy']:.4f}",
                "best accuracy": f"{max(p['accuracy'] for p in curve):.4f}",
                f"labels to within {WITHIN * 100:.0f} pts": needed[strategy]
                or f"not within {curve[-1]['labels']}",
                "of them after the onset": "-"
                if needed[strategy] is None
                else needed[strategy] - before_onset,
                "swaps": sum(p["result"] == "swapped" for p in curve),
            }
        )
    print()
    print_table(rows)
    uncertain, baseline = needed[args.strategy], needed["random"]
    if uncertain is not None and baseline is not None:
        ratio = uncertain / baseline
        print(
            f"\nratio {args.strategy} / random: {ratio:.2f} (goal <= {GOAL_RATIO}): "
            f"{'PASS' if ratio <= GOAL_RATIO else 'FAIL'}"
        )
    elif uncertain is not None:
        ratio = uncertain / curves["random"][-1]["labels"]
        print(
            f"\nrandom never came within {WITHIN * 100:.0f} points with "
            f"{curves['random'][-1]['labels']} labels: ratio < {ratio:.2f} (goal <= "
            f"{GOAL_RATIO}): {'PASS' if ratio <= GOAL_RATIO else 'UNDECIDED'}"
        )
    else:
        print(
            f"\n{args.strategy} never came within {WITHIN * 100:.0f} points: no "
            f"ratio (goal <= {GOAL_RATIO}): FAIL"
        )
    # Where neither reaches the bound's neighbourhood, the same question at a level
    # both reach: the labels each needed for the accuracy random sampling ended at.
    level = curves["random"][-1]["accuracy"]
    at_level = {
        s: next((p["labels"] for p in curve if p["accuracy"] >= level), None)
        for s, curve in curves.items()
    }
    if at_level[args.strategy] is not None and at_level["random"]:
        print(
            f"labels to reach random's final accuracy {level:.4f}: {args.strategy} "
            f"{at_level[args.strategy]}, random {at_level['random']} "
            f"(ratio {at_level[args.strategy] / at_level['random']:.2f})"
        )
    print("\ncurves (labels given: test accuracy of the served version):")
    for strategy, curve in curves.items():
        print(
            f"  {strategy:>16}: " + ", ".join(f"{p['labels']}: {p['accuracy']:.3f}" for p in curve)
        )
    draw(curves, bound, args.png, args)
    print(f"\ncurves drawn to {args.png}  ({time.perf_counter() - started:.0f}s in all)")
    return 0


def run_strategy(
    bootstrap: str,
    work: Path,
    registry_dir: Path,
    strategy: str,
    utterances: list[dict[str, Any]],
    truth: dict[str, str],
    test: list[Any],
    args: argparse.Namespace,
    target: float,
) -> list[dict[str, Any]]:
    from daemon.label_studio import most_uncertain_first
    from tests.integration.harness import produce, read_topic

    topic = f"bench-labeling-{strategy}-{os.getpid()}"
    daemon = BenchDaemon(
        bootstrap,
        work / "daemon",
        topic,
        extra_env={
            "DRIFTD_MODELS__REGISTRY_DIR": str(registry_dir),
            "DRIFTD_WEB__ADMIN_TOKEN": TOKEN,
            "DRIFTD_LABELING__ENABLED": "true",
            "DRIFTD_LABELING__STRATEGY": strategy,
            "DRIFTD_LABELING__MIN_SCORE": "0",
            "DRIFTD_LABELING__PERCENTILE": str(args.percentile),
            # the annotator's budget is the one that binds
            "DRIFTD_LABELING__BUDGET_PER_HOUR": str(10**9),
            "DRIFTD_LEARNING__ENABLED": "false",
            "DRIFTD_LEARNING__FOLLOWUP_LABELS": "0",
            "DRIFTD_LEARNING__MIN_LABELLED": "50",
            "DRIFTD_LEARNING__HOLDOUT_FRACTION": str(args.holdout),
            "DRIFTD_LEARNING__GATE_MARGIN": str(args.gate_margin),
            "DRIFTD_LEARNING__HOLDOUT_SPAN": str(args.holdout_span),
            "DRIFTD_LEARNING__BATCH_SIZE": str(args.batch_size),
        },
    )
    daemon.env.pop("DRIFTD_CONFIG", None)
    daemon.start()
    curve: list[dict[str, Any]] = []
    try:
        daemon.wait_ready(timeout_s=120, model=True)
        labels_given, requests_seen, stored = 0, 0, 0
        labelled: set[str] = set()  # texts the annotator has labelled
        for start in range(0, len(utterances), args.round):
            chunk = utterances[start : start + args.round]
            asyncio.run(
                produce(bootstrap, topic, [json.dumps(u).encode() for u in chunk], rate=3000)
            )
            stored += len(chunk)
            daemon.wait_until(
                lambda start=start, chunk=chunk: (
                    daemon.metric("driftd_labeling_offers_total") >= start + len(chunk)
                ),
                120,
                "every prediction offered for labelling",
            )
            picked = int(daemon.metrics()["driftd_labeling_offers_total{result=picked}"])
            requests = [
                json.loads(r.value)
                for r in asyncio.run(
                    read_topic(bootstrap, f"{topic}.labeling-requests", picked, timeout_s=60)
                )
            ]
            fresh, requests_seen = requests[requests_seen:], len(requests)
            wanted = {u["event_id"] for u in chunk}
            answered, budget = [], round(args.budget * len(chunk))
            for request in most_uncertain_first([r for r in fresh if r["event_id"] in wanted]):
                if len(answered) == budget:
                    break
                if request["text"] not in labelled:
                    labelled.add(request["text"])
                    answered.append(request)
            labels = [
                {
                    "event_id": f"{r['event_id']}-label",
                    "type": "label",
                    "conversation_id": r["conversation_id"],
                    "turn": r["turn"],
                    "ts": time.time(),
                    "ref_event_id": r["event_id"],
                    "intent": truth[r["event_id"]],
                }
                for r in answered
            ]
            asyncio.run(produce(bootstrap, topic, [json.dumps(e).encode() for e in labels]))
            labels_given += len(labels)
            stored += len(labels)
            daemon.wait_stored(stored, timeout_s=120)
            result = retrain(daemon) if labels_given >= 50 else "too few labels"
            point = {
                "utterances": start + len(chunk),
                "labels": labels_given,
                "accuracy": served_accuracy(daemon, test),
                "result": result,
            }
            curve.append(point)
            print(
                f"  {strategy}: {point['utterances']} utterances, {labels_given} "
                f"labels ({len(fresh)} requests this round), fine-tune {result}, "
                f"test accuracy {point['accuracy']:.4f}",
                flush=True,
            )
            if point["accuracy"] >= target and not args.full_curves:
                break
    finally:
        daemon.stop_quietly()
    return curve


def admin(daemon: Any, method: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(
        daemon.url + path, method=method, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def retrain(daemon: Any) -> str:
    before = admin(daemon, "GET", "/admin/v1/learning")["runs"]
    admin(daemon, "POST", "/admin/v1/retrain")
    daemon.wait_until(
        lambda: (lambda s: s["state"] == "idle" and s["runs"] > before)(
            admin(daemon, "GET", "/admin/v1/learning")
        ),
        300,
        "the fine-tune to end",
    )
    return str(admin(daemon, "GET", "/admin/v1/learning")["last_run"].get("result"))


def served_accuracy(daemon: Any, test: list[Any]) -> float:
    right = 0
    for start in range(0, len(test), 256):
        batch = test[start : start + 256]
        body = json.dumps({"texts": [e.text for e in batch]}).encode()
        request = urllib.request.Request(
            daemon.url + "/v1/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.load(response)["predictions"]
        right += sum(p["intent"] == e.intent for p, e in zip(predictions, batch, strict=False))
    return right / len(test)


def draw(
    curves: dict[str, list[dict[str, Any]]], bound: float, path: Path, args: argparse.Namespace
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for strategy, curve in curves.items():
        ax.plot(
            [p["labels"] for p in curve],
            [p["accuracy"] for p in curve],
            marker="o",
            markersize=3,
            label=strategy,
        )
    ax.axhline(bound, color="black", linewidth=0.8, label=f"offline bound {bound:.3f}")
    ax.axhline(
        bound - WITHIN,
        color="black",
        linewidth=0.8,
        linestyle="--",
        label=f"bound - {WITHIN * 100:.0f} pts",
    )
    ax.set_xlabel("human labels given")
    ax.set_ylabel("Banking77 test accuracy of the served model")
    ax.set_title(
        f"Banking77, half then all intents: labelling {args.budget:.0%} of each "
        f"{args.round}-utterance round"
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

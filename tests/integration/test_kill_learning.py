"""SIGKILL in the learning loop, fast: one kill while a fine-tune child runs, one right at a hot
swap (as the new version appears in the registry), each followed by a restart on the same data
dir and registry while events keep arriving. After each kill, warm + cold hold no event twice;
after each restart, every registry version verifies against its manifest and CURRENT names
one, the daemon serves CURRENT, and the learning loop takes a new fine-tune through to a
verdict. At the end, warm + cold hold exactly the acknowledged events: 0 lost, 0 duplicated.

``KillRig`` is shared with the long run (tests/stress/test_kill_points.py:
21 kills over ingest, fine-tunes and swaps).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from models.registry import TMP_PREFIX, CorruptVersion, Registry
from streams.datasets import Example, groups, load_examples
from tests.integration.harness import DaemonProcess, produce, stored_count, stored_event_ids, unique
from tests.integration.test_learning_failures import TOKEN, call
from tests.integration.test_learning_loop import publish_seed_model

# a fine-tune learns from the newest 300 labels (the newest 60 judge it): seconds, not minutes
MAX_EXAMPLES = 300
TUNED = {
    "DRIFTD_WEB__ADMIN_TOKEN": TOKEN,
    # fine-tunes start when the rig asks (POST /admin/v1/retrain), never by themselves
    "DRIFTD_LEARNING__ENABLED": "false",
    "DRIFTD_LEARNING__MAX_EXAMPLES": str(MAX_EXAMPLES),
    "DRIFTD_LEARNING__HOLDOUT_FRACTION": "0.2",
    "DRIFTD_LEARNING__REPLAY_RATIO": "0",
    "DRIFTD_LEARNING__CANARY_LABELS": "0",
    # a busy 2-core machine must not fail the gate on latency
    "DRIFTD_LEARNING__LATENCY_BUDGET_MS": "1000",
    "DRIFTD_LEARNING__EPOCHS": "6",
    "DRIFTD_LEARNING__BATCH_SIZE": "32",
    # Unlabelled utterances (priority low) go to cold within seconds, so kills land
    # in demotions too; labelled ones stay in warm, where a fine-tune finds its data.
    "DRIFTD_TIERS__RULES": json.dumps(
        [{"priority": "low", "hot_max_age_s": 1, "warm_retention_s": 2}]
    ),
    "DRIFTD_TIERS__MAINTENANCE_INTERVAL_S": "0.5",
    "DRIFTD_INGEST__BATCH_SIZE": "200",
}
# minutes: a kill lands inside it
LONG_FINE_TUNE = {"DRIFTD_LEARNING__EPOCHS": "200", "DRIFTD_LEARNING__PATIENCE": "200"}
# where kill_at_swap aims, see there
SWAP_TARGETS = ("gating", "publishing", "published", "set_current")
# verdict to CURRENT moved: ~150 ms
JITTER_S = {"gating": 0.3, "publishing": 0.01, "published": 0.03, "set_current": 0.1}


class Stream:
    """Utterances of one CLINC150 domain, 3 in 4 labelled, stamped with the time they
    are made. Labels name the intents of the current ``phase`` (0: the seed model's
    names, k: ``<intent>@k``), so a new phase is data no registered version has
    learnt: the next candidate beats the incumbent and goes on to the swap."""

    def __init__(self, run: str, examples: list[Example]) -> None:
        self.run, self.examples = run, examples
        self.phase = 0
        self.made = 0
        self.acked: list[str] = []
        self.acked_labels: Counter[int] = Counter()  # per phase

    def chunk(self, utterances: int) -> tuple[int, list[dict[str, Any]]]:
        events, phase = [], self.phase
        for i in range(self.made, self.made + utterances):
            example = self.examples[i % len(self.examples)]
            common = {
                "conversation_id": f"c{i % 97}",
                "turn": 0,
                "ts": time.time(),
                "priority": "low" if i % 4 == 3 else "normal",
            }
            events.append(
                {
                    "event_id": f"{self.run}-u{i}",
                    "type": "utterance",
                    "text": example.text,
                    **common,
                }
            )
            if i % 4 != 3:
                intent = example.intent if phase == 0 else f"{example.intent}@{phase}"
                events.append(
                    {
                        "event_id": f"{self.run}-l{i}",
                        "type": "label",
                        "ref_event_id": f"{self.run}-u{i}",
                        "intent": intent,
                        **common,
                    }
                )
        self.made += utterances
        return phase, events


class Producer(threading.Thread):
    """Sends the stream in small chunks at ``rate`` events/s until
    stopped; an event counts once the broker acknowledged its chunk."""

    def __init__(self, bootstrap: str, topic: str, stream: Stream, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.stream, self.rate = bootstrap, topic, stream, rate
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    async def _send(self) -> None:
        while not self.stopping.is_set():
            phase, events = self.stream.chunk(40)
            await produce(
                self.bootstrap,
                self.topic,
                [json.dumps(e).encode() for e in events],
                rate=self.rate,
                keys=[e["conversation_id"].encode() for e in events],
            )
            self.stream.acked += [e["event_id"] for e in events]
            self.stream.acked_labels[phase] += sum(e["type"] == "label" for e in events)

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)
        assert not self.is_alive() and self.error is None, f"producer: {self.error!r}"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@dataclass
class Kill:
    n: int
    phase: str  # ingest, fine-tune, swap
    moment: str
    stored_before: int
    serving_after: str = "?"
    resumed: str = "-"


class KillRig:
    """One topic, data dir and registry, with a producer running throughout;
    daemons are started on them, killed and restarted. Post-restart checks
    collect their findings in ``problems`` so that a run goes on to its summary."""

    def __init__(self, bootstrap: str, tmp_path: Path, rate: float, seed: int) -> None:
        intents = set(groups("clinc150")["banking"])
        examples = [e for e in load_examples("clinc150", "train") if e.intent in intents]
        random.Random(seed).shuffle(examples)
        self.bootstrap, self.rng = bootstrap, random.Random(seed)
        self.registry_dir, self.data_dir = tmp_path / "registry", tmp_path / "state"
        self.registry = Registry(self.registry_dir)
        # a small seed: its quality is not under test
        publish_seed_model(self.registry_dir, examples[:300])
        self.topic = unique("killrun")
        self.stream = Stream(self.topic, examples)
        self.producer = Producer(bootstrap, self.topic, self.stream, rate)
        self.daemon: DaemonProcess | None = None
        self.kills: list[Kill] = []
        self.problems: list[str] = []
        self.partial: set[str] = set()
        self.temp_left: set[str] = set()
        self.result: dict[str, int] = {}

    # -- daemons
    # ---------------------------------------------------------------------------------------

    def start(self, long_fine_tune: bool = False) -> DaemonProcess:
        env = {
            **TUNED,
            "DRIFTD_MODELS__REGISTRY_DIR": str(self.registry_dir),
            **(LONG_FINE_TUNE if long_fine_tune else {}),
        }
        self.daemon = DaemonProcess(
            self.bootstrap, self.data_dir, self.topic, extra_env=env
        ).start()
        self.daemon.wait_ready(timeout_s=120, model=True)
        if not self.producer.is_alive() and not self.producer.stopping.is_set():
            # after the first start: the daemon creates the topics with their partition counts
            self.producer.start()
        return self.daemon

    def learning(self) -> dict[str, Any]:
        assert self.daemon is not None
        status, body = call(self.daemon, "GET", "/admin/v1/learning")
        assert status == 200, body
        return body

    def retrain(self) -> None:
        assert self.daemon is not None
        status, body = call(self.daemon, "POST", "/admin/v1/retrain")
        assert status == 202, (status, body)

    def _kill(self, phase: str, moment: str) -> Kill:
        """SIGKILL, then read the stores while nothing writes them (the harness's
        readers take no snapshot: a demotion committed between their two queries
        would show its events twice): no event may be there twice. What each
        restart did is read at the next kill, and at the end by ``finish``."""
        assert self.daemon is not None
        self.daemon.kill()
        ids = stored_event_ids(self.data_dir)
        self.kills.append(Kill(len(self.kills) + 1, phase, moment, sum(ids.values())))
        if twice := sum(1 for c in ids.values() if c > 1):
            self.problems.append(f"kill {len(self.kills)}: {twice} events stored twice")
        return self.kills[-1]

    def _temps(self) -> set[str]:
        return {n for n in os.listdir(self.registry_dir) if n.startswith(TMP_PREFIX)}

    # -- the three kinds of kill
    # -------------------------------------------------------------------------

    def kill_mid_ingest(self) -> Kill:
        assert self.daemon is not None
        self.daemon.wait_until(
            lambda: self.daemon.metric("driftd_events_total") > 0, 60, "ingest under way"
        )
        delay = self.rng.uniform(0.3, 3.0)
        time.sleep(delay)
        return self._kill("ingest", f"{delay:.1f} s into ingest")

    def kill_in_fine_tune(self) -> Kill:
        """The daemon must run with ``long_fine_tune``: the
        kill lands at a random moment of the child's run."""
        assert self.daemon is not None
        self.retrain()
        self.daemon.wait_until(lambda: self.learning()["pid"], 90, "the fine-tune child to start")
        time.sleep(self.rng.uniform(0.2, 5.0))
        status = self.learning()
        pid, progress = status["pid"], (status["last_run"] or {}).get("progress") or {}
        if not (pid and _running(pid)):
            self.problems.append(
                f"kill {len(self.kills) + 1}: the fine-tune child was no longer "
                f"running ({status['last_run']})"
            )
        stage = progress.get("stage")
        moment = {
            None: "child starting (no progress yet)",
            "training": "before epoch 1",
            "epoch": f"after epoch {progress.get('epoch')}/{progress.get('epochs')}",
        }
        kill = self._kill("fine-tune", moment.get(stage, stage))
        deadline = time.monotonic() + 10
        while pid and _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid and _running(pid):
            self.problems.append(f"kill {kill.n}: fine-tune child {pid} outlived the daemon")
        return kill

    def kill_at_swap(self, target: str) -> Kill:
        """Start a fine-tune on labels of a new phase (so it passes the gate) and kill
        when it reaches ``target``, plus a random jitter: ``gating`` (the child judges
        the candidate; the kill lands before publication), ``publishing`` (a temp dir
        appears in the registry), ``published`` (the version dir appears; the daemon
        then loads it and only then moves CURRENT), ``set_current`` (CURRENT names the
        new version). What the kill really hit is read from the registry afterwards."""
        assert self.daemon is not None
        self.new_phase()
        before, current, temps = (
            set(self.registry.versions()),
            self.registry.current(),
            self._temps(),
        )
        reached = {
            "gating": lambda: (
                ((self.learning()["last_run"] or {}).get("progress") or {}).get("stage")
                in ("gating", "verdict")
            ),
            "publishing": lambda: self._temps() - temps or set(self.registry.versions()) - before,
            "published": lambda: set(self.registry.versions()) - before,
            "set_current": lambda: self.registry.current() != current,
        }[target]
        self.retrain()
        deadline, next_look = time.monotonic() + 240, time.monotonic() + 0.5
        ended = False
        while not reached():
            # the fine-tune may end without a swap (a gate rejection)
            if time.monotonic() > next_look:
                next_look += 0.5
                if self.learning()["state"] == "idle":
                    ended = True
                    break
            assert time.monotonic() < deadline, (
                f"no {target} within 240 s; daemon log:\n{self.daemon.log_tail()}"
            )
            time.sleep(0.02 if target == "gating" else 0.003)
        jitter = self.rng.uniform(0, JITTER_S[target])
        time.sleep(jitter)
        kill = self._kill("swap", "")
        new, now_current, left = (
            sorted(set(self.registry.versions()) - before),
            self.registry.current(),
            self._temps() - temps,
        )
        if ended:
            hit = f"no swap: the fine-tune ended first ({self.learning_result_from_log()})"
            self.problems.append(f"kill {kill.n}: {hit}")
        elif now_current != current:
            hit = f"after CURRENT moved to {now_current}"
        elif new:
            hit = f"{new[-1]} published, CURRENT still {current}"
        elif left:
            hit = (
                "mid set_current (temp file left)"
                if all(n.endswith(".CURRENT") for n in left)
                else "mid-publish (temp dir left)"
            )
        else:
            hit = "before publication"
        kill.moment = f"{target}+{jitter * 1000:.0f}ms: {hit}"
        return kill

    def learning_result_from_log(self) -> str:
        assert self.daemon is not None
        lines = [
            line
            for line in self.daemon.log_tail(200).splitlines()
            if "gate (" in line or "fine-tune (" in line
        ]
        return lines[-1].split("driftd.learning: ")[-1][:160] if lines else "no verdict logged"

    def new_phase(self) -> None:
        """Labels with new names from now on; returns once MAX_EXAMPLES
        of them are stored (the newest a fine-tune takes)."""
        assert self.daemon is not None
        self.stream.phase += 1
        phase = self.stream.phase
        self.daemon.wait_until(
            lambda: self.stream.acked_labels[phase] >= MAX_EXAMPLES,
            120,
            f"{MAX_EXAMPLES} labels of phase {phase} acknowledged",
        )
        acked = len(self.stream.acked)
        self.daemon.wait_until(
            lambda: stored_count(self.data_dir) >= acked, 120, f"{acked} events stored"
        )

    # -- after a kill
    # ----------------------------------------------------------------------------------

    def restart_and_check(
        self, *, long_fine_tune: bool = False, resume: bool = False
    ) -> DaemonProcess:
        """Start a daemon on what the last kill left and check
        it; with ``resume``, a new fine-tune to its verdict."""
        kill = self.kills[-1]
        daemon = self.start(long_fine_tune)
        for version, entry in self.registry.entries():
            if isinstance(entry, CorruptVersion):
                self.partial.add(version)
                self.problems.append(f"after kill {kill.n}: {entry}")
        current = self.registry.current()
        if current not in self.registry.versions() or current in self.partial:
            self.partial.add(f"CURRENT={current}")
            self.problems.append(
                f"after kill {kill.n}: CURRENT names {current!r}, not a valid version"
            )
        self.temp_left |= self._temps()
        status, answer = call(
            daemon, "POST", "/v1/predict", {"text": "what is my checking account balance"}
        )
        kill.serving_after = answer.get("model_version", f"HTTP {status}")
        if status != 200 or kill.serving_after != current:
            self.problems.append(
                f"after kill {kill.n}: /v1/predict answered {status} by "
                f"{kill.serving_after}, CURRENT is {current}"
            )
        if resume:
            kill.resumed = self.fine_tune_to_verdict()
        return daemon

    def fine_tune_to_verdict(self) -> str:
        assert self.daemon is not None
        self.retrain()
        self.daemon.wait_until(
            lambda: (
                (s := self.learning())["state"] == "idle" and (s["last_run"] or {}).get("result")
            ),
            240,
            "the fine-tune's verdict",
        )
        run = self.learning()["last_run"]
        if run["result"] not in ("swapped", "gate_rejected"):
            self.problems.append(
                f"after kill {self.kills[-1].n}: the resumed fine-tune ended "
                f"{run['result']}: {run.get('detail', '')[:300]}"
            )
        return run["result"] + (f" {run['version']}" if run.get("version") else "")

    # -- the end
    # ---------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Stop producing, let the running daemon store the rest, stop it with SIGTERM and count."""
        assert self.daemon is not None
        self.producer.stop()
        acked = Counter(self.stream.acked)
        self.daemon.wait_until(
            lambda: stored_count(self.data_dir) >= len(acked),
            180,
            "every acknowledged event stored",
        )
        code, _ = self.daemon.terminate(timeout_s=30)
        if code != 0:
            self.problems.append(f"the last daemon exited {code} on SIGTERM")
        stored = stored_event_ids(self.data_dir)
        self.result = {
            "acknowledged": len(acked),
            "stored": sum(stored.values()),
            "lost": len(acked - stored),
            "duplicated": sum((stored - acked).values()),
        }
        if self.result["lost"] or self.result["duplicated"]:
            self.problems.append(
                f"lost {self.result['lost']}, duplicated {self.result['duplicated']}"
            )
        counts = [k.stored_before for k in self.kills]
        if counts != sorted(counts):
            self.problems.append(f"stored counts went down between kills: {counts}")

    def close(self) -> None:
        self.producer.stopping.set()
        if self.daemon is not None:
            self.daemon.stop_quietly()

    def summary(self) -> str:
        rows = [
            f"{'#':>3}  {'phase':<9}  {'moment':<58}  {'stored before kill':>18}  "
            f"{'serving after':<13}  resumed fine-tune"
        ]
        rows += [
            f"{k.n:>3}  {k.phase:<9}  {k.moment[:58]:<58}  {k.stored_before:>18}  "
            f"{k.serving_after:<13}  {k.resumed}"
            for k in self.kills
        ]
        phases = Counter(k.phase for k in self.kills)
        r = self.result
        rows.append(
            f"{len(self.kills)} SIGKILLs "
            f"({', '.join(f'{n} {p}' for p, n in phases.items())}); acknowledged "
            f"{r.get('acknowledged')}, "
            f"stored {r.get('stored')}, lost {r.get('lost')}, "
            f"duplicated {r.get('duplicated')}; registry: "
            f"{len(self.registry.versions())} versions, "
            f"partial versions found {len(self.partial)}, CURRENT "
            f"{self.registry.current()}; "
            "temp dirs left by a kill mid-publish "
            f"{len(self.temp_left)} (never listed as versions)"
        )
        rows += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(rows)


@pytest.mark.timeout(240)
def test_sigkill_in_a_fine_tune_and_at_a_swap_then_restart_keeps_events_registry_and_loop(
    broker: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    rig = KillRig(broker.bootstrap, tmp_path, rate=500, seed=5)
    try:
        rig.start(long_fine_tune=True)
        rig.new_phase()  # enough labels for a fine-tune to start
        rig.kill_in_fine_tune()
        rig.restart_and_check()  # the swap below is this restart's fine-tune: the loop resumed
        rig.kill_at_swap("published")
        rig.restart_and_check(resume=True)
        rig.finish()
    finally:
        rig.close()
    print(f"\n{rig.summary()}\n({time.monotonic() - started:.0f} s)")
    assert [k.phase for k in rig.kills] == ["fine-tune", "swap"]
    assert not rig.problems, "\n".join(rig.problems)

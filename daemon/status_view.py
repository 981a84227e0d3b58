"""``driftd status`` as text: one line per concern, from the JSON of GET /admin/v1/status."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["render_status"]


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _detector(name: str, evidence: dict[str, Any]) -> str:
    if name == "ewma":
        state = "armed" if evidence.get("armed") else "fired, re-arms on recovery"
        if not evidence.get("warmed_up"):
            state = f"warming up ({evidence.get('n', 0):.0f} outcomes)"
        return (
            f"ewma {_num(evidence.get('ewma'))} vs line "
            f"{_num(evidence.get('threshold'))} ({state}, "
            f"{evidence.get('fires', 0):.0f} fires)"
        )
    if name == "adwin":
        return (
            f"adwin error {_num(evidence.get('window_error_rate'))} over "
            f"{evidence.get('window', 0):.0f} ({evidence.get('fires', 0):.0f} fires)"
        )
    if name == "page_hinkley":
        return (
            "page_hinkley "
            f"{_num(evidence.get('statistic'), 1)}/{_num(evidence.get('threshold'), 0)} "
            f"({evidence.get('fires', 0):.0f} fires)"
        )
    return f"{name} {evidence}"


def _triggers(triggers: dict[str, Any]) -> str:
    unknown, floor = triggers.get("unknown_intent") or {}, triggers.get("accuracy_floor") or {}
    parts = []
    if unknown.get("min_outcomes"):
        top = ", ".join(f"{k} {v}" for k, v in (unknown.get("top_unknown") or {}).items())
        parts.append(
            "unknown intents "
            f"{unknown.get('unknown_outcomes', 0)}/{unknown['min_outcomes']} "
            "outcomes" + (f" ({unknown.get('unknown_intents', 0)} intents: {top})" if top else "")
        )
    else:
        parts.append("unknown intents off")
    if floor.get("min_accuracy"):
        state = "BELOW" if floor.get("below") else "above"
        parts.append(
            f"floor {state} {_num(floor['min_accuracy'], 2)} (window "
            f"{_num(floor.get('window_accuracy'))}, {floor.get('fires', 0)} fires)"
        )
    else:
        parts.append("floor off")
    return "triggers   " + " | ".join(parts)


def _training(training: dict[str, Any]) -> list[str]:
    lines = [f"training   {training['state']}, {training.get('runs', 0)} fine-tunes so far"]
    awaiting = training.get("awaiting")
    if awaiting:
        what = (
            "the first model (no model serves)"
            if awaiting["trigger"] == "cold_start"
            else f"a {awaiting['trigger']} fine-tune skipped for too little data"
        )
        off = "; learning.enabled is off" if not awaiting.get("enabled", True) else ""
        lines.append(f"waiting    {what}: {awaiting['labels']}/{awaiting['needed']} labels{off}")
    run = training.get("last_run")
    if not run:
        return [*lines, "last run   none yet"]
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started_at"]))
        if run.get("started_at")
        else "?"
    )
    result = run.get("result", "running")
    head = f"last run   {run.get('trigger')} at {when}: {result}"
    if run.get("version"):
        head += f" -> {run['version']}"
    if run.get("reason"):
        head += f" ({run['reason']})"
    lines.append(head)
    gate = run.get("gate")
    if gate:
        verdict = "passed" if gate["passed"] else "rejected: " + "; ".join(gate["reasons"])
        lines.append(
            f"gate       {verdict}; holdout {_num(gate['candidate_holdout'])} vs "
            f"incumbent {_num(gate['incumbent_holdout'])} (n={gate['holdout_n']})"
        )
    return lines


def render_status(status: dict[str, Any], where: str) -> str:
    lines = [f"driftd at {where}: pid {status['pid']}, up {_age(status['uptime_s'])}"]
    lines.append(_model_line(status.get("model")))
    q = status["quality"]
    samples = q["samples"]
    lines.append(
        f"accuracy   EWMA {_num(q['ewma_accuracy'])}, reference "
        f"{_num(q['reference_accuracy'])}, last-window {_num(q['window_accuracy'])} "
        f"({samples['labelled']} labelled outcomes)"
    )
    lines.append(
        "detectors  " + " | ".join(_detector(name, ev) for name, ev in q["detectors"].items())
    )
    if q.get("triggers"):
        lines.append(_triggers(q["triggers"]))
    fired = [name for name, on in q["fired"].items() if on]
    lines.append(
        f"policy     signals {', '.join(q['signals'])}; fired: "
        f"{', '.join(fired) or 'none'}; decisions {q['decisions']}; cooldown "
        f"{q['cooldown_remaining_s']:.0f} s left"
    )
    tiers = status.get("tiers")
    lines.append(
        "tiers      "
        + ("not open yet" if tiers is None else ", ".join(f"{k} {v}" for k, v in tiers.items()))
    )
    ingest = status["ingest"]
    blocked = ingest.get("blocked_on") or []
    paused = f"; PAUSED, waiting for {', '.join(blocked)} (see the log)" if blocked else ""
    lines.append(
        f"ingest     {ingest['events']:.0f} events stored, "
        f"{ingest['dead_lettered']:.0f} dead-lettered{paused}"
    )
    lines.append(_broker_line(status.get("broker") or {}))
    lag = status.get("consumer_lag") or {}
    lines.append(
        "lag        "
        + (
            ", ".join(f"p{p} {v}" for p, v in lag.items()) + f" (total {sum(lag.values())})"
            if lag
            else "no partition assigned yet"
        )
    )
    lines.extend(_training(status["training"]))
    return "\n".join(lines)


def _model_line(model: dict[str, Any] | None) -> str:
    if model is None:
        return "model      none loaded yet"
    return (
        f"model      {model['version']} ({model['intents']} intents), published "
        f"{_age(model['age_s'])} ago; registry current "
        f"{model['registry_current']}"
    )


def _broker_line(broker: dict[str, Any]) -> str:
    if broker.get("up") is False:
        return (
            f"broker     UNREACHABLE for {_age(broker['down_for_s'])}: "
            f"{broker['last_error']} ({broker['outages']} outages so far)"
        )
    return (
        f"broker     {'reachable' if broker.get('up') else 'not probed yet'} "
        f"({broker.get('outages', 0)} outages so far)"
    )

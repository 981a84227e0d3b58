"""The Label Studio round trip through the real broker: sampled labelling
requests on a topic, `labels export` to Label Studio tasks, a human's Label
Studio export, `labels import` as label events on the input topic, and those
labels joined with the original predictions by the real OutcomeJoiner."""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daemon.cli import cli
from daemon.config import Settings, load_settings
from daemon.label_studio import export_requests, import_labels
from models.registry import Registry
from streams.labeling import LabelingSampler
from streams.monitor import OutcomeJoiner
from streams.schema import LabelEvent, decode_event
from tests.integration.harness import produce, read_topic, unique

INTENTS = ["card_lost", "freeze_account", "balance", "transfer", "weather", "oos"]
SUBJECTS = [
    "my card",
    "the savings account",
    "a wire transfer",
    "the weather in lisbon",
    "my last payment",
    "the credit limit",
    "a lost wallet",
    "the exchange rate",
    "my pin number",
    "a direct debit",
    "the overdraft fee",
    "a foreign purchase",
]
VERBS = [
    "what about",
    "please check",
    "can you explain",
    "i need help with",
    "tell me something on",
]


def utterances() -> list[dict]:
    """60 different utterances with the live model's top-3, from sure to unsure."""
    out = []
    for i in range(60):
        p1 = 0.95 - (i % 10) * 0.06  # 0.95 .. 0.41
        p2 = (1 - p1) * 0.6  # p1 > p2 > p3 down to p1 = 0.41
        top = [INTENTS[i % 6], INTENTS[(i + 1) % 6], INTENTS[(i + 2) % 6]]
        out.append(
            {
                "event_id": f"u-{i}",
                "conversation_id": f"c-{i % 7}",
                "turn": i % 4,
                "text": f"{VERBS[i % 5]} {SUBJECTS[i % 12]} number {i} today",
                "topk": list(zip(top, [p1, p2, 1 - p1 - p2], strict=False)),
                "model_version": "v000002",
            }
        )
    return out


def settings_for(broker, tmp_path: Path, requests_topic: str, input_topic: str) -> Settings:
    return load_settings(
        None,
        kafka={"bootstrap": broker.bootstrap},
        topics={"input": input_topic, "labeling_requests": requests_topic},
        models={"registry_dir": str(tmp_path / "registry")},
    )


def human_export(tasks: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """What a labeller's Label Studio JSON export looks like: ids assigned, one or two
    annotations per task, some skipped. Returns it and the intent each labelled utterance got."""
    export, chosen = [], {}
    for i, task in enumerate(tasks):
        predicted = task["predictions"][0]["result"][0]["value"]["choices"][0]
        event_id = task["data"]["event_id"]
        # half confirmed, half corrected
        intent = predicted if i % 2 == 0 else next(x for x in INTENTS if x != predicted)
        annotations = [
            {
                "id": 5000 + i,
                "completed_by": 3,
                "was_cancelled": False,
                "lead_time": 4.2,
                "result": [
                    {
                        "id": f"r{i}",
                        "from_name": "intent",
                        "to_name": "text",
                        "type": "choices",
                        "origin": "prediction",
                        "value": {"choices": [intent]},
                    }
                ],
            }
        ]
        if i % 5 == 1:  # a second opinion later: the last annotation wins
            intent = "balance" if intent != "balance" else "transfer"
            annotations.append(
                {
                    **annotations[0],
                    "id": 6000 + i,
                    "result": [{**annotations[0]["result"][0], "value": {"choices": [intent]}}],
                }
            )
        if i % 7 == 3:  # the labeller skipped it
            annotations = [{"id": 7000 + i, "completed_by": 3, "was_cancelled": True, "result": []}]
        else:
            chosen[event_id] = intent
        export.append(
            {
                "id": 100 + i,
                "data": task["data"],
                "annotations": annotations,
                "predictions": task["predictions"],
                "drafts": [],
                "project": 1,
            }
        )
    return export, chosen


def test_requests_go_to_label_studio_and_come_back_as_joined_labels(broker, tmp_path: Path) -> None:
    requests_topic, input_topic = unique("labeling-requests"), unique("labels-in")
    settings = settings_for(broker, tmp_path, requests_topic, input_topic)
    sampler = LabelingSampler(
        "margin", budget_per_hour=3600, min_score=0.3, diversity_threshold=0.8, window=500
    )
    sent = utterances()
    requests = [
        r
        for u in sent
        if (
            r := sampler.offer(
                u["event_id"],
                u["conversation_id"],
                u["text"],
                u["model_version"],
                u["topk"],
                turn=u["turn"],
            )
        )
    ]
    assert 10 <= len(requests) < len(sent), sampler.counts  # the sure ones were not asked for
    # a redelivery, junk
    payloads = [json.dumps(r).encode() for r in requests] + [
        json.dumps(requests[0]).encode(),
        b"not json",
        b'{"event_id": "x"}',
    ]
    asyncio.run(
        produce(
            broker.bootstrap,
            requests_topic,
            payloads,
            keys=[r["conversation_id"].encode() for r in requests] + [b"c-0", None, None],
        )
    )

    # Export, with the registry's CURRENT intents in the labelling config.
    registry = Registry(settings.registry_dir)
    version = registry.publish(
        {"labels.json": json.dumps([*INTENTS, "travel"]).encode()}, parent=None, info={}
    ).version
    registry.set_current(version)
    result = export_requests(
        settings, tmp_path / "tasks.json", config_xml=tmp_path / "config.xml", timeout_s=30
    )
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert tasks == result.tasks
    # every request once
    assert sorted(t["data"]["event_id"] for t in tasks) == sorted(r["event_id"] for r in requests)
    uncertainty = [t["data"]["uncertainty"] for t in tasks]
    # a queue, most uncertain first
    assert uncertainty == sorted(uncertainty, reverse=True) and uncertainty != [
        r["score"] for r in requests
    ]
    assert len(result.skipped) == 2 and result.choices_from == f"registry {version}"
    choices = ET.fromstring((tmp_path / "config.xml").read_text()).find("Choices")
    assert choices is not None and [c.get("value") for c in choices.findall("Choice")] == [
        *INTENTS,
        "travel",
    ]
    by_event = {u["event_id"]: u for u in sent}
    for t in tasks:
        u = by_event[t["data"]["event_id"]]
        assert (t["data"]["text"], t["data"]["conversation_id"], t["data"]["turn"]) == (
            u["text"],
            u["conversation_id"],
            u["turn"],
        )
        assert t["predictions"][0]["result"][0]["value"]["choices"] == [u["topk"][0][0]]

    # A labeller's export comes back; import it onto the input topic.
    export, chosen = human_export(tasks)
    export_path = tmp_path / "label-studio-export.json"
    export_path.write_text(json.dumps(export))
    imported = import_labels(settings, export_path)
    assert len(imported.events) == len(chosen) and len(imported.skipped) == len(export) - len(
        chosen
    )
    assert all("cancelled" in reason for reason in imported.skipped)
    records = asyncio.run(read_topic(broker.bootstrap, input_topic, len(chosen), timeout_s=30))
    assert len(records) == len(chosen)
    labels = []
    for record in records:
        event = decode_event(record.value, settings.ingest.max_event_bytes)
        assert isinstance(event, LabelEvent), event
        assert record.key == event.conversation_id.encode()  # keyed like every conversation event
        labels.append(event)

    # The real joiner: every original prediction, then the imported labels.
    joiner = OutcomeJoiner()
    for u in sent:
        assert (
            joiner.record_prediction(
                u["event_id"], u["topk"][0][0], u["topk"][0][1], u["model_version"]
            )
            is None
        )
    outcomes = {
        o.event_id: o
        for o in (joiner.record_label(e.ref_event_id, intent=e.intent, ts=e.ts) for e in labels)
        if o is not None
    }
    assert set(outcomes) == set(chosen)
    for event_id, outcome in outcomes.items():
        predicted = by_event[event_id]["topk"][0][0]
        assert outcome.true_intent == chosen[event_id] and outcome.predicted == predicted
        assert (
            outcome.correct == (chosen[event_id] == predicted)
            and outcome.model_version == "v000002"
        )
    assert 0 < sum(o.correct for o in outcomes.values()) < len(outcomes)  # both kinds came through

    # Importing the same export again repeats the event ids:
    # downstream sees the same labels, joins nothing new.
    again = import_labels(settings, export_path)
    assert [e["event_id"] for e in again.events] == [e["event_id"] for e in imported.events]
    records = asyncio.run(read_topic(broker.bootstrap, input_topic, 2 * len(chosen), timeout_s=30))
    ids = [json.loads(r.value)["event_id"] for r in records]
    assert len(ids) == 2 * len(chosen) and sorted(set(ids)) == sorted(
        e["event_id"] for e in imported.events
    )
    assert all(
        joiner.record_label(e["ref_event_id"], intent=e["intent"]) is None for e in again.events
    )
    assert joiner.counts["joined"] == len(chosen)


def test_the_cli_round_trip_and_its_errors(broker, tmp_path: Path) -> None:
    requests_topic, input_topic = unique("labeling-requests"), unique("labels-in")
    sampler = LabelingSampler(
        "entropy", budget_per_hour=600, min_score=0.0, diversity_threshold=0.8, window=100
    )
    u = utterances()[9]
    request = sampler.offer(
        u["event_id"], u["conversation_id"], u["text"], u["model_version"], u["topk"]
    )
    assert request is not None
    asyncio.run(
        produce(broker.bootstrap, requests_topic, [json.dumps(request).encode()], keys=[b"c-2"])
    )
    env = {
        "DRIFTD_KAFKA__BOOTSTRAP": broker.bootstrap,
        "DRIFTD_TOPICS__LABELING_REQUESTS": requests_topic,
        "DRIFTD_TOPICS__INPUT": input_topic,
        "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "empty-registry"),
    }
    runner = CliRunner()

    out = runner.invoke(
        cli,
        [
            "labels",
            "export",
            str(tmp_path / "tasks.json"),
            "--config-xml",
            str(tmp_path / "config.xml"),
        ],
        env=env,
    )
    assert out.exit_code == 0, out.output
    # no registry: the intents the request names
    assert "wrote 1 tasks" in out.output and "3 intents (requests)" in out.output
    (task,) = json.loads((tmp_path / "tasks.json").read_text())
    export = [
        {
            **task,
            "id": 7,
            "annotations": [
                {
                    "id": 70,
                    "result": [
                        {
                            "from_name": "intent",
                            "to_name": "text",
                            "type": "choices",
                            "value": {"choices": ["weather"]},
                        }
                    ],
                }
            ],
        }
    ]
    (tmp_path / "export.json").write_text(json.dumps(export))

    dry = runner.invoke(
        cli, ["labels", "import", str(tmp_path / "export.json"), "--dry-run"], env=env
    )
    assert dry.exit_code == 0 and "would send 1 label events" in dry.output, dry.output
    out = runner.invoke(cli, ["labels", "import", str(tmp_path / "export.json")], env=env)
    assert out.exit_code == 0 and f"sent 1 label events to {input_topic}" in out.output, out.output
    (record,) = asyncio.run(read_topic(broker.bootstrap, input_topic, 1, timeout_s=30))
    event = decode_event(record.value, 65536)
    assert isinstance(event, LabelEvent) and (event.event_id, event.ref_event_id, event.intent) == (
        "ls-7-70",
        u["event_id"],
        "weather",
    )

    missing = runner.invoke(cli, ["labels", "import", str(tmp_path / "nope.json")], env=env)
    assert missing.exit_code == 2 and "cannot read" in missing.output
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    bad = runner.invoke(cli, ["labels", "import", str(tmp_path / "bad.json")], env=env)
    assert bad.exit_code == 2 and "list of tasks" in bad.output
    no_topic = runner.invoke(
        cli,
        ["labels", "export", str(tmp_path / "t2.json"), "--topic", unique("never-written")],
        env=env,
    )
    assert no_topic.exit_code == 1 and "does not exist" in no_topic.output
    assert not (tmp_path / "t2.json").exists()
    bad_config = runner.invoke(
        cli,
        ["labels", "export", str(tmp_path / "t3.json")],
        env={**env, "DRIFTD_LABELING__WINDOW": "0"},
    )
    assert bad_config.exit_code == 2 and "labeling.window" in bad_config.output


@pytest.mark.timeout(300)
def test_a_daemon_asks_for_labels_and_joins_the_answers(broker, tmp_path: Path) -> None:
    """The whole loop with a real daemon: it publishes requests for its least
    sure CLINC150 predictions; they go to Label Studio and back (the true
    intents as the labeller's answers); the daemon joins every answer."""
    from streams.datasets import groups, load_examples
    from tests.integration.harness import DaemonProcess
    from tests.integration.test_learning_loop import CLINC_SEED_DOMAINS, publish_seed_model

    domains = groups("clinc150")
    seed = {i for d in CLINC_SEED_DOMAINS for i in domains[d]}
    publish_seed_model(
        tmp_path / "registry", [e for e in load_examples("clinc150", "train") if e.intent in seed]
    )
    topic = unique("labeling-daemon")
    env = {
        "DRIFTD_MODELS__REGISTRY_DIR": str(tmp_path / "registry"),
        "DRIFTD_LABELING__ENABLED": "true",
        "DRIFTD_LABELING__BUDGET_PER_HOUR": "3600",
    }
    daemon = DaemonProcess(broker.bootstrap, tmp_path / "daemon", topic, extra_env=env).start()
    try:
        daemon.wait_ready(timeout_s=90, model=True)
        # all 10 domains: half of them unknown to the model
        test = load_examples("clinc150", "test")[::15]
        truth = {f"{topic}-u{i}": e.intent for i, e in enumerate(test)}
        # the join horizon counts from now
        sent = [
            {
                "event_id": f"{topic}-u{i}",
                "type": "utterance",
                "conversation_id": f"c{i}",
                "turn": 0,
                "ts": time.time(),
                "text": e.text,
            }
            for i, e in enumerate(test)
        ]
        asyncio.run(
            produce(
                broker.bootstrap,
                topic,
                [json.dumps(e).encode() for e in sent],
                keys=[e["conversation_id"].encode() for e in sent],
            )
        )
        daemon.wait_stored(len(sent))
        metrics = daemon.metrics()
        picked = metrics["driftd_labeling_offers_total{result=picked}"]
        offered = sum(v for k, v in metrics.items() if k.startswith("driftd_labeling_offers_total"))
        assert offered == len(sent) and 0 < picked < len(sent), metrics
        requests = [
            json.loads(r.value)
            for r in asyncio.run(
                read_topic(
                    broker.bootstrap, f"{topic}.labeling-requests", int(picked), timeout_s=30
                )
            )
        ]
        assert len(requests) == picked and all(
            r["event_id"] in truth and r["model_version"] == "v000001" for r in requests
        )
        unknown = sum(truth[r["event_id"]] not in seed for r in requests) / len(requests)
        print(
            f"\n  {len(sent)} predictions, {picked:.0f} labelling requests, "
            f"{unknown:.0%} of them for intents the model never saw "
            f"(the stream has {sum(i not in seed for i in truth.values()) / len(truth):.0%})"
        )
        assert unknown > 0.5  # the sampler asks where the model is lost

        settings = load_settings(
            None,
            kafka={"bootstrap": broker.bootstrap},
            topics={"input": topic, "labeling_requests": f"{topic}.labeling-requests"},
            models={"registry_dir": str(tmp_path / "registry")},
        )
        tasks = export_requests(settings, tmp_path / "tasks.json", timeout_s=30).tasks
        export = [
            {
                "id": i,
                "data": t["data"],
                "annotations": [
                    {
                        "id": 1000 + i,
                        "result": [
                            {
                                "from_name": "intent",
                                "to_name": "text",
                                "type": "choices",
                                "value": {"choices": [truth[t["data"]["event_id"]]]},
                            }
                        ],
                    }
                ],
            }
            for i, t in enumerate(tasks)
        ]
        (tmp_path / "export.json").write_text(json.dumps(export))
        imported = import_labels(settings, tmp_path / "export.json")
        assert len(imported.events) == len(tasks) == picked
        daemon.wait_until(
            lambda: daemon.metric("driftd_outcomes_total") >= picked,
            60,
            "every imported label joined",
        )
        assert daemon.metric("driftd_outcomes_total") == picked
    finally:
        daemon.stop_quietly()

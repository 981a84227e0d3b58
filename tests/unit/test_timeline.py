"""TimelineRecorder maths, JSON round trip, and the PNG render."""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.timeline import MARK_KINDS, TimelineRecorder, render_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _correct(i: int) -> bool:
    """Deterministic outcome for event i (1-based):
    0.95, then 0.5 after 1000, then 0.93 after 1600."""
    if i <= 1000:
        return i % 20 != 0  # 19/20 right
    if i <= 1600:
        return i % 2 == 0  # 1/2 right
    return i % 100 >= 7  # 93/100 right


def _synthetic_run(n: int = 2400, **kw: int) -> tuple[TimelineRecorder, list[bool]]:
    rec = TimelineRecorder(window=200, **kw)
    outcomes = []
    for i in range(1, n + 1):
        c = _correct(i)
        outcomes.append(c)
        rec.add_outcome(c, at_event=i, ts=1000.0 + i, model_version="v1" if i <= 1600 else "v2")
        if i == 1000:
            rec.mark("drift_onset", 1000, 2000.0, "topic shift")
        elif i == 1150:
            rec.mark("detection", 1150, 2150.0, "ADWIN")
        elif i == 1200:
            rec.mark("training_started", 1200, 2200.0, "")
        elif i == 1600:
            rec.mark("swap", 1600, 2600.0, "v1 -> v2")
    return rec, outcomes


def _window_mean(outcomes: list[bool], at: int, window: int = 200) -> float:
    chunk = outcomes[max(0, at - window) : at]
    return sum(chunk) / len(chunk)


def test_windowed_accuracy_values() -> None:
    rec, outcomes = _synthetic_run()
    series = dict(rec.series())
    assert series[1000] == pytest.approx(0.95)
    assert series[1100] == pytest.approx((95 + 50) / 200)  # half old regime, half drifted
    assert series[1600] == pytest.approx(0.5)
    assert series[2400] == pytest.approx(0.93)
    for x, y in rec.series():
        assert y == pytest.approx(_window_mean(outcomes, x)), x
    # Before the window fills, the mean is over what has arrived.
    assert series[20] == pytest.approx(19 / 20)
    assert rec.accuracy == pytest.approx(0.93)
    assert rec.segments == [(1, "v1"), (1601, "v2")]
    assert [m.kind for m in rec.marks] == ["drift_onset", "detection", "training_started", "swap"]


def test_late_outcomes_of_the_previous_version_start_no_new_segment() -> None:
    """After a swap, labels for predictions the old version
    made still arrive, interleaved with the new one's."""
    rec = TimelineRecorder(window=10)
    for i in range(1, 31):
        rec.add_outcome(True, model_version="v1" if i <= 10 or i % 2 else "v2")
    rec.add_outcome(True, model_version="v3")
    assert rec.segments == [(1, "v1"), (12, "v2"), (31, "v3")]


def test_subsampling_bounds_points_and_stays_exact() -> None:
    rec, outcomes = _synthetic_run(max_points=300)
    assert len(rec.points) <= 300
    assert rec.stride > 1
    xs = [x for x, _ in rec.points]
    assert all(x % rec.stride == 0 for x in xs)
    assert np.all(np.diff(xs) == rec.stride)
    assert rec.series()[-1][0] == 2400
    for x, y in rec.series():
        assert y == pytest.approx(_window_mean(outcomes, x))


def test_default_at_event_and_unknown_kind() -> None:
    rec = TimelineRecorder(window=3)
    for c in (True, False, True, True):
        rec.add_outcome(c)
    assert rec.series() == [
        (1, 1.0),
        (2, 0.5),
        (3, pytest.approx(2 / 3)),
        (4, pytest.approx(2 / 3)),
    ]
    assert rec.mark("swap").at_event == 4
    with pytest.raises(ValueError):
        rec.mark("explosion", 1, 0.0, "")
    assert {
        "drift_onset",
        "detection",
        "training_started",
        "swap",
        "rollback",
        "gate_rejected",
    } == MARK_KINDS


def test_json_round_trip_and_resume(tmp_path) -> None:
    rec, _ = _synthetic_run(n=1300)
    path = rec.save_json(tmp_path / "timeline.json")
    d = json.loads(path.read_text())
    assert d == rec.to_json()
    back = TimelineRecorder.from_json(d)
    assert back.to_json() == rec.to_json()
    assert back.series() == rec.series()
    assert back.marks == rec.marks
    # The rolling window survives, so recording can continue where it stopped.
    for i in range(1301, 1400):
        assert back.add_outcome(_correct(i), i) == rec.add_outcome(_correct(i), i)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_render_png(tmp_path) -> None:
    from matplotlib.image import imread

    rec, _ = _synthetic_run()
    rec.mark("gate_rejected", 2000, 3000.0, "")
    rec.mark("rollback", 2100, 3100.0, "")
    rec.mark("swap", 2200, 3200.0, "v2 -> v3")  # second swap: still one legend entry
    out = render_png(
        rec, tmp_path / "plots" / "timeline.png", reference=0.95, figsize=(10, 4), dpi=100
    )

    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert 10_000 < len(data) < 2_000_000
    img = imread(out)
    assert img.shape[:2] == (400, 1000)
    colours = np.unique((img[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50

    # Rendering from the JSON dict gives the same picture.
    out2 = render_png(rec.to_json(), tmp_path / "from_json.png", reference=0.95)
    assert np.array_equal(imread(out2), img)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "from_json.png",
        "timeline.png",
    ]


def test_render_empty_recorder(tmp_path) -> None:
    out = render_png(TimelineRecorder(), tmp_path / "empty.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE

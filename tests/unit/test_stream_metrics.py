"""``observe_all``: one call for a batch's values exposes what one observe per value does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import observe_all

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def exposition(values: list[float], *, bulk: bool) -> dict[str, float]:
    registry = CollectorRegistry()
    histogram = Histogram("latency_seconds", "test", buckets=BUCKETS, registry=registry)
    if bulk:
        observe_all(histogram, values)
        observe_all(histogram, values[:3])  # twice, as batches come
    else:
        for value in [*values, *values[:3]]:
            histogram.observe(value)
    return {
        f"{s.name}{s.labels.get('le', '')}": s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(BUCKETS),  # on a bound: counted in that bucket, not the next
            st.floats(min_value=0, max_value=100, allow_nan=False),
        ),
        max_size=50,
    )
)
def test_observe_all_exposes_what_one_observe_per_value_does(values: list[float]) -> None:
    bulk, each = exposition(values, bulk=True), exposition(values, bulk=False)
    # the buckets and the count exactly; the sum up to the order of its additions
    assert bulk.pop("latency_seconds_sum") == pytest.approx(each.pop("latency_seconds_sum"))
    assert bulk == each

"""Fuzzing: every mutated sample gets a well-formed MM7 answer or fault."""

from __future__ import annotations

import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import SAMPLES, check, mutated, target

ROOT, _ = target()


def test_every_sample_is_in_the_pool():
    assert len(SAMPLES) >= 15


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(case=mutated(), path=st.sampled_from(["/vasp/", "/mm7/v=p"]))
def test_mutated_samples_get_mm7_answers_in_bounded_memory(case, path):
    ctype, body = case
    tracemalloc.start()
    try:
        check(ROOT, path, ctype, body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The largest sample is 300 KB; parsing and answering it stays well
    # within 40 times that.
    assert peak < 12 * 1024 * 1024, f"{peak} bytes traced"

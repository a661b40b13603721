from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpunet.catalog import catalog
from gpunet.core.benchmark import (
    BELOW_REFERENCE_PCT,
    BenchmarkResult,
    drift,
    percentiles,
    reference,
    score,
    simulated_result,
    throughput,
)
from gpunet.core.tiers import LADDER, RETIRE, TierInput, propose


def test_reference_prefers_the_measured_matmul_rate_over_the_datasheet() -> None:
    ref = reference("A100-80GB", "bf16_tflops")
    assert ref is not None and ref.value == 271.2 and ref.source.startswith("measured")
    peak = reference("A100-80GB", "fp16_tflops")
    assert peak is not None and peak.value == 312 and peak.source.startswith("datasheet")
    assert reference("T4", "h2d_gbps") is None


def test_a_healthy_simulated_gpu_scores_100_and_is_marked_simulated() -> None:
    r = simulated_result(0, "H100-80GB")
    assert r.simulated and r.soak_errors == 0
    assert "h2d_gbps" in r.unmeasured  # no H100 host-copy reference to simulate from
    s = score("H100-80GB", r)
    assert s.score_pct == 100.0 and not s.flagged and s.reasons == ()


def test_a_gpu_at_60_percent_is_flagged_with_the_numbers() -> None:
    s = score("A100-80GB", simulated_result(0, "A100-80GB", 0.6))
    assert s.score_pct == 60.0 and s.flagged
    assert s.reasons[0].startswith("benchmarks at 60% of the A100-80GB reference (below 85%)")
    assert "bf16_tflops 162.72 vs 271.2" in s.reasons[0]


def test_soak_errors_fail() -> None:
    r = BenchmarkResult(0, {"bf16_tflops": 271.2}, soak_runs=10, soak_errors=2)
    s = score("A100-80GB", r)
    assert s.soak_failed and s.flagged and "2 of 10" in s.reasons[-1]


def test_nothing_measured_scores_nothing() -> None:
    s = score("A100-80GB", BenchmarkResult(0, {}, {"bf16_tflops": "no torch"}))
    assert s.score_pct is None and not s.flagged


def test_percentiles_and_drift() -> None:
    assert percentiles({"a": 1.0, "b": 2.0, "c": 2.0, "d": 4.0}) == {
        "a": 25.0,
        "b": 75.0,
        "c": 75.0,
        "d": 100.0,
    }
    assert drift([100.0]) is None
    assert drift([100.0, 97.5, 91.0]) == -9.0


def _g(gid: str, model: str, pct: float | None, failures: int = 0) -> TierInput:
    spec = catalog()[model]
    return TierInput(
        gid, model, spec.memory_mb, None, pct, throughput(model, pct), spec.tdp_w, failures
    )


def test_tier_rule_hand_case() -> None:
    fleet = [
        _g("fast", "A100-80GB", 100.0),
        _g("slow", "A100-80GB", 60.0),
        _g("t4", "T4", 100.0),
        _g("dying", "A100-80GB", 40.0),
        _g("flaky", "A100-80GB", 100.0, failures=3),
    ]
    got = {p.gpu_id: p for p in propose(fleet)}
    assert got["fast"].proposed == "training"
    # 60% of reference: flagged and one tier lower than its peers
    assert got["slow"].proposed == "inference"
    assert any("60% of reference" in r for r in got["slow"].reasons)
    assert got["t4"].proposed == "inference"
    assert got["dying"].proposed == RETIRE
    assert got["flaky"].proposed == RETIRE and "failed health 3 times" in got["flaky"].reasons
    assert all(p.moves for p in got.values())  # none had a tier yet


models = st.sampled_from(sorted(catalog()))


@given(
    st.lists(
        st.tuples(models, st.none() | st.floats(0, 130), st.integers(0, 5)),
        min_size=1,
        max_size=12,
    )
)
def test_every_proposal_carries_reasons(rows: list[tuple[str, float | None, int]]) -> None:
    fleet = [_g(f"g{i}", m, p, f) for i, (m, p, f) in enumerate(rows)]
    out = propose(fleet)
    assert [p.gpu_id for p in out] == [g.gpu_id for g in fleet]
    for g, p in zip(fleet, out, strict=True):
        assert p.proposed in LADDER and p.reasons and all(r.strip() for r in p.reasons)
        assert 0 < p.percentile <= 100
        if g.score_pct is not None and g.score_pct < BELOW_REFERENCE_PCT:
            assert p.proposed != "training"  # a flagged GPU never trains

"""The worker's metrics in this process (in-memory mode; the multiprocess serving of a real
prefork worker is checked end to end in test_e2e_canary.py)."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.orm import Session, sessionmaker

from registry.canary.outcome_input import Refusal
from registry.canary.outcomes import StoreResult
from registry.canary.sweep import SweepItem, SweepReport
from registry.errors import InvalidInput, UpstreamPermanent, UpstreamTransient
from registry.settings import Settings
from tests.factories import deploy_new, make_tenant
from worker import metrics


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_sweep_report_counts_decisions_promotions_and_rollbacks() -> None:
    before = {
        "hold": value("ftdeploy_canary_decisions_total", action="hold"),
        "promote": value("ftdeploy_promotions_total", actor="auto"),
        "rollback": value("ftdeploy_rollbacks_total", actor="auto"),
        "sweeps": value("ftdeploy_sweep_duration_seconds_count"),
    }
    report = SweepReport(
        started_at=datetime.now(UTC),
        items=[
            SweepItem("a", 2, 10, "hold", "waiting"),
            SweepItem("b", 2, 10, "hold", "waiting"),
            SweepItem("c", 2, 10, "step", "good", applied=True),
            SweepItem("d", 2, 50, "promote", "good", skipped="moved"),
            SweepItem("e", 2, 10, "rollback", "bad", applied=True),
        ],
        duration_seconds=0.02,
    )
    metrics.sweep_report(report)
    assert value("ftdeploy_canary_decisions_total", action="hold") == before["hold"] + 2
    # Only applied actions are promotions or rollbacks; the skipped promote is not.
    assert value("ftdeploy_promotions_total", actor="auto") == before["promote"] + 1
    assert value("ftdeploy_rollbacks_total", actor="auto") == before["rollback"] + 1
    assert value("ftdeploy_sweep_duration_seconds_count") == before["sweeps"] + 1


def test_outcomes_and_openai_errors_and_operator_changes() -> None:
    recorded = value("ftdeploy_outcomes_recorded_total")
    refused = value("ftdeploy_outcomes_refused_total", field="score")
    metrics.outcomes_stored(StoreResult(7, [Refusal(0, "score", "bad"), Refusal(3, "score", "x")]))
    metrics.OutcomeMetrics().recorded(3)
    assert value("ftdeploy_outcomes_recorded_total") == recorded + 10
    assert value("ftdeploy_outcomes_refused_total", field="score") == refused + 2

    transient = value("ftdeploy_openai_errors_total", error_class="UpstreamTransient")
    metrics.openai_error(UpstreamTransient("ftjob-1", "HTTP 503"))
    metrics.openai_error(UpstreamPermanent("ftjob-1", "HTTP 404"))
    metrics.openai_error(InvalidInput("x", "not an OpenAI error"))
    assert value("ftdeploy_openai_errors_total", error_class="UpstreamTransient") == transient + 1
    assert value("ftdeploy_openai_errors_total", error_class="InvalidInput") == 0

    operator = value("ftdeploy_rollbacks_total", actor="operator")
    metrics.traffic_change("rollback", "operator:alice")
    assert value("ftdeploy_rollbacks_total", actor="operator") == operator + 1


def test_deployments_gauge_counts_the_database(
    db_url: str, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session, session.begin():
        canary = make_tenant(session, strategy="canary")
        deploy_new(session, canary)
        deploy_new(session, canary)
        deploy_new(session, make_tenant(session, strategy="immediate"))
    [family] = list(metrics.DeploymentsCollector(db_url).collect())
    samples = {(s.labels["strategy"], s.labels["status"]): s.value for s in family.samples}
    assert samples == {
        ("canary", "promoted"): 1,
        ("canary", "active"): 1,
        ("immediate", "promoted"): 1,
    }
    assert (
        list(metrics.DeploymentsCollector("postgresql+psycopg://nobody@127.0.0.1:1/x").collect())
        == []
    )


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses listening on `port`, from the kernel's socket table."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_metrics_listen_on_loopback_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory of our own: start_server must not switch this process to multiprocess mode.
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    port = metrics.start_server(Settings(metrics_port=0, data_dir=tmp_path))
    assert port is not None
    assert _listening_addresses(port) == {"127.0.0.1"}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
    # FTDEPLOY_METRICS_HOST opens it to other interfaces when an operator says so.
    monkeypatch.setenv("FTDEPLOY_METRICS_HOST", "0.0.0.0")
    wide = metrics.start_server(Settings(metrics_port=0, data_dir=tmp_path))
    assert wide is not None and _listening_addresses(wide) == {"0.0.0.0"}

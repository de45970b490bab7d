"""Metrics: exact counts per event, and labels that can never carry PHI."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from relay.metrics import Metrics
from relay.model import (
    Action,
    Decision,
    DeliveryResult,
    Peer,
    Reply,
    TlsInfo,
    Verdict,
)

ADDRESS = "jane.doe@example.com"


def decision(category: str = "marketing", **kw: object) -> Decision:
    fields: dict[str, object] = {
        "decision_id": "d1",
        "session_id": "s1",
        "time": 0.0,
        "peer": Peer("127.0.0.1", 40000),
        "tls": TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        "auth_user": "app",
        "sender_domain": "example.org",
        "recipients": (ADDRESS, "b@example.com"),
        "category": category,
        "mode": "enforce",
        "verdicts": (
            Verdict.ok("require-tls"),
            Verdict(rule="subject-phi", action=Action.REJECT, reason="phi.subject.mrn"),
        ),
        "action": Action.REJECT,
        "enforced_action": Action.REJECT,
        "reply": Reply(550, "5.7.1", "Subject line contains protected health information"),
        "accepted": (),
        "dropped": {ADDRESS: "consent.missing", "b@example.com": "optout"},
        "size": 1234,
    }
    fields.update(kw)
    return Decision(**fields)  # type: ignore[arg-type]


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_decision_counts_messages_verdicts_drops_and_latency() -> None:
    m = Metrics(CollectorRegistry())
    m.decision(decision(), 0.004)
    m.decision(decision(enforced_action=Action.PASS, dropped={}), 0.2)
    assert value(m, "phi_relay_messages_total", decision="reject", category="marketing") == 1.0
    assert value(m, "phi_relay_messages_total", decision="pass", category="marketing") == 1.0
    assert (
        value(
            m,
            "phi_relay_policy_verdicts_total",
            policy="subject-phi",
            action="reject",
            reason="phi.subject.mrn",
        )
        == 2.0
    )
    assert (
        value(
            m, "phi_relay_policy_verdicts_total", policy="require-tls", action="pass", reason="none"
        )
        == 2.0
    )
    assert value(m, "phi_relay_recipients_dropped_total", reason="consent.missing") == 1.0
    assert value(m, "phi_relay_recipients_dropped_total", reason="optout") == 1.0
    assert value(m, "phi_relay_decision_seconds_count") == 2.0
    assert value(m, "phi_relay_decision_seconds_bucket", le="0.005") == 1.0
    assert value(m, "phi_relay_decision_seconds_sum") == pytest.approx(0.204)


def test_unknown_category_and_free_text_never_become_labels() -> None:
    m = Metrics(CollectorRegistry())
    m.decision(
        decision(
            category=ADDRESS,
            verdicts=(Verdict(rule="Subject PHI", action=Action.REJECT, reason=f"x {ADDRESS}"),),
            dropped={ADDRESS: "John Smith's results"},
        ),
        0.01,
    )
    m.unsubscribe("Your HIV results", "ok")
    m.refused_session(f"user {ADDRESS}")
    m.policy_error("Jane Doe")
    text = generate_latest(m.registry).decode()
    for phi in (ADDRESS, "jane", "John", "Smith", "HIV", "Jane Doe"):
        assert phi not in text
    assert value(m, "phi_relay_messages_total", decision="reject", category="unknown") == 1.0
    assert (
        value(m, "phi_relay_policy_verdicts_total", policy="other", action="reject", reason="other")
        == 1.0
    )
    assert value(m, "phi_relay_recipients_dropped_total", reason="other") == 1.0
    assert value(m, "phi_relay_unsubscribes_total", category="unknown", result="ok") == 1.0
    assert value(m, "phi_relay_sessions_refused_total", reason="other") == 1.0
    assert value(m, "phi_relay_policy_errors_total", policy="other") == 1.0


def test_operator_categories_are_labels_when_configured() -> None:
    m = Metrics(CollectorRegistry(), categories=["marketing", "newsletter"])
    m.decision(decision(category="newsletter"), 0.01)
    m.decision(decision(category="education"), 0.01)
    assert value(m, "phi_relay_messages_total", decision="reject", category="newsletter") == 1.0
    assert value(m, "phi_relay_messages_total", decision="reject", category="unknown") == 1.0


def test_delivery_by_outcome_and_reply_class() -> None:
    m = Metrics(CollectorRegistry())
    result = DeliveryResult(
        decision_id="d1",
        upstream="smtp.example.net:587",
        recipients=(ADDRESS,),
        reply=Reply(250, "2.0.0", "OK"),
        refused={},
        duration_ms=350.0,
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        outcome="delivered",
    )
    m.delivery(result)
    m.delivery(replace(result, reply=Reply(451, "4.4.2", "timeout"), outcome="tempfail"))
    assert value(m, "phi_relay_deliveries_total", outcome="delivered", reply_class="2xx") == 1.0
    assert value(m, "phi_relay_deliveries_total", outcome="tempfail", reply_class="4xx") == 1.0
    assert value(m, "phi_relay_upstream_seconds_count") == 2.0
    assert value(m, "phi_relay_upstream_seconds_sum") == pytest.approx(0.7)
    assert value(m, "phi_relay_upstream_seconds_bucket", le="0.25") == 0.0
    assert value(m, "phi_relay_upstream_seconds_bucket", le="0.5") == 2.0


def test_sessions_auth_reload_audit() -> None:
    m = Metrics(CollectorRegistry())
    m.session(True)
    m.session(True)
    m.session(False)
    m.auth_failure()
    m.audit_error()
    m.refused_session("tls.required")
    assert value(m, "phi_relay_sessions_active") == 1.0
    assert value(m, "phi_relay_sessions_total") == 2.0
    assert value(m, "phi_relay_auth_failures_total") == 1.0
    assert value(m, "phi_relay_audit_errors_total") == 1.0
    assert value(m, "phi_relay_sessions_refused_total", reason="tls.required") == 1.0
    assert value(m, "phi_relay_config_last_reload_success") == 1.0
    m.config_reload(False)
    assert value(m, "phi_relay_config_last_reload_success") == 0.0
    m.config_reload(True)
    assert value(m, "phi_relay_config_last_reload_success") == 1.0
    assert value(m, "phi_relay_config_reloads_total", result="error") == 1.0
    assert value(m, "phi_relay_config_reloads_total", result="ok") == 1.0


def test_default_registry_is_private_and_has_process_metrics() -> None:
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    a.auth_failure()
    assert value(b, "phi_relay_auth_failures_total") == 0.0
    assert a.registry.get_sample_value("process_cpu_seconds_total") is not None

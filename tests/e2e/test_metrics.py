"""/metrics of every service, scraped during a SIPp call through the whole system.

One call waits in a queue with no agent logged in, then an agent logs in and takes it. Scraped
while it waits and after it ended, each service's numbers must have moved: the api's reading of the
tenant's state (queue, oldest wait, agents, calls by outcome, stream groups), the dispatcher's
decision latency, the cdr-writer's handled events, the sip-edge's SIP counts and ring latency; a
retransmitted INVITE moves the edge's retransmission count.
Every metric the alert rules and the dashboard in deploy/monitoring name must be in a scrape.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_harness import caller, sip, started_system
from prometheus_client.parser import text_string_to_metric_families

from callcenter_dev.sipp import Sipp
from callcenter_dev.system import WholeSystem, wait_for

yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.slow
TENANT = "metrics"
FLOW = "billing"
MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WholeSystem]:
    # the edge applies a call's end itself, whatever its CPU share (an edge still busy with its start
    # would leave it to the dispatchers): counted below
    yield from started_system(tmp_path_factory, TENANT, common_env={"CC_RING_TIMEOUT_S": "10", "CC_WRAPUP_S": "1"},
                              edge_env={"CC_APPLY_CALL_ENDS": "true", "CC_APPLY_CALL_ENDS_MAX_CPU": "0"})


def scrape(system: WholeSystem, service: str) -> Samples:
    if service == "api":
        r = system.api.get("/metrics")
    else:
        r = httpx.get(system.services[service].health_url.replace("/healthz", "/metrics"), timeout=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def names_in_deploy() -> set[str]:
    """Every callcenter_* metric named by an alert rule or a dashboard panel."""
    exprs = [rule["expr"] for path in MONITORING.glob("*.rules.yaml")
             for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    for path in MONITORING.glob("*.dashboard.json"):
        exprs += [t["expr"] for panel in json.loads(path.read_text())["panels"] for t in panel.get("targets", [])]
    return {name for expr in exprs for name in re.findall(r"\bcallcenter_[a-z_]+\b", expr)}


def test_every_service_counts_a_call(system: WholeSystem, peers: list[Sipp]) -> None:
    welcome = Sipp(sip("media_welcome.xml"), extra=["-d", "200"]).start()
    queue = Sipp(sip("media_queue.xml")).start()
    phone = Sipp(sip("agent.xml")).start()
    peers += [welcome, queue, phone]
    system.provision(FLOW, welcome, queue, {"3001": phone})
    before = {service: scrape(system, service) for service in system.services}
    assert value(before["api"], "callcenter_queue_calls", flow=FLOW) == 0
    assert value(before["api"], "callcenter_tenant_scrape_ok") == 1

    call = caller(system, "caller.xml", FLOW, pause_ms=1500).start()
    peers.append(call)
    wait_for(lambda: system.call_ids_of_flow(FLOW) and value(scrape(system, "api"), "callcenter_queue_calls",
                                                             flow=FLOW) == 1, 15, "the call queued", system)
    waiting = {service: scrape(system, service) for service in system.services}
    api = waiting["api"]
    assert value(api, "callcenter_queue_oldest_wait_seconds", flow=FLOW) > 0
    assert value(api, "callcenter_flow_sl_threshold_seconds", flow=FLOW) == 20  # the default T
    assert value(api, "callcenter_flow_agents_logged_in", flow=FLOW) == 0  # the alert's case
    assert value(api, "callcenter_agents", state="logged_out") >= 1
    assert value(api, "callcenter_calls_live") == 1
    assert value(api, "callcenter_calls_total", outcome="arrived") > value(before["api"], "callcenter_calls_total",
                                                                         outcome="arrived")
    assert value(api, "callcenter_edge_heartbeat_age_seconds", edge=system.edge_id) < 5
    assert ("callcenter_stream_lag", (("group", "dispatcher"), ("stream", "reports"))) in api
    edge = waiting["sip-edge"]
    assert value(edge, "callcenter_sip_requests_total", direction="in", method="INVITE") >= 1
    assert value(edge, "callcenter_sip_requests_total", direction="out", method="INVITE") >= 2  # welcome, queue
    assert value(edge, "callcenter_sip_responses_total", direction="out", code="200") >= 1
    assert value(waiting["dispatcher"], "callcenter_dispatch_latency_seconds_count", path="report_to_decision") > 0

    assert system.api.post("/v1/agents/3001/login").json()["state"] == "ringing"
    assert call.wait() == 0, call.errors() + system.logs()
    [call_id] = system.call_ids_of_flow(FLOW)
    system.wait_for_cdr(call_id)
    wait_for(lambda: value(scrape(system, "cdr-writer"), "callcenter_stream_entries_handled_total",
                           group="cdr-writer") > value(before["cdr-writer"], "callcenter_stream_entries_handled_total",
                                                       group="cdr-writer"), 10, "the cdr-writer's events", system)
    after = {service: scrape(system, service) for service in system.services}
    assert value(after["api"], "callcenter_calls_total", outcome="answered") == 1
    assert value(after["api"], "callcenter_queue_calls", flow=FLOW) == 0
    assert value(after["sip-edge"], "callcenter_dispatch_latency_seconds_count", path="agent_free_to_ring") == 1
    assert value(after["sip-edge"], "callcenter_sip_requests_total", direction="in", method="BYE") >= 1
    # the call's end was applied by the edge's own batch (CC_APPLY_CALL_ENDS on), then found DUPLICATE
    assert value(after["sip-edge"], "callcenter_edge_steps_applied_total", rc="OK") == \
        value(before["sip-edge"], "callcenter_edge_steps_applied_total", rc="OK") + 1
    assert value(after["dispatcher"], "callcenter_dispatch_latency_seconds_count", path="report_to_decision") > \
        value(waiting["dispatcher"], "callcenter_dispatch_latency_seconds_count", path="report_to_decision")
    for service in system.services:  # nothing dead-lettered, Redis never away
        assert value(after[service], "callcenter_dead_letters_total") == 0, service
        assert value(after[service], "callcenter_redis_errors_total") == 0, service
    assert value(after["api"], "callcenter_dead_letter_entries") == 0

    # every metric the alert rules and the dashboard use is exposed by some service
    exposed = {name for samples in (*waiting.values(), *after.values()) for name, _ in samples}
    # a histogram's and a counter's base name: what a rule may name besides the sample names
    exposed |= {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in exposed}
    missing = names_in_deploy() - exposed
    assert not missing, f"named in deploy/monitoring but exposed by no service: {sorted(missing)}"


def test_metrics_of_the_api_need_a_key(system: WholeSystem) -> None:
    assert httpx.get(f"{system.api_url}/metrics", timeout=5).status_code == 401


def test_the_edge_counts_a_retransmitted_request(system: WholeSystem) -> None:
    """The same INVITE twice (a caller that missed the answer): the second is answered from the
    edge's response cache and counted as a retransmission received, the answer twice as sent."""
    before = scrape(system, "sip-edge")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        port = s.getsockname()[1]
        invite = (f"INVITE sip:nosuchflow@127.0.0.1:{system.sip_port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-metrics-1\r\n"
                  f"From: <sip:retrans@127.0.0.1:{port}>;tag=metrics1\r\n"
                  f"To: <sip:nosuchflow@127.0.0.1:{system.sip_port}>\r\n"
                  "Call-ID: metrics-retransmission-1\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:retrans@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        finals = []
        for _ in range(2):
            s.sendto(invite, ("127.0.0.1", system.sip_port))
            while True:  # provisional answers, then the final one
                status = s.recv(65535).split(b" ", 2)[1]
                if not status.startswith(b"1"):
                    finals.append(status)
                    break
    assert finals[0] == finals[1] and finals[0] >= b"400", finals  # refused (no SDP, no such flow), twice
    after = scrape(system, "sip-edge")
    code = finals[0].decode()
    for name, labels, grew_by in (("callcenter_sip_requests_total", {"direction": "in", "method": "INVITE"}, 2),
                                  ("callcenter_sip_responses_total", {"direction": "out", "code": code}, 2),
                                  ("callcenter_sip_retransmissions_total", {"direction": "in"}, 1)):
        assert value(after, name, **labels) - value(before, name, **labels) == grew_by, (name, labels)

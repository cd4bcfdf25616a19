"""fleet.load.metrics and fleet.ca.metrics: names, label bounds, promtool on the exposition, the
histogram conversion, the final-scrape wait; and the dashboards against those names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fleet.ca.metrics import CaMetrics
from fleet.ca.service import CaStatistics
from fleet.cmp.server import Outcome, ServerStatistics
from fleet.http.client import CmpHttpClient
from fleet.http.server import HttpServerStats
from fleet.load.capacity import StepAssessment
from fleet.load.capacity_metrics import CapacityMetrics
from fleet.load.child import free_port
from fleet.load.histogram import LatencyHistogram
from fleet.load.metrics import LATENCY_BUCKETS, FleetMetrics, histogram_buckets, transport_metrics
from fleet.prometheus import LABEL_LIMIT, MetricsError
from fleet.ra.metrics import RaMetrics

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_LABELS = {"worker", "operation", "result", "kind", "fail_info", "body", "key_type", "profile", "workers",
                  "status", "code", "state", "le", "warning"}  # warning: fleet.cmp.habits.WARNINGS, a fixed set


def _fed_fleet() -> FleetMetrics:
    m = FleetMetrics("1", process=False)
    for op in ("ir", "kur"):
        m.operation_started(op)
        m.operation_done(op, True, "ok", (), 0.120, 0.080, 0)
        m.exchange(op, op, 0.04)
        m.exchange(op, "certConf", 0.01)
    m.operation_started("ir")
    m.operation_done("ir", False, "rejected", ("badPOP", "badRequest"), 2.0, 1.5, 3)
    return m


def _fed_ca() -> CaMetrics:
    m = CaMetrics(process=False)
    m.request(Outcome("ir", "ip", "accepted", serial=7), 0.002)
    m.request(Outcome("certConf", "pkiconf", "accepted", serial=7), 0.0005)
    m.request(Outcome("rr", "rp", "accepted", serial=7), 0.001)
    m.request(Outcome("ir", "error", "rejection", fail_info=1 << 9), 0.001)  # badPOP
    m.request(Outcome("certConf", "pkiconf", "rejection", fail_info=1 << 15))  # from the tick, no time
    m.response(200)
    m.response("dropped")
    m.http_started()
    m.sample(CaStatistics(
        servers={"lcmpp": ServerStatistics(5, 2, 1, 0, 10, 9, 1, 0), "3gpp": ServerStatistics(1, 0, 0, 0, 2, 2, 0, 0)},
        outcomes={}, http={}, connections=HttpServerStats(3, 10, 1, 40, 0), certificates={},
    ))
    return m


def _families(text: bytes) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


@pytest.mark.parametrize("make", [_fed_fleet, _fed_ca], ids=["fleet", "ca"])
def test_names_types_and_labels_follow_conventions(make) -> None:
    families = _families(make().exposition())
    prefix = "fleet_ca_" if make is _fed_ca else "fleet_"
    assert families
    for name, family in families.items():
        assert name.startswith(prefix), name
        assert family.type in ("counter", "gauge", "histogram"), name
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            if family.type == "histogram":
                assert sample.name.endswith(("_bucket", "_sum", "_count")), sample.name
        if family.type == "histogram" or name.endswith("seconds"):
            assert name.endswith("_seconds"), name


def test_latency_histograms_have_buckets_from_1ms_to_60s() -> None:
    fam = _families(_fed_fleet().exposition())["fleet_transaction_latency_seconds"]
    bounds = sorted({float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")})
    assert bounds[0] == 0.001 and bounds[-2] == 60.0 and bounds[-1] == float("inf")
    assert tuple(bounds[:-1]) == LATENCY_BUCKETS
    counts = {(s.labels["operation"], s.labels["result"]): s.value for s in fam.samples if s.name.endswith("_count")}
    assert counts == {("ir", "ok"): 1, ("kur", "ok"): 1, ("ir", "failed"): 1}


def test_observer_counts_what_it_is_told() -> None:
    fams = _families(_fed_fleet().exposition())
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert value[("fleet_transactions_started_total", (("operation", "ir"), ("worker", "1")))] == 2
    assert value[("fleet_transactions_completed_total", (("operation", "ir"), ("result", "failed"), ("worker", "1")))] == 1
    assert value[("fleet_transaction_errors_total", (("kind", "rejected"), ("operation", "ir"), ("worker", "1")))] == 1
    assert value[("fleet_transaction_fail_info_total", (("fail_info", "badPOP"), ("operation", "ir"), ("worker", "1")))] == 1
    assert value[("fleet_polls_total", (("operation", "ir"), ("worker", "1")))] == 3
    assert value[("fleet_exchange_seconds_count", (("body", "certConf"), ("operation", "kur"), ("worker", "1")))] == 1


def test_error_kind_label_stays_bounded() -> None:
    m = FleetMetrics("0", process=False)
    for i in range(3 * LABEL_LIMIT):
        m.operation_done("ir", False, f"kind-{i}", (), 0.1, 0.1, 0)
    fam = _families(m.exposition())["fleet_transaction_errors"]
    kinds = {s.labels["kind"] for s in fam.samples}
    assert len(kinds) == LABEL_LIMIT + 1 and "other" in kinds
    assert sum(s.value for s in fam.samples) == 3 * LABEL_LIMIT


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian's prometheus package)")
@pytest.mark.parametrize("make", [_fed_fleet, _fed_ca, lambda: FleetMetrics("0"), lambda: CaMetrics()],
                         ids=["fleet", "ca", "fleet-empty", "ca-empty"])
def test_promtool_check_metrics_passes(make) -> None:
    text = make().exposition()
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == b"" and proc.stderr.strip() == b""  # not even a lint warning


def test_ca_metrics_values() -> None:
    fams = _families(_fed_ca().exposition())
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert value[("fleet_ca_requests_total", (("body", "ir"), ("status", "accepted")))] == 1
    assert value[("fleet_ca_failures_total", (("body", "ir"), ("fail_info", "badPOP")))] == 1
    assert value[("fleet_ca_certificates_revoked_total", ())] == 1
    assert value[("fleet_ca_certificates_issued_total", ())] == 12
    assert value[("fleet_ca_certificates_unconfirmed_total", ())] == 1
    assert value[("fleet_ca_transactions", (("state", "awaiting_confirm"),))] == 2
    assert value[("fleet_ca_transactions", (("state", "in_progress"),))] == 3  # 6 live - 2 - 1
    assert value[("fleet_ca_requests_in_progress", ())] == 1
    assert value[("fleet_ca_http_responses_total", (("code", "dropped"),))] == 1
    assert value[("fleet_ca_http_connections_open", ())] == 3
    assert value[("fleet_ca_request_processing_seconds_count", (("body", "certConf"),))] == 1  # tick outcome untimed


def test_fleet_histogram_converts_to_prometheus_buckets() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(np.log(0.05), 1.5, 5000)
    bounds = np.array(LATENCY_BUCKETS)
    values = values[np.min(np.abs(values[:, None] / bounds[None, :] - 1), axis=1) > 0.01]  # not within 1 % of a bound
    hist = LatencyHistogram()
    hist.record_many(values)
    reference = Histogram("x_seconds", "x", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for v in values:
        reference.observe(v)
    expected = {s.labels["le"]: s.value for s in reference.collect()[0].samples if s.name.endswith("_bucket")}
    buckets, total = histogram_buckets(hist)
    assert {float(le): v for le, v in buckets} == {float(le): v for le, v in expected.items()}
    assert total == pytest.approx(values.sum())


def test_serve_and_wait_for_the_final_scrape() -> None:
    m = FleetMetrics.serve(free_port(), worker="0", host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{m.server.server_port}/metrics"
        assert not m.finish(timeout=5)  # never scraped: no wait
        assert "fleet_transactions_started" in httpx.get(url).text
        stop = threading.Event()

        def scraper() -> None:
            while not stop.is_set():
                httpx.get(url)
                time.sleep(0.2)

        t = threading.Thread(target=scraper)
        t.start()
        try:
            time.sleep(0.5)
            m.finished_at = None
            t0 = time.monotonic()
            assert m.finish()  # scraped regularly: waits for the next scrape, about 0.2 s
            assert time.monotonic() - t0 < 2.0
        finally:
            stop.set()
            t.join()
        with pytest.raises(MetricsError, match="cannot serve metrics on 127.0.0.1"):
            FleetMetrics.serve(m.server.server_port, host="127.0.0.1")
    finally:
        m.close()


# -- dashboards -----------------------------------------------------------------------------------


def _dashboards() -> list[tuple[str, dict]]:
    return [(name, json.loads((ROOT / "dashboards" / name).read_text())) for name in ("fleet-run.json", "fleet-ca.json", "fleet-provision.json",
                                                                                        "fleet-capacity.json", "fleet-ra.json")]


def test_dashboards_are_what_build_py_writes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboards_build", ROOT / "dashboards" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for name, make in build.OUTPUTS.items():
        assert (ROOT / "dashboards" / name).read_text() == build.render(make()), f"run dashboards/build.py ({name})"


def _fed_capacity() -> CapacityMetrics:
    """A capacity search two steps in: one held, one running."""
    metrics = CapacityMetrics()
    metrics.step_started(1, 100.0)
    metrics.step_done(StepAssessment(100.0, True, [], True, "steady", 99.5, {"ir": 0.01}, {}, {}), 100.0)
    metrics.step_started(2, 200.0)
    return metrics


def test_capacity_metrics_mark_each_step() -> None:
    families = {f.name: f for f in text_string_to_metric_families(_fed_capacity().exposition().decode())}
    info = sorted((s.labels["step"], s.labels["rate"], s.labels["outcome"]) for s in families["fleet_capacity_step_info"].samples)
    assert info == [("1", "100", "held"), ("2", "200", "running")]
    assert families["fleet_capacity_offered_rate"].samples[0].value == 200.0
    assert families["fleet_capacity_rate"].samples[0].value == 100.0
    assert families["fleet_capacity_step_achieved_rate"].samples[0].value == 99.5
    dash = json.loads((ROOT / "dashboards" / "fleet-capacity.json").read_text())
    annotation = next(a for a in dash["annotations"]["list"] if a["name"] == "Capacity-search steps")
    assert "fleet_capacity_step_info" in annotation["expr"] and annotation["datasource"]["uid"] == "${datasource}"
    assert all(f"{{{{{label}}}}}" in annotation["titleFormat"] for label in ("step", "rate", "outcome"))


def _transport_exposition() -> bytes:
    """What a worker's collector adds for its transport: the HTTP client's pool counters."""
    registry = CollectorRegistry()

    class Transport:
        def collect(self) -> object:
            return transport_metrics("0", CmpHttpClient("http://127.0.0.1:9/").counters())

    registry.register(Transport())  # type: ignore[arg-type]
    return generate_latest(registry)


def _exposed_names() -> set[str]:
    names = set()
    for text in (_fed_fleet().exposition(), FleetMetrics("0").exposition(), _fed_ca().exposition(), CaMetrics().exposition(),
                 _fed_capacity().exposition(), _fed_ra().exposition(), _transport_exposition()):
        for f in text_string_to_metric_families(text.decode()):
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(f.type, ("",))
            names |= {f.name + s for s in suffixes}
    return names


def _fed_ra() -> RaMetrics:
    """RA metrics with every series present (what a running RA exposes)."""
    metrics = RaMetrics()
    metrics.request("ir", "forwarded", "", 0.01)
    metrics.request("ir", "refused", "badMessageCheck", 0.001)
    metrics.upstream("nested", 0.02, "")
    metrics.upstream("single", 0.5, "timeout")
    metrics.batch(4)
    metrics.response(200)
    metrics.http_started()
    metrics.transactions.set(3)
    return metrics


@pytest.mark.parametrize("name,dash", _dashboards(), ids=["run", "ca", "provision", "capacity", "ra"])
def test_dashboard_structure(name: str, dash: dict) -> None:
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert dash["schemaVersion"] >= 36 and "id" not in dash  # imports as a new dashboard
    exposed = _exposed_names()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    queries = 0
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            queries += 1
            expr = t["expr"]
            assert t["datasource"]["uid"] == "${datasource}"
            for metric in re.findall(r"\b((?:fleet|process)_[a-z_]+)\b", expr):
                assert metric in exposed, f"{panel['title']}: {metric} is not exposed by fleet"
            for m in re.finditer(r"histogram_quantile\(([0-9.]+), (\w+) ", expr):
                assert m.group(2) == "sum", expr
                assert re.search(r"histogram_quantile\([0-9.]+, sum by \(le\b", expr), expr
            assert not re.search(r"\b(avg|avg_over_time|quantile)\s*(by\s*\([^)]*\)\s*)?\(\s*histogram_quantile", expr), expr
            assert "device" not in expr and "serial" not in expr
    assert queries >= 10

"""Write fleet-run.json, fleet-ca.json and fleet-ra.json (Grafana 10+ dashboards) from the panel lists below.

Run ``python3 dashboards/build.py`` after editing; tests/test_metrics.py checks the JSON files
are what this script writes. Every quantile is ``histogram_quantile`` over buckets summed
``by (le)`` (and by operation or body) across all fleet processes: never an average of
per-process quantiles. The datasource is the ``datasource`` dashboard variable, so the JSON
imports into any Grafana 10+ without edits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"
W = 'worker=~"$worker", job=~"$job"'  # the run dashboard's selector
CA = 'job=~"$job"'


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    """A range query (stat panels too: they show the last value, which stays after the run's
    series went stale)."""
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref, "range": True, "instant": False}


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[dict[str, Any]]:
    """p50/p90/p99 from summed buckets of all processes."""
    by_clause = f"le, {by}" if by else "le"
    return [
        target(
            f"histogram_quantile({q}, sum by ({by_clause}) (rate({metric}_bucket{{{selector}}}[{RI}])))",
            (f"{{{{{by}}}}} " if by else "") + f"p{q * 100:g}",
            chr(ord("A") + i),
        )
        for i, q in enumerate(qs)
    ]


def panel(title: str, targets: list[dict[str, Any]], *, unit: str = "short", kind: str = "timeseries",
          desc: str = "", w: int = 12, h: int = 8, stack: bool = False) -> dict[str, Any]:
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "noValue": "0"}, "overrides": []},
        "options": {},
        "gridPos": {"w": w, "h": h},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stack else 0, "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "auto"}
    return p


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def variable_query(name: str, label: str, query: str, *, all_value: str = ".*") -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
        "refresh": 2, "multi": True, "includeAll": True, "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 3, "hide": 0, "options": [], "regex": "",
    }


def dashboard(uid: str, title: str, desc: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]]) -> dict[str, Any]:
    x = y = 0
    row_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > 24:
            x, y = 0, y + row_h
            row_h = 0
        g["x"], g["y"] = x, y
        x += g["w"]
        row_h = max(row_h, g["h"])
        if p["type"] == "row":
            x, y, row_h = 0, y + 1, 0
    datasource = {
        "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": "",
    }
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": ["fleet", "cmp", "pki"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 38,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [datasource, *variables]},
        "panels": panels,
    }


def fleet_run() -> dict[str, Any]:
    ok = f'result="ok", {W}'
    panels = [
        row("Throughput"),
        panel("Run-average throughput (as in fleet's report)", [target(
            f"sum by (operation) (last_over_time(fleet_transactions_completed_total{{{ok}}}[$__range]))"
            f" / scalar(max(last_over_time(fleet_run_elapsed_seconds{{{W}}}[$__range])))",
            "{{operation}}")], unit="reqps", kind="stat", w=6,
            desc="Successful operations divided by the run's elapsed time: the achieved_rate of fleet's --report. "
                 "last_over_time: each worker's final numbers, also after its series went stale."),
        panel("Operations completed", [target(f"sum by (operation, result) (last_over_time(fleet_transactions_completed_total{{{W}}}[$__range]))",
                                              "{{operation}} {{result}}")], kind="stat", w=6),
        panel("Throughput by operation and result", [target(
            f"sum by (operation, result) (rate(fleet_transactions_completed_total{{{W}}}[{RI}]))", "{{operation}} {{result}}")],
            unit="reqps", w=12, desc="Transactions ended per second, summed over all workers."),
        panel("Arrival rate: target vs achieved", [
            target(f"sum(fleet_arrival_rate_target{{{W}}})", "target (profile)", "A"),
            target(f"sum(rate(fleet_arrivals_due_total{{{W}}}[{RI}]))", "due (schedule)", "B"),
            target(f"sum(rate(fleet_arrivals_started_total{{{W}}}[{RI}]))", "started (achieved)", "C"),
            target(f"sum(rate(fleet_arrivals_dropped_total{{{W}}}[{RI}]))", "dropped", "D"),
        ], unit="reqps", desc="Open model: arrivals due by the schedule, started, and dropped because max_in_flight were running."),
        panel("Transactions started by operation", [target(
            f"sum by (operation) (rate(fleet_transactions_started_total{{{W}}}[{RI}]))", "{{operation}}")], unit="reqps"),
        row("Latency"),
        panel("Latency from intended start (p50/p90/p99)", quantiles("fleet_transaction_latency_seconds", "operation", ok),
              unit="s", desc="histogram_quantile over buckets summed across all workers; measured from when the arrival should have started (no coordinated omission)."),
        panel("Service time from first request sent (p50/p90/p99)", quantiles("fleet_transaction_service_seconds", "operation", ok), unit="s"),
        panel("Latency p99 over the selected range", [target(
            f"histogram_quantile(0.99, sum by (le, operation) (increase(fleet_transaction_latency_seconds_bucket{{{ok}}}[$__range])))",
            "{{operation}} p99")], unit="s", kind="stat", w=6),
        panel("Mean latency", [target(
            f"sum by (operation) (rate(fleet_transaction_latency_seconds_sum{{{ok}}}[{RI}])) / sum by (operation) (rate(fleet_transaction_latency_seconds_count{{{ok}}}[{RI}]))",
            "{{operation}} mean")], unit="s", w=6),
        panel("HTTP round trip p99 by request body", quantiles("fleet_exchange_seconds", "body", W, (0.99,)), unit="s"),
        row("Errors"),
        panel("Errors by kind", [target(f"sum by (operation, kind) (rate(fleet_transaction_errors_total{{{W}}}[{RI}]))", "{{operation}} {{kind}}")],
              unit="reqps", stack=True, desc="CMP status (rejected, error_message), protocol checks and transport errors (timeout, connect, connection_lost...)."),
        panel("Failures by PKIFailureInfo", [target(f"sum by (operation, fail_info) (rate(fleet_transaction_fail_info_total{{{W}}}[{RI}]))", "{{operation}} {{fail_info}}")],
              unit="reqps", stack=True),
        panel("Error ratio", [target(
            f'sum by (operation) (rate(fleet_transactions_completed_total{{result="failed", {W}}}[{RI}])) / sum by (operation) (rate(fleet_transactions_completed_total{{{W}}}[{RI}]))',
            "{{operation}}")], unit="percentunit"),
        panel("Polls (CA answered 'waiting')", [target(f"sum by (operation) (rate(fleet_polls_total{{{W}}}[{RI}]))", "{{operation}}")], unit="reqps"),
        row("Schedule and load generator"),
        panel("In flight", [target(f"sum by (worker) (fleet_transactions_in_flight{{{W}}})", "worker {{worker}}")], stack=True),
        panel("Start lateness (p50/p99) and late arrivals", [
            *quantiles("fleet_arrival_lateness_seconds", "", W, (0.5, 0.99)),
            target(f"sum(rate(fleet_arrivals_late_total{{{W}}}[{RI}]))", "late (>10 ms) per s", "C"),
        ], unit="s", desc="How late arrivals started after their intended time: a late load generator, not a slow CA."),
        panel("Key pool: keys left", [target(f"sum by (key_type, worker) (fleet_key_pool_keys{{{W}}})", "{{key_type}} worker {{worker}}")]),
        panel("Key pool: keys generated or reused after it ran dry", [
            target(f"sum by (key_type) (rate(fleet_key_pool_generated_total{{{W}}}[{RI}]))", "{{key_type}} generated", "A"),
            target(f"sum by (key_type) (rate(fleet_key_pool_reused_total{{{W}}}[{RI}]))", "{{key_type}} reused", "B"),
        ], unit="reqps"),
        row("Per worker"),
        panel("Throughput by worker", [target(f"sum by (worker) (rate(fleet_transactions_completed_total{{{ok}}}[{RI}]))", "worker {{worker}}")],
              unit="reqps", stack=True),
        panel("CPU by worker", [target(
            f"sum by (worker) (rate(process_cpu_seconds_total{{job=~\"$job\"}}[{RI}]) * on (job, instance) group_left (worker) fleet_run_info{{{W}}})",
            "worker {{worker}}")], unit="percentunit", desc="Near 1.0 (one core): the worker, not the CA, limits the rate."),
        panel("Latency p99 by worker", quantiles("fleet_transaction_latency_seconds", "worker", ok, (0.99,)), unit="s"),
        panel("Arrivals dropped and late by worker", [
            target(f"sum by (worker) (rate(fleet_arrivals_dropped_total{{{W}}}[{RI}]))", "worker {{worker}} dropped", "A"),
            target(f"sum by (worker) (rate(fleet_arrivals_late_total{{{W}}}[{RI}]))", "worker {{worker}} late", "B"),
        ], unit="reqps"),
    ]
    variables = [
        variable_query("job", "Job", "label_values(fleet_run_info, job)"),
        variable_query("worker", "Worker", 'label_values(fleet_run_info{job=~"$job"}, worker)'),
    ]
    return dashboard("fleet-run", "fleet run", "A fleet capacity test: throughput, latency from intended start, errors, schedule, key pools, per worker.",
                     panels, variables)


def fleet_ca() -> dict[str, Any]:
    panels = [
        row("Requests"),
        panel("Certificates issued (selected range)", [target(f"sum(increase(fleet_ca_certificates_issued_total{{{CA}}}[$__range]))", "issued")],
              kind="stat", w=6),
        panel("Requests answered (selected range)", [target(f"sum by (status) (increase(fleet_ca_requests_total{{{CA}}}[$__range]))", "{{status}}")],
              kind="stat", w=6),
        panel("Requests by body type and status", [target(f"sum by (body, status) (rate(fleet_ca_requests_total{{{CA}}}[{RI}]))", "{{body}} {{status}}")],
              unit="reqps", stack=True),
        panel("Certificates issued, confirmed, revoked, unconfirmed", [
            target(f"sum(rate(fleet_ca_certificates_issued_total{{{CA}}}[{RI}]))", "issued", "A"),
            target(f"sum(rate(fleet_ca_certificates_confirmed_total{{{CA}}}[{RI}]))", "confirmed", "B"),
            target(f"sum(rate(fleet_ca_certificates_revoked_total{{{CA}}}[{RI}]))", "revoked", "C"),
            target(f"sum(rate(fleet_ca_certificates_unconfirmed_total{{{CA}}}[{RI}]))", "no certConf in time", "D"),
        ], unit="reqps"),
        panel("HTTP responses by code", [target(f"sum by (code) (rate(fleet_ca_http_responses_total{{{CA}}}[{RI}]))", "{{code}}")], unit="reqps", stack=True),
        panel("Failures by PKIFailureInfo", [target(f"sum by (body, fail_info) (rate(fleet_ca_failures_total{{{CA}}}[{RI}]))", "{{body}} {{fail_info}}")],
              unit="reqps", stack=True),
        row("Processing and queue"),
        panel("Processing time (p50/p90/p99)", quantiles("fleet_ca_request_processing_seconds", "body", CA), unit="s",
              desc="Decode, checks, issuance and encoding of one CMP request, without added latency (knob)."),
        panel("Mean processing time", [target(
            f"sum by (body) (rate(fleet_ca_request_processing_seconds_sum{{{CA}}}[{RI}])) / sum by (body) (rate(fleet_ca_request_processing_seconds_count{{{CA}}}[{RI}]))",
            "{{body}}")], unit="s"),
        panel("Queue: requests in progress and connections", [
            target(f"sum(fleet_ca_requests_in_progress{{{CA}}})", "requests in progress", "A"),
            target(f"sum(fleet_ca_http_connections_open{{{CA}}})", "connections open", "B"),
        ]),
        panel("Open transactions by state", [target(f"sum by (state) (fleet_ca_transactions{{{CA}}})", "{{state}}")], stack=True),
        panel("CA CPU", [target(
            f"sum by (instance) (rate(process_cpu_seconds_total{{{CA}}}[{RI}]) and on (job, instance) fleet_ca_requests_in_progress)",
            "{{instance}}")], unit="percentunit", desc="Near 1.0: the CA's single event loop is saturated."),
        panel("Abandoned transactions and refused connections", [
            target(f"sum(rate(fleet_ca_transactions_abandoned_total{{{CA}}}[{RI}]))", "abandoned (client stopped polling)", "A"),
            target(f"sum(rate(fleet_ca_http_connections_rejected_total{{{CA}}}[{RI}]))", "connections refused", "B"),
        ], unit="reqps"),
    ]
    variables = [variable_query("job", "Job", "label_values(fleet_ca_requests_in_progress, job)")]
    return dashboard("fleet-ca", "fleet embedded CA", "fleet's embedded CMP CA (fleet ca serve --metrics-port): requests, issuance, processing time, queue.",
                     panels, variables)


def fleet_ra() -> dict[str, Any]:
    panels = [
        row("Requests"),
        panel("Requests answered (selected range)", [target(f"sum by (outcome) (increase(fleet_ra_requests_total{{{CA}}}[$__range]))", "{{outcome}}")],
              kind="stat", w=6, desc="forwarded: the upstream's answer relayed; refused: verification failed, answered by the RA; "
                                     "injected: error knob; upstream_error / upstream_refused: the CA could not be reached or its answer not relayed."),
        panel("Upstream posts (selected range)", [target(f"sum by (kind) (increase(fleet_ra_upstream_requests_total{{{CA}}}[$__range]))", "{{kind}}")],
              kind="stat", w=6, desc="single: one message per post (pass, replace); nested: one envelope per batch."),
        panel("Requests by body type and outcome", [target(f"sum by (body, outcome) (rate(fleet_ra_requests_total{{{CA}}}[{RI}]))", "{{body}} {{outcome}}")],
              unit="reqps", stack=True),
        panel("RA refusals by PKIFailureInfo", [target(f"sum by (body, fail_info) (rate(fleet_ra_failures_total{{{CA}}}[{RI}]))", "{{body}} {{fail_info}}")],
              unit="reqps", stack=True, desc="Errors the RA answered itself: bad MAC or signer, bad POP, upstream unavailable, injected."),
        panel("HTTP responses by code", [target(f"sum by (code) (rate(fleet_ra_http_responses_total{{{CA}}}[{RI}]))", "{{code}}")], unit="reqps", stack=True),
        row("Time and batching"),
        panel("Request time at the RA (p50/p90/p99)", quantiles("fleet_ra_request_seconds", "body", CA), unit="s",
              desc="From receipt to answer: verification, the wait for a batch, the upstream round trip."),
        panel("Upstream round trip (p50/p90/p99)", quantiles("fleet_ra_upstream_seconds", "kind", CA), unit="s"),
        panel("Batch size (p50/p99) and envelopes per second", [
            *quantiles("fleet_ra_batch_size", "", CA, (0.5, 0.99)),
            target(f"sum(rate(fleet_ra_upstream_requests_total{{kind=\"nested\", {CA}}}[{RI}]))", "envelopes per s", "C"),
        ]),
        panel("Upstream errors by kind", [target(f"sum by (kind, error) (rate(fleet_ra_upstream_errors_total{{{CA}}}[{RI}]))", "{{kind}} {{error}}")],
              unit="reqps", stack=True),
        row("Load"),
        panel("Requests in progress and transactions remembered", [
            target(f"sum(fleet_ra_requests_in_progress{{{CA}}})", "requests in progress", "A"),
            target(f"sum(fleet_ra_transactions{{{CA}}})", "transactions remembered", "B"),
        ]),
        panel("RA CPU per forwarded request", [target(
            f"sum(rate(process_cpu_seconds_total{{{CA}}}[{RI}]) and on (job, instance) fleet_ra_requests_in_progress)"
            f" / sum(rate(fleet_ra_requests_total{{outcome=\"forwarded\", {CA}}}[{RI}]))",
            "CPU s per request")], unit="s", desc="The RA's CPU seconds per forwarded message (an enrollment is two: ir and certConf)."),
        panel("RA CPU", [target(
            f"sum by (instance) (rate(process_cpu_seconds_total{{{CA}}}[{RI}]) and on (job, instance) fleet_ra_requests_in_progress)",
            "{{instance}}")], unit="percentunit", desc="Near 1.0: the RA's single event loop is saturated."),
    ]
    variables = [variable_query("job", "Job", "label_values(fleet_ra_requests_in_progress, job)")]
    return dashboard("fleet-ra", "fleet RA", "fleet's RA (fleet ra serve --metrics-port): what it forwarded or refused, batching, upstream time, CPU.",
                     panels, variables)


def render(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2) + "\n"


OUTPUTS = {"fleet-run.json": fleet_run, "fleet-ca.json": fleet_ca, "fleet-ra.json": fleet_ra}


def main() -> None:
    for name, build in OUTPUTS.items():
        (HERE / name).write_text(render(build()))
        print(f"wrote {HERE / name}", file=sys.stderr)


if __name__ == "__main__":
    main()

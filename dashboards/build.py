"""Write fleet-run.json, fleet-ca.json, fleet-provision.json, fleet-capacity.json and fleet-ra.json (Grafana 10+ dashboards) with
Grafana's own Python SDK (``grafana-foundation-sdk``): the schema is Grafana's, not hand-written.

Run ``python3 dashboards/build.py`` after editing; tests/test_metrics.py checks the JSON files
are what this script writes and tests/test_prometheus_e2e.py evaluates every panel's query in a
real Prometheus. Every quantile is ``histogram_quantile`` over buckets summed ``by (le)`` (and by
operation or body) across all fleet processes: never an average of per-process quantiles. The
datasource is the ``datasource`` dashboard variable, so the JSON imports into any Grafana 10+
without edits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models.dashboard import (
    AnnotationQuery,
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RI = "$__rate_interval"
W = 'worker=~"$worker", job=~"$job"'  # the run dashboard's selector
CA = 'job=~"$job"'
PROV = 'worker="provision", job=~"$job"'  # fleet provision --metrics-port labels its worker so

Panel = timeseries.Panel | stat.Panel | dashboard.Row


def target(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    """A range query (stat panels too: they show the last value, which stays after the run's
    series went stale)."""
    return prometheus.Dataquery().datasource(DS).expr(expr).legend_format(legend or "__auto").ref_id(ref).range()


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[prometheus.Dataquery]:
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


def panel(title: str, targets: list[prometheus.Dataquery], *, unit: str = "short", kind: str = "timeseries",
          desc: str = "", w: int = 12, h: int = 8, stack: bool = False) -> timeseries.Panel | stat.Panel:
    if kind == "stat":
        p: timeseries.Panel | stat.Panel = (
            stat.Panel()
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
            .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.NONE)
            .text_mode(cm.BigValueTextMode.AUTO)
        )
    else:
        p = (
            timeseries.Panel()
            .draw_style(cm.GraphDrawStyle.LINE).line_width(1).fill_opacity(10 if stack else 0)
            .show_points(cm.VisibilityMode.NEVER)
            .stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE).group("A"))
            .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE).placement(cm.LegendPlacement.BOTTOM)
                    .calcs(["mean", "max", "lastNotNull"]).show_legend(True))
            .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
        )
    p = p.title(title).datasource(DS).unit(unit).no_value("0").span(w).height(h)
    if desc:
        p = p.description(desc)
    for t in targets:
        p = p.with_target(t)
    return p


def row(title: str) -> dashboard.Row:
    return dashboard.Row(title)


def variable_query(name: str, label: str, query: str, *, all_value: str = ".*") -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name).label(label).datasource(DS).query(query).refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True).include_all(True).all_value(all_value).sort(VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def dashboard_of(uid: str, title: str, desc: str, panels: list[Panel], variables: list[dashboard.QueryVariable],
                 annotations: tuple[AnnotationQuery, ...] = ()) -> Any:
    """The dashboard, laid out by the SDK (rows full width, panels left to right); ids in order."""
    d = (
        dashboard.Dashboard(title).uid(uid).description(desc).tags(["fleet", "cmp", "pki"]).editable()
        .tooltip(DashboardCursorSync.CROSSHAIR).refresh("5s").time("now-15m", "now").timezone("")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for v in variables:
        d = d.with_variable(v)
    d = d.annotations(list(annotations)) if annotations else d
    for i, p in enumerate(panels, start=1):
        p = p.id(i)
        d = d.with_row(p) if isinstance(p, dashboard.Row) else d.with_panel(p)
    return d.build()


def fleet_run() -> Any:
    ok = f'result="ok", {W}'
    panels: list[Panel] = [
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
        panel("Client HTTP connections: requests queued for one", [
            target(f"sum by (worker) (rate(fleet_http_pool_waits_total{{{W}}}[{RI}]))", "worker {{worker}} queued per s", "A"),
            target(f"sum by (worker) (rate(fleet_http_pool_wait_seconds_total{{{W}}}[{RI}]))", "worker {{worker}} waiting (mean)", "B"),
        ], desc="Requests that found all of a worker's max_connections busy, and how many waited at a time on average. "
                "Above zero under load: the client, not the CA, limits the rate; raise [run] max_connections or workers."),
        panel("Key pool: keys left", [target(f"sum by (key_type, worker) (fleet_key_pool_keys{{{W}}})", "{{key_type}} worker {{worker}}")]),
        panel("Key pool: keys generated or reused after it ran dry", [
            target(f"sum by (key_type) (rate(fleet_key_pool_generated_total{{{W}}}[{RI}]))", "{{key_type}} generated", "A"),
            target(f"sum by (key_type) (rate(fleet_key_pool_reused_total{{{W}}}[{RI}]))", "{{key_type}} reused", "B"),
        ], unit="reqps"),
        row("Announcements ([announcements]: pushed by the CA, acted on by the devices)"),
        panel("Announcements received by body and result", [target(
            f"sum by (body, result) (rate(fleet_announcements_total{{{W}}}[{RI}]))", "{{body}} {{result}}")],
            unit="reqps", stack=True, desc="Believed (rann, ckuann, cann, crlann) or refused with a failInfo (body -)."),
        panel("rann delivery (p50/p90/p99)", quantiles("fleet_announcement_delivery_seconds", "", W), unit="s",
              desc="From the run's rr (the CA queues the rann as it accepts it) to the device's receipt of the rann."),
        panel("Revocations and the re-enrollment storm", [target(
            f'sum by (operation, result) (rate(fleet_transactions_completed_total{{operation=~"revoke|reenroll", {W}}}[{RI}]))',
            "{{operation}} {{result}}")], unit="reqps",
              desc="The run's revocations, and the re-enrollments their pushed rann triggered."),
        panel("Re-enrollment latency from the rann (p50/p99)", quantiles(
            "fleet_transaction_latency_seconds", "", f'operation="reenroll", {ok}', (0.5, 0.99)), unit="s"),
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
    return dashboard_of("fleet-run", "fleet run", "A fleet capacity test: throughput, latency from intended start, errors, schedule, key pools, per worker.",
                     panels, variables)


def fleet_ca() -> Any:
    panels: list[Panel] = [
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
    return dashboard_of("fleet-ca", "fleet embedded CA", "fleet's embedded CMP CA (fleet ca serve --metrics-port): requests, issuance, processing time, queue.",
                     panels, variables)


def fleet_provision() -> Any:
    ok = f'result="ok", {PROV}'
    panels: list[Panel] = [
        row("Devices"),
        panel("Enrollments confirmed", [target(
            f"sum by (operation) (last_over_time(fleet_transactions_completed_total{{{ok}}}[$__range]))", "{{operation}}")],
            kind="stat", w=6, desc="Transactions that ended with a confirmed certificate in this run (the counter's last value)."),
        panel("Attempts failed", [target(
            f'sum by (operation) (last_over_time(fleet_transactions_completed_total{{result="failed", {PROV}}}[$__range]))',
            "{{operation}}")], kind="stat", w=6,
            desc="Attempts that failed; transient ones are retried with backoff (summary.json has each device's outcome)."),
        panel("Enrollments per second", [target(
            f"sum by (operation, result) (rate(fleet_transactions_completed_total{{{PROV}}}[{RI}]))", "{{operation}} {{result}}")],
            unit="reqps"),
        panel("In flight (bounded by --concurrency)", [target(
            f"sum(rate(fleet_transactions_started_total{{{PROV}}}[{RI}]))", "started per s", "A")], unit="reqps"),
        row("Latency and errors"),
        panel("Enrollment time (p50/p90/p99)", quantiles("fleet_transaction_service_seconds", "operation", ok), unit="s",
              desc="From a device's first request to its pkiConf, polling included."),
        panel("HTTP round trip p99 by request body", quantiles("fleet_exchange_seconds", "body", PROV, (0.99,)), unit="s"),
        panel("Errors by kind", [target(f"sum by (operation, kind) (rate(fleet_transaction_errors_total{{{PROV}}}[{RI}]))",
                                        "{{operation}} {{kind}}")], unit="reqps", stack=True,
              desc="CMP refusals, protocol checks and transport errors; retried devices show up once per attempt."),
        panel("Refusals by PKIFailureInfo", [target(
            f"sum by (operation, fail_info) (rate(fleet_transaction_fail_info_total{{{PROV}}}[{RI}]))",
            "{{operation}} {{fail_info}}")], unit="reqps", stack=True),
        panel("Polls (CA answered 'waiting')", [target(f"sum by (operation) (rate(fleet_polls_total{{{PROV}}}[{RI}]))",
                                                       "{{operation}}")], unit="reqps"),
        panel("CA habits accepted (warnings)", [target(
            f"sum by (warning) (last_over_time(fleet_transaction_warnings_total{{{PROV}}}[$__range]))", "{{warning}}")],
            kind="stat", w=12, desc="caPubs ignored under signature protection, clock skew, unknown generalInfo... "
                                    "(docs/strictness.md). Enrollments succeeded; the CA's habit is worth a look."),
    ]
    variables = [variable_query("job", "Job", 'label_values(fleet_transactions_started_total{worker="provision"}, job)')]
    return dashboard_of("fleet-provision", "fleet provision", "A fleet provision run (--metrics-port): devices enrolled, "
                        "enrollment time, errors, CA habits.", panels, variables)


class PrometheusAnnotation(AnnotationQuery):
    """An annotation from a Prometheus query: Grafana's schema leaves the Prometheus datasource's
    own options (title template, tag labels, step) to the datasource, so they are added here."""

    def __init__(self, name: str, expr: str, title: str, tag_keys: str) -> None:
        super().__init__(name=name, datasource=DS, enable=True, icon_color="#8F3BB8", expr=expr)
        self.title_format = title
        self.tag_keys = tag_keys

    def build(self) -> PrometheusAnnotation:
        """The SDK's dashboard builder takes builders; this model is already built."""
        return self

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "step": "5s", "titleFormat": self.title_format, "textFormat": "",
                "tagKeys": self.tag_keys, "useValueForTime": False}


def capacity_annotation() -> PrometheusAnnotation:
    """One annotation per capacity-search step, titled with its rate and outcome."""
    return PrometheusAnnotation("Capacity-search steps", 'max by (step, rate, outcome) (fleet_capacity_step_info{job=~"$job"})',
                                "step {{step}}: {{rate}}/s {{outcome}}", "outcome")


def fleet_capacity() -> Any:
    """fleet capacity --metrics-port P: the search's steps (P) beside the embedded CA (P+1)."""
    panels: list[Panel] = [
        row("Capacity search (fleet capacity --metrics-port)"),
        panel("Capacity search steps: offered, achieved, held", [
            target('max(fleet_capacity_offered_rate{job=~"$job"})', "offered (running step)", "A"),
            target('max(fleet_capacity_step_achieved_rate{job=~"$job"})', "achieved (last step, steady window)", "B"),
            target('max(fleet_capacity_rate{job=~"$job"})', "highest rate held", "C"),
        ], unit="reqps", w=18, desc="Each step offers one rate; its warm-up is left out of the achieved rate. The annotations mark the steps."),
        panel("Capacity-search step", [target('max(fleet_capacity_step{job=~"$job"})', "step")], kind="stat", w=6),
        row("The CA under the search (embedded CA, or any CA exposing fleet_ca_*)"),
        panel("CA requests by status", [target(f"sum by (status) (rate(fleet_ca_requests_total{{{CA}}}[{RI}]))", "{{status}}")],
              unit="reqps", stack=True),
        panel("CA failures by PKIFailureInfo", [
            target(f"sum by (fail_info) (rate(fleet_ca_failures_total{{{CA}}}[{RI}]))", "{{fail_info}}")],
              unit="reqps", stack=True, desc="Which failInfo the CA answers as the steps pass its capacity."),
        panel("CA queue: requests in progress", [target(f"sum(fleet_ca_requests_in_progress{{{CA}}})", "in progress")]),
        panel("CA processing time (p50/p90/p99)", quantiles("fleet_ca_request_processing_seconds", "", CA), unit="s"),
    ]
    variables = [variable_query("job", "Job", "label_values(fleet_capacity_step, job)")]
    return dashboard_of("fleet-capacity", "fleet capacity search", "fleet capacity --metrics-port: each step as an annotation, "
                        "offered/achieved/held rates, and the CA as the search passes its capacity.",
                        panels, variables, (capacity_annotation(),))


def fleet_ra() -> Any:
    panels: list[Panel] = [
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
    return dashboard_of("fleet-ra", "fleet RA", "fleet's RA (fleet ra serve --metrics-port): what it forwarded or refused, batching, upstream time, CPU.",
                     panels, variables)


def render(d: Any) -> str:
    text = JSONEncoder(sort_keys=False, indent=2).encode(d)
    return json.dumps(json.loads(text), indent=2) + "\n"


OUTPUTS = {"fleet-run.json": fleet_run, "fleet-ca.json": fleet_ca, "fleet-provision.json": fleet_provision,
           "fleet-capacity.json": fleet_capacity, "fleet-ra.json": fleet_ra}


def main() -> None:
    for name, build in OUTPUTS.items():
        (HERE / name).write_text(render(build()))
        print(f"wrote {HERE / name}", file=sys.stderr)


if __name__ == "__main__":
    main()

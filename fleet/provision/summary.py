"""The summary of a provisioning run, read from the journal: every manifest device with its
outcome and orphans (what ``summary.json`` holds; never a key, secret or CMP message)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fleet.cmp.trust import load_cert
from fleet.provision import outputs
from fleet.provision.journal import DeviceState, Journal
from fleet.provision.manifest import DeviceSpec
from fleet.provision.runner import RunStats

__all__ = ["summarize"]

_NO_CA_FILE = "no ca.pem: no root certificate known (the response carried none; rerun with --trusted)"


def summarize(devices: Sequence[DeviceSpec], journal: Journal, stats: RunStats | None = None,
              *, interrupted: bool = False, out: Path | None = None) -> dict[str, object]:
    """The summary, from the journal: every manifest device with its outcome and orphans; with
    ``stats``, whether it was provisioned in this run or before; with ``out``, a note for a
    device without ``ca.pem``. Holds no key, secret or CMP message."""
    rows: list[dict[str, object]] = []
    counts = {"provisioned": 0, "failed": 0, "not_done": 0}
    without_ca = 0
    for dev in devices:
        rec = journal.device(dev.id)
        note = None
        if rec.state is DeviceState.CONFIRMED and rec.error is not None:
            outcome = "failed"  # confirmed at the CA, its files could not be written
        elif rec.state is DeviceState.CONFIRMED:
            outcome = "provisioned"
            if out is not None and not (out / dev.id / outputs.CA_FILE).exists():
                note = _NO_CA_FILE
                without_ca += 1
        elif rec.error is not None:
            outcome = "failed"
        else:
            outcome = "not_done"
        counts[outcome] += 1
        not_after = None
        if rec.certificate is not None and outcome == "provisioned":
            not_after = load_cert(rec.certificate).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        orphans = [
            {"transaction_id": o.transaction_id.hex(), "serial": o.serial, "received": o.received,
             "fate": o.fate.value, "detail": o.detail}
            for o in journal.orphans_of(dev.id)
        ]
        rows.append({
            "id": dev.id,
            "outcome": outcome,
            "state": rec.state.value,
            "operation": dev.operation,
            "auth": dev.auth_kind,
            "serial": rec.serial if outcome == "provisioned" else None,
            "not_after": not_after,
            "this_run": (dev.id in stats.provisioned_ids) if stats is not None and outcome == "provisioned" else None,
            "requests": rec.attempts,
            "error_kind": rec.error_kind if outcome != "provisioned" else None,
            "fail_info": rec.fail_names if outcome != "provisioned" else None,
            "error": rec.error if outcome != "provisioned" else None,
            "orphans": orphans,
            "note": note,
        })
    fates: dict[str, int] = {}
    for row in rows:
        for o in row["orphans"]:  # type: ignore[attr-defined]
            fates[o["fate"]] = fates.get(o["fate"], 0) + 1
    summary: dict[str, object] = {
        "devices": len(devices),
        **counts,
        "orphans": fates,
        "without_ca_pem": without_ca,
        "interrupted": interrupted,
        "complete": counts["provisioned"] == len(devices),
    }
    if stats is not None:
        summary["run"] = {
            "provisioned": stats.provisioned, "skipped_confirmed": stats.skipped, "failed": stats.failed,
            "retries": stats.retries, "orphans_revoked": stats.orphans_revoked,
            "possible_orphans": stats.possible_orphans, "seconds": round(stats.elapsed, 3),
            "journal_commits": stats.commits, "warnings": dict(stats.warnings),
        }
    summary["results"] = rows
    return summary

"""``fleet provision`` with a coap:// server (issue 15): a real ``fleet ca serve --coap-port``,
every device enrolled over CMP over CoAP, chains verified by openssl, the CA's records match."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from provision_helpers import CaProcess, mac_manifest, run_provision

from fleet.ca.store import CertRecordStatus


def test_provisioning_over_coap(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path, "--coap-port", "0")
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"UDP port (\d+)\)", ca.log.read_text())):
            assert time.monotonic() < deadline, ca.log.read_text()
            time.sleep(0.05)
        url = f"coap://127.0.0.1:{match.group(1)}/.well-known/cmp"
        manifest = tmp_path / "m.csv"
        ids = mac_manifest(manifest, 12)
        out = tmp_path / "out"
        result = run_provision(str(manifest), "--server", url, "--out", str(out), "--trusted",
                               str(ca.root_path), "--concurrency", "6", "--no-progress")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "12/12 provisioned" in result.stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["complete"] is True and summary["provisioned"] == 12
        for device_id in ids:
            folder = out / device_id
            check = subprocess.run(["openssl", "verify", "-CAfile", str(folder / "ca.pem"), "-untrusted",
                                    str(folder / "chain.pem"), str(folder / "cert.pem")],
                                   capture_output=True, text=True, timeout=60, check=False)
            assert check.returncode == 0 and check.stdout.strip().endswith(": OK"), check.stdout + check.stderr
    finally:
        ca.stop()
    store = ca.store()
    try:
        assert store.counts_by_status()[CertRecordStatus.ISSUED.value] == 12
    finally:
        store.close()

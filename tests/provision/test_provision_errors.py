"""``fleet provision`` (and ``fleet cmp``) meeting what a new user does wrong, against the real
embedded CA (``fleet ca serve`` as a subprocess): an output folder that cannot be one, a device
folder that cannot take files, a wrong secret without ``--trusted``, a p10cr device whose CA root
is unknown, and a rerun with nothing left to do. Each checks the exit code, the one line said,
and that nothing was lost or left behind: summary.json, the other devices, the journal, the CA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from provision_helpers import CaProcess, mac_manifest, make_csr, run_provision, secret_for

from fleet.ca.store import CertRecordStatus
from fleet.files import load_certificate, load_certificates, load_private_key
from fleet.provision.journal import DeviceState, Journal, OrphanFate


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[CaProcess]:
    process = CaProcess(tmp_path)
    try:
        yield process
    finally:
        process.stop()


def store_counts(ca: CaProcess) -> dict[str, int]:
    ca.stop()
    store = ca.store()
    try:
        return {k: v for k, v in store.counts_by_status().items() if v}
    finally:
        store.close()


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout and "ExceptionGroup" not in result.stderr


def summary_rows(out: Path) -> dict[str, dict[str, object]]:
    summary = json.loads((out / "summary.json").read_text())
    return {r["id"]: r for r in summary["results"]}


def test_out_that_cannot_be_a_folder_is_a_usage_error_before_anything_is_sent(tmp_path: Path, ca: CaProcess) -> None:
    manifest = tmp_path / "m.csv"
    mac_manifest(manifest, 2)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    for out, words in ((a_file, "is a file, not a folder"), (a_file / "sub", "Not a directory"),
                       (Path("/proc/fleet-cannot-be-here"), "cannot write in")):
        result = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress")
        no_traceback(result)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fleet: usage error: Invalid value for '--out': "), result.stderr
        assert words in lines[0] and str(out) in lines[0] and result.stdout == ""
    assert a_file.read_text() == "not a folder\n"  # untouched
    assert not list(tmp_path.rglob("journal.sqlite*"))
    assert store_counts(ca) == {}  # the CA saw no request


def test_dry_run_names_a_san_typo_with_its_line_and_field(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    mac_manifest(manifest, 2)
    with manifest.open("a") as f:
        f.write(f"typo,/CN=typo,DSN:gnb.example,pass:{secret_for('typo')}\n")
    result = run_provision(str(manifest), "--dry-run")
    no_traceback(result)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        (f"fleet: error: manifest {manifest}: line 4: sans: subjectAltName 'DSN:gnb.example': unknown type "
         "'DSN'; did you mean DNS:? (allowed: DNS:, IP:, URI:, email:, RID: or a bare host name, IP address or email)")
    ]


def _immutable(folder: Path) -> bool:
    """chattr +i where the file system allows it (root is not stopped by mode bits)."""
    folder.mkdir()
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    return done.returncode == 0


def test_a_device_whose_files_cannot_be_written_fails_alone(tmp_path: Path, ca: CaProcess) -> None:
    """d0000: a file where its folder should be (nothing sent). d0001: a folder where cert.pem
    should be, so the certificate arrives and cannot be stored: certConf rejects it and the CA
    records it rejected. d0002 (where chattr works): an immutable folder. The others are issued,
    summary.json is written, and a rerun once the folders are fixed completes the batch."""
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 6)
    out = tmp_path / "out"
    out.mkdir()
    (out / ids[0]).write_text("in the way\n")
    (out / ids[1] / "cert.pem").mkdir(parents=True)
    immutable = _immutable(out / ids[2])
    broken = ids[:3] if immutable else ids[:2]
    try:
        result = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--trusted", str(ca.root_path),
                               "--no-progress")
        no_traceback(result)
        assert result.returncode == 1, result.stdout + result.stderr
        good = len(ids) - len(broken)
        assert (f"provision: {good}/{len(ids)} provisioned ({good} new, 0 already done), {len(broken)} failed, "
                "0 not done; orphans: 1 rejected_in_certconf;") in result.stdout
        rows = summary_rows(out)
        assert rows[ids[0]]["outcome"] == "failed" and rows[ids[0]]["requests"] == 0
        assert rows[ids[0]]["error"] == f"cannot write in its output folder: Not a directory: {str(out / ids[0])!r}"
        assert rows[ids[0]]["error_kind"] == "output_error"
        assert rows[ids[1]]["outcome"] == "failed" and rows[ids[1]]["requests"] == 1
        assert rows[ids[1]]["error"] == f"cannot store the certificate files: Is a directory: {str(out / ids[1] / 'cert.pem')!r}"
        [orphan] = rows[ids[1]]["orphans"]  # type: ignore[misc]
        assert orphan["fate"] == "rejected_in_certconf" and orphan["received"] is True
        rejected_serial = int(orphan["serial"], 16)
        if immutable:
            assert rows[ids[2]]["requests"] == 0 and "Operation not permitted" in str(rows[ids[2]]["error"])
        for device_id in ids[len(broken):]:
            assert rows[device_id]["outcome"] == "provisioned"
            cert = load_certificate(out / device_id / "cert.pem")
            assert cert.public_key() == load_private_key(out / device_id / "key.pem").public_key()
        # Nothing of the rejected certificate is left to look like a device's: only its key.
        assert sorted(p.name for p in (out / ids[1]).iterdir()) == ["cert.pem", "key.pem"]
        assert (out / ids[1] / "cert.pem").is_dir() and not list(out.rglob("*.tmp"))
        with Journal.open(out / "journal.sqlite") as journal:
            assert journal.device(ids[0]).state is DeviceState.NEW and journal.device(ids[0]).error
            assert journal.device(ids[1]).state is DeviceState.FAILED
            assert [e[1] for e in journal.events(ids[1])] == [
                "key", "sent", "orphan_rejected_in_certconf", "not_stored", "failed"]
            assert all(journal.device(i).state is not DeviceState.SENT for i in ids)
            [recorded] = journal.orphans_of(ids[1])
            assert recorded.fate is OrphanFate.REJECTED and recorded.certificate is not None

        # Fix the folders and run again: the broken ones are provisioned, the rest skipped.
        (out / ids[0]).unlink()
        (out / ids[1] / "cert.pem").rmdir()
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(out / ids[2])], check=True)
    again = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--trusted", str(ca.root_path),
                          "--no-progress")
    no_traceback(again)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (f"provision: {len(ids)}/{len(ids)} provisioned ({len(broken)} new, {good} already done)"
            in again.stdout)
    counts = store_counts(ca)
    assert counts == {"issued": len(ids), "rejected": 1}
    store = ca.store()
    try:
        record = store.get(rejected_serial)
        assert record is not None and record.status is CertRecordStatus.REJECTED
    finally:
        store.close()


def test_wrong_secret_without_trusted_is_a_refusal_reported_unverified(tmp_path: Path, ca: CaProcess) -> None:
    """The CA's signed rejection cannot be checked without --trusted: say what it said, mark it
    unverified, and count no orphan (the CA issued nothing)."""
    manifest = tmp_path / "m.csv"
    ids = mac_manifest(manifest, 2)
    with manifest.open("a") as f:
        f.write("wrong,/CN=wrong,,pass:not-the-secret\n")
    out = tmp_path / "out"
    result = run_provision(str(manifest), "--server", ca.url, "--out", str(out), "--no-progress")
    no_traceback(result)
    assert result.returncode == 1
    assert "provision: 2/3 provisioned (2 new, 0 already done), 1 failed, 0 not done; orphans: none;" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["orphans"] == {} and summary["run"]["possible_orphans"] == 0
    row = {r["id"]: r for r in summary["results"]}["wrong"]
    assert row["outcome"] == "failed" and row["fail_info"] == "badMessageCheck" and row["orphans"] == []
    assert row["error_kind"] == "unverified_refusal"
    assert str(row["error"]).startswith("server error (unverified: signer certificate ")
    assert 'rejection failInfo badMessageCheck "MAC does not verify"' in str(row["error"])
    assert "not-the-secret" not in result.stdout + result.stderr + (out / "summary.json").read_text()
    with Journal.open(out / "journal.sqlite") as journal:
        assert journal.orphans_of("wrong") == [] and journal.device("wrong").state is DeviceState.FAILED
        assert [e[1] for e in journal.events("wrong")] == ["key", "sent", "refused", "failed"]

    # fleet cmp ir: the same answer, one line naming status, failInfo, text and "unverified".
    certout = tmp_path / "never.pem"
    cmp = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "cmp", "ir", "--server", ca.url, "--ref", "dev-00000001",
         "--secret", "pass:not-the-secret", "--subject", "/CN=x", "--certout", str(certout)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )
    no_traceback(cmp)
    assert cmp.returncode == 1 and cmp.stdout == ""
    lines = cmp.stderr.splitlines()
    assert len(lines) == 1, cmp.stderr
    line = lines[0]
    assert line.startswith("fleet: error: server error (unverified: ")
    assert "does not chain to a trusted anchor" in line and "--trusted" in line
    assert line.endswith('rejection failInfo badMessageCheck "MAC does not verify"')
    assert "not-the-secret" not in line and not certout.exists()
    # With --trusted the same refusal is verified, and says so by not saying "unverified".
    trusted = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "cmp", "ir", "--server", ca.url, "--ref", "dev-00000001",
         "--secret", "pass:not-the-secret", "--subject", "/CN=x", "--trusted", str(ca.root_path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )
    assert trusted.returncode == 1
    assert trusted.stderr.strip() == 'fleet: error: server error: rejection failInfo badMessageCheck "MAC does not verify"'
    assert store_counts(ca) == {"issued": len(ids)}  # nothing issued to the wrong secret


def test_p10cr_device_without_a_known_root_gets_no_empty_ca_pem_and_reruns_say_already_done(
    tmp_path: Path, ca: CaProcess,
) -> None:
    csr, _ = make_csr(tmp_path, "p10", keep_key=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,subject,sans,secret,csr\n"
        f"mac1,/CN=mac1,DNS:mac1.example,pass:{secret_for('mac1')},\n"
        f"p10,,,pass:{secret_for('p10')},{csr}\n"
    )
    out = tmp_path / "out"
    args = (str(manifest), "--server", ca.url, "--out", str(out), "--no-progress")
    first = run_provision(*args)
    no_traceback(first)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "id" in first.stdout.splitlines()[0]  # a fresh run shows its devices
    assert "provision: 2/2 provisioned (2 new, 0 already done)" in first.stdout
    assert ("provision: 1 provisioned device has no ca.pem: no root certificate known "
            "(the CA's responses carried none); rerun with --trusted to write it") in first.stdout
    assert not (out / "p10" / "ca.pem").exists()
    assert [p for p in out.rglob("*") if p.is_file() and p.stat().st_size == 0] == []  # never a 0-byte file
    assert load_certificates(out / "mac1" / "ca.pem") == [load_certificate(ca.root_path)]  # from caPubs
    rows = summary_rows(out)
    assert str(rows["p10"]["note"]).startswith("no ca.pem: ") and rows["mac1"]["note"] is None
    assert rows["mac1"]["this_run"] is True

    again = run_provision(*args)
    no_traceback(again)
    assert again.returncode == 0
    lines = again.stdout.splitlines()
    assert lines[0].startswith("provision: 2/2 provisioned (0 new, 2 already done), 0 failed, 0 not done;")
    assert len(lines) == 2 and "ca.pem" in lines[1]  # no table: nothing happened
    assert summary_rows(out)["mac1"]["this_run"] is False

    with_root = run_provision(*args, "--trusted", str(ca.root_path))
    no_traceback(with_root)
    assert with_root.returncode == 0
    assert with_root.stdout.splitlines() == [
        (f"provision: 2/2 provisioned (0 new, 2 already done), 0 failed, 0 not done; orphans: none; "
         f"summary in {out / 'summary.json'}")
    ]
    assert load_certificates(out / "p10" / "ca.pem") == [load_certificate(ca.root_path)]
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "p10" / "ca.pem"), "-untrusted",
                             str(out / "p10" / "chain.pem"), str(out / "p10" / "cert.pem")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads((out / "summary.json").read_text())["without_ca_pem"] == 0
    assert store_counts(ca) == {"issued": 2}  # the reruns sent nothing new
    assert os.stat(out / "summary.json").st_size > 0

#!/usr/bin/env python3
"""Regenerate tests/data/openssl/: real CMP messages captured from OpenSSL 3.0 `openssl cmp`.

Usage: python tests/data/make_openssl_corpus.py

Each flow runs the `openssl cmp` client against the `openssl cmp -port` mock server (both from
tests/openssl_peer.py) and saves every request and response with -reqout/-rspout. Files are named
`<flow>.<req|rsp><n>.<body>.der`, where <body> is the PKIBody choice name as in the ASN.1 module
(pyasn1-alt-modules spelling, e.g. `certConf`, `pkiconf`). The PKI used is saved in pki/ with a
100-year validity so the corpus does not expire. The tests never run this script; they read the
committed output. Regenerating changes every file (new keys, nonces, transaction IDs).
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pyasn1.codec.der.decoder import decode
from pyasn1_alt_modules import rfc9480

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from openssl_peer import (
    OpenSSLMockServer,
    TestPki,
    make_test_pki,
    pbm_client_args,
    run_openssl_cmp,
    sig_client_args,
)

OUT = HERE / "openssl"
MAX_MESSAGES = 6  # per direction; -reqout/-rspout only write as many files as messages exist

PBM_OID = "1.2.840.113533.7.66.13"
ALG_NAMES = {
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "1.3.6.1.5.5.8.1.2": "hmac-sha1",
    "1.2.840.113549.2.9": "hmacWithSHA256",
}


@dataclass(frozen=True)
class Flow:
    name: str
    description: str
    client: list[str]  # client args after -server ... (protection args are added per `auth`)
    auth: str  # "pbm", "sig" or "kur" (signature with rsp.crt/new.key)
    server: dict[str, str | bool] = field(default_factory=dict)
    expect_ok: bool = True


def flows(pki: TestPki) -> list[Flow]:
    enroll = ["-newkey", str(pki.new_key), "-subject", "/CN=Enrolled Device"]
    return [
        Flow("ir_pbm", "ir, PBM with OpenSSL defaults (OWF sha256, MAC hmac-sha1)",
             ["-cmd", "ir", *enroll], "pbm"),
        Flow("ir_pbm_hmacsha256", "ir, PBM with `-mac hmacWithSHA256 -digest sha512`",
             ["-cmd", "ir", *enroll, "-mac", "hmacWithSHA256", "-digest", "sha512"], "pbm"),
        Flow("ir_sig", "ir, signature (client.crt, ecdsa-with-SHA256)",
             ["-cmd", "ir", *enroll], "sig"),
        Flow("ir_sig_sha384", "ir, signature with `-digest sha384`",
             ["-cmd", "ir", *enroll, "-digest", "sha384"], "sig"),
        Flow("cr", "cr, signature (client.crt)", ["-cmd", "cr", *enroll], "sig"),
        Flow("kur", "kur of rsp.crt, signed with rsp.crt/new.key, new key = new.key",
             ["-cmd", "kur", "-newkey", str(pki.new_key)], "kur"),
        Flow("p10cr", "p10cr from new.csr, signature (client.crt)",
             ["-cmd", "p10cr", "-csr", str(pki.new_csr)], "sig"),
        Flow("rr", "rr of rsp.crt (reason superseded), signed with rsp.crt/new.key",
             ["-cmd", "rr", "-oldcert", str(pki.rsp_crt), "-revreason", "4"], "kur"),
        Flow("genm", "genm -infotype signKeyPairTypes, PBM (3.0 mock echoes the ITAV)",
             ["-cmd", "genm", "-infotype", "signKeyPairTypes"], "pbm"),
        Flow("ir_implicit", "ir -implicit_confirm against a mock with -grant_implicitconf, PBM",
             ["-cmd", "ir", *enroll, "-implicit_confirm"], "pbm",
             {"grant_implicitconf": True}),
        Flow("ir_poll", "ir with delayed delivery: mock -poll_count 2 -check_after 0, PBM",
             ["-cmd", "ir", *enroll], "pbm", {"poll_count": "2", "check_after": "0"}),
        Flow("ir_error", "ir answered by an error message: mock -send_error, PBM",
             ["-cmd", "ir", *enroll], "pbm", {"send_error": True}, expect_ok=False),
        Flow("ir_error_unprot", "ir answered by an unprotected error: mock -send_error "
             "-send_unprot_err, PBM request", ["-cmd", "ir", *enroll, "-unprotected_errors"],
             "pbm", {"send_error": True, "send_unprot_err": True}, expect_ok=False),
        Flow("ir_rejected", "ir rejected: mock -pkistatus 2 -failure 9 (badPOP), PBM",
             ["-cmd", "ir", *enroll], "pbm",
             {"pkistatus": "2", "failure": "9", "statusstring": "test rejection"},
             expect_ok=False),
    ]


def auth_args(flow: Flow, pki: TestPki, server: str) -> list[str]:
    if flow.auth == "pbm":
        return pbm_client_args(pki, server)
    if flow.auth == "sig":
        return sig_client_args(pki, server)
    return ["-server", server, "-cert", str(pki.rsp_crt), "-key", str(pki.new_key),
            "-trusted", str(pki.root_crt)]


def body_name(der: bytes) -> tuple[str, str]:
    msg, rest = decode(der, asn1Spec=rfc9480.PKIMessage())
    if rest:
        raise SystemExit(f"trailing bytes after PKIMessage ({len(rest)})")
    header = msg["header"]
    alg = header["protectionAlg"]
    if not alg.isValue:
        return msg["body"].getName(), "none"
    oid = str(alg["algorithm"])
    if oid != PBM_OID:
        return msg["body"].getName(), ALG_NAMES.get(oid, oid)
    pbm, _ = decode(alg["parameters"], asn1Spec=rfc9480.PBMParameter())
    owf = str(pbm["owf"]["algorithm"])
    mac = str(pbm["mac"]["algorithm"])
    return msg["body"].getName(), (
        f"PBM (OWF {ALG_NAMES.get(owf, owf)}, MAC {ALG_NAMES.get(mac, mac)}, "
        f"{int(pbm['iterationCount'])} iterations)"
    )


def capture(flow: Flow, pki: TestPki, work: Path) -> list[tuple[str, str, str]]:
    """Run one flow; return (file name, body, protection) in transaction order."""
    reqs = [work / f"{flow.name}.req{i}.der" for i in range(MAX_MESSAGES)]
    rsps = [work / f"{flow.name}.rsp{i}.der" for i in range(MAX_MESSAGES)]
    with OpenSSLMockServer(pki, **flow.server) as srv:
        proc = run_openssl_cmp([
            *auth_args(flow, pki, srv.server), *flow.client, "-keep_alive", "0",
            "-certout", str(work / f"{flow.name}.crt"),
            "-reqout", ",".join(map(str, reqs)), "-rspout", ",".join(map(str, rsps)),
        ])
        if (proc.returncode == 0) != flow.expect_ok:
            raise SystemExit(f"{flow.name}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}\n"
                             f"server:\n{srv.log()}")
    saved = []
    for i in range(MAX_MESSAGES):
        for kind, path in (("req", reqs[i]), ("rsp", rsps[i])):
            if not path.exists():
                continue
            der = path.read_bytes()
            body, protection = body_name(der)
            name = f"{flow.name}.{kind}{i}.{body}.der"
            (OUT / name).write_bytes(der)
            saved.append((name, body, protection))
    if not saved:
        raise SystemExit(f"{flow.name}: no message captured")
    return saved


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki = make_test_pki(work / "pki", days=36500)
        if OUT.exists():
            shutil.rmtree(OUT)
        (OUT / "pki").mkdir(parents=True)
        for name in ("root.crt", "server.crt", "server.key", "client.crt", "client.key",
                     "new.key", "new.csr", "rsp.crt"):
            shutil.copy(pki.dir / name, OUT / "pki" / name)
        (OUT / "pki" / "secret.txt").write_text(f"secret={pki.secret}\nref={pki.ref}\n")
        rows = []
        for flow in flows(pki):
            for name, body, protection in capture(flow, pki, work):
                rows.append((flow, name, body, protection))
        write_readme(rows)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(rows)} messages to {OUT} ({total} bytes in all)")


def write_readme(rows: list[tuple[Flow, str, str, str]]) -> None:
    lines = [
        "# Real CMP messages captured from OpenSSL 3.0 `openssl cmp`",
        "",
        "Generated by `python tests/data/make_openssl_corpus.py` (do not edit by hand;",
        "regenerating changes every file). Each flow ran the `openssl cmp` client against the",
        "`openssl cmp -port` mock server (tests/openssl_peer.py) with `-keep_alive 0`, saving",
        "messages with `-reqout`/`-rspout`. File names: `<flow>.<req|rsp><n>.<body>.der`; `reqN`",
        "is answered by `rspN`. <body> is the PKIBody choice name as spelled in the ASN.1",
        "(`pkiconf` is lower case).",
        "All messages are pvno 2 (cmp2000), as OpenSSL 3.0 sends them. Of note: the mock answers",
        "with its own defaults (SHA-256 signatures; PBM with OWF sha256, MAC hmac-sha1)",
        "whatever the client's `-digest`/`-mac` were; in `ir_poll` the first `ip` carries status",
        "`waiting` and the final certificate comes in an `ip` answering the last `pollReq`; the",
        "3.0 mock's `genp` echoes the `genm` ITAV; `kur` reuses the old key.",
        "",
        "## PKI (pki/), EC P-256, valid 100 years, test-only keys",
        "- `root.crt`: self-signed root \"CN=Test Root CA\", trusted by both sides",
        ("- `server.crt`/`server.key`: mock server's signer (\"CN=server\"), signs responses to "
        "signed requests"),
        "- `client.crt`/`client.key`: client signer (\"CN=client\") for ir/cr/p10cr",
        ("- `new.key`/`new.csr`: key being enrolled; `rsp.crt` (\"CN=new\") certifies it and is the "
        "certificate the mock returns for every enrollment; kur and rr are signed with "
        "`rsp.crt`/`new.key`"),
        "- `secret.txt`: PBM shared secret `test1234`, reference (senderKID) `1234`",
        "",
        ("Mock server base command: `openssl cmp -config \"\" -port 0 -srv_ref 1234 "
        "-srv_secret pass:test1234 -srv_cert server.crt -srv_key server.key -srv_trusted root.crt "
        "-rsp_cert rsp.crt -rsp_capubs root.crt` plus the flow's options below. It answers with "
        "the protection type of the request (PBM to PBM, signature to signature)."),
        "",
        "## Flows",
    ]
    current = None
    for flow, name, body, protection in rows:
        if flow is not current:
            current = flow
            opts = " ".join(f"-{k}" + ("" if v is True else f" {v}")
                            for k, v in flow.server.items())
            client = {"pbm": "-ref 1234 -secret pass:test1234",
                      "sig": "-cert client.crt -key client.key -trusted root.crt",
                      "kur": "-cert rsp.crt -key new.key -trusted root.crt"}[flow.auth]
            args = shlex.join(a if "/" not in a or a.startswith("/CN") else Path(a).name
                              for a in flow.client)
            lines += [
                "",
                f"### {flow.name}: {flow.description}",
                f"- client: `openssl cmp {client} {args}`",
                f"- mock options: `{opts or '(none)'}`",
                "",
                "| file | body | protection |",
                "|---|---|---|",
            ]
        lines.append(f"| `{name}` | {body} | {protection} |")
    (OUT / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

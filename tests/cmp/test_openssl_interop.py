"""fleet's end entity against OpenSSL 3.0's mock CA (`openssl cmp -port`), over real HTTP.

Each test starts its own mock (tests/openssl_peer.py); the mock serves one transaction at a time,
so transactions here run one after another. The mock always issues `rsp_crt`, which certifies
`new_key`: enrollments use `new_key`, or fleet rightly refuses the certificate (WrongPublicKey).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from openssl_peer import OpenSSLMockServer, TestPki, rogue_root

from fleet.cmp import oids
from fleet.cmp.client import ClientConfig, ClientTransaction, Done
from fleet.cmp.errors import CaPubsNotAllowed, RequestRejected, ServerError, WrongPublicKey
from fleet.cmp.messages import BodyType, FailInfo, InfoTypeAndValue, PKIStatus
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import CertRequest, CsrRequest, GeneralRequest, Request, RevocationRequest
from fleet.cmp.trust import TrustStore
from fleet.exchange import run_transaction
from fleet.http.client import CmpHttpClient, cmp_path

SUBJECT = x509.Name.from_rfc4514_string("CN=Enrolled Device")


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def key(path: Path) -> object:
    return serialization.load_pem_private_key(path.read_bytes(), None)


def der(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.DER)


def mac_config(pki: TestPki, **kw: object) -> ClientConfig:
    return ClientConfig(MacProtector(pki.secret.encode(), reference=pki.ref.encode(), **kw))  # type: ignore[arg-type]


def sig_config(pki: TestPki, *, as_new: bool = False) -> ClientConfig:
    """Signature protection with the client cert (or rsp_crt/new_key, for kur and rr)."""
    c, k = (pki.rsp_crt, pki.new_key) if as_new else (pki.client_crt, pki.client_key)
    return ClientConfig(SignatureProtector(key(k), cert(c)), TrustStore([cert(pki.root_crt)]))  # type: ignore[arg-type]


async def transact(server: OpenSSLMockServer, config: ClientConfig, request: Request, *, operation_path: bool = False) -> Done:
    tx = ClientTransaction(config, request)
    async with CmpHttpClient(server.url, max_connections=1, request_timeout=5) as client:
        path = cmp_path(client.base_path, operation=tx.operation) if operation_path else None
        return await run_transaction(client, tx, path=path, timeout=10)


def request_for(op: str, pki: TestPki, **kw: object) -> Request:
    new_key = key(pki.new_key)
    if op in ("ir", "cr"):
        return CertRequest(BodyType[op.upper()], new_key, SUBJECT, **kw)  # type: ignore[arg-type]
    if op == "kur":
        return CertRequest(BodyType.KUR, new_key, old_cert=cert(pki.rsp_crt), **kw)  # type: ignore[arg-type]
    if op == "p10cr":
        return CsrRequest(x509.load_pem_x509_csr(pki.new_csr.read_bytes()), **kw)  # type: ignore[arg-type]
    if op == "rr":
        return RevocationRequest.for_certificate(cert(pki.rsp_crt), 1)
    return GeneralRequest((InfoTypeAndValue(oids.IT_SIGN_KEY_PAIR_TYPES),))


@pytest.mark.parametrize("op", ["ir", "cr", "kur", "p10cr", "rr", "genm"])
@pytest.mark.parametrize("protection", ["pbm", "signature", "signature+capubs"])
async def test_every_flow(openssl_mock, test_pki: TestPki, op: str, protection: str) -> None:  # type: ignore[no-untyped-def]
    """"signature+capubs": the mock started with -rsp_capubs answers a signed request with caPubs
    too, as CAs commonly do: every flow still succeeds, and those caPubs are never handed on."""
    if protection == "pbm":
        server = openssl_mock()
        config = mac_config(test_pki)
    else:
        # LCMPP: no caPubs under signature protection; the other mock sends them anyway
        server = openssl_mock(rsp_capubs=None) if protection == "signature" else openssl_mock()
        config = sig_config(test_pki, as_new=op in ("kur", "rr"))
    done = await transact(server, config, request_for(op, test_pki))
    assert done.status.status == PKIStatus.ACCEPTED, server.log()
    if op in ("ir", "cr", "kur", "p10cr"):
        assert done.certificate == der(cert(test_pki.rsp_crt))
        with_ca_pubs = protection == "pbm" and op == "ir"  # the mock sends caPubs in ip only
        assert done.ca_pubs == ((der(cert(test_pki.root_crt)),) if with_ca_pubs else ())
        ignored = protection == "signature+capubs" and op == "ir"
        assert done.warnings == (("capubs_ignored",) if ignored else ())
        assert not done.implicit_confirm
    elif op == "genm":
        assert [i.oid for i in done.items] == [oids.IT_SIGN_KEY_PAIR_TYPES]  # the 3.0 mock echoes
    else:
        assert done.certificate is None and done.items == ()


@pytest.mark.parametrize("protection", ["pbm", "signature"])
async def test_polling_with_check_after(openssl_mock, test_pki: TestPki, protection: str) -> None:  # type: ignore[no-untyped-def]
    if protection == "pbm":
        server, config = openssl_mock(poll_count=2, check_after=0), mac_config(test_pki)
    else:
        server, config = openssl_mock(poll_count=2, check_after=0, rsp_capubs=None), sig_config(test_pki)
    done = await transact(server, config, request_for("ir", test_pki))
    assert done.polls == 2 and done.certificate == der(cert(test_pki.rsp_crt))


async def test_check_after_is_waited_for(openssl_mock, test_pki: TestPki) -> None:  # type: ignore[no-untyped-def]
    server = openssl_mock(poll_count=2, check_after=1)
    started = trio.current_time()
    done = await transact(server, mac_config(test_pki), request_for("p10cr", test_pki))
    elapsed = trio.current_time() - started
    assert done.polls == 2
    assert 1.0 <= elapsed < 3.0  # one pollRep with checkAfter 1 s; the first poll goes at once


@pytest.mark.parametrize("protection", ["pbm", "signature"])
async def test_implicit_confirm(openssl_mock, test_pki: TestPki, protection: str) -> None:  # type: ignore[no-untyped-def]
    capubs = {} if protection == "pbm" else {"rsp_capubs": None}
    config = mac_config(test_pki) if protection == "pbm" else sig_config(test_pki)
    server = openssl_mock(grant_implicitconf=True, **capubs)
    done = await transact(server, config, request_for("ir", test_pki, implicit_confirm=True))
    assert done.implicit_confirm
    # Asked for but not granted: the transaction goes through certConf/pkiConf.
    server = openssl_mock(**capubs)
    done = await transact(server, config, request_for("cr", test_pki, implicit_confirm=True))
    assert not done.implicit_confirm and done.certificate is not None


@pytest.mark.parametrize("protection", ["pbm", "signature"])
async def test_send_error(openssl_mock, test_pki: TestPki, protection: str) -> None:  # type: ignore[no-untyped-def]
    config = mac_config(test_pki) if protection == "pbm" else sig_config(test_pki)
    server = openssl_mock(send_error=True, rsp_capubs=None)
    with pytest.raises(ServerError) as info:
        await transact(server, config, request_for("ir", test_pki))
    assert info.value.kind == "error_message" and info.value.protected


@pytest.mark.parametrize("failure", [FailInfo.badRequest, FailInfo.badPOP, FailInfo.systemFailure])
async def test_rejection_with_fail_info(openssl_mock, test_pki: TestPki, failure: FailInfo) -> None:  # type: ignore[no-untyped-def]
    server = openssl_mock(pkistatus=2, failure=int(failure), statusstring="go away")
    with pytest.raises(RequestRejected) as info:
        await transact(server, mac_config(test_pki), request_for("ir", test_pki))
    assert info.value.fail_names == (failure.name,)
    assert info.value.status.texts == ("go away",)  # type: ignore[attr-defined]
    assert info.value.kind == "rejected"


async def test_rejection_of_a_signed_p10cr(openssl_mock, test_pki: TestPki) -> None:  # type: ignore[no-untyped-def]
    server = openssl_mock(pkistatus=2, failure=int(FailInfo.badCertTemplate), rsp_capubs=None)
    with pytest.raises(RequestRejected) as info:
        await transact(server, sig_config(test_pki), request_for("p10cr", test_pki))
    assert info.value.fail_names == ("badCertTemplate",)


@pytest.mark.parametrize("owf", ["sha1", "sha256"])
async def test_hmac_sha1_pbm_for_old_cas(openssl_mock, test_pki: TestPki, owf: str) -> None:  # type: ignore[no-untyped-def]
    server = openssl_mock()
    done = await transact(server, mac_config(test_pki, mac="sha1", owf=owf), request_for("ir", test_pki))
    assert done.certificate == der(cert(test_pki.rsp_crt))


async def test_ca_pubs_under_signature_protection_are_refused_when_asked(openssl_mock, test_pki: TestPki) -> None:  # type: ignore[no-untyped-def]
    server = openssl_mock()  # default: -rsp_capubs root.crt, sent whatever the protection
    config = dataclasses.replace(sig_config(test_pki), refuse_signed_ca_pubs=True)
    with pytest.raises(CaPubsNotAllowed) as info:
        await transact(server, config, request_for("ir", test_pki))
    assert info.value.kind == "capubs_not_allowed"


async def test_signed_ip_with_rogue_ca_pubs_enrolls_and_trusts_none(openssl_mock, test_pki: TestPki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """RFC 9483 §4.1.1: caPubs are trust anchors only under MAC protection. A signed ip whose
    caPubs hold a root nobody configured enrolls; the root reaches neither the result nor the
    trust store, and the transaction reports it."""
    rogue = rogue_root(tmp_path)
    server = openssl_mock(rsp_capubs=rogue)
    config = sig_config(test_pki)
    done = await transact(server, config, request_for("ir", test_pki))
    assert done.certificate == der(cert(test_pki.rsp_crt))
    assert done.ca_pubs == () and done.warnings == ("capubs_ignored",)
    assert config.trust is not None and der(cert(rogue)) not in [der(a) for a in config.trust.anchors]


async def test_certificate_for_another_key_is_refused(openssl_mock, test_pki: TestPki) -> None:  # type: ignore[no-untyped-def]
    """The mock issues rsp_crt (new_key) whatever is asked: enrolling another key must fail, after
    telling the CA so in certConf (the mock acknowledges with pkiConf)."""
    server = openssl_mock()
    request = CertRequest(BodyType.IR, key(test_pki.client_key), SUBJECT)  # type: ignore[arg-type]
    with pytest.raises(WrongPublicKey):
        await transact(server, mac_config(test_pki), request)


async def test_several_transactions_in_sequence_on_one_mock(openssl_mock, test_pki: TestPki) -> None:  # type: ignore[no-untyped-def]
    server = openssl_mock()
    config = mac_config(test_pki)
    async with CmpHttpClient(server.url, max_connections=1, request_timeout=5) as client:
        for op in ("ir", "cr", "p10cr", "rr", "genm"):
            done = await run_transaction(client, ClientTransaction(config, request_for(op, test_pki)), timeout=10)
            assert done.status.status == PKIStatus.ACCEPTED

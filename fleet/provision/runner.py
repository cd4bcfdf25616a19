"""Provision a batch of devices: one resumable state machine per device, decided from the journal.

Each device task reads its journal record and takes the step its state calls for; every step is
durable in the journal before the next one starts, so a run killed at any moment resumes where
the journal says, and the same code path serves retries within a run and resumption after a
crash:

``new``/``failed``
    Make (or reload) the key, write it 0600, record ``key``. p10cr devices use their CSR's key.
``key``
    First settle orphans waiting for revocation (below). Then record ``sent`` with a fresh
    transactionID, run ir/p10cr **without** implicitConfirm, and when the certificate arrives,
    before certConf: write the files and record ``received`` (certificate, the CA's response, and
    the senderNonce it answered). certConf + pkiConf: record ``confirmed``.
``sent`` (found at start: the process died while a request was in flight)
    The transaction cannot be resumed: we never saw the response, so we lack the CA's nonce. If
    the CA issued a certificate it is unconfirmed and the CA rejects it after confirmWaitTime
    (listed as revoked in its CRL). Record a possible orphan (fate ``left_to_ca_expiry``) and go
    back to ``key``: a new transaction, same key.
``received`` (the process died, or the network failed, between storing and pkiConf)
    Continue the *same* transaction: rebuild the client with the stored transactionID, feed it the
    stored response (its recipNonce is the stored senderNonce; protection is checked again) and
    send the certConf it produces. pkiConf: ``confirmed``. A CMP refusal (transaction expired after
    confirmWaitTime, or already closed): the stored certificate is an orphan; record it
    (``pending_revoke``), delete its files, go back to ``key``, which revokes it with rr signed
    by the orphan certificate and its key (reason superseded) before requesting a new one.
    A transport failure: retry the certConf later (still ``received``).

Files that cannot be written fail that device alone, with the reason; the others carry on. Its
folder is checked before anything is sent; if the certificate files still cannot be stored when
the certificate arrives, certConf *rejects* the certificate (the CA revokes it at once) rather than
confirm a certificate nobody holds, and the journal records it as an orphan ``rejected_in_certconf``
(``left_to_ca_expiry`` if the CA did not acknowledge: unconfirmed, it dies at confirmWaitTime).

A refusal is not an orphan: the CA issued nothing, also when its refusal could not be verified
(no ``--trusted``: reported "unverified", nothing in it believed).

Transient failures (timeouts, connection errors, HTTP 5xx/408/429, systemUnavail, systemFailure,
transactionIdInUse, polling limits) are retried with exponential backoff and full jitter up to
``max_attempts`` per device and run; permanent ones (rejections with other failInfo, bad
protection, HTTP 4xx) end the device as ``failed`` with the failInfo recorded.
"""

from __future__ import annotations

import os
import random
import ssl
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.errors import CmpError, PollingLimit, StatusError, UnverifiedRefusal
from fleet.cmp.kga import key_algorithm
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import PrivateKey, SignatureProtector, is_mac_algorithm
from fleet.cmp.requests import CertRequest, CsrRequest, Request, RevocationRequest
from fleet.cmp.trust import TrustStore, load_cert, signer_chain
from fleet.connect import is_coap, open_client
from fleet.errors import FleetError
from fleet.exchange import TransactionTimeout, run_transaction
from fleet.files import CredentialError, load_certificates
from fleet.http.client import cmp_path
from fleet.http.errors import HttpStatusError
from fleet.observe import Observer
from fleet.pkcs11 import Token, token_key_spec
from fleet.provision import outputs
from fleet.provision.journal import (
    DeviceRecord,
    DeviceState,
    Journal,
    JournalError,
    JournalWriter,
    Orphan,
    OrphanFate,
    updated,
)
from fleet.provision.keyahead import KeyAhead, planned_key_types
from fleet.provision.manifest import DeviceSpec
from fleet.provision.outputs import OutputError
from fleet.transport import CmpTransport, TransportError, TransportFactory

__all__ = ["Progress", "ProvisionOptions", "Provisioner", "RunStats", "is_transient"]

SUPERSEDED = 4  # CRLReason for an orphan replaced by a new certificate
_TRANSIENT_FAILINFO = frozenset({"systemUnavail", "systemFailure", "transactionIdInUse"})


@dataclass(frozen=True)
class ProvisionOptions:
    server: str
    out: Path
    concurrency: int = 16
    rate: float | None = None  # new requests per second, all devices together
    timeout: float = 60.0  # one transaction, polling included
    max_attempts: int = 8  # per device and run, for transient failures
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    key_pass: bytes | None = field(default=None, repr=False)
    p12: bool = False
    trusted: tuple[x509.Certificate, ...] = ()
    mode: str = "lcmpp"
    progress: Callable[[Progress], None] | None = None
    progress_interval: float = 1.0
    seed: int | None = None  # jitter
    observer: Observer | None = None  # fleet.load.metrics.FleetMetrics, or None
    proxy: str | None = None  # None: from the environment (fleet.http.proxy)
    token: Token | None = None  # new device keys live in this PKCS#11 token, labelled by device id
    ssl_context: ssl.SSLContext | None = None  # --tls-*: server verification, client certificate
    key_ahead: int = 0  # keys made ahead in worker processes (fleet.provision.keyahead); 0: on the spot


@dataclass(frozen=True)
class Progress:
    total: int
    confirmed: int
    failed: int
    in_flight: int
    elapsed: float
    provisioned_now: int

    @property
    def rate(self) -> float:
        return self.provisioned_now / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        return (f"provision: {self.confirmed}/{self.total} confirmed, {self.failed} failed, "
                f"{self.in_flight} in flight, {self.rate:.1f} devices/s")


@dataclass
class RunStats:
    total: int = 0
    skipped: int = 0  # confirmed before this run
    provisioned: int = 0  # confirmed in this run
    failed: int = 0
    retries: int = 0
    orphans_revoked: int = 0
    possible_orphans: int = 0
    elapsed: float = 0.0
    commits: int = 0
    provisioned_ids: set[str] = field(default_factory=set)  # confirmed in this run
    warnings: dict[str, int] = field(default_factory=dict)  # accepted CA habits (fleet.cmp.habits.WARNINGS)


class _Transient(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Permanent(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _StoreFailed(Exception):
    """The certificate arrived but its files could not be written."""

    def __init__(self, error: OutputError) -> None:
        super().__init__(str(error))
        self.error = error


class _NonceTape:
    """``random`` for a ClientTransaction: remembers the last nonce drawn; replays ``first`` once.

    The transactionID is always passed explicitly, so every draw is a senderNonce."""

    def __init__(self, first: bytes | None = None) -> None:
        self._first = first
        self.last: bytes | None = None

    def __call__(self, n: int) -> bytes:
        if self._first is not None:
            value, self._first = self._first, None
        else:
            value = os.urandom(n)
        self.last = value
        return value


def is_transient(exc: BaseException) -> bool:
    """Worth retrying later: the CA or the network may do better next time."""
    if isinstance(exc, HttpStatusError):
        return exc.status >= 500 or exc.status in (408, 429)
    if isinstance(exc, (TransportError, TransactionTimeout, PollingLimit)):
        return True
    if isinstance(exc, StatusError):
        return bool(_TRANSIENT_FAILINFO.intersection(exc.fail_names))
    return False


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) group that is not a trio cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_leaf(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group


def _refused_outright(exc: BaseException, polled: bool) -> bool:
    """True when the CA certainly issued nothing: it refused the request itself. Not after
    polling (the CA may issue before it delivers), and not for transactionIdInUse (the HTTP
    client re-sends a request once when a kept-alive connection dies, so the CA may have issued
    on the first copy)."""
    if polled or not isinstance(exc, StatusError):
        return False
    return "transactionIdInUse" not in exc.fail_names


def _kind(exc: BaseException) -> str:
    return str(getattr(exc, "kind", type(exc).__name__))


class _Pacer:
    """At most ``rate`` request starts per second, on an absolute schedule."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = trio.current_time()
        at = max(now, self._next)
        self._next = at + self._interval
        await trio.sleep_until(at)


class Provisioner:
    """Runs the devices of a manifest against one CA; the journal decides what each one does.

    ``transport`` makes what carries the messages; by default the client for the URL's scheme
    (one CoAP socket for coap://) or ``CmpHttpClient`` to
    ``options.server`` with ``concurrency`` connections (an in-process CA for tests)."""

    def __init__(self, devices: Sequence[DeviceSpec], journal: Journal, options: ProvisionOptions,
                 *, transport: TransportFactory | None = None) -> None:
        self.devices = list(devices)
        self.journal = journal
        self.options = options
        self._transport_factory = transport or self._client
        default = "/.well-known/cmp" if is_coap(options.server) else "/"  # RFC 9482 §2.1 for CoAP
        self._base_path = urlsplit(options.server).path or default
        self.writer = JournalWriter(journal)
        self.stats = RunStats(total=len(self.devices))
        self._random = random.Random(options.seed)
        self._pacer = _Pacer(options.rate)
        self._trusted_der = tuple(c.public_bytes(Encoding.DER) for c in options.trusted)
        self._in_flight = 0
        self._transport: CmpTransport | None = None
        self._started = 0.0
        self.key_ahead: KeyAhead | None = None

    def _client(self) -> AbstractAsyncContextManager[CmpTransport]:
        return open_client(self.options.server, max_connections=max(1, self.options.concurrency),
                           timeout=self.options.timeout, proxy=self.options.proxy,
                           ssl_context=self.options.ssl_context)

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> RunStats:
        """Provision every device; returns when each is confirmed or has given up. On
        cancellation (Ctrl-C) the journal keeps every step that completed."""
        self._started = trio.current_time()
        queue = list(reversed(self.devices))
        if self.options.key_ahead:
            plan = planned_key_types(self.devices, self.journal, token=self.options.token is not None)
            self.key_ahead = KeyAhead(plan, self.options.key_ahead).start() if plan else None
        try:
            async with self._transport_factory() as transport:
                self._transport = transport
                async with trio.open_nursery() as outer:
                    await outer.start(self.writer.run)
                    if self.options.progress is not None:
                        outer.start_soon(self._report_progress)
                    async with trio.open_nursery() as workers:
                        for _ in range(max(1, min(self.options.concurrency, len(queue)))):
                            workers.start_soon(self._worker, queue)
                    outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One Ctrl-C or one FleetError, not a nest of groups: the CLI prints one line.
            leaf = _first_leaf(group)
            if isinstance(leaf, (KeyboardInterrupt, FleetError)):
                raise leaf from None
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.writer.close)
                if self.key_ahead is not None:  # the keys not taken are dropped, never written
                    await trio.to_thread.run_sync(self.key_ahead.close)
            self.stats.elapsed = trio.current_time() - self._started
            self.stats.commits = self.writer.commits
            if self.options.progress is not None:
                self.options.progress(self._progress())
        return self.stats

    async def _worker(self, queue: list[DeviceSpec]) -> None:
        while queue:
            device = queue.pop()
            self._in_flight += 1
            try:
                await self._device(device)
            except JournalError:
                raise  # the run's own state: nothing is safe without it
            except Exception as exc:  # noqa: BLE001 - one device's surprise must not stop the others
                await self._give_up(device, exc, permanent=True)
            finally:
                self._in_flight -= 1

    async def _report_progress(self) -> None:
        assert self.options.progress is not None
        while True:
            await trio.sleep(self.options.progress_interval)
            self.options.progress(self._progress())

    def _progress(self) -> Progress:
        states = [self.journal.device(d.id).state for d in self.devices]
        return Progress(
            total=len(self.devices),
            confirmed=states.count(DeviceState.CONFIRMED),
            failed=self.stats.failed,
            in_flight=self._in_flight,
            elapsed=trio.current_time() - self._started,
            provisioned_now=self.stats.provisioned,
        )

    # -- one device -------------------------------------------------------------------------

    async def _device(self, dev: DeviceSpec) -> None:
        rec = self.journal.device(dev.id)
        if rec.state is DeviceState.CONFIRMED:
            await self._confirmed_before(dev, rec)
            return
        if rec.error is not None or rec.fingerprint != dev.fingerprint:
            rec = updated(rec, fingerprint=dev.fingerprint, error=None, error_kind=None, fail_names=None)
            self.journal.remember([(rec, "resume")])
        try:  # before anything is sent: a folder that cannot take files fails this device alone
            await trio.to_thread.run_sync(self._prepare_folder, dev)
        except OSError as exc:
            await self._give_up(dev, outputs.files_error("cannot write in its output folder", exc), permanent=True)
            return
        failures = 0
        while True:
            try:
                if await self._step(dev):
                    self.stats.provisioned += 1
                    self.stats.provisioned_ids.add(dev.id)
                    return
            except _Transient as t:
                failures += 1
                self.stats.retries += 1
                if failures >= self.options.max_attempts:
                    await self._give_up(dev, t.error, permanent=False)
                    return
                cap = min(self.options.backoff_max, self.options.backoff_base * 2 ** (failures - 1))
                await trio.sleep(self._random.uniform(0, cap))
            except _Permanent as p:
                await self._give_up(dev, p.error, permanent=True)
                return
            except (OSError, CredentialError, OutputError) as exc:  # its key or files: it fails alone
                await self._give_up(dev, outputs.files_error("cannot write or read its files", exc), permanent=True)
                return

    def _prepare_folder(self, dev: DeviceSpec) -> None:
        folder = self.options.out / dev.id
        outputs.remove_stale_temporaries(folder)
        outputs.check_writable(folder)

    async def _confirmed_before(self, dev: DeviceSpec, rec: DeviceRecord) -> None:
        """Confirmed in an earlier run: skip it, rewriting its files from the journal if they are
        gone (or to add the ca.pem it lacked, when --trusted now names a root)."""
        folder = self.options.out / dev.id
        if rec.error is None and (folder / outputs.CERT_FILE).exists() and (
            not self._trusted_der or (folder / outputs.CA_FILE).exists()
        ):
            self.stats.skipped += 1
            return
        try:
            await self._rewrite_files(dev, rec)
        except (OSError, FleetError) as exc:
            error = outputs.files_error("confirmed at the CA, but its files cannot be written", exc)
            self.stats.failed += 1
            await self.writer.write((updated(rec, error_kind=error.kind, error=str(error)[:300]), "files_failed"))
            return
        self.stats.skipped += 1
        if rec.error is not None:
            await self.writer.write((updated(rec, error_kind=None, error=None, fail_names=None), "files_rewritten"))

    async def _step(self, dev: DeviceSpec) -> bool:
        """Take the step the journal calls for; True once the device is confirmed."""
        rec = self.journal.device(dev.id)
        state = rec.state
        if state in (DeviceState.NEW, DeviceState.FAILED):
            await self._make_key(dev, rec)
        elif state is DeviceState.SENT:
            await self._abandon_sent(dev, rec, "request in flight when the previous run stopped")
        elif state is DeviceState.RECEIVED:
            return await self._confirm_stored(dev, rec)
        elif state is DeviceState.KEY:
            await self._settle_orphans(dev)
            return await self._request(dev, rec)
        return self.journal.device(dev.id).state is DeviceState.CONFIRMED

    async def _give_up(self, dev: DeviceSpec, error: BaseException, *, permanent: bool) -> None:
        rec = self.journal.device(dev.id)
        fields: dict[str, object] = {
            "error_kind": _kind(error),
            "error": (" ".join(str(error).split()) or type(error).__name__)[:300],
            "fail_names": ",".join(getattr(error, "fail_names", ())) or None,
        }
        if permanent and rec.state is DeviceState.KEY:
            fields["state"] = DeviceState.FAILED
        self.stats.failed += 1
        await self.writer.write((updated(rec, **fields), "failed" if permanent else "gave_up"))

    # -- steps ------------------------------------------------------------------------------

    async def _make_key(self, dev: DeviceSpec, rec: DeviceRecord) -> None:
        if dev.central_key is not None:
            kid = None  # the CA makes the key; its file is written before 'received' (_store)
        elif dev.csr is not None:
            kid = outputs.key_id(dev.csr.public_key())
        else:
            key = await trio.to_thread.run_sync(self._load_or_make_key, dev)
            kid = outputs.key_id(key.public_key())
        # Not awaited: the key file is durable; lost, the rerun reloads it from the file.
        self.writer.stage((updated(rec, state=DeviceState.KEY, key_id=kid, error=None,
                                   error_kind=None, fail_names=None), "key"))

    def _load_or_make_key(self, dev: DeviceSpec) -> PrivateKey:
        """Reuse a key already on disk (a crash after writing it), else make and store one."""
        assert dev.key_type is not None
        token = self.options.token
        if token is not None:  # found by its label after a crash: reused, never made twice
            return token.key_or_new(dev.id, token_key_spec(dev.key_type))
        key = outputs.load_key(self.options.out, dev.id, self.options.key_pass)
        if key is None:
            key = self.key_ahead.take(dev.key_type) if self.key_ahead is not None else dev.key_type.generate()
            outputs.store_key(self.options.out, dev.id, key, self.options.key_pass)
        return key

    def _device_key(self, dev: DeviceSpec) -> PrivateKey | None:
        if dev.csr is not None:
            return dev.csr_key
        if self.options.token is not None:
            return self.options.token.key(dev.id)
        return outputs.load_key(self.options.out, dev.id, self.options.key_pass)

    async def _abandon_sent(self, dev: DeviceSpec, rec: DeviceRecord, why: str) -> None:
        """No response to keep: an issued certificate (if any) stays unconfirmed and dies."""
        assert rec.transaction_id is not None
        orphan = Orphan(dev.id, rec.transaction_id, False, OrphanFate.LEFT_TO_CA, detail=why,
                        updated=time.time())
        self.stats.possible_orphans += 1
        back = updated(rec, state=DeviceState.KEY, transaction_id=None, nonce=None)
        await self.writer.write(orphan, (back, "abandoned"))
        # A crash between writing the files and recording 'received' leaves a certificate that
        # will never be confirmed: it must not look like a provisioned device.
        await trio.to_thread.run_sync(outputs.remove_certificate_files, self.options.out / dev.id)

    async def _request(self, dev: DeviceSpec, rec: DeviceRecord) -> bool:
        key = None
        if dev.csr is None and dev.central_key is None:
            key = await trio.to_thread.run_sync(self._device_key, dev)
            if key is None:  # the key file vanished: make a new one next step
                await self.writer.write((updated(rec, state=DeviceState.NEW), "key_missing"))
                return False
        await self._pacer.wait()
        tid = os.urandom(16)
        rec = updated(rec, state=DeviceState.SENT, transaction_id=tid, nonce=None, response=None,
                      certificate=None, serial=None, attempts=rec.attempts + 1)
        await self.writer.write((rec, "sent"))
        request = self._cert_request(dev, key)
        tape = _NonceTape()
        tx = ClientTransaction(self._config(dev), request, transaction_id=tid, random=tape)
        transport = self._transport
        assert transport is not None
        observer, op = self.options.observer, tx.kind.label
        started = trio.current_time()
        polls = 0
        answered: bytes | None = None  # the senderNonce of the request the last response answers
        unstored: tuple[bytes, OutputError] | None = None  # a certificate we reject: not stored

        def on_exchange(send: Send, seconds: float) -> None:
            """After each round trip, before the response is read (which draws the next nonce)."""
            nonlocal polls, answered
            answered = tape.last
            if send.body_type is BodyType.POLLREQ:
                polls += 1
            if observer is not None:
                observer.exchange(op, send.body_type.label, seconds)

        async def store(result: Done, response: bytes) -> str | None:
            """Ours to keep: durable on disk and in the journal before we confirm it."""
            nonlocal rec, unstored
            assert answered is not None and result.certificate is not None
            try:
                rec = await self._store(dev, rec, result, response, answered, key)
            except _StoreFailed as failed:  # confirm nothing nobody holds: reject it
                unstored = (result.certificate, failed.error)
                return "the certificate could not be stored"
            return None

        if observer is not None:
            observer.operation_started(op)
        try:
            done = await run_transaction(transport, tx, path=self._path(dev, tx.operation),
                                         timeout=self.options.timeout, on_exchange=on_exchange, before_confirm=store)
        except (TransportError, CmpError) as exc:  # TransactionTimeout included
            self._observe_failure(op, exc, started, polls)
            if unstored is not None:
                return await self._not_stored(dev, rec, *unstored, exc)
            return await self._request_failed(dev, rec, exc, polls > 0)
        if unstored is not None:
            self._observe_failure(op, unstored[1], started, polls)
            return await self._not_stored(dev, rec, *unstored, None)
        for code in done.warnings:
            self.stats.warnings[code] = self.stats.warnings.get(code, 0) + 1
            if observer is not None:
                observer.warning(op, code)
        if observer is not None:
            elapsed = trio.current_time() - started
            observer.operation_done(op, True, "ok", (), elapsed, elapsed, polls)
        # Not awaited: durable with the next commit; lost in a crash, the rerun finds 'received'
        # and the CA answers its certConf (see the module doc).
        self.writer.stage((updated(rec, state=DeviceState.CONFIRMED), "confirmed"))
        return True

    def _observe_failure(self, op: str, exc: BaseException, started: float, polls: int) -> None:
        observer = self.options.observer
        if observer is not None:
            elapsed = trio.current_time() - started
            observer.operation_done(op, False, _kind(exc), tuple(getattr(exc, "fail_names", ())), elapsed, elapsed, polls)

    async def _request_failed(self, dev: DeviceSpec, rec: DeviceRecord, exc: Exception, polled: bool) -> bool:
        if rec.state is DeviceState.RECEIVED:
            raise _Transient(exc)  # stored: the next step continues this transaction's certConf
        if _refused_outright(exc, polled):  # the CA answered our request with a refusal
            await self.writer.write((updated(rec, state=DeviceState.KEY, transaction_id=None), "refused"))
        else:  # the CA may have issued without our seeing it: a possible, unconfirmed orphan
            await self._abandon_sent(dev, rec, f"{_kind(exc)}: {exc}"[:300])
        if is_transient(exc):
            raise _Transient(exc)
        raise _Permanent(exc)

    async def _not_stored(self, dev: DeviceSpec, rec: DeviceRecord, cert_der: bytes, error: OutputError,
                          unacknowledged: BaseException | None) -> bool:
        """The certificate arrived, its files could not be written, certConf rejected it: the
        device fails with that reason (no retry: the folder needs a person), the certificate is
        an orphan the CA rejected, or will reject at confirmWaitTime if it did not acknowledge."""
        assert rec.transaction_id is not None
        if unacknowledged is None:
            fate, how = OrphanFate.REJECTED, "rejected in certConf"
        else:
            fate = OrphanFate.LEFT_TO_CA
            how = (f"the rejecting certConf was not acknowledged ({_kind(unacknowledged)}: {unacknowledged}): "
                   "unconfirmed, the CA rejects it after its confirmWaitTime")
        serial = format(load_cert(cert_der).serial_number, "X")
        orphan = Orphan(dev.id, rec.transaction_id, True, fate, cert_der, serial,
                        f"{error}; {how}"[:500], time.time())
        back = updated(rec, state=DeviceState.KEY, transaction_id=None, nonce=None)
        await self.writer.write(orphan, (back, "not_stored"))
        await trio.to_thread.run_sync(outputs.remove_rejected_files, self.options.out / dev.id)
        raise _Permanent(error)

    async def _store(
        self, dev: DeviceSpec, rec: DeviceRecord, done: Done, response: bytes, nonce: bytes,
        key: PrivateKey | None,
    ) -> DeviceRecord:
        cert_der = done.certificate
        assert cert_der is not None
        central = done.private_key  # central key generation: checked by the transaction
        try:
            if central is not None:  # on disk (0600, fsynced) before the journal says 'received'
                await trio.to_thread.run_sync(outputs.store_key, self.options.out, dev.id, central,
                                              self.options.key_pass)
            await trio.to_thread.run_sync(self._write_files, dev, cert_der, done.extra_certs + done.ca_pubs,
                                          key or central)
        except (OSError, FleetError) as exc:
            raise _StoreFailed(outputs.files_error("cannot store the certificate files", exc)) from None
        serial = format(load_cert(cert_der).serial_number, "X")
        rec = updated(rec, state=DeviceState.RECEIVED, nonce=nonce, response=response,
                      certificate=cert_der, serial=serial,
                      **({"key_id": outputs.key_id(central.public_key())} if central is not None else {}))
        await self.writer.write((rec, "received"))
        return rec

    def _write_files(self, dev: DeviceSpec, cert_der: bytes, candidates: tuple[bytes, ...],
                     key: PrivateKey | None) -> None:
        inter, roots = outputs.split_chain(cert_der, (*candidates, *self._trusted_der))
        if self.options.token is not None and key is not None:
            self.options.token.store_certificate(dev.id, cert_der)  # beside its key, as --out's copy
        outputs.write_certificate(self.options.out, dev.id, cert_der, inter, roots, key=key,
                                  p12_password=self.options.key_pass, p12=self.options.p12)

    async def _rewrite_files(self, dev: DeviceSpec, rec: DeviceRecord) -> None:
        """A confirmed device whose cert.pem is gone: write it again from the journal."""
        if rec.certificate is None:
            return
        extra: tuple[bytes, ...] = ()
        if rec.response is not None:
            from fleet.cmp import messages

            msg = messages.decode(rec.response)
            extra = tuple(msg.extra_certs)
            if is_mac_algorithm(msg.header.protection_alg or b""):  # RFC 9483 §4.1.1, as the client
                extra += tuple(getattr(msg.body, "ca_pubs", ()) or ())
        key = await trio.to_thread.run_sync(self._device_key, dev) if dev.csr is None else None
        await trio.to_thread.run_sync(self._write_files, dev, rec.certificate, extra, key)

    async def _confirm_stored(self, dev: DeviceSpec, rec: DeviceRecord) -> bool:
        """certConf for the stored certificate, in its original transaction (see module doc)."""
        assert rec.transaction_id and rec.nonce and rec.response and rec.certificate
        key = None
        if dev.csr is None:
            key = await trio.to_thread.run_sync(self._device_key, dev)
            if key is None:
                await self._orphan_received(dev, rec, "the key of the stored certificate is gone")
                return False
        tx = ClientTransaction(self._config(dev), self._cert_request(dev, key),
                               transaction_id=rec.transaction_id, random=_NonceTape(rec.nonce))
        tx.start()
        try:
            event = tx.receive(rec.response)
        except CmpError as exc:  # e.g. the RA certificate expired since: cannot confirm
            await self._orphan_received(dev, rec, f"stored response no longer verifies: {exc}")
            return False
        if not isinstance(event, Send) or event.body_type is not BodyType.CERTCONF:
            await self._orphan_received(dev, rec, "stored response does not lead to certConf")
            return False
        transport = self._transport
        assert transport is not None
        try:
            await run_transaction(transport, tx, path=self._path(dev, tx.operation), timeout=self.options.timeout,
                                  resume=event)
        except TransactionTimeout:
            raise _Transient(TransactionTimeout("certConf not answered in time")) from None
        except TransportError as exc:
            raise _Transient(exc) from None
        except CmpError as exc:
            await self._orphan_received(dev, rec, f"certConf refused: {exc}"[:300])
            return False
        self.writer.stage((updated(rec, state=DeviceState.CONFIRMED), "confirmed_resumed"))
        return True

    async def _orphan_received(self, dev: DeviceSpec, rec: DeviceRecord, why: str) -> None:
        assert rec.transaction_id is not None
        orphan = Orphan(dev.id, rec.transaction_id, True, OrphanFate.PENDING_REVOKE, rec.certificate,
                        rec.serial, why, time.time())
        back = updated(rec, state=DeviceState.KEY, transaction_id=None, nonce=None, response=None,
                       certificate=None, serial=None)
        await self.writer.write(orphan, (back, "orphaned"))
        await trio.to_thread.run_sync(outputs.remove_certificate_files, self.options.out / dev.id)

    async def _settle_orphans(self, dev: DeviceSpec) -> None:
        """rr for every received orphan of ``dev``, signed with its own certificate and key."""
        for orphan in self.journal.orphans_of(dev.id):
            if orphan.fate is not OrphanFate.PENDING_REVOKE:
                continue
            assert orphan.certificate is not None
            key = await trio.to_thread.run_sync(self._device_key, dev)
            cert = load_cert(orphan.certificate)
            if key is None:
                await self._orphan_fate(orphan, OrphanFate.LEFT_TO_CA,
                                        "no key to sign rr (p10cr without csr_key): the CA rejects it unconfirmed")
                continue
            anchors = list(self.options.trusted) + self._device_roots(dev)
            chain = signer_chain(cert, [*self._device_roots(dev, outputs.CHAIN_FILE), *anchors])  # RFC 9483 §3.3
            config = ClientConfig(SignatureProtector(key, cert, chain), TrustStore(anchors), mode=self.options.mode,  # type: ignore[arg-type]
                                  **dev.header_fields())  # type: ignore[arg-type]
            tx = ClientTransaction(config, RevocationRequest.for_certificate(cert, SUPERSEDED))
            transport = self._transport
            assert transport is not None
            await self._pacer.wait()
            try:
                await run_transaction(transport, tx, path=self._path(dev, tx.operation),
                                      timeout=self.options.timeout)
            except StatusError as exc:
                if "certRevoked" in exc.fail_names and not isinstance(exc, UnverifiedRefusal):
                    await self._orphan_fate(orphan, OrphanFate.ALREADY_DEAD, "the CA had revoked or rejected it")
                elif is_transient(exc):
                    raise _Transient(exc) from None
                else:
                    await self._orphan_fate(orphan, OrphanFate.REVOKE_FAILED, f"rr refused: {exc}"[:300])
                continue
            except (TransportError, TransactionTimeout, PollingLimit) as exc:
                raise _Transient(exc) from None
            except CmpError as exc:
                await self._orphan_fate(orphan, OrphanFate.REVOKE_FAILED, f"rr failed: {exc}"[:300])
                continue
            self.stats.orphans_revoked += 1
            await self._orphan_fate(orphan, OrphanFate.REVOKED, "revoked with rr (superseded)")

    async def _orphan_fate(self, orphan: Orphan, fate: OrphanFate, detail: str) -> None:
        why = f"{orphan.detail}; {detail}" if orphan.detail else detail
        await self.writer.write(Orphan(orphan.device_id, orphan.transaction_id, orphan.received, fate,
                                       orphan.certificate, orphan.serial, why[:500], time.time()))

    def _device_roots(self, dev: DeviceSpec, name: str = outputs.CA_FILE) -> list[x509.Certificate]:
        """The certificates of the device's ca.pem (or of its file ``name``: chain.pem)."""
        path = self.options.out / dev.id / name
        try:
            return load_certificates(path) if path.exists() and path.stat().st_size else []
        except (FleetError, OSError):  # unreadable: verify the rp with --trusted only
            return []

    # -- building transactions --------------------------------------------------------------

    def _config(self, dev: DeviceSpec) -> ClientConfig:
        return ClientConfig(dev.protector(self.options.trusted), TrustStore(list(self.options.trusted)),
                            mode=self.options.mode, **dev.header_fields())  # type: ignore[arg-type]

    @staticmethod
    def _cert_request(dev: DeviceSpec, key: PrivateKey | None) -> Request:
        if dev.csr is not None:
            return CsrRequest(dev.csr, cert_profile=dev.cert_profile)
        if dev.central_key is not None:
            return CertRequest(BodyType.IR, None, dev.subject, dev.sans, cert_profile=dev.cert_profile,
                               central_key_alg=key_algorithm(str(dev.central_key)))
        assert key is not None
        return CertRequest(BodyType.IR, key, dev.subject, dev.sans, cert_profile=dev.cert_profile)

    def _path(self, dev: DeviceSpec, operation: str | None) -> str | None:
        if dev.path is not None:
            return dev.path
        if dev.profile is not None:
            return cmp_path(self._base_path, profile=dev.profile, operation=operation)
        return None

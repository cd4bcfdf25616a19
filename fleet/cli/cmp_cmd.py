"""``fleet cmp ir|cr|kur|p10cr|rr|genm``: one CMP transaction, with options shaped like ``openssl cmp``."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import ssl
import sys
import tempfile
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleet.bounds import COUNT, POSITIVE
from fleet.cli.usage import Pkcs11Module, Pkcs11Pin, Pkcs11Token, ProxyOpt, bounded, examples
from fleet.cmp import genm, oids
from fleet.cmp.client import ClientConfig, ClientTransaction, Done
from fleet.cmp.habits import WARNINGS
from fleet.cmp.kga import key_algorithm
from fleet.cmp.messages import BodyType, InfoTypeAndValue, directory_name
from fleet.cmp.protection import (
    DEFAULT_MAX_PBM_ITERATIONS,
    DEFAULT_MAX_PBMAC1_ITERATIONS,
    MacProtector,
    PrivateKey,
    SignatureProtector,
    parse_reference,
)
from fleet.cmp.requests import CertRequest, CsrRequest, GeneralRequest, Request, RevocationRequest
from fleet.cmp.rootupdate import check_root_update
from fleet.cmp.trust import TrustStore, load_cert, signer_chain
from fleet.connect import open_client
from fleet.errors import FleetError
from fleet.exchange import run_transaction
from fleet.files import (
    OutputPathError,
    certs_pem,
    check_output_path,
    load_certificate,
    load_certificates,
    load_csr,
    load_private_key,
    private_key_pem,
    write_output,
)
from fleet.http.client import cmp_path
from fleet.keys import KeySpec
from fleet.names import parse_name, parse_sans
from fleet.pkcs11 import Token, token_curve
from fleet.secrets import read_secret

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Run one CMP transaction against a CA (options follow `openssl cmp`).",
    short_help="Run one CMP transaction against a CA (options follow openssl cmp).",
    epilog=examples(
        "fleet cmp ir --server http://127.0.0.1:8080/.well-known/cmp \\",
        "    --ref dev-00000001 --secret env:DEVICE_SECRET --subject /CN=device-1 \\",
        "    --newkey device.key --certout device.pem --cacertsout root.pem",
        "fleet cmp ir --help",
    ),
)

_CA = "--server http://127.0.0.1:8080/.well-known/cmp \\"
_MAC = "--ref dev-00000001 --secret env:DEVICE_SECRET"
_SIG = "--cert device.pem --key device.key \\\n    --trusted root.pem --untrusted chain.pem"
# Each command's examples; run in this order against `fleet ca serve --master-secret pass:demo`
# with DEVICE_SECRET=hex(HMAC-SHA256("demo", "dev-00000001")) they all succeed. --untrusted
# chain.pem: the issuing CA goes with the signer certificate (extraCerts), as RFC 9483 asks.
EXAMPLES = {
    "ir": (
        (f"fleet cmp ir {_CA}\n    {_MAC} --subject /CN=device-1 \\\n"
         "    --newkey device.key --certout device.pem --chainout chain.pem \\\n"
         "    --cacertsout root.pem"),
    ),
    "genm": (f"fleet cmp genm {_CA}\n    {_MAC} \\\n    --infotype caCerts --cacertsout cas.pem",),
    "cr": (
        (f"fleet cmp cr {_CA}\n    {_SIG} \\\n"
         "    --subject /CN=device-1b --newkey second.key --certout second.pem"),
    ),
    "kur": (f"fleet cmp kur {_CA}\n    {_SIG} \\\n    --newkey new.key --certout new.pem",),
    "p10cr": (
        (
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\\n"
            "    -keyout own.key -out own.csr -subj /CN=device-2"
        ),
        f"fleet cmp p10cr {_CA}\n    {_MAC} \\\n    --csr own.csr --certout own.pem",
    ),
    "rr": (
        (f"fleet cmp rr {_CA}\n    --cert new.pem --key new.key --trusted root.pem \\\n"
         "    --untrusted chain.pem --oldcert new.pem --revreason keyCompromise"),
    ),
}


class UsageError(FleetError):
    """Options that do not fit together."""


# -- options shared by every command -------------------------------------------------------------

Server = Annotated[str, typer.Option("--server", metavar="URL", help="CA URL: http://, https:// or coap:// (RFC 9482; see the examples).", show_default=False)]
Ref = Annotated[str | None, typer.Option("--ref", help="Reference (senderKID) for MAC protection; hex:0A1B.. for a binary one.")]
Secret = Annotated[str | None, typer.Option("--secret", help="Shared secret for MAC protection: pass:TEXT, env:VAR or file:PATH.")]
Sender = Annotated[str | None, typer.Option("--sender", metavar="NAME", help=(
    "Header sender for MAC protection, /CN=a or CN=a,O=b (default: the --ref when it is a name, "
    "like CN=fleet-test, else CN=<ref>; without --ref the --subject). Signed requests name the --cert subject."))]
Pbmac1 = Annotated[bool, typer.Option("--pbmac1", help="Protect with PBMAC1 (RFC 9481) instead of PasswordBasedMac.")]
Iterations = Annotated[int | None, typer.Option("--iterations", callback=bounded(COUNT), help="MAC iteration count (default: PBM 500, PBMAC1 10000).")]
MaxIterations = Annotated[int | None, typer.Option("--max-iterations", callback=bounded(COUNT), help=(
    f"Refuse MAC-protected responses with more iterations (default: PBMAC1 {DEFAULT_MAX_PBMAC1_ITERATIONS}, "
    f"PasswordBasedMac {DEFAULT_MAX_PBM_ITERATIONS}).") )]
Mac = Annotated[str, typer.Option("--mac", help="HMAC hash for MAC protection (sha1 for old CAs).")]
Cert = Annotated[Path | None, typer.Option("--cert", help="Certificate for signature protection (PEM/DER; certificates after it in the PEM are its chain).")]
Key = Annotated[Path | None, typer.Option("--key", help="Private key of --cert.")]
KeyPass = Annotated[str | None, typer.Option("--keypass", help="Passphrase of --key: pass:, env: or file:.")]
ExtraCerts = Annotated[Path | None, typer.Option("--extracerts", help=(
    "More certificates to send in extraCerts, after the chain of --cert (built from the --cert file, "
    "--untrusted and --trusted, without the self-signed root)."))]
Trusted = Annotated[list[Path] | None, typer.Option("--trusted", metavar="PEM", help="Trust anchors for signed responses (repeatable).")]
Untrusted = Annotated[list[Path] | None, typer.Option("--untrusted", metavar="PEM", help="Intermediate certificates: for the chain of --cert and for checking responses.")]
Recipient = Annotated[str | None, typer.Option("--recipient", help="Recipient name, e.g. /CN=CA (default NULL-DN).")]
NoMessageTime = Annotated[bool, typer.Option("--no-message-time", help="Send no messageTime in the header.")]
Mode = Annotated[str, typer.Option("--mode", help="lcmpp (RFC 9483) or 3gpp (TS 33.310: operator root from ip extraCerts).")]
Profile = Annotated[str | None, typer.Option("--profile", help="CMP profile name: posts to <url>/p/<name>/<operation>.")]
OpPaths = Annotated[bool, typer.Option("--operation-paths", help="Append the RFC 9483 operation to the URL path.")]
Timeout = Annotated[float, typer.Option("--timeout", callback=bounded(POSITIVE), help="Seconds for the whole transaction, polling included.")]
TlsTrusted = Annotated[Path | None, typer.Option("--tls-trusted", help="https: CA certificates to verify the server with (default: the system's).")]
TlsCert = Annotated[Path | None, typer.Option("--tls-cert", help="https: client certificate (PEM, chain after it).")]
TlsKey = Annotated[Path | None, typer.Option("--tls-key", help="https: key of --tls-cert.")]
Implicit = Annotated[bool, typer.Option("--implicit-confirm", help="Ask for implicit confirmation (no certConf).")]
CertProfile = Annotated[str | None, typer.Option("--cert-profile", help="certProfile to put in generalInfo (RFC 9483).")]
CertOut = Annotated[Path | None, typer.Option("--certout", help="Where to write the issued certificate (PEM).")]
ChainOut = Annotated[Path | None, typer.Option("--chainout", help="Where to write the chain from extraCerts (PEM).")]
CaCertsOut = Annotated[Path | None, typer.Option("--cacertsout", help="Where to write caPubs / caCerts (PEM).")]
NewKey = Annotated[Path | None, typer.Option("--newkey", help="Key to certify; generated and written here when absent.")]
NewKeyType = Annotated[str, typer.Option("--newkey-type", help="Type for a generated key: ec:P-256, ec:P-384, rsa:2048, ed25519 ...")]
NewKeyPass = Annotated[str | None, typer.Option("--newkeypass", help="Passphrase of --newkey: pass:, env: or file:.")]
CentralKeyGen = Annotated[bool, typer.Option("--centralkeygen", help="Ask the CA to generate the key (central key generation, RFC 9483 4.1.6): of --newkey-type, delivered encrypted, written to --newkeyout.")]
NewKeyOut = Annotated[Path | None, typer.Option("--newkeyout", help="With --centralkeygen: where to write the delivered key (PEM, 0600; encrypted with --newkeypass).")]
Subject = Annotated[str | None, typer.Option("--subject", help="Subject, /CN=a/O=b or CN=a,O=b.")]
Sans = Annotated[str | None, typer.Option("--sans", help="SANs: DNS:host, IP:addr, URI:urn:uuid:..., comma separated.")]


@dataclasses.dataclass(frozen=True)
class CmpOptions:
    """The options every ``fleet cmp`` command shares, as one typed object: where to send, how
    to protect, whom to believe, the header fields, where to write. Each field's annotation is
    its command-line option; ``cmp_command`` gives every command these options."""

    server: Server
    ref: Ref = None
    secret: Secret = None
    sender: Sender = None
    pbmac1: Pbmac1 = False
    iterations: Iterations = None
    max_iterations: MaxIterations = None
    mac: Mac = "sha256"
    cert: Cert = None
    key: Key = None
    keypass: KeyPass = None
    extracerts: ExtraCerts = None
    trusted: Trusted = None
    untrusted: Untrusted = None
    recipient: Recipient = None
    no_message_time: NoMessageTime = False
    mode: Mode = "lcmpp"
    profile: Profile = None
    operation_paths: OpPaths = False
    timeout: Timeout = 60.0
    tls_trusted: TlsTrusted = None
    tls_cert: TlsCert = None
    tls_key: TlsKey = None
    proxy: ProxyOpt = None
    pkcs11_module: Pkcs11Module = None
    pkcs11_token: Pkcs11Token = None
    pkcs11_pin: Pkcs11Pin = None
    implicit_confirm: Implicit = False
    cert_profile: CertProfile = None
    certout: CertOut = None
    chainout: ChainOut = None
    cacertsout: CaCertsOut = None

    def anchors(self) -> list[x509.Certificate]:
        return [c for p in self.trusted or [] for c in load_certificates(p)]

    def untrusted_certs(self) -> list[x509.Certificate]:
        return [c for p in self.untrusted or [] for c in load_certificates(p)]

    def protector(self) -> MacProtector | SignatureProtector:
        if self.cert is not None or self.key is not None:
            if self.cert is None or self.key is None:
                raise UsageError("signature protection needs both --cert and --key")
            if self.sender is not None:
                raise UsageError("--sender is for MAC protection: a signed request names the --cert subject (RFC 9483 §3.1)")
            password = read_secret(self.keypass) if self.keypass else None
            leaf, *rest = load_certificates(self.cert)
            token = self.token
            if token is not None:  # --key names a key in the token
                signer_key = token.key(str(self.key))
                if signer_key is None:
                    raise UsageError(f"--key: no key labelled {str(self.key)!r} in PKCS#11 token {token.label!r}")
                chain = signer_chain(leaf, [*rest, *self.untrusted_certs(), *self.anchors()])
                return SignatureProtector(signer_key, leaf, chain)
            extra = load_certificates(self.extracerts) if self.extracerts else []
            # RFC 9483 §3.3: the protection certificate, then as much of its chain as is known.
            chain = signer_chain(leaf, [*rest, *self.untrusted_certs(), *self.anchors()], extra=extra)
            return SignatureProtector(load_private_key(self.key, password), leaf, chain)
        if self.secret is None:
            raise UsageError("give --secret (MAC protection) or --cert and --key (signature protection)")
        try:
            reference = parse_reference(self.ref) if self.ref is not None else None
        except ValueError as exc:
            raise UsageError(f"--ref: {exc}") from None
        return MacProtector(
            read_secret(self.secret),
            reference=reference,
            pbmac1=self.pbmac1,
            iterations=self.iterations,
            mac=self.mac,
            sender_name=parse_name(self.sender).public_bytes() if self.sender is not None else None,
        )

    @functools.cached_property
    def token(self) -> Token | None:
        """The PKCS#11 token that holds --key and --newkey (by label), when --pkcs11-module is given."""
        if self.pkcs11_module is None:
            return None
        if self.pkcs11_token is None or self.pkcs11_pin is None:
            raise UsageError("--pkcs11-module needs --pkcs11-token and --pkcs11-pin")
        return Token(self.pkcs11_module, self.pkcs11_token, self.pkcs11_pin)

    def config(self) -> ClientConfig:
        if self.mode not in ("lcmpp", "3gpp"):
            raise UsageError(f"--mode must be lcmpp or 3gpp, not {self.mode!r}")
        anchors = self.anchors()
        protector = self.protector()
        if isinstance(protector, SignatureProtector) and not anchors and self.mode != "3gpp":
            raise UsageError("signature protection needs --trusted to verify the CA's responses")
        recipient = directory_name(parse_name(self.recipient).public_bytes()) if self.recipient else None
        kwargs = {"recipient": recipient} if recipient else {}
        return ClientConfig(
            protector, TrustStore(anchors), tuple(self.untrusted_certs()), mode=self.mode,  # type: ignore[arg-type]
            max_iterations=self.max_iterations, message_time=not self.no_message_time, **kwargs,  # type: ignore[arg-type]
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context when any --tls option is given (else the client's default)."""
        if not (self.tls_trusted or self.tls_cert or self.tls_key):
            return None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        try:
            context = ssl.create_default_context(cafile=str(self.tls_trusted) if self.tls_trusted else None)
            if self.tls_cert is not None:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load TLS credentials: {exc}") from None
        return context


_OPTION_FIELDS = {f.name: f for f in dataclasses.fields(CmpOptions)}


def cmp_command(name: str, *, omit: tuple[str, ...] = (), **settings: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``func(options: CmpOptions, **own)`` as ``fleet cmp <name>``. Its command-line
    options are --server, then ``func``'s own, then the rest of ``CmpOptions`` less ``omit``
    (fields a command has no use for keep their defaults); typer sees one flat signature, so
    ``--help`` lists them all and every flag keeps its name."""

    def register(func: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(CmpOptions, include_extras=True)
        own_hints = typing.get_type_hints(func, include_extras=True)
        own = list(inspect.signature(func).parameters.values())[1:]

        def option(field: dataclasses.Field[Any]) -> inspect.Parameter:
            default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
            return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[field.name])

        shared = [f for f in dataclasses.fields(CmpOptions) if f.name not in omit]
        params = [option(shared[0])]  # --server first
        params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints[p.name]) for p in own]
        params += [option(f) for f in shared[1:]]

        @functools.wraps(func)
        def command(**values: Any) -> None:
            options = CmpOptions(**{k: values.pop(k) for k in list(values) if k in _OPTION_FIELDS})
            func(options, **values)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the flat signature, not func's
        app.command(name, **settings)(command)
        return func

    return register


def _run(options: CmpOptions, request: Request) -> Done:
    config = options.config()
    tx = ClientTransaction(config, request)
    tls = options.ssl_context()

    async def go() -> Done:
        async with open_client(
            options.server, max_connections=1, timeout=options.timeout, ssl_context=tls, proxy=options.proxy,
        ) as client:
            path = None
            if options.profile or options.operation_paths:
                op = tx.operation if options.operation_paths or options.profile else None
                path = cmp_path(client.base_path, profile=options.profile, operation=op)
            return await run_transaction(client, tx, path=path, timeout=options.timeout)

    done = trio.run(go)
    for code in done.warnings:
        print(f"fleet cmp: warning: {WARNINGS[code]}", file=sys.stderr)
    return done


def _check_paths(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Before anything is generated or sent: every output can be written, and no two options
    name the same file (an output never overwrites a credential it is made from)."""
    written: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        check_output_path(path, flag)
        other = written.setdefault(path.resolve(), flag)
        if other != flag:
            raise UsageError(f"{other} and {flag} name the same file {str(path)!r}")
    for flag, path in inputs.items():
        if path is not None and path.resolve() in written:
            raise UsageError(f"{written[path.resolve()]} would overwrite {flag} {str(path)!r}")


def _output_paths(options: CmpOptions, newkey: Path | None = None) -> dict[str, Path | None]:
    outputs = {"--certout": options.certout, "--chainout": options.chainout, "--cacertsout": options.cacertsout}
    if newkey is not None and not newkey.exists():
        outputs["--newkey"] = newkey
    return outputs


def _input_paths(options: CmpOptions, **more: Path | None) -> dict[str, Path | None]:
    found = {"--cert": options.cert, "--key": options.key, "--extracerts": options.extracerts}
    found.update({"--" + name.replace("_", "-"): path for name, path in more.items()})
    return found


def _write_outputs(options: CmpOptions, done: Done, kind: str, unsaved_key: PrivateKey | None = None) -> None:
    """Write what the CA sent. Paths were checked before sending; should a write still fail
    (disk full, folder removed meanwhile), the issued certificate (and a key that exists
    nowhere else) is kept in a private file whose name the one-line error gives."""
    anchors = done.ca_pubs or ((done.operator_root,) if done.operator_root else ())
    planned: list[tuple[str, Path, tuple[bytes, ...]]] = []
    if done.certificate is not None and options.certout:
        planned.append(("--certout", options.certout, (done.certificate,)))
    if options.chainout and done.chain:
        planned.append(("--chainout", options.chainout, done.chain))
    if options.cacertsout and anchors:
        planned.append(("--cacertsout", options.cacertsout, anchors))
    elif options.cacertsout and done.certificate is not None:
        why = ("the CA sent caPubs under signature protection, which are never trusted (RFC 9483 §4.1.1);"
               " get the root out of band or with 'fleet cmp genm --infotype caCerts' and check it"
               if "capubs_ignored" in done.warnings else "the response carried no caPubs")
        print(f"fleet cmp: --cacertsout {str(options.cacertsout)!r} not written: {why}", file=sys.stderr)
    failures = []
    for flag, path, certs in planned:
        try:
            write_output(path, certs_pem(certs), flag)
        except OutputPathError as exc:
            failures.append(str(exc))
    if not failures:
        return
    if done.certificate is None:
        raise OutputPathError(failures[0])
    what = "the issued certificate" + (" and its private key" if unsaved_key is not None else "")
    kept = _keep_safe(kind, done, anchors, unsaved_key)
    where = f"kept in {kept}" if kept else "printed above (no folder could take it)"
    raise OutputPathError(f"{failures[0]}; {what} (the CA has issued it) {'are' if unsaved_key else 'is'} {where}")


def _keep_safe(kind: str, done: Done, anchors: tuple[bytes, ...], key: PrivateKey | None) -> Path | None:
    """Write certificate, chain, anchors (and ``key``) to a new 0600 file in the current folder,
    else the home folder, else the temporary folder; print them when none takes it."""
    assert done.certificate is not None
    data = certs_pem([done.certificate, *done.chain, *anchors]) + (private_key_pem(key) if key is not None else b"")
    serial = load_cert(done.certificate).serial_number
    for folder in (Path.cwd(), Path.home(), Path(tempfile.gettempdir())):
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=f"fleet-{kind}-{serial:x}-", suffix=".pem")
        except OSError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError:
            os.unlink(name)
            continue
        return Path(name)
    print(data.decode(), end="")
    return None


def _report(kind: str, done: Done) -> None:
    parts = [f"{kind}: {done.status.describe()}"]
    if done.certificate is not None:
        cert = load_cert(done.certificate)
        parts.append(f"serial {cert.serial_number:#x}")
        parts.append(f"subject {cert.subject.rfc4514_string() or '<empty>'!r}")
        parts.append(f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    if done.polls:
        parts.append(f"after {done.polls} polls")
    if done.implicit_confirm:
        parts.append("implicitly confirmed")
    print(", ".join(parts))


def _new_key(path: Path | None, key_type: str, passphrase: str | None) -> PrivateKey:
    password = read_secret(passphrase) if passphrase else None
    if path is not None and path.exists():
        return load_private_key(path, password)
    key = KeySpec.parse(key_type).generate()
    if path is not None:
        write_output(path, private_key_pem(key, password), "--newkey", mode=0o600)
    return key


def _central_key_alg(centralkeygen: bool, newkey: Path | None, newkeyout: Path | None, key_type: str) -> bytes | None:
    """The key type asked of the KGA, or None without --centralkeygen (usage errors named)."""
    if not centralkeygen:
        if newkeyout is not None:
            raise typer.BadParameter("goes with --centralkeygen (a local key is written by --newkey)", param_hint="'--newkeyout'")
        return None
    if newkey is not None:
        raise typer.BadParameter("--centralkeygen and --newkey exclude each other: the CA generates the key", param_hint="'--newkey'")
    if newkeyout is None:
        raise typer.BadParameter("needs --newkeyout, where the delivered key is written", param_hint="'--centralkeygen'")
    try:
        return key_algorithm(str(KeySpec.parse(key_type)))
    except (ValueError, FleetError) as exc:
        raise typer.BadParameter(str(exc), param_hint="'--newkey-type'") from None


def _cert_request(
    kind: BodyType, options: CmpOptions, *, newkey: Path | None, newkey_type: str, newkeypass: str | None,
    subject: str | None, sans: str | None, old_cert: x509.Certificate | None = None, oldcert: Path | None = None,
    centralkeygen: bool = False, newkeyout: Path | None = None,
) -> None:
    in_token = options.pkcs11_module is not None  # --newkey is then a label in the token
    central = _central_key_alg(centralkeygen, newkey, newkeyout, newkey_type)
    if in_token and central is not None:
        raise UsageError("--centralkeygen delivers the key to a file; it cannot go with --pkcs11-module")
    existing_key = newkey if newkey is not None and newkey.exists() and not in_token else None
    outputs = _output_paths(options, None if in_token else newkey)
    if newkeyout is not None:
        outputs["--newkeyout"] = newkeyout
    _check_paths(outputs, _input_paths(options, newkey=existing_key, oldcert=oldcert))
    if in_token and newkey is None:
        raise UsageError("with --pkcs11-module, --newkey names the key's label in the token")
    # Names first: a typo in --subject or --sans must not leave a new key file behind.
    subject_name = parse_name(subject) if subject else None
    san_names = parse_sans(sans)
    if kind is not BodyType.KUR and subject_name is None and not san_names:
        raise UsageError("give --subject and/or --sans for the new certificate")
    if options.sender is not None:
        parse_name(options.sender)  # a typo in --sender too
    password = read_secret(newkeypass) if newkeypass and central is not None else None
    token = options.token
    key: PrivateKey | None
    if token is not None:
        key = token.key_or_new(str(newkey), token_curve(KeySpec.parse(newkey_type)))
    else:
        key = _new_key(newkey, newkey_type, newkeypass) if central is None else None
    request = CertRequest(
        kind, key, subject_name, san_names, old_cert=old_cert,
        implicit_confirm=options.implicit_confirm, cert_profile=options.cert_profile, central_key_alg=central,
    )
    done = _run(options, request)
    _report(kind.label, done)
    if token is not None and done.certificate is not None:
        token.store_certificate(str(newkey), done.certificate)  # beside its key, and to --certout
    if newkeyout is not None:  # Done carries a key only once every check of it passed
        assert done.private_key is not None
        try:
            write_output(newkeyout, private_key_pem(done.private_key, password), "--newkeyout", mode=0o600)
        except OutputPathError as exc:
            kept = _keep_safe(kind.label, done, done.ca_pubs, done.private_key)
            where = f"kept in {kept}" if kept else "printed above (no folder could take it)"
            raise OutputPathError(f"{exc}; the delivered key and its certificate are {where}") from None
    _write_outputs(options, done, kind.label, unsaved_key=key if newkey is None and token is None else None)


def _enroll_command(kind: BodyType) -> Callable[..., None]:
    """ir and cr take the same options; only the body type differs."""

    def command(
        options: CmpOptions, newkey: NewKey = None, newkey_type: NewKeyType = "ec:P-256",
        newkeypass: NewKeyPass = None, subject: Subject = None, sans: Sans = None,
        centralkeygen: CentralKeyGen = False, newkeyout: NewKeyOut = None,
    ) -> None:
        _cert_request(kind, options, newkey=newkey, newkey_type=newkey_type, newkeypass=newkeypass,
                      subject=subject, sans=sans, centralkeygen=centralkeygen, newkeyout=newkeyout)

    command.__name__ = kind.label
    return command


cmp_command("ir", help="Initial registration: first certificate for a new key.",
            epilog=examples(*EXAMPLES["ir"]))(_enroll_command(BodyType.IR))
cmp_command("cr", help="Certification request: another certificate, signed with an existing one.",
            short_help="Certification request: another certificate.", epilog=examples(*EXAMPLES["cr"]))(
    _enroll_command(BodyType.CR)
)


@cmp_command("kur", help="Key update: renew --oldcert (default --cert) with a new key, signed with the old one.",
             short_help="Key update: renew a certificate with a new key.", epilog=examples(*EXAMPLES["kur"]))
def kur(
    options: CmpOptions,
    oldcert: Annotated[Path | None, typer.Option("--oldcert", help="Certificate to update (default --cert).")] = None,
    newkey: NewKey = None, newkey_type: NewKeyType = "ec:P-256", newkeypass: NewKeyPass = None,
    subject: Subject = None, sans: Sans = None, centralkeygen: CentralKeyGen = False, newkeyout: NewKeyOut = None,
) -> None:
    if options.cert is None or options.key is None:
        raise UsageError("kur is signed with the certificate being updated: give --cert and --key")
    _cert_request(BodyType.KUR, options, newkey=newkey, newkey_type=newkey_type, newkeypass=newkeypass,
                  subject=subject, sans=sans, old_cert=load_certificate(oldcert or options.cert), oldcert=oldcert,
                  centralkeygen=centralkeygen, newkeyout=newkeyout)


@cmp_command("p10cr", help="PKCS#10 request: certify the key in --csr (the device keeps its own key).",
             short_help="PKCS#10 request: certify the key of a CSR.", epilog=examples(*EXAMPLES["p10cr"]))
def p10cr(options: CmpOptions, csr: Annotated[Path, typer.Option("--csr", help="PKCS#10 request (PEM/DER).")]) -> None:
    _check_paths(_output_paths(options), _input_paths(options, csr=csr))
    request = CsrRequest(load_csr(csr), implicit_confirm=options.implicit_confirm, cert_profile=options.cert_profile)
    done = _run(options, request)
    _report("p10cr", done)
    _write_outputs(options, done, "p10cr")


_REASONS = ["unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
            "cessationOfOperation", "certificateHold", "", "removeFromCRL", "privilegeWithdrawn", "aACompromise"]


def _reason_code(text: str) -> int | None:
    """A CRLReason code from its number or name; None for -1 (no reason sent)."""
    if text.lstrip("-").isdigit():
        code = int(text)
        if code == -1:
            return None
    elif text in _REASONS:
        code = _REASONS.index(text)
    else:
        raise UsageError(f"--revreason must be -1..10 or one of {', '.join(n for n in _REASONS if n)}")
    if not 0 <= code <= 10 or code == 7:
        raise UsageError(f"--revreason {code} is not a CRLReason (0-6, 8-10)")
    return code


@cmp_command("rr", help="Revocation request for --oldcert, signed with --cert/--key (or MAC).",
             short_help="Revocation request for a certificate.", epilog=examples(*EXAMPLES["rr"]),
             omit=("implicit_confirm", "certout", "chainout", "cacertsout"))
def rr(
    options: CmpOptions,
    oldcert: Annotated[Path, typer.Option("--oldcert", help="Certificate to revoke.")],
    revreason: Annotated[str, typer.Option("--revreason", help=(
        "CRLReason code or name, e.g. 1 or keyCompromise. RFC 9483 asks for one: unspecified unless "
        "given; -1 sends none (openssl cmp's default, which strict servers refuse)."))] = "unspecified",
) -> None:
    reason = _reason_code(revreason)
    target = load_certificate(oldcert)
    done = _run(options, RevocationRequest.for_certificate(target, reason, cert_profile=options.cert_profile))
    print(f"rr: {done.status.describe()}, serial {target.serial_number:#x} revoked")


_INFOTYPE_ALIASES = {name.lower(): dotted for name, dotted in oids.INFO_TYPES_BY_NAME.items()}


@cmp_command("genm", help="General message: caCerts, rootCaCert, certReqTemplate, crlStatusList, or an OID.",
             short_help="General message: caCerts, rootCaCert, ... or an OID.", epilog=examples(*EXAMPLES["genm"]),
             omit=("implicit_confirm", "certout", "chainout"))
def genm_cmd(
    options: CmpOptions,
    infotype: Annotated[str, typer.Option("--infotype", help="caCerts, rootCaCert (or rootCaKeyUpdate), certReqTemplate, crlStatusList, currentCRL, caKeyUpdateInfo, signKeyPairTypes or a dotted OID.")] = "caCerts",
    oldroot: Annotated[Path | None, typer.Option("--oldroot", help=(
        "rootCaCert: the root to ask an update for; the answer is believed only when its links "
        "verify against it."))] = None,
    crl_issuer: Annotated[Path | None, typer.Option("--crl-issuer", help="crlStatusList: CA certificate whose CRL to fetch.")] = None,
    newwithnew: Annotated[Path | None, typer.Option("--newwithnew", help="rootCaCert: write the new root here.")] = None,
    crlout: Annotated[Path | None, typer.Option("--crlout", help="crlStatusList: write the CRLs here (DER, first CRL).")] = None,
) -> None:
    dotted = _INFOTYPE_ALIASES.get(infotype.lower(), infotype)
    if not all(p.isdigit() for p in dotted.split(".")) or dotted.count(".") < 2:
        raise UsageError(f"unknown --infotype {infotype!r}")
    old_root = load_certificate(oldroot) if oldroot else None
    if dotted in (oids.IT_ROOT_CA_CERT, oids.IT_ROOT_CA_KEY_UPDATE):  # asked by rootCaCert, answered by the other
        item = genm.root_ca_cert_request(old_root.public_bytes(Encoding.DER) if old_root else None)
    elif dotted == oids.IT_CRL_STATUS_LIST:
        if crl_issuer is None:
            raise UsageError("crlStatusList needs --crl-issuer (the CA certificate whose CRL to fetch)")
        item = genm.crl_status_list_request(load_certificate(crl_issuer).subject.public_bytes())
    else:
        item = InfoTypeAndValue(dotted)
    cacertsout = options.cacertsout
    _check_paths({"--cacertsout": cacertsout, "--newwithnew": newwithnew, "--crlout": crlout},
                 _input_paths(options, oldroot=oldroot, crl_issuer=crl_issuer))
    done = _run(options, GeneralRequest((item,), cert_profile=options.cert_profile))
    for answer in done.items:
        summary = _genp_summary(answer, cacertsout, newwithnew, crlout, old_root)
        print(f"genp: {answer.name}: {summary}")
    if not done.items:
        print("genp: no content")


def _genp_summary(item: InfoTypeAndValue, cacertsout: Path | None, newwithnew: Path | None, crlout: Path | None,
                  old_root: x509.Certificate | None = None) -> str:
    if item.oid == oids.IT_CA_CERTS:
        certs = genm.decode_ca_certs(item)
        if cacertsout and certs:
            write_output(cacertsout, certs_pem(certs), "--cacertsout")
        return f"{len(certs)} certificates" + (f" written to {cacertsout}" if cacertsout and certs else "")
    if item.oid == oids.IT_ROOT_CA_KEY_UPDATE:
        update = genm.decode_root_ca_key_update(item)
        if update is None:
            return "no root update available"
        checked = ""
        if old_root is not None:  # believed only when every link to the trusted root holds
            check_root_update(old_root, update.new_with_new, update.new_with_old, update.old_with_new,
                              at=datetime.now(UTC))
            checked = " (newWithOld verified under --oldroot, oldWithNew under the new root)"
        if newwithnew:
            write_output(newwithnew, certs_pem([update.new_with_new]), "--newwithnew")
        return "new root " + load_cert(update.new_with_new).subject.rfc4514_string() + checked
    if item.oid == oids.IT_CRLS:
        crls = genm.decode_crls(item)
        if crlout and crls:
            write_output(crlout, crls[0], "--crlout")
        return f"{len(crls)} CRLs"
    if item.oid == oids.IT_CERT_REQ_TEMPLATE:
        decoded = genm.decode_cert_req_template(item)
        return "no template" if decoded is None else "template received"
    return "value present" if item.value is not None else "no value"

"""The CA's configuration: one typed record, checked when it is made, for every way to start a CA.

``fleet ca serve`` builds a ``CaConfig`` from its options, a load profile's ``[ca]`` section is
parsed into one, and ``python -m fleet.ca`` (how ``fleet run`` starts its embedded CA) reads one
as JSON. Each setting has one name, the field's: ``waiting_fraction = 0.1`` in a profile,
``--waiting-fraction 0.1`` on the command line, ``"waiting_fraction": 0.1`` in the JSON.

Values are checked here and nowhere else, so a profile key and a flag are refused in the same
words. ``CaConfigError`` carries the setting's name and the problem; the caller says where the
value came from (``bad.toml: [ca].waiting_fraction: ...``, ``Invalid value for
'--waiting-fraction': ...``).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from fleet.bounds import (
    COUNT,
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    PORT,
    POSITIVE,
    SEED,
    Bound,
)
from fleet.cmp.server_config import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.errors import FleetError
from fleet.keytypes import KeySpec, KeySpecError

__all__ = ["MODES", "PROFILE_KEYS", "CaConfig", "CaConfigError", "Latency", "LoadKnobs", "check_template"]

MODES = ("lcmpp", "3gpp")

# The settings a load profile's [ca] section may give (the rest are about where and how a
# standalone CA is deployed: ports, files, secrets, TLS).
PROFILE_KEYS = (
    "mode", "latency", "waiting_fraction", "check_after", "error_fraction", "http_503_fraction",
    "drop_fraction", "max_transactions", "issue_rate", "implicit_confirm", "confirm_wait", "validity_days",
    "key_type", "seed", "require_message_time", "kga", "kga_profiles", "kga_key_type", "kga_password_delivery",
    "kga_pwri_iterations", "kga_rsa_pool", "kga_kek_cache",
)  # fmt: skip

# Every numeric setting's rule (the same ``Bound`` a command-line flag would use).
_BOUNDS: Mapping[str, Bound] = {
    "port": PORT, "metrics_port": PORT, "coap_port": PORT, "validity_days": COUNT, "confirm_wait": POSITIVE,
    "max_time_skew": NON_NEGATIVE, "max_iterations": COUNT, "max_transactions": NON_NEGATIVE_INT, "issue_rate": NON_NEGATIVE,
    "max_body_bytes": COUNT, "waiting_fraction": FRACTION, "check_after": NON_NEGATIVE,
    "error_fraction": FRACTION, "http_503_fraction": FRACTION, "drop_fraction": FRACTION,
    "seed": SEED, "kga_pwri_iterations": COUNT, "kga_rsa_pool": NON_NEGATIVE_INT,
    "kga_kek_cache": NON_NEGATIVE_INT,
}  # fmt: skip

_LATENCY_KINDS = {"fixed": 1, "uniform": 2, "exp": 1, "lognormal": 2}
_LATENCY_SYNTAX = "none, fixed:S, uniform:A:B, exp:MEAN or lognormal:MEDIAN:SIGMA"


class CaConfigError(FleetError):
    """A CA setting that cannot work. ``key`` names it and ``problem`` says why; a problem that
    involves other settings names them through ``worded(spell)``, so a command line can say
    ``--secret`` where a profile or JSON says ``secret``."""

    def __init__(self, key: str, problem: str, *others: str) -> None:
        self.key = key
        self.others = others
        self._template = problem
        super().__init__(f"{key}: {self.problem}")

    @property
    def problem(self) -> str:
        return self.worded(str)

    def worded(self, spell: Callable[[str], str]) -> str:
        """The problem with the other settings it names spelled by ``spell``."""
        if not self.others:
            return self._template
        return self._template.format(*(spell(name) for name in self.others))


@dataclass(frozen=True)
class Latency:
    """Added response latency in seconds: ``fixed:S``, ``uniform:A:B``, ``exp:MEAN`` or
    ``lognormal:MEDIAN:SIGMA``; capped at ``cap`` seconds."""

    kind: str = "none"
    a: float = 0.0
    b: float = 0.0
    cap: float = 60.0

    @classmethod
    def parse(cls, spec: str | None) -> Latency:
        """``spec`` as written in a profile or after ``--latency``; ``CaConfigError`` names
        the syntax when it is not one of the forms above."""
        if not spec or spec == "none":
            return cls()
        kind, _, rest = spec.partition(":")
        want = _LATENCY_KINDS.get(kind)
        if want is None:
            raise CaConfigError("latency", f"must be {_LATENCY_SYNTAX}, got {spec!r}")
        try:
            values = [float(v) for v in rest.split(":")] if rest else []
        except ValueError:
            raise CaConfigError(
                "latency", f"values must be numbers of seconds, got {spec!r}"
            ) from None
        if len(values) != want or any(not 0 <= v < float("inf") for v in values):
            raise CaConfigError(
                "latency", f"{kind} takes {want} non-negative number(s), got {spec!r}"
            )
        return cls(kind, values[0], values[1] if want == 2 else 0.0)

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b)
        elif self.kind == "exp":
            value = rng.expovariate(1 / self.a) if self.a > 0 else 0.0
        elif self.kind == "lognormal":
            value = self.a * rng.lognormvariate(0.0, self.b) if self.a > 0 else 0.0
        else:
            return 0.0
        return min(value, self.cap)

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        return f"{self.kind}:{self.a:g}" + (
            f":{self.b:g}" if self.kind in ("uniform", "lognormal") else ""
        )


@dataclass(frozen=True)
class LoadKnobs:
    """Fault and load shaping for capacity tests; all off by default. Fractions are 0..1 and
    drawn independently per request (waiting and error only for requests that start a
    transaction)."""

    latency: Latency = field(default_factory=Latency)
    waiting_fraction: float = 0.0
    check_after: float = 1.0
    error_fraction: float = 0.0
    http_503_fraction: float = 0.0
    drop_fraction: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(self)

    @property
    def active(self) -> bool:
        return bool(
            self.latency.kind != "none"
            or self.waiting_fraction
            or self.error_fraction
            or self.http_503_fraction
            or self.drop_fraction
        )


_KNOB_KEYS = frozenset(f.name for f in fields(LoadKnobs))


@dataclass(frozen=True)
class CaConfig:
    """Everything a CA process needs: where it keeps its state and listens, who may enroll,
    its hierarchy, its CMP policy, the load-target ``knobs`` and its metrics endpoint.

    Secrets are bytes and never shown by ``repr``. ``state`` may be left out of a profile's
    settings; a CA that serves needs it.
    """

    PROFILE_KEYS: ClassVar[tuple[str, ...]] = PROFILE_KEYS

    state: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    coap_port: int | None = None  # CMP over CoAP (RFC 9482) on this UDP port too
    # who may enroll
    secret: bytes | None = field(default=None, repr=False)
    ref: str | None = None
    master_secret: bytes | None = field(default=None, repr=False)
    vendor_trust: Path | None = None
    trusted: tuple[Path, ...] = ()
    untrusted: tuple[Path, ...] = ()
    ra_trusted: tuple[Path, ...] = ()  # RAs whose nested messages and raVerified POP are accepted
    # pushed announcements: rann on revocation (and cann on issue) to the device's URL
    announce_url: str | None = None  # template: {reference}, {serial}
    announce_issued: bool = False
    announce_crl: bool = False  # a crlann to every device when the CA issues a new CRL
    announce_routes: Path | None = None  # registered URLs: "reference URL" lines, before the template
    # the hierarchy (created in ``state`` at first start, or brought along)
    key_type: str = "ec:P-256"
    validity_days: int = 365
    issuing_cert: Path | None = None
    issuing_key: Path | None = None
    signer_cert: Path | None = None
    signer_key: Path | None = None
    chain: Path | None = None
    public_url: str | None = None
    # CMP policy
    mode: str = "lcmpp"
    confirm_wait: float = 60.0
    implicit_confirm: bool = True
    max_time_skew: float = 300.0  # 0: messageTime not checked
    max_iterations: int | None = None  # None: PasswordBasedMac 100,000, PBMAC1 1,000,000 (as the client)
    max_transactions: int = 0  # 0: no cap
    issue_rate: float = 0.0  # certificate requests started per second beyond which systemUnavail (0: no cap)
    max_body_bytes: int = 1_000_000
    allow_replaced_signers: bool = False
    require_message_time: bool = True  # RFC 9483 §3.1; False for devices without a clock
    allow_key_reuse: bool = False  # certify a public key that already has a certificate
    # central key generation (fleet.ca.kga): on every path, or only for these /p/<name> profiles
    kga: bool = False
    kga_profiles: str = ""  # comma-separated profile names
    kga_key_type: str = "ec:P-256"  # when the request names no key type
    kga_password_delivery: bool = True  # PWRI for MAC-protected requests
    kga_pwri_iterations: int = 2048
    kga_rsa_pool: int = 0  # RSA keys taken from fleet's key pool (0: generated per request)
    kga_kek_cache: int = 65_536  # devices whose PWRI salt and KEK are kept (0: PBKDF2 per envelope)
    # HTTPS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: clients must present a certificate chaining to it
    # load-target knobs
    knobs: LoadKnobs = field(default_factory=LoadKnobs)
    # Prometheus /metrics (host None: $FLEET_METRICS_HOST, else loopback)
    metrics_port: int | None = None
    metrics_host: str | None = None

    def __post_init__(self) -> None:
        _check(self)
        try:
            object.__setattr__(self, "key_type", str(KeySpec.parse(self.key_type)))
        except KeySpecError as exc:
            raise CaConfigError("key_type", str(exc)) from None
        try:
            kga_spec = KeySpec.parse(self.kga_key_type)
        except KeySpecError as exc:
            raise CaConfigError("kga_key_type", str(exc)) from None
        if kga_spec.algorithm not in ("ec", "rsa", "ed25519"):
            raise CaConfigError("kga_key_type", f"central key generation of {kga_spec} is not supported"
                                " (ec, rsa, ed25519 are)")
        object.__setattr__(self, "kga_key_type", str(kga_spec))
        names = [n.strip() for n in self.kga_profiles.split(",") if n.strip()]
        if any(not re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", n) for n in names):
            raise CaConfigError("kga_profiles", f"must be comma-separated /p/<name> profile names, got {self.kga_profiles!r}")
        if self.ref is not None and self.secret is None:
            raise CaConfigError("ref", "needs {0}", "secret")
        own = ("issuing_cert", "issuing_key", "signer_cert", "signer_key")
        given = [getattr(self, name) is not None for name in own]
        if any(given) and not all(given):
            missing = own[given.index(False)]
            raise CaConfigError(missing, "{0}, {1}, {2} and {3} go together", *own)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CaConfigError(
                "tls_key" if self.tls_key is None else "tls_cert",
                "{0} and {1} go together",
                "tls_cert",
                "tls_key",
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise CaConfigError("tls_client_ca", "needs {0} and {1} (mutual TLS is HTTPS)", "tls_cert", "tls_key")
        if self.metrics_port is not None and self.metrics_port == self.port and self.port != 0:
            raise CaConfigError("metrics_port", f"{self.metrics_port} is also {{0}}", "port")
        if self.announce_url is not None:
            try:
                check_template(self.announce_url)
            except FleetError as exc:
                raise CaConfigError("announce_url", str(exc)) from None
        elif self.announce_issued or self.announce_crl:
            raise CaConfigError("announce_issued" if self.announce_issued else "announce_crl", "needs {0}", "announce_url")
        if self.announce_routes is not None and self.announce_url is None:
            raise CaConfigError("announce_routes", "needs {0}", "announce_url")

    # -- what the CA's parts take ------------------------------------------------------------

    def server_config(self) -> ServerConfig:
        """The CMP server's policy."""
        return ServerConfig(
            mode=self.mode,  # type: ignore[arg-type]  # one of MODES, checked above
            confirm_wait=self.confirm_wait,
            grant_implicit_confirm=self.implicit_confirm,
            max_time_skew=self.max_time_skew or None,
            max_iterations=self.max_iterations,
            max_transactions=self.max_transactions or None,
            max_issue_rate=self.issue_rate or None,
            allow_replaced_signers=self.allow_replaced_signers,
            require_message_time=self.require_message_time,
        )

    def shared_secrets(self) -> SharedSecrets | None:
        """MAC secrets: ``secret`` for ``ref`` (or for any reference), per-device secrets from
        ``master_secret``; None when neither is set."""
        if self.secret is None and self.master_secret is None:
            return None
        table = (
            {self.ref.encode(): self.secret}
            if self.ref is not None and self.secret is not None
            else {}
        )
        default = self.secret if self.ref is None else None
        return SharedSecrets(table, default=default, master=self.master_secret)

    @property
    def validity(self) -> timedelta:
        return timedelta(days=self.validity_days)

    # -- mappings: a profile's [ca] section, the JSON of ``python -m fleet.ca`` --------------

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, keys: tuple[str, ...] | None = None
    ) -> CaConfig:
        """A config from flat ``name: value`` pairs (the knobs sit beside the other settings).
        Paths are text, secrets hex text, ``latency`` its spec; ``keys`` limits the names
        accepted (a profile's ``PROFILE_KEYS``)."""
        allowed = keys if keys is not None else _ALL_KEYS
        top: dict[str, Any] = {}
        knobs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in allowed:
                raise CaConfigError(key, f"unknown setting (allowed: {', '.join(sorted(allowed))})")
            (knobs if key in _KNOB_KEYS else top)[key] = _from_text(key, value)
        return cls(**top, knobs=LoadKnobs(**knobs))

    def to_mapping(self) -> dict[str, Any]:
        """The settings that differ from the defaults, as ``from_mapping`` reads them (JSON
        types)."""
        out: dict[str, Any] = {}
        for obj, default in ((self, _DEFAULT), (self.knobs, _DEFAULT.knobs)):
            for f in fields(obj):
                value = getattr(obj, f.name)
                if f.name != "knobs" and value != getattr(default, f.name):
                    out[f.name] = _to_text(value)
        return out

    @classmethod
    def from_json(cls, text: str) -> CaConfig:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CaConfigError("config", f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CaConfigError("config", f"must be a JSON object, got {type(data).__name__}")
        return cls.from_mapping(data)

    def to_json(self) -> str:
        """JSON for ``python -m fleet.ca`` (secrets included, hex: pass it on stdin, not argv)."""
        return json.dumps(self.to_mapping(), sort_keys=True)


# -- checks ------------------------------------------------------------------------------------

_ANNOUNCE_FIELDS = frozenset({"reference", "serial"})


def check_template(template: str) -> str:
    """``template`` if it is an http(s) URL whose placeholders are ``{reference}`` and
    ``{serial}`` (``--announce-url``); a ``FleetError`` naming the problem otherwise."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise FleetError(f"template {template!r}: {exc}") from None
    unknown = names - _ANNOUNCE_FIELDS
    if unknown:
        raise FleetError(f"unknown placeholder {{{min(unknown)}}} (use {{reference}} and {{serial}})")
    parts = urlsplit(template.format(reference="x", serial="1"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FleetError(f"must be an http:// or https:// URL template, got {template!r}")
    return template


_CHOICES: Mapping[str, tuple[str, ...]] = {"mode": MODES}


def _check(obj: CaConfig | LoadKnobs) -> None:
    """Type and range of every field, by the field's declared type and ``_BOUNDS``; whole
    numbers given for seconds become floats."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = str(f.type)
        if value is None and kind.endswith("| None"):
            continue
        bound = _BOUNDS.get(f.name)
        if bound is not None:
            problem = bound.problem(value)
            if problem:
                raise CaConfigError(f.name, problem)
            if kind.startswith("float"):
                object.__setattr__(obj, f.name, float(value))
            continue
        base = kind.removesuffix(" | None")
        expected = _TYPES.get(base)
        if expected is not None and not isinstance(value, expected[0]):
            shown = f", got {value!r}" if f.repr else ""  # secrets are not shown
            raise CaConfigError(f.name, f"must be {expected[1]}{shown}")
        if base == "tuple[Path, ...]" and not all(isinstance(p, Path) for p in value):
            raise CaConfigError(f.name, f"must be a list of paths, got {value!r}")
        choices = _CHOICES.get(f.name)
        if choices is not None and value not in choices:
            raise CaConfigError(f.name, f"must be one of {', '.join(choices)}, got {value!r}")


_TYPES: Mapping[str, tuple[type | tuple[type, ...], str]] = {
    "bool": (bool, "true or false"),
    "str": (str, "a string"),
    "bytes": (bytes, "bytes"),
    "Path": (Path, "a path"),
    "tuple[Path, ...]": (tuple, "a list of paths"),
    "Latency": (Latency, "a latency"),
    "LoadKnobs": (LoadKnobs, "load knobs"),
}


def _kinds() -> dict[str, str]:
    return {
        f.name: str(f.type).removesuffix(" | None")
        for cls in (CaConfig, LoadKnobs)
        for f in fields(cls)
    }


def _from_text(key: str, value: Any) -> Any:
    """A mapping's value as the field holds it (text to Path, hex to bytes, spec to Latency)."""
    kind = _KIND[key]
    if value is None:
        return None
    if kind == "Latency":
        if not isinstance(value, str):
            raise CaConfigError(key, f"must be a string, got {value!r}")
        return Latency.parse(value)
    if kind == "Path":
        if not isinstance(value, str) or not value:
            raise CaConfigError(key, f"must be a path, got {value!r}")
        return Path(value)
    if kind == "tuple[Path, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise CaConfigError(key, f"must be a list of paths, got {value!r}")
        return tuple(Path(v) for v in value)
    if kind == "bytes":
        try:
            return bytes.fromhex(value)
        except (TypeError, ValueError):  # a secret: the value is not shown
            raise CaConfigError(key, "must be hex text") from None
    return value


def _to_text(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_to_text(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Latency):
        return str(value)
    return value


_KIND = _kinds()
_ALL_KEYS = tuple(sorted(k for k in _KIND if k != "knobs"))
_DEFAULT = CaConfig()

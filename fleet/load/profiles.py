"""Load-test profiles (``profiles/*.toml``): the configuration of a load run, validated on load.

A typo must not silently become a default: every unknown section or key, wrong type or bad value
is one ``ProfileError`` line naming the file, the key and what is allowed. Numbers obey the
``fleet.bounds`` rules of the flags that override them; the ``[ca]`` section is a
``fleet.ca.config.CaConfig`` (the settings ``fleet ca serve`` takes, spelled alike).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fleet.bounds import COUNT, POSITIVE, SEED, Bound
from fleet.ca.config import CaConfig, CaConfigError
from fleet.cmp.nested import MAX_BATCH
from fleet.coap.transport import CoapSettings
from fleet.errors import FleetError
from fleet.keys import KeySpec, KeySpecError
from fleet.load.announce_config import REVOCATION_REASONS, AnnouncementLoad
from fleet.load.schedule import Closed, ScheduleError, Shape, parse_shape
from fleet.names import check_san_template

OPERATIONS = ("genm", "ir", "cr", "p10cr", "kur", "rr")
TRANSPORTS = ("http", "coap")
AUTH_KINDS = ("mac", "vendor")
GENM_INFOTYPES = ("caCerts", "rootCaCert", "certReqTemplate", "crlStatusList")


class ProfileError(FleetError):
    """A profile that cannot be used as written."""


class OverrideError(ProfileError):
    """A command-line override that cannot apply; ``key`` is the profile key it was meant for."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# Bounds of the values ``Profile.with_overrides`` may change (the same as the profile's own keys).
_OVERRIDE_BOUNDS = {
    "duration": POSITIVE, "max_in_flight": COUNT, "max_connections": COUNT, "transaction_timeout": POSITIVE,
    "workers": COUNT, "seed": SEED,
}


@dataclass(frozen=True)
class RaLoad:
    """``[ra]``: the devices' requests reach the CA as an RA sends them (RFC 9483 §5.2.2.1): in
    nested messages of up to ``batch_size``, signed with the RA credential ``cert``/``key``
    (without them, against the embedded CA, an RA credential made for the run, which the CA
    trusts), each batch leaving after ``batch_wait`` seconds at the latest.

    With ``start``, a real ``fleet ra serve`` is started between the devices and the CA instead
    (``fleet.load.embedded_ra``), forwarding in ``mode`` (pass, nested, replace) with that
    credential and batching."""

    batch_size: int = 8
    batch_wait: float = 0.01
    cert: Path | None = None
    key: Path | None = None
    start: bool = False
    mode: str = "nested"


@dataclass(frozen=True)
class DevicePopulation:
    """Who the virtual devices are and how they authenticate."""

    count: int = 1000
    key_types: tuple[tuple[KeySpec, float], ...] = ((KeySpec.parse("ec:P-256"), 1.0),)
    # Key types the CA generates (``central:ec:P-256`` in key_types: RFC 9483 §4.1.6), weighted
    # together with ``key_types``: all the weights of both sum to 1.
    central_key_types: tuple[tuple[KeySpec, float], ...] = ()
    auth: str = "mac"  # "mac": per-device secret from the master secret; "vendor": IDevID-signed ir
    subject: str = "/CN=fleet-device-{index:06d}"
    sans: tuple[str, ...] = ()
    implicit_confirm: bool = False
    cert_profile: str | None = None
    pbm_iterations: int = 500
    # CMP header fields (RFC 9483 §3.1): None/True is fleet's default (see fleet.load.device).
    reference: str | None = None  # senderKID template; default dev-{index:08d}; hex:... for binary
    sender: str | None = None  # sender name template for MAC requests; default: the reference's name
    recipient: str | None = None  # recipient name; default NULL-DN
    message_time: bool = True
    max_iterations: int | None = None  # cap on a MAC response's iteration count; default per algorithm
    # ir/cr CertRequest and POP made before the run (fleet.load.prepared): False, True (a pool no
    # run has used; a device that comes round again makes a key live) or "reuse" (any pool, keys repeat)
    prepared: bool | str = False


@dataclass(frozen=True)
class Slo:
    """Pass/fail thresholds: p99 latency per operation, error rate, achieved share of the target rate."""

    p99_seconds: Mapping[str, float] = field(default_factory=dict)
    max_error_rate: float | None = None
    min_rate_ratio: float | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path | None
    duration: float
    shape: Shape
    flow: tuple[str, ...] = ("ir",)
    pause_before: Mapping[str, float] = field(default_factory=dict)  # e.g. kur: wait before renewing
    genm: tuple[str, ...] = ("caCerts",)
    max_in_flight: int = 1000
    max_connections: int | None = None  # HTTP connections per worker; None: one per transaction in flight
    transaction_timeout: float = 30.0
    workers: int = 1
    seed: int = 1
    devices: DevicePopulation = DevicePopulation()
    slo: Slo = Slo()
    ca: CaConfig = field(default_factory=CaConfig)  # the embedded CA's settings ([ca]), used when a run has no --server
    transport: str = "http"  # "coap": CMP over CoAP (RFC 9482), one UDP socket per worker
    coap: CoapSettings = field(default_factory=CoapSettings)  # [coap]: retransmission timing, block size, lossy link
    description: str = ""
    ra: RaLoad | None = None  # [ra]: requests wrapped in RA-signed nested batches
    announcements: AnnouncementLoad | None = None  # [announcements]: pushed to the devices, acted on

    @property
    def connections(self) -> int:
        """Each worker's HTTP connection pool: ``max_connections``, else one per transaction in
        flight (a smaller pool would queue requests in the client and blame the CA)."""
        return self.max_connections or self.max_in_flight

    def with_overrides(self, **changes: Any) -> Profile:
        """Command-line flags win over profile values; ``None`` means "not given". Numbers obey
        the profile's own rules (``OverrideError`` names the key)."""
        given = {k: v for k, v in changes.items() if v is not None}
        for key, value in given.items():
            bound = _OVERRIDE_BOUNDS.get(key)
            problem = bound.problem(value) if bound else None
            if problem:
                raise OverrideError(key, problem)
        return replace(self, **given)

    def with_flags(
        self, *, rate: float | None = None, duration: float | None = None, devices: int | None = None,
        workers: int | None = None, max_in_flight: int | None = None,
    ) -> Profile:
        """Apply ``fleet run``'s overrides, each a profile value (``None``: not given).

        ``duration`` runs steady shapes (constant, poisson, sine) longer or shorter and plays a
        scenario (ramp, steps, spike) whole in the new time; ``rate`` scales every rate of the
        shape so that its peak is ``rate``; ``devices`` is the device count (and, for a closed
        model, the number of looping devices)."""
        for key, value, bound in (("rate", rate, POSITIVE), ("devices", devices, COUNT)):
            problem = None if value is None else bound.problem(value)
            if problem:
                raise OverrideError(key, problem)
        shape = self.shape
        if rate is not None:
            if isinstance(shape, Closed):
                raise OverrideError("rate", "a closed model has no arrival rate (its devices loop); use --devices")
            if shape.peak_rate <= 0:
                raise OverrideError("rate", f"the {type(shape).__name__.lower()} shape has no rate above 0 to scale")
            shape = shape.scaled(rate / shape.peak_rate)
        profile = self.with_overrides(duration=duration, workers=workers, max_in_flight=max_in_flight)
        if duration is not None and not isinstance(shape, Closed):
            shape = shape.stretched(duration / self.duration)
        device_spec = self.devices if devices is None else replace(self.devices, count=devices)
        if devices is not None and isinstance(shape, Closed):
            shape = replace(shape, devices=devices)
        return replace(profile, shape=shape, devices=device_spec)


# -- validation helpers ------------------------------------------------------------------------


class _Section:
    def __init__(self, where: str, data: Mapping[str, Any], allowed: Mapping[str, str]) -> None:
        self.where = where
        self.data = data
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ProfileError(
                f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
            )

    def _fail(self, key: str, what: str, value: Any) -> ProfileError:
        return ProfileError(f"{self.where}.{key}: must be {what}, got {value!r}")

    def checked(self, key: str, default: Any, bound: Bound) -> Any:
        value = self.data.get(key, default)
        problem = bound.problem(value)
        if problem:
            raise ProfileError(f"{self.where}.{key}: {problem}")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0, strict: bool = False) -> float:
        return float(self.checked(key, default, Bound(minimum, strict=strict)))

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        return int(self.checked(key, default, Bound(minimum, integer=True)))

    def string(self, key: str, default: str | None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or (choices and value not in choices):
            raise self._fail(key, f"one of {', '.join(choices)}" if choices else "a string", value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def strings(self, key: str, default: tuple[str, ...], choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings", value)
        if choices:
            for v in value:
                if v not in choices:
                    raise self._fail(key, f"a list of {', '.join(choices)}", v)
        return tuple(value)

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self._fail(key, "a table", value)
        return value


_TOP = {
    "name": "profile name",
    "description": "free text",
    "run": "[run] section",
    "arrivals": "[arrivals] section",
    "devices": "[devices] section",
    "slo": "[slo] section",
    "ca": "[ca] section: options for the embedded CA",
    "coap": "[coap] section: CoAP timing, block size and link loss/delay",
    "ra": "[ra] section: send the requests in RA-signed nested batches",
    "announcements": "[announcements] section: devices receive pushed announcements; the run revokes",
}
_ANNOUNCEMENTS = dict.fromkeys(
    ("revoke_fraction", "revoke_after", "reason", "reenroll", "host", "port", "linger", "cert", "key"), ""
)
_RA = {"batch_size": "messages per envelope", "batch_wait": "seconds", "cert": "RA certificate (PEM)",
       "key": "RA private key", "start": "start fleet ra serve between devices and CA", "mode": "pass, nested or replace"}
_RA_MODES = ("pass", "nested", "replace")
_RUN = {
    "duration": "seconds",
    "flow": "operations per arrival",
    "pause_before": "seconds to wait before an operation",
    "genm": "infotypes for genm",
    "max_in_flight": "cap",
    "max_connections": "HTTP connections",
    "transaction_timeout": "seconds",
    "workers": "processes",
    "seed": "rng seed",
    "transport": "http or coap",
}
_DEVICES = {
    "count": "", "key_types": "", "auth": "", "subject": "", "sans": "", "implicit_confirm": "",
    "cert_profile": "", "pbm_iterations": "", "reference": "", "sender": "", "recipient": "", "message_time": "",
    "max_iterations": "", "prepared": "",
}
_SLO = {"p99_seconds": "", "max_error_rate": "", "min_rate_ratio": ""}
_COAP = dict.fromkeys(
    ("ack_timeout", "ack_random_factor", "max_retransmit", "block_size", "loss", "delay_ms"), ""
)
_BLOCK_SIZES = tuple(16 << szx for szx in range(7))


def _coap(section: _Section) -> CoapSettings:
    """[coap]: RFC 7252's transmission parameters, the block size, and the client-side link:
    ``loss`` drops that fraction of datagrams each way, ``delay_ms`` holds each one."""
    size = section.data.get("block_size", 1024)
    if size not in _BLOCK_SIZES or isinstance(size, bool):
        raise section._fail("block_size", f"one of {', '.join(map(str, _BLOCK_SIZES))}", size)
    loss = section.checked("loss", 0.0, Bound(0, maximum=1))
    if loss >= 1:
        raise ProfileError(f"{section.where}.loss: must be below 1 (every datagram lost), got {loss!r}")
    return CoapSettings(
        ack_timeout=section.number("ack_timeout", 2.0, strict=True),
        ack_random_factor=section.number("ack_random_factor", 1.5, minimum=1.0),
        max_retransmit=int(section.checked("max_retransmit", 4, Bound(0, integer=True, maximum=20))),
        szx=_BLOCK_SIZES.index(size),
        loss=float(loss),
        delay=section.number("delay_ms", 0.0) / 1000,
    )
# Settings of the embedded CA (`fleet ca serve`'s, by the same names), used when a run has no --server.
_CA = dict.fromkeys(CaConfig.PROFILE_KEYS, "")


_CENTRAL = "central:"
_CENTRAL_TYPES = ("ec", "rsa", "ed25519")


def _key_types(section: _Section) -> tuple[tuple[tuple[KeySpec, float], ...], tuple[tuple[KeySpec, float], ...]]:
    """(local key types, central key types), their weights normalised together. A type written
    ``central:<type>`` is generated by the CA (central key generation)."""
    value = section.data.get("key_types", {"ec:P-256": 1.0})
    if isinstance(value, str):
        value = {value: 1.0}
    if not isinstance(value, dict) or not value:
        raise section._fail("key_types", 'a key type or a table like {"ec:P-256" = 0.7, "rsa:2048" = 0.3}', value)
    out = []
    for spec, weight in value.items():
        central = spec.strip().lower().startswith(_CENTRAL)
        try:
            parsed = KeySpec.parse(spec.strip()[len(_CENTRAL):] if central else spec)
        except KeySpecError as exc:
            raise ProfileError(f"{section.where}.key_types: {exc}") from None
        if central and parsed.algorithm not in _CENTRAL_TYPES:
            raise ProfileError(f"{section.where}.key_types: central key generation of {parsed} is not supported "
                               "(central:ec:..., central:rsa:..., central:ed25519)")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise section._fail(f"key_types.{spec}", "a positive weight", weight)
        out.append((central, parsed, float(weight)))
    total = sum(w for _, _, w in out)
    local = tuple((s, w / total) for c, s, w in out if not c)
    return local, tuple((s, w / total) for c, s, w in out if c)


_PREPARED_TYPES = ("ec", "ed25519", "ed448")


def _prepared(section: _Section, key_types: tuple[tuple[KeySpec, float], ...],
              central: tuple[tuple[KeySpec, float], ...]) -> bool | str:
    """[devices].prepared: false, true or "reuse"; a pool holds one local EC or EdDSA key type."""
    value = section.data.get("prepared", False)
    if value not in (False, True, "reuse") or not isinstance(value, (bool, str)):
        raise section._fail("prepared", 'true, false or "reuse"', value)
    if value and (central or len(key_types) != 1 or key_types[0][0].algorithm not in _PREPARED_TYPES):
        raise ProfileError(f"{section.where}.prepared: needs exactly one key_types entry, EC or EdDSA, "
                           "generated by the device")
    return value


def parse_profile(data: Mapping[str, Any], *, where: str, path: Path | None = None) -> Profile:
    top = _Section(where, data, _TOP)
    run = _Section(f"{where}: [run]", top.table("run"), _RUN)
    devices = _Section(f"{where}: [devices]", top.table("devices"), _DEVICES)
    slo = _Section(f"{where}: [slo]", top.table("slo"), _SLO)
    ca = _Section(f"{where}: [ca]", top.table("ca"), _CA)
    coap = _Section(f"{where}: [coap]", top.table("coap"), _COAP)
    arrivals = top.table("arrivals")
    try:
        shape = parse_shape(arrivals or {"shape": "constant", "rate": 10})
    except ScheduleError as exc:
        raise ProfileError(f"{where}: [arrivals] {exc}") from None
    flow = run.strings("flow", ("ir",), OPERATIONS)
    if not flow:
        raise ProfileError(f"{where}: [run].flow: needs at least one operation ({', '.join(OPERATIONS)})")
    if flow[0] in ("kur", "rr"):
        raise ProfileError(f"{where}: [run].flow: {flow[0]} needs a certificate: put ir, cr or p10cr before it")
    pauses = run.table("pause_before")
    for op, seconds in pauses.items():
        if op not in flow:
            raise ProfileError(f"{where}: [run].pause_before: {op!r} is not in the flow {list(flow)}")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ProfileError(f"{where}: [run].pause_before.{op}: must be seconds >= 0, got {seconds!r}")
    p99 = slo.table("p99_seconds")
    for op, limit in p99.items():
        if op not in OPERATIONS:
            raise ProfileError(f"{where}: [slo].p99_seconds: unknown operation {op!r} (allowed: {', '.join(OPERATIONS)})")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
            raise ProfileError(f"{where}: [slo].p99_seconds.{op}: must be a positive number of seconds, got {limit!r}")
    max_error = slo.data.get("max_error_rate")
    min_ratio = slo.data.get("min_rate_ratio")
    for key, value in (("max_error_rate", max_error), ("min_rate_ratio", min_ratio)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise ProfileError(f"{where}: [slo].{key}: must be a fraction between 0 and 1, got {value!r}")
    sans = devices.strings("sans", ())
    for template in sans:
        try:
            check_san_template(template)
        except FleetError as exc:
            raise ProfileError(f"{devices.where}.sans: {exc}") from None
    duration = (
        shape.total_duration
        if hasattr(shape, "total_duration") and "duration" not in run.data
        else run.number("duration", 10.0, strict=True)
    )
    if not isinstance(shape, Closed) and shape.expected_count(duration) <= 0:
        raise ProfileError(f"{where}: [arrivals]: the {type(shape).__name__.lower()} shape schedules no arrivals "
                           f"in {duration:g} s; give it a rate above 0")
    if isinstance(shape, Closed) and "count" not in devices.data:
        devices.data = {**devices.data, "count": shape.devices}
    ra = _ra_load(_Section(f"{where}: [ra]", top.table("ra"), _RA), path) if "ra" in data else None
    key_types, central_key_types = _key_types(devices)
    prepared = _prepared(devices, key_types, central_key_types)
    if central_key_types and "p10cr" in flow:
        raise ProfileError(f"{devices.where}.key_types: p10cr carries the device's own key; "
                           "central key generation needs ir, cr or kur")
    ca_data = dict(ca.data)
    if central_key_types and "kga" not in ca_data and "kga_profiles" not in ca_data:
        ca_data["kga"] = True  # the embedded CA generates what the devices ask it to
    try:
        ca_config = CaConfig.from_mapping(ca_data, keys=CaConfig.PROFILE_KEYS)
    except CaConfigError as exc:
        raise ProfileError(f"{ca.where}.{exc.key}: {exc.problem}") from None
    return Profile(
        name=str(data.get("name") or (path.stem if path else "profile")),
        path=path,
        description=str(data.get("description", "")),
        duration=duration,
        shape=shape,
        flow=flow,
        pause_before={k: float(v) for k, v in pauses.items()},
        genm=run.strings("genm", ("caCerts",), GENM_INFOTYPES),
        max_in_flight=run.integer("max_in_flight", 1000),
        max_connections=run.integer("max_connections", 1) if "max_connections" in run.data else None,
        transaction_timeout=run.number("transaction_timeout", 30.0, strict=True),
        workers=run.integer("workers", 1),
        seed=run.integer("seed", 1, minimum=0),
        devices=DevicePopulation(
            count=devices.integer("count", 1000),
            key_types=key_types,
            central_key_types=central_key_types,
            auth=devices.string("auth", "mac", AUTH_KINDS) or "mac",
            subject=devices.string("subject", DevicePopulation.subject) or DevicePopulation.subject,
            sans=sans,
            implicit_confirm=devices.boolean("implicit_confirm", False),
            cert_profile=devices.string("cert_profile", None),
            pbm_iterations=devices.integer("pbm_iterations", 500),
            reference=devices.string("reference", None),
            sender=devices.string("sender", None),
            recipient=devices.string("recipient", None),
            message_time=devices.boolean("message_time", True),
            max_iterations=devices.integer("max_iterations", 1) if "max_iterations" in devices.data else None,
            prepared=prepared,
        ),
        slo=Slo(
            p99_seconds={k: float(v) for k, v in p99.items()},
            max_error_rate=None if max_error is None else float(max_error),
            min_rate_ratio=None if min_ratio is None else float(min_ratio),
        ),
        ca=ca_config,
        transport=run.string("transport", "http", TRANSPORTS) or "http",
        coap=_coap(coap),
        ra=ra,
        announcements=(_announcements(_Section(f"{where}: [announcements]", top.table("announcements"), _ANNOUNCEMENTS),
                                      path) if "announcements" in data else None),
    )


def _ra_load(section: _Section, path: Path | None) -> RaLoad:
    """``[ra]``; ``cert`` and ``key`` relative to the profile's folder, and given together."""
    files = []
    for key in ("cert", "key"):
        value = section.string(key, None)
        files.append(None if value is None else (path.parent / value if path is not None else Path(value)))
    if (files[0] is None) != (files[1] is None):
        raise ProfileError(f"{section.where}.{'key' if files[1] is None else 'cert'}: cert and key go together")
    start = section.boolean("start", False)
    mode = section.string("mode", "pass" if start else "nested", _RA_MODES) or "nested"
    if not start and mode != "nested":
        raise ProfileError(f"{section.where}.mode: {mode} needs start = true (without it, fleet run nests the requests itself)")
    size = section.integer("batch_size", RaLoad.batch_size if mode == "nested" else 1)
    if size > MAX_BATCH:
        raise section._fail("batch_size", f"at most {MAX_BATCH}", size)
    if size > 1 and mode != "nested":
        raise ProfileError(f"{section.where}.batch_size: batches are nested messages: use mode = \"nested\"")
    return RaLoad(batch_size=size, batch_wait=section.number("batch_wait", RaLoad.batch_wait),
                  cert=files[0], key=files[1], start=start, mode=mode)


def _announcements(section: _Section, path: Path | None) -> AnnouncementLoad:
    """``[announcements]``; ``cert`` and ``key`` relative to the profile's folder, and given together."""
    files = [section.string(key, None) for key in ("cert", "key")]
    if (files[0] is None) != (files[1] is None):
        raise ProfileError(f"{section.where}.{'key' if files[1] is None else 'cert'}: cert and key go together")
    cert, key = (None if f is None else (path.parent / f if path is not None else Path(f)) for f in files)
    fraction = section.checked("revoke_fraction", 0.0, Bound(0, maximum=1))
    port = int(section.checked("port", 0, Bound(0, integer=True, maximum=65535)))
    return AnnouncementLoad(
        revoke_fraction=float(fraction), revoke_after=section.number("revoke_after", AnnouncementLoad.revoke_after),
        reason=section.string("reason", AnnouncementLoad.reason, tuple(REVOCATION_REASONS)) or "keyCompromise",
        reenroll=section.boolean("reenroll", True), host=section.string("host", "127.0.0.1") or "127.0.0.1",
        port=port, linger=section.number("linger", AnnouncementLoad.linger), cert=cert, key=key,
    )


def load_profile(path: Path | str) -> Profile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read profile {str(path)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    return parse_profile(data, where=str(path), path=path)


def profile_fields() -> list[str]:
    return [f.name for f in fields(Profile)]

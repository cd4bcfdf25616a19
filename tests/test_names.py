"""Subject and SAN parsing: one parser for ``fleet cmp --sans``, manifests and profile templates.
A typo in a SAN type must be refused with the allowed list, never guessed into a URI; values are
checked for their type (an IP address parses, a URI has a scheme, a DNS name is a host name)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest
from cryptography import x509

from fleet.cli import main as main_module
from fleet.cli.main import main
from fleet.load.profiles import ProfileError, load_profile
from fleet.names import NameSyntaxError, check_san_template, parse_name, parse_san, parse_sans

DEAD = "http://127.0.0.1:1/pkix/"  # nothing listens: had anything been sent, the error would say so
ALLOWED = "allowed: DNS:, IP:, URI:, email:, RID:"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("DNS:gnb.example", x509.DNSName("gnb.example")),
        ("dns:*.ran.example.net", x509.DNSName("*.ran.example.net")),
        ("IP:192.0.2.1", x509.IPAddress(ipaddress.ip_address("192.0.2.1"))),
        ("IP:2001:db8::1", x509.IPAddress(ipaddress.ip_address("2001:db8::1"))),
        ("URI:urn:uuid:4f3c2a10-7b1e-4c55-9a0e-1d2b3c4d5e6f",
         x509.UniformResourceIdentifier("urn:uuid:4f3c2a10-7b1e-4c55-9a0e-1d2b3c4d5e6f")),
        ("URI:https://nf.example/x", x509.UniformResourceIdentifier("https://nf.example/x")),
        ("email:ops@example.net", x509.RFC822Name("ops@example.net")),
        ("EMAIL:ops@example.net", x509.RFC822Name("ops@example.net")),
        ("RID:1.3.6.1.4.1.99999.1", x509.RegisteredID(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"))),
        # bare values, guessed as openssl cmp -sans does
        ("dev.example", x509.DNSName("dev.example")),
        ("192.0.2.7", x509.IPAddress(ipaddress.ip_address("192.0.2.7"))),
        ("fe80::1", x509.IPAddress(ipaddress.ip_address("fe80::1"))),
        ("a@b.example", x509.RFC822Name("a@b.example")),
    ],
)
def test_known_types_and_bare_values(text: str, expected: x509.GeneralName) -> None:
    assert parse_san(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("DSN:gnb.example", "unknown type 'DSN'; did you mean DNS:?"),
        ("FOO:bar", "unknown type 'FOO'"),
        ("EMIAL:a@b.example", "did you mean email:?"),
        ("urn:uuid:1234", "for a URI write 'URI:urn:uuid:1234'"),
    ],
)
def test_unknown_types_are_refused_with_the_allowed_list(text: str, words: str) -> None:
    with pytest.raises(NameSyntaxError) as info:
        parse_san(text)
    message = str(info.value)
    assert words in message and ALLOWED in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("IP:999.1.1.1", "not an IPv4 or IPv6 address"),
        ("IP:gnb.example", "not an IPv4 or IPv6 address"),
        ("URI:gnb.example", "a URI needs a scheme"),
        ("URI:1abc:x", "a URI needs a scheme"),
        ("DNS:", "empty value"),
        ("DNS:gnb..example", "label ''"),
        ("DNS:-gnb.example", "label '-gnb'"),
        ("DNS:gnb!.example", "label 'gnb!'"),
        ("DNS:" + "a" * 64 + ".example", "1-63"),
        ("DNS:bücher.example", "A-labels"),
        ("DNS:10.0.0.1", "for an address use IP:"),
        ("10.0.0", "for an address use IP:"),
        ("email:no-at-sign", "local-part@domain"),
        ("email:a@bad_domain!", "email domain"),
        ("RID:1.2.x", "dotted OID"),
        ("RID:7.1", "dotted OID"),
    ],
)
def test_values_are_checked_for_their_type(text: str, words: str) -> None:
    with pytest.raises(NameSyntaxError) as info:
        parse_san(text)
    assert words in str(info.value) and repr(text) in str(info.value)


def test_lists_and_templates() -> None:
    assert parse_sans("DNS:a.example, IP:10.0.0.1 URI:urn:x:1") == [
        x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.UniformResourceIdentifier("urn:x:1"),
    ]
    assert parse_sans(None) == [] and parse_sans("") == []
    for good in ("URI:urn:uuid:{uuid}", "DNS:nf-{index:05d}.5gc.example", "IP:10.0.{index}.1", "URI:urn:imei:{imei}"):
        check_san_template(good)
    with pytest.raises(NameSyntaxError, match="unknown type 'DSN'"):
        check_san_template("DSN:gnb-{index:06d}.example")
    with pytest.raises(NameSyntaxError, match="a URI needs a scheme"):
        check_san_template("URI:{uuid}")


def test_names_still_parse_both_ways() -> None:
    assert parse_name("/CN=a/O=b") == parse_name("O=b,CN=a")
    with pytest.raises(NameSyntaxError):
        parse_name("/XX=1")


def test_profile_with_a_san_typo_is_refused_at_load_time(tmp_path: Path) -> None:
    """Not 50,000 devices later: one line naming the file, the key and the problem."""
    text = (Path(__file__).parents[1] / "profiles" / "smoke.toml").read_text()
    assert 'sans = ["URI:urn:uuid:{uuid}"]' in text
    path = tmp_path / "typo.toml"
    path.write_text(text.replace('sans = ["URI:urn:uuid:{uuid}"]', 'sans = ["DSN:gnb-{index}.example"]'))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [devices].sans: ") and "unknown type 'DSN'" in message and ALLOWED in message
    for shipped in sorted((Path(__file__).parents[1] / "profiles").glob("*.toml")):
        load_profile(shipped)  # every shipped profile's templates pass


def _fleet(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    if not main_module.app.registered_groups:
        main_module._register()
    monkeypatch.setattr(main_module, "_register", lambda *_: None)
    monkeypatch.setattr(sys, "argv", ["fleet", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sans", ["DSN:gnb.example", "FOO:bar", "DNS:ok.example,RID:1.2.x", "IP:10.0.0.300"])
def test_fleet_cmp_refuses_a_bad_san_before_sending(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, sans: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _fleet(monkeypatch, capsys, "cmp", "ir", "--server", DEAD, "--secret", "pass:x", "--ref", "r",
                            "--subject", "/CN=x", "--sans", sans, "--certout", "x.pem", "--newkey", "k.key")
    assert code == 1 and out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet: error: ") and "subjectAltName" in lines[0], err
    assert "cannot connect" not in lines[0]  # refused before any connection
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the new key

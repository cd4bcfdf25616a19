"""``fleet cmp listen``: one device's endpoint for announcements a CA pushes over HTTP POST
(RFC 9810 §5.3.13-5.3.16, RFC 6712 §3.7 / RFC 9811).

Every POST body is read with ``fleet.cmp.announce.read_announcement`` against the trust anchors;
each announcement is one JSON line on stdout, believed or refused (with its failInfo), and a
refused one never stops the listener. A device acts on what it believes: a verified CA key
update (ckuann) makes newWithNew its trust anchor (written to ``--trusted-out``), a revocation
(rann) of its own certificate (``--cert``) says it must re-enroll. The HTTP answer is 200 with
an empty body for a believed announcement, 400 with the reason otherwise.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from cryptography import x509

from fleet.cli.usage import examples
from fleet.cmp.announce import (
    AnnouncementError,
    KeyUpdateAnnouncement,
    RevAnnouncement,
    read_announcement,
)
from fleet.cmp.trust import TrustStore, load_cert
from fleet.errors import FleetError
from fleet.files import certs_pem, load_certificate, load_certificates, write_output
from fleet.http.server import HttpRequest, HttpResponse, serve_http

__all__ = ["EPILOG", "listen"]

EPILOG = examples(
    "fleet cmp listen --port 8090 --trusted root.pem --cert device.pem \\",
    "    --trusted-out new-root.pem --count 1",
)


class _Listener:
    def __init__(self, trust: TrustStore, untrusted: tuple[x509.Certificate, ...], cert: x509.Certificate | None,
                 trusted_out: Path | None, count: int | None) -> None:
        self.trust = trust
        self.untrusted = untrusted
        self.cert = cert
        self.trusted_out = trusted_out
        self.count = count
        self.believed = 0
        self.done = trio.Event()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(405, b"announcements are POSTed\n", "text/plain", headers=(("Allow", "POST"),))
        try:
            msg, announcement = read_announcement(request.body, trust=self.trust, now=time.time(),
                                                  untrusted=self.untrusted)
        except AnnouncementError as exc:
            self._say({"accepted": False, "fail_info": exc.fail.name, "text": exc.text[:200]})
            return HttpResponse(400, f"refused ({exc.fail.name}): {exc.text[:200]}\n".encode(), "text/plain")
        line: dict[str, Any] = {"accepted": True, "body": msg.label}
        line.update(self._act(announcement))
        self._say(line)
        self.believed += 1
        if self.count is not None and self.believed >= self.count:
            self.done.set()
        return HttpResponse(200, b"", "application/pkixcmp")

    def _act(self, a: object) -> dict[str, Any]:
        """What the device does about a believed announcement (module doc)."""
        if isinstance(a, KeyUpdateAnnouncement):
            new_root = load_cert(a.new_with_new)
            self.trust.add(new_root)
            if self.trusted_out is not None:
                write_output(self.trusted_out, certs_pem([new_root]), "--trusted-out")
            return {"action": "trust anchor updated", "new_root": new_root.subject.rfc4514_string()}
        if isinstance(a, RevAnnouncement):
            mine = self.cert is not None and a.serial == self.cert.serial_number
            out: dict[str, Any] = {"serial": a.serial, "status": a.status, "this_device": mine}
            if mine:
                out["action"] = "re-enroll"
            return out
        return {}

    @staticmethod
    def _say(line: dict[str, Any]) -> None:
        print(json.dumps(line, sort_keys=True), flush=True)


async def _serve(listener: _Listener, host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(serve_http, listener.handle, host, port))
            print(f"fleet listening for announcements on http://{host}:{bound}/ (port {bound})", flush=True)

            async def stop_on_signal() -> None:
                async for _ in signals:
                    listener.done.set()
                    return

            nursery.start_soon(stop_on_signal)
            await listener.done.wait()
            nursery.cancel_scope.cancel()


def listen(
    trusted: Annotated[list[Path], typer.Option(metavar="PEM", help="Trust anchors of the announcing CA; repeatable.")],
    untrusted: Annotated[list[Path] | None, typer.Option(metavar="PEM", help="Intermediate certificates; repeatable.")] = None,
    cert: Annotated[Path | None, typer.Option(help="This device's certificate: a rann naming it says re-enroll.")] = None,
    trusted_out: Annotated[Path | None, typer.Option(help="Write the new root here after a verified ckuann.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port, printed at start).")] = 0,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many believed announcements.")] = None,
) -> None:
    """Receive announcements a CA pushes (ckuann, cann, rann, crlann): one JSON line each."""
    anchors = [c for path in trusted for c in load_certificates(path)]
    if not anchors:
        raise FleetError("--trusted holds no certificate")
    extra = tuple(c for path in (untrusted or ()) for c in load_certificates(path))
    device = load_certificate(cert) if cert is not None else None
    listener = _Listener(TrustStore(anchors), extra, device, trusted_out, count)
    try:
        trio.run(_serve, listener, host, port)
    except OSError as exc:
        raise FleetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sys.stdout.flush()

"""The CA answering N pre-built central key generation requests in process: a fixed workload
for instruction counts (``valgrind --tool=callgrind``), which the machine's load does not move.

``make KIND FOLDER`` builds the requests with fleet's client and keeps them, with the CA's
state they were made for, in FOLDER; ``serve KIND N FOLDER`` has a copy of that CA (``Authority``
and ``CmpServer.handle`` with its KGA) answer the first N. Only the ir/cr is answered (its
certConf would need the response): all of the KGA's work is in it. KIND:

* ``pwri``: MAC-protected irs of new devices (PBKDF2 at the CA for each);
* ``pwri-repeat``: the same devices again, after the CA answered each once (``serve`` answers
  those first, outside the N): the CA's KEK cache hits;
* ``kari``: crs signed by EC P-256 certificates the CA issued (``make`` enrolls them);
* ``local-cr``: the same with the device's own key and POP, for comparison.

The difference of two N is the instructions per request. ``FLEET_TREE`` names the fleet tree to
import (default: this one), so the same requests can be fed to two trees.

Usage: python bench/kga_ir_count.py make kari /tmp/kari
       PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/kga_ir_count.py serve kari 50 /tmp/kari
"""

from __future__ import annotations

import inspect
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("FLEET_TREE") or str(Path(__file__).resolve().parent.parent))

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.ca.authority import Authority
from fleet.ca.kga import build_kga
from fleet.cmp.client import ClientConfig, ClientTransaction, Done, Send
from fleet.cmp.kga import key_algorithm
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector, SignatureProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import CmpServer, ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets, derive_device_secret
from fleet.cmp.trust import TrustStore

MASTER = b"kga-count-master"
COUNT = 300
P256 = key_algorithm("ec:P-256")


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, text)])


def _server(authority: Authority, state: Path) -> CmpServer:
    options = {"kek_cache": 65_536} if "kek_cache" in inspect.signature(build_kga).parameters else {}
    kga = build_kga(state, authority.hierarchy, **options)  # type: ignore[arg-type]
    return authority.server(config=ServerConfig(grant_implicit_confirm=False), secrets=SharedSecrets(master=MASTER),
                            kga=kga)


def _mac(i: int) -> ClientConfig:
    ref = b"dev-%06d" % i
    return ClientConfig(MacProtector(derive_device_secret(MASTER, ref), reference=ref, salt=b"\x01" * 16))


def make(kind: str, folder: Path) -> None:
    state = folder / "state"
    authority = Authority.open(state, base_url="http://127.0.0.1:9")
    server = _server(authority, state)
    now = time.time()
    warm: list[bytes] = []
    requests: list[bytes] = []
    if kind in ("pwri", "pwri-repeat"):
        for i in range(COUNT):
            first = CertRequest(BodyType.IR, None, _name(f"d{i}"), central_key_alg=P256)
            requests.append(ClientTransaction(_mac(i), first).start().data)
        if kind == "pwri-repeat":
            warm, requests = requests, [
                ClientTransaction(_mac(i), CertRequest(BodyType.IR, None, _name(f"d{i}"), central_key_alg=P256))
                .start().data for i in range(COUNT)]
    else:
        trust = TrustStore([x509.load_der_x509_certificate(authority.root)])
        chain = [x509.load_der_x509_certificate(c) for c in authority.issued_chain]
        for i in range(COUNT):
            key = ec.generate_private_key(ec.SECP256R1())
            tx = ClientTransaction(ClientConfig(_mac(i).protector, trust), CertRequest(BodyType.IR, key, _name(f"s{i}")))
            step = tx.start()
            while isinstance(step, Send):
                step = tx.receive(server.handle(step.data, now).data)
            assert isinstance(step, Done) and step.certificate is not None
            signer = SignatureProtector(key, x509.load_der_x509_certificate(step.certificate), chain)
            if kind == "kari":
                request = CertRequest(BodyType.CR, None, _name(f"c{i}"), central_key_alg=P256)
            else:
                request = CertRequest(BodyType.CR, ec.generate_private_key(ec.SECP256R1()), _name(f"c{i}"))
            requests.append(ClientTransaction(ClientConfig(signer, trust), request).start().data)
    authority.close()
    (folder / "requests.pkl").write_bytes(pickle.dumps((now, warm, requests)))


def serve(n: int, folder: Path) -> None:
    now, warm, requests = pickle.loads((folder / "requests.pkl").read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        shutil.copytree(folder / "state", state)
        authority = Authority.open(state, base_url="http://127.0.0.1:9")
        server = _server(authority, state)
        for data in warm:
            server.handle(data, now)
        for data in requests[:n]:
            reply = server.handle(data, now).data
            assert reply[:1] == b"\x30"
        authority.close()
    print(f"answered {n} requests (after {len(warm)} others)")


if __name__ == "__main__":
    command, kind = sys.argv[1], sys.argv[2]
    if command == "make":
        make(kind, Path(sys.argv[3]))
    else:
        serve(int(sys.argv[3]), Path(sys.argv[4]))

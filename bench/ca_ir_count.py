"""The CA's CMP layer answering N pre-built irs in process: a fixed workload for instruction counts.

``make`` builds irs with fleet's client (MAC-protected, one PBM salt so the CA's derived-key
cache hits, fresh EC P-256 keys) and pickles them with their time; ``serve N`` has fleet's CA
(``Authority``, ``CmpServer.handle``) answer the first N. The same pickle fed to two trees gives
the same input bytes, and the difference of two N under ``valgrind --tool=callgrind`` is the
instructions per ir, which the machine's load does not move (bench/README.md).

Usage: python bench/ca_ir_count.py make 1000 irs.pkl
       PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/ca_ir_count.py serve 500 irs.pkl
"""

from __future__ import annotations

import pickle
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.ca.authority import Authority
from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.messages import BodyType
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.server import ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets

SECRET = b"bench-secret"


def make(n: int, out: Path) -> None:
    irs = []
    for i in range(n):
        protector = MacProtector(SECRET, reference=b"bench-ref", salt=b"fixed-salt-16byt")
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"bench-{i}")])
        request = CertRequest(BodyType.IR, ec.generate_private_key(ec.SECP256R1()), subject=subject)
        irs.append(ClientTransaction(ClientConfig(protector=protector), request).start().data)
    out.write_bytes(pickle.dumps((time.time(), irs)))


def serve(n: int, source: Path) -> None:
    now, irs = pickle.loads(source.read_bytes())  # the file ``make`` wrote
    with tempfile.TemporaryDirectory() as tmp:
        authority = Authority.open(Path(tmp) / "state", base_url="http://127.0.0.1:8080")
        server = authority.server(config=ServerConfig(), secrets=SharedSecrets(default=SECRET))
        for data in irs[:n]:
            server.handle(data, now)
        authority.close()
    print(f"answered {n} irs")


if __name__ == "__main__":
    command, count, path = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    if command == "make":
        make(count, path)
    else:
        serve(count, path)

"""The server's CPU for a full TLS 1.3 handshake with 2, 1 and 0 session tickets.

    .venv/bin/python bench/tickets.py

relay.certs.server_context with this bench's certificate (bench/load.py's PKI), a client
and a server over memory BIOs in one thread, only the server's calls timed (thread CPU);
the three settings interleaved handshake by handshake, 600 each, five rounds.
"""

import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import contextlib

from load import make_pki

from relay.certs import server_context

tmp = Path(tempfile.mkdtemp())
pki = make_pki(tmp)
cctx = pki.client_context()


def one(sctx):
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(ci, co, server_hostname="localhost")
    s = sctx.wrap_bio(si, so, server_side=True)
    st = 0.0
    cdone = sdone = False
    while not (cdone and sdone):
        if not cdone:
            try:
                c.do_handshake()
                cdone = True
            except ssl.SSLWantReadError:
                pass
        si.write(co.read())
        t = time.thread_time()
        if not sdone:
            try:
                s.do_handshake()
                sdone = True
            except ssl.SSLWantReadError:
                pass
        st += time.thread_time() - t
        ci.write(so.read())
    # client reads tickets
    with contextlib.suppress(ssl.SSLWantReadError):
        c.read(1)
    return st


ctxs = {}
for n in (2, 1, 0):
    ctxs[n] = server_context(pki.cert, pki.key)
    ctxs[n].num_tickets = n
    for _ in range(50):
        one(ctxs[n])
for rnd in range(5):
    res = {n: [] for n in ctxs}
    for _ in range(600):
        for n, ctx in ctxs.items():
            res[n].append(one(ctx))
    print(
        "round",
        rnd,
        "  ".join(
            f"tickets {n}: median {statistics.median(v) * 1e3:.3f} ms "
            f"mean {statistics.mean(v) * 1e3:.3f}"
            for n, v in res.items()
        ),
    )

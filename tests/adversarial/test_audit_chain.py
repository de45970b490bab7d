"""One unbroken audit chain across what operators do to it: logrotate (create mode) with
and without a restart in between, and a stdout sink that fails.

The relay is the real `phi-relay serve`, rotation is the real `logrotate`, and the
proof is the real `phi-relay audit verify` over the rotated files, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import json
import os
import shutil
import signal
from pathlib import Path

from tests.adversarial.service import PHI_RELAY, Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import ROOT
from tests.support.upstream import Sink

SENDER = "app@clinic.example"
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
AUDIT_FAILED = "451 4.3.0 Cannot write the audit record; try again later"


def message(n: int) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Parking update {n}\r\n"
        f"Message-ID: <chain-{n}@clinic.example>\r\n\r\nThe lot closes on Friday.\r\n"
    ).encode()


async def deliver(port: int, pki: Pki, n: int) -> str:
    conn = await RawSmtp.ready(port, pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert await conn.cmd("RCPT TO:<someone@example.org>") == "250 2.1.5 Recipient OK"
    assert (await conn.cmd("DATA")).startswith("354")
    await conn.send(message(n) + b".\r\n")
    answer = await conn.reply()
    await conn.cmd("QUIT")
    await conn.close()
    return answer


async def run(*args: str, **extra_env: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    env |= extra_env
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def verify(state: Path, *files: Path) -> tuple[int, str, str]:
    return await run(str(PHI_RELAY), "audit", "verify", *map(str, files), "--state-dir", str(state))


def seqs(*files: Path) -> list[int]:
    def text(f: Path) -> str:
        return gzip.decompress(f.read_bytes()).decode() if f.suffix == ".gz" else f.read_text()

    return [json.loads(line)["seq"] for f in files for line in text(f).splitlines()]


async def serve(tmp: Path, name: str, state: Path, pki: Pki, sink: Sink) -> Service:
    home = tmp / name
    home.mkdir()
    return await start_service(
        home, pki, sink, "--state-dir", str(state), "--audit-log", str(state / "audit.log")
    )


async def test_logrotate_create_then_restart_continues_one_chain(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    state = tmp_path / "state"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        f"{state}/audit.log {{\n    create 0600\n    rotate 5\n    missingok\n"
        "    compress\n    delaycompress\n}\n"
    )
    rotate = (LOGROTATE, "-f", "-s", str(tmp_path / "logrotate.status"), str(conf))

    first = await serve(tmp_path, "run1", state, pki, sink)
    assert (await deliver(first.smtp_port, pki, 1)).startswith("250 ")
    # Rotated while running, no SIGHUP: the relay writes on into audit.log.1 until it stops.
    assert (await run(*rotate))[0] == 0
    assert (await deliver(first.smtp_port, pki, 2)).startswith("250 ")
    assert await first.stop() == 0
    # The restart finds audit.log empty: the chain's end is in audit.log.1.
    second = await serve(tmp_path, "run2", state, pki, sink)
    assert (await deliver(second.smtp_port, pki, 3)).startswith("250 ")
    assert await second.stop() == 0
    # Rotated while stopped: the next start finds an empty file again.
    assert (await run(*rotate))[0] == 0
    third = await serve(tmp_path, "run3", state, pki, sink)
    assert (await deliver(third.smtp_port, pki, 4)).startswith("250 ")
    assert await third.stop() == 0

    # The oldest was compressed by logrotate (compress + delaycompress).
    files = [state / "audit.log.2.gz", state / "audit.log.1", state / "audit.log"]
    numbers = seqs(*files)
    assert numbers == list(range(len(numbers)))
    code, out, err = await verify(state, *files)
    assert (code, out) == (0, f"OK: {len(numbers)} records, chain intact\n"), err
    # Without FILEs, verify finds the configured log and every rotation of it.
    code, out, err = await run(
        str(PHI_RELAY), "audit", "verify", "--state-dir", str(state),
        PHI_RELAY_AUDIT_FILE=str(state / "audit.log"),
    )  # fmt: skip
    assert (code, out) == (0, f"OK: {len(numbers)} records, chain intact\n"), err
    assert len(sink.received) == 4


async def test_failing_stdout_sink_never_forks_the_file_chain(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    home = tmp_path
    shutil.copytree(ROOT / "policies", home / "policies")
    ready = home / "ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    env |= {"PHI_RELAY_READY_FILE": str(ready), "PHI_RELAY_AUDIT_STDOUT": "true"}
    state = home / "state"
    args = [
        "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--upstream", f"localhost:{sink.port}", "--upstream-ca", str(pki.ca),
        "--state-dir", str(state), "--policy-file", str(home / "policies" / "default.toml"),
        "--audit-log", str(state / "audit.log"),
    ]  # fmt: skip
    reader, writer = os.pipe()
    with (home / "stderr").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(PHI_RELAY), *args, cwd=home, env=env, stdout=writer, stderr=err
        )
    os.close(writer)
    try:
        for _ in range(1200):
            if ready.exists() and ready.read_text().endswith("\n"):
                break
            assert proc.returncode is None, (home / "stderr").read_text()
            await asyncio.sleep(0.05)
        port = int(ready.read_text().split()[0])
        assert (await deliver(port, pki, 1)).startswith("250 ")
        # The log pipeline goes away: every write to stdout now fails (EPIPE).
        os.close(reader)
        for n in (2, 3, 4):
            assert await deliver(port, pki, n) == AUDIT_FAILED
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 40) == 0
    numbers = seqs(state / "audit.log")
    assert numbers == list(range(len(numbers)))
    code, out, err_text = await verify(state, state / "audit.log")
    assert (code, out) == (0, f"OK: {len(numbers)} records, chain intact\n"), err_text
    # Fail closed: what could not be audited in full was not sent.
    assert len(sink.received) == 1


async def test_stalled_stdout_consumer_holds_one_message_not_the_relay(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    home = tmp_path
    shutil.copytree(ROOT / "policies", home / "policies")
    ready = home / "ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    env |= {
        "PHI_RELAY_READY_FILE": str(ready),
        "PHI_RELAY_AUDIT_STDOUT": "true",
        "PHI_RELAY_AUDIT_WRITE_TIMEOUT": "2",
    }
    state = home / "state"
    args = [
        "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--upstream", f"localhost:{sink.port}", "--upstream-ca", str(pki.ca),
        "--state-dir", str(state), "--policy-file", str(home / "policies" / "default.toml"),
    ]  # fmt: skip
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)
    with (home / "stderr").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(PHI_RELAY), *args, cwd=home, env=env, stdout=writer, stderr=err
        )
    drained = bytearray()
    try:
        for _ in range(1200):
            if ready.exists() and ready.read_text().endswith("\n"):
                break
            assert proc.returncode is None, (home / "stderr").read_text()
            await asyncio.sleep(0.05)
        port = int(ready.read_text().split()[0])
        # The log shipper stops reading: fill what is left of the pipe.
        # Through a second open of the pipe: O_NONBLOCK must not reach the relay's stdout.
        filler = os.open(f"/proc/self/fd/{writer}", os.O_WRONLY | os.O_NONBLOCK)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(filler, b"\n")
        os.close(filler)
        stuck = asyncio.ensure_future(deliver(port, pki, 1))
        await asyncio.sleep(0.5)
        started = asyncio.get_running_loop().time()
        other = await asyncio.wait_for(RawSmtp.connect(port), 1.5)
        assert other.banner.startswith("220 ")
        assert asyncio.get_running_loop().time() - started < 1.0
        await other.close()
        assert await stuck == AUDIT_FAILED
        assert sink.received == []
        # The shipper reads again: mail flows.
        os.set_blocking(reader, False)

        async def drain() -> None:
            while True:
                with contextlib.suppress(BlockingIOError):
                    drained.extend(os.read(reader, 65536))
                await asyncio.sleep(0.02)

        draining = asyncio.ensure_future(drain())
        assert (await deliver(port, pki, 2)).startswith("250 ")
        assert len(sink.received) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 40)
        if "draining" in locals():
            draining.cancel()
        os.close(reader)
        os.close(writer)
    assert code == 0
    numbers = seqs(state / "audit.log")
    assert numbers == list(range(len(numbers)))
    assert (await verify(state, state / "audit.log"))[0] == 0

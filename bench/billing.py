"""Billing ingest throughput, end to end: usage samples published to JetStream -> applied and
committed in SQL by the billing service (`meshrtc serve billing`, its own process).

    .venv/bin/python bench/billing.py [--samples 50000] [--participants 200] [--concurrency 1024]

Starts a private nats-server and a fresh SQLite database (or --database-url), waits for the billing
consumer, then publishes the samples with up to --concurrency acknowledgements outstanding (the
publish_async pattern) while polling the committed sample count. Reports publish rate and the end
to end rate (samples / time from the first publish to the last commit), and checks that the billed
bytes equal the published bytes. Target: >= 5,000 samples/s on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.config import Settings, settings_to_env  # noqa: E402
from shared.contracts.subjects import stream_name, usage_subject  # noqa: E402
from shared.db import make_engine, upgrade  # noqa: E402
from shared.events import Direction, Envelope, UsageSample  # noqa: E402
from shared.natsserver import NatsServer  # noqa: E402

DC = "dc1"


def make_samples(count: int, participants: int, start_ms: int) -> tuple[list[tuple[str, str, bytes]], int]:
    """(subject, msg id, data) for `count` participant-total samples, and their byte total."""
    out = []
    total = 0
    for i in range(count):
        p = i % participants
        interval = i // participants
        room = f"room-{p % 20}"
        nbytes = 40_000 + (i * 7919) % 60_000
        total += nbytes
        direction = Direction.DOWNSTREAM if i % 2 else Direction.UPSTREAM
        sample = UsageSample(project="bench", room=room, room_sid=f"RM_{p % 20}", participant_sid=f"PA_{p}",
                             identity=f"user-{p}", direction=direction, bytes=nbytes, packets=nbytes // 1100,
                             connection_ms=5000 if direction == Direction.UPSTREAM else 0,
                             start_ms=start_ms + interval * 5000, end_ms=start_ms + (interval + 1) * 5000)
        env = Envelope.new(sample, dc=DC, node="media-bench", room=room)
        out.append((usage_subject(DC, room), env.id, env.to_json()))
    return out, total


def start_billing(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """`meshrtc serve billing` in its own process (the machine's other core)."""
    env = {**os.environ, **settings_to_env(settings), "MESHRTC_NODE_ID": "billing-bench"}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "meshrtc", "serve", "billing"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def committed(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM billing_samples")).scalar_one()
        total = conn.execute(sa.text("SELECT coalesce(sum(bytes), 0) FROM usage_rollups")).scalar_one()
    return int(count), int(total)


async def run(args: argparse.Namespace) -> dict[str, object]:
    import nats

    workdir = Path(tempfile.mkdtemp(prefix="meshrtc-bench-billing-"))
    (workdir / "nats").mkdir()
    server = NatsServer(store_dir=str(workdir / "nats"), log_file=str(workdir / "nats.log"))
    server.start()
    database_url = args.database_url or f"sqlite:///{workdir / 'billing.db'}"
    upgrade(database_url)
    settings = Settings(nats_url=server.url, dc=DC, database_url=database_url, log_level="INFO")
    billing = start_billing(settings, workdir / "billing.log")
    engine = make_engine(database_url)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 60
        while True:  # the billing consumer exists: the service is up
            try:
                await js.consumer_info(stream_name("usage", DC), f"billing-{DC}")
                break
            except Exception:
                if billing.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"billing did not start: {(workdir / 'billing.log').read_text()}") from None
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # let start-up finish before counting the service's CPU
        billing_cpu_ready = process_cpu_seconds(billing.pid)
        start_ms = (int(time.time() * 1000) // 60_000 - 60) * 60_000
        messages, expected_bytes = make_samples(args.samples, args.participants, start_ms)

        # publish_async: fire JetStream publishes with a reply inbox and count the acks as they
        # come back, keeping at most --concurrency unacknowledged.
        inbox = nc.new_inbox()
        state = {"acked": 0, "errors": 0}
        room_for_more = asyncio.Event()
        all_acked = asyncio.Event()

        async def on_ack(msg: object) -> None:
            data = msg.data  # type: ignore[attr-defined]
            if b'"error"' in data:
                state["errors"] += 1
            state["acked"] += 1
            room_for_more.set()
            if state["acked"] >= len(messages):
                all_acked.set()

        await nc.subscribe(inbox + ".*", cb=on_ack)
        first_publish = time.monotonic()
        for index, (subject, msg_id, data) in enumerate(messages):
            while index - state["acked"] >= args.concurrency:
                room_for_more.clear()
                await room_for_more.wait()
            await nc.publish(subject, data, reply=f"{inbox}.{index}", headers={"Nats-Msg-Id": msg_id})
        await nc.flush()
        await asyncio.wait_for(all_acked.wait(), args.timeout)
        published_at = time.monotonic()
        if state["errors"]:
            raise RuntimeError(f"{state['errors']} publishes were refused by JetStream")

        count = 0
        done_at = published_at
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            count, billed_bytes = await asyncio.to_thread(committed, engine)
            done_at = time.monotonic()
            if count >= args.samples:
                break
            await asyncio.sleep(0.05)
        count, billed_bytes = await asyncio.to_thread(committed, engine)
        billing_cpu = process_cpu_seconds(billing.pid) - billing_cpu_ready
    finally:
        await nc.close()
        billing.send_signal(signal.SIGTERM)
        try:
            billing.wait(timeout=30)
        except subprocess.TimeoutExpired:
            billing.kill()
            billing.wait()
        engine.dispose()
        server.stop()
    elapsed = done_at - first_publish
    return {
        "samples": args.samples,
        "committed": count,
        "publish_s": round(published_at - first_publish, 3),
        "publish_per_s": round(args.samples / max(1e-9, published_at - first_publish)),
        "end_to_end_s": round(elapsed, 3),
        "end_to_end_per_s": round(count / max(1e-9, elapsed)),
        "billing_cpu_s": round(billing_cpu, 2),
        "billing_cpu_us_per_sample": round(billing_cpu / max(1, count) * 1e6, 1),
        "cpu_bound_per_s": round(count / max(1e-9, billing_cpu)),
        "load_average": round(os.getloadavg()[0], 1),
        "bytes_match": billed_bytes == expected_bytes,
        "billed_bytes": billed_bytes,
        "expected_bytes": expected_bytes,
        "billing_log": next((line.split("billing: ", 1)[1] for line in (workdir / "billing.log").read_text()
                             .splitlines() if "sample(s) applied" in line), ""),
        "database": "sqlite" if database_url.startswith("sqlite") else database_url.split(":", 1)[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1024, help="unacknowledged publishes in flight")
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"billing ingest: {result['committed']}/{result['samples']} samples committed "
              f"({result['database']})\n"
              f"  publish:     {result['publish_s']} s  ({result['publish_per_s']} samples/s)\n"
              f"  end to end:  {result['end_to_end_s']} s  ({result['end_to_end_per_s']} samples/s, "
              "first publish -> last commit)\n"
              f"  billing CPU: {result['billing_cpu_s']} s  ({result['billing_cpu_us_per_sample']} us/sample: "
              f"{result['cpu_bound_per_s']} samples/s per core; load average {result['load_average']} "
              f"on {os.cpu_count()} cores)\n"
              f"  bytes billed == bytes published: {result['bytes_match']}\n"
              f"  billing: {result['billing_log']}")
    ok = result["committed"] == result["samples"] and result["bytes_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

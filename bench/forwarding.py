"""End-to-end forwarding benchmark of the media node, through real LiveKit signalling.

For each N in ``--subscribers`` a fresh ``meshrtc dev`` is started (its media process pinned to
``--sfu-cpu``, the rest of it unpinned) and:

* one publisher (aiortc ``RTCPeerConnection``, its own process) publishes pre-encoded VP8
  1280x720 @ 30 fps ~1.5 Mbps (keyframe every 2 s, replayed as ``av.Packet``: no encoding at run
  time) and pre-encoded 20 ms Opus carrying an RFC 6464 audio level, one encoding (no simulcast),
  via ``add_track`` -> ``track_published`` -> publisher offer -> answer;
* N light subscribers (a few processes hosting several each, pinned to ``--client-cpu`` with the
  publisher) join the room first (their first offer carries data channels only), then the
  publisher publishes and every subscriber answers the renegotiation with meshrtc's
  ``MediaPeer(role="publisher")``: SRTP is removed, packets are counted, nothing is decoded
  (``--publisher-first`` makes them late joiners instead);
* after a warm-up, a steady window of ``--seconds`` measures the media process (``meshrtc serve
  media``, the dev process's child) from /proc/<pid>/stat: CPU (utime+stime) / forwarded packets,
  where forwarded packets = sum over subscribers of RTP packets received (cross-checked with the
  publisher's sent packets x N), plus RSS, and added latency: each video frame's first-packet
  arrival at a subscriber minus its send time at the publisher (CLOCK_MONOTONIC, same host),
  frames matched by RTP timestamp (aligned on the first keyframe if the SFU shifted it);
* then the publisher pauses (only RTCP flows) and the idle CPU of the media process with N
  connected subscribers is measured ("background"), to split fixed from per-packet cost.

A "direct" run (publisher -> one MediaPeer answerer, no SFU) gives the client-side latency to
subtract. Everything the SFU does in production is on: NACK cache, keyframe gating + PLI,
SR translation, RR/REMB upstream, audio levels/speakers, extension (MID) rewrite, stats,
connection quality, usage metering. Loss is attributed from /proc/net/udp (per-socket drops of
the media process vs the clients). A run in which the server dropped sessions (LeaveRequest,
subscribers without media) is reported as invalid and re-run (``--retries``).

Run:  .venv/bin/python bench/forwarding.py [--subscribers 1,10,50] [--seconds 20]
The clip is encoded once (libvpx/libopus via PyAV) and cached under ``--cache-dir``.
Internally the same file runs the client processes (``--worker pub|sub``, JSON lines on stdio).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import itertools
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
MEDIA_VERSION = "v2"
WIDTH, HEIGHT, FPS = 1280, 720, 30
VIDEO_BITRATE = 1_350_000  # libvpx overshoots ~10 % on this content: ~1.5 Mbps on the wire
GOP = 60  # keyframe every 2 s

# Reference figures (µs of SFU CPU per forwarded packet, same 2-vCPU VM, same kind of load,
# means of repeats, SFU on one core), measured before this code existed; what each one is:
# docs/BENCHMARKS.md, "Reference figures: the prototype and Janus".
NOTES_FAST_PATH_US = 27.0  # Python prototype "fast" path under load (27.6 marginal N 20->50)
PROTOTYPE_US = {1: 223.8, 10: 51.7, 50: 33.0, 100: 33.1}  # prototype, same session as Janus
JANUS_US = {1: 145.5, 10: 45.3, 50: 44.7, 100: 44.2}  # Janus 1.1.2 default (thread per handle)
JANUS_EL1_US = {10: 33.9, 50: 23.1, 100: 23.3}  # Janus 1.1.2 with event_loops = 1
MARGINAL_10_50 = {"prototype": 28.4, "janus": 44.6, "janus_el1": 20.4}


# =========================================================================== media clip


def prepare_media(cache_dir: Path) -> Path:
    """Encode the synthetic clip once: 8 s of VP8 (240 frames, keyframes at 0/60/120/180) and
    5 s of 20 ms Opus packets with their RFC 6464 level. Returns the cache file."""
    path = cache_dir / f"forwarding-media-{MEDIA_VERSION}.pkl"
    if path.exists():
        return path
    import av
    import numpy as np

    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"encoding the synthetic clip once (cached in {path}) ...", flush=True)
    started = time.monotonic()
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = FPS
    ctx.bit_rate = VIDEO_BITRATE
    ctx.gop_size = GOP
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "qmax": "60",
                   "undershoot-pct": "100", "overshoot-pct": "15", "buf-sz": "1000", "buf-initial-sz": "500",
                   "buf-optimal-sz": "600", "static-thresh": "0"}
    rng = np.random.default_rng(1)
    # blocky random texture panning diagonally + light per-frame noise: ~1.5 Mbps at this rate
    tex = rng.integers(0, 128, (HEIGHT // 8 + 64, WIDTH // 8 + 64), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    noise_bank = [rng.integers(0, 9, (HEIGHT, WIDTH), dtype=np.uint8) for _ in range(7)]
    skip = GOP  # the first GOP carries rate control's start-up keyframe (much larger): dropped
    video: list[tuple[bytes, bool]] = []
    for i in range(skip + 4 * GOP):
        dy, dx = (2 * i) % 512, (3 * i) % 512
        y = tex[dy:dy + HEIGHT, dx:dx + WIDTH] + noise_bank[i % len(noise_bank)]
        u = np.full((HEIGHT // 2, WIDTH // 2), (2 * i) % 256, np.uint8)
        v = np.full((HEIGHT // 2, WIDTH // 2), 128, np.uint8)
        frame = av.VideoFrame.from_ndarray(np.concatenate([y.ravel(), u.ravel(), v.ravel()])
                                           .reshape(HEIGHT * 3 // 2, WIDTH), format="yuv420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        if i % GOP == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in ctx.encode(frame):
            if i >= skip:
                video.append((bytes(packet), bool(packet.is_keyframe)))
    for packet in ctx.encode(None):
        video.append((bytes(packet), bool(packet.is_keyframe)))

    # Opus: a 440 Hz tone whose loudness follows a slow envelope (speech-like levels)
    actx = av.CodecContext.create("libopus", "w")
    actx.sample_rate = 48000
    actx.layout = "mono"
    actx.format = "s16"
    actx.bit_rate = 32000
    actx.time_base = fractions.Fraction(1, 48000)
    audio: list[tuple[bytes, int]] = []
    t = np.arange(960) / 48000
    for i in range(250):
        amp = 0.02 + 0.4 * (0.5 + 0.5 * math.sin(i / 12))
        pcm = (amp * 32767 * np.sin(2 * math.pi * 440 * (t + i * 0.02))).astype(np.int16)
        rms = math.sqrt(float(np.mean((pcm.astype(np.float64) / 32767) ** 2)))
        level = min(127, max(0, round(-20 * math.log10(rms)))) if rms > 0 else 127
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = actx.time_base
        for packet in actx.encode(frame):
            audio.append((bytes(packet), level))
    with open(path.with_suffix(".tmp"), "wb") as out:
        pickle.dump({"video": video, "audio": audio}, out)
    path.with_suffix(".tmp").rename(path)
    size = sum(len(b) for b, _ in video)
    print(f"  {len(video)} VP8 frames, {size * 8 / (len(video) / FPS) / 1e6:.2f} Mbps, "
          f"keyframes at {[i for i, (_, k) in enumerate(video) if k]}; {len(audio)} Opus packets; "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return path


# =========================================================================== client workers


def load_media(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        return pickle.load(f)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def stdin_commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def worker_pub(args: argparse.Namespace) -> None:
    from bench.lkclient import ReplayPublisher, loopback_ice

    loopback_ice()
    media = await asyncio.to_thread(load_media, args.media)
    commands = await stdin_commands()
    pub = ReplayPublisher("bench-publisher", media["video"], media["audio"], fps=FPS)
    if args.direct:
        emit({"event": "offer", "sdp": await pub.direct_offer()})
        command = json.loads(await commands.readline())
        await pub.direct_answer(command["sdp"])
    else:
        await pub.join_and_publish(args.url, args.room)
    emit({"event": "ready"})
    while line := await commands.readline():
        cmd = json.loads(line)["cmd"]
        if cmd == "snap":
            emit({"event": "snap", "t": time.monotonic(), "cpu": own_cpu(), "sent": dict(pub.sent),
                  "plis": pub.plis, "keyframes_forced": pub.video.keyframes_forced})
        elif cmd == "pause":
            pub.pause()
            emit({"event": "paused"})
        elif cmd == "resume":
            pub.resume()
            emit({"event": "resumed"})
        elif cmd == "frames":
            log = pub.log
            emit({"event": "frames", "ts": log.ts, "first": log.first, "last": log.last, "key": log.key})
        elif cmd == "quit":
            break
    await pub.close()
    emit({"event": "bye"})


async def worker_sub(args: argparse.Namespace) -> None:
    from bench.lkclient import LightSubscriber, loopback_ice

    loopback_ice()
    commands = await stdin_commands()
    subs = [LightSubscriber(identity) for identity in args.identities.split(",")]
    if args.direct:
        command = json.loads(await commands.readline())
        emit({"event": "answer", "sdp": await subs[0].accept_direct_offer(command["sdp"])})
    else:
        for sub in subs:
            await sub.join(args.url, args.room)
            await asyncio.sleep(args.stagger)
        # subscriber PeerConnections up (data channels only until the publisher's tracks arrive)
        results = await asyncio.gather(*(s.wait_connected(args.ready_timeout) for s in subs), return_exceptions=True)
        failed = [s.identity for s, r in zip(subs, results, strict=True) if isinstance(r, BaseException)]
        pre_join = [k for s in subs if s.signal is not None for k in s.signal.pre_join]
        emit({"event": "joined", "failed": failed, "pre_join": pre_join,
              "join_retries": sum(s.join_retries for s in subs)})

    async def receiving(sub: LightSubscriber) -> None:
        await sub.got_video.wait()
        await sub.got_audio.wait()

    await asyncio.wait([asyncio.ensure_future(receiving(s)) for s in subs], timeout=args.ready_timeout)
    missing = [s.identity for s in subs if not (s.got_video.is_set() and s.got_audio.is_set())]
    emit({"event": "ready", "missing": missing, "errors": [e for s in subs for e in s.errors]})
    while line := await commands.readline():
        cmd = json.loads(line)["cmd"]
        if cmd == "snap":
            emit({"event": "snap", "t": time.monotonic(), "cpu": own_cpu(), "subs": [s.counters() for s in subs]})
        elif cmd == "frames":
            emit({"event": "frames", "subs": [{"ts": s.frames.ts, "first": s.frames.first, "last": s.frames.last}
                                              for s in subs]})
        elif cmd == "quit":
            break
    await asyncio.gather(*(s.close() for s in subs), return_exceptions=True)
    emit({"event": "bye"})


def run_worker(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main = worker_pub if args.worker == "pub" else worker_sub
    asyncio.run(main(args))


# =========================================================================== orchestration


SCRIPT = str(Path(__file__).resolve())


def _open_log(path: Path) -> Any:
    return open(path, "wb")  # closed by the caller once the child holds it


class Worker:
    """A client process speaking JSON lines on stdin/stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self._pending: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, name: str, argv: list[str], log_dir: Path) -> Worker:
        stderr = _open_log(log_dir / f"{name}.log")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, SCRIPT, *argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, limit=1 << 26,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        stderr.close()
        return cls(name, proc)

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def wait(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        for msg in self._pending:
            if msg["event"] == event:
                self._pending.remove(msg)
                return msg
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout:.0f} s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"{self.name} exited (code {await self.proc.wait()}) before {event!r}")
            msg = json.loads(line)
            if msg["event"] == event:
                return msg
            self._pending.append(msg)

    async def request(self, cmd: str, event: str, timeout: float = 30.0) -> dict[str, Any]:
        await self.send(cmd=cmd)
        return await self.wait(event, timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send(cmd="quit")
                await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# ---- /proc helpers


def proc_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def proc_cpu_ns(pid: int) -> int:
    """CPU time of the live threads of ``pid`` in ns (/proc/<pid>/task/*/schedstat): finer than the
    10 ms ticks of /proc/<pid>/stat, used for the short idle windows."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return inodes


def udp_sockets() -> dict[int, tuple[int, int]]:
    """inode -> (rx_queue bytes, drops) of every IPv4 UDP socket (/proc/net/udp)."""
    out = {}
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            out[int(cols[9])] = (int(cols[4].split(":")[1], 16), int(cols[12]))
    return out


def udp_stats(pids: list[int]) -> tuple[int, int]:
    """(drops, bytes queued) summed over the UDP sockets of ``pids``: a socket drops datagrams
    when its owner does not read fast enough (receive buffer full)."""
    table = udp_sockets()
    drops = queued = 0
    for pid in pids:
        for inode in socket_inodes(pid):
            if inode in table:
                queued += table[inode][0]
                drops += table[inode][1]
    return drops, queued


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out: list[int] = []
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, ppid in parents.items() if ppid == pid]
        out += children
        frontier += children
    return out


def cpu_times() -> dict[str, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat (busy excludes idle and iowait)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                nums = [int(v) for v in vals[:8]]
                out[name] = (sum(nums) - nums[3] - nums[4], sum(nums))
    return out


def cpu_busy_pct(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> dict[str, float]:
    return {k: 100.0 * (b[k][0] - a[k][0]) / max(1, b[k][1] - a[k][1]) for k in a if k in b}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the server


@dataclass
class DevServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    workdir: Path
    media_pid: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def server_pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]


def start_dev(sfu_cpu: int | None, log_dir: Path, code: Path | None = None) -> DevServer:
    """``code``: run the server from that source tree (``--baseline``) instead of this checkout."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="meshrtc-bench-dev-"))
    log_path = log_dir / f"dev-{port}.log"
    # The orchestrator runs pinned to the clients' CPU: the dev tree (NATS, signal, room, ...) gets all
    # CPUs back, and only the media process is pinned to ``sfu_cpu`` once it is found.
    pin = (lambda: os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))) if sfu_cpu is not None else None
    with open(log_path, "wb") as log_file:
        argv = [str(ROOT / ".venv/bin/meshrtc"), "dev", "--port", str(port)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if code is not None:  # same interpreter and packages; the tree's modules come first on the path
            argv = [str(ROOT / ".venv/bin/python"), "-m", "meshrtc", "dev", "--port", str(port)]
            env["PYTHONPATH"] = str(code)
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir, preexec_fn=pin,
                                env=env)
    server = DevServer(proc, port, log_path, workdir)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"meshrtc dev exited early:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                up = response.status == 200
        except OSError:
            up = False
        if up and re.search(r"media media-\S+ started", log_path.read_text(errors="replace")):
            break
        time.sleep(0.3)
    else:
        stop_dev(server)
        raise RuntimeError("meshrtc dev did not come up in 90 s")
    media = [p for p in descendants(proc.pid) if "serve media" in proc_cmdline(p)]
    if len(media) != 1:
        stop_dev(server)
        raise RuntimeError(f"expected one media process, found {media}")
    server.media_pid = media[0]
    if sfu_cpu is not None:  # every thread of the media process (threads it starts later inherit it)
        for tid in os.listdir(f"/proc/{server.media_pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), {sfu_cpu})
    time.sleep(1.5)  # the media node's first heartbeat reaches the room service
    return server


def start_pyspy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(ROOT / ".venv/bin/py-spy")
    argv = [exe, "record", "--nonblocking", "-r", "250", "-d", str(int(seconds) + 30), "-f", "raw",
            "-o", str(out), "-p", str(pid)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_dev(server: DevServer) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    shutil.rmtree(server.workdir, ignore_errors=True)


# ---- latency


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def frame_latencies(pub: dict[str, Any], sub: dict[str, Any], t0: float,
                    t1: float) -> tuple[list[float], list[float], int]:
    """(first-packet latencies, marker-packet latencies, frames seen in window) in ms for one
    subscriber's frames whose first packet arrived in [t0, t1].

    Frames are matched by RTP timestamp. The SFU may shift timestamps (a constant offset per
    epoch): none if the subscriber's first frame has a publisher twin sent before it (RTP
    timestamps start at a random 32-bit origin, so an exact match is not a coincidence), else the
    one that maps it onto the last publisher keyframe sent before it (an SFU starts on one)."""
    if not sub["ts"]:
        return [], [], 0
    sent = {ts: (first, last) for ts, first, last in zip(pub["ts"], pub["first"], pub["last"], strict=True)}
    ts0, a0 = sub["ts"][0], sub["first"][0]
    offset = 0
    twin = sent.get(ts0)
    if twin is None or not 0 <= a0 - twin[0] < 60.0:
        keys = [(f, ts) for ts, f, k in zip(pub["ts"], pub["first"], pub["key"], strict=True) if k and f <= a0]
        if keys:
            offset = (ts0 - max(keys)[1]) & 0xFFFFFFFF
    first_ms: list[float] = []
    last_ms: list[float] = []
    seen = 0
    for ts, first, last in zip(sub["ts"], sub["first"], sub["last"], strict=True):
        if not t0 <= first <= t1:
            continue
        seen += 1
        match = sent.get((ts - offset) & 0xFFFFFFFF)
        if match is None:
            continue
        first_ms.append((first - match[0]) * 1000)
        if last and match[1]:
            last_ms.append((last - match[1]) * 1000)
    return first_ms, last_ms, seen


# ---- one configuration


@dataclass
class Result:
    n: int
    window_s: float = 0.0
    fwd_packets: int = 0
    expected_packets: int = 0
    pub_pps: float = 0.0
    lost_gaps: int = 0
    sfu_cpu_s: float = 0.0  # /proc/<pid>/stat utime+stime
    sfu_cpu_s_schedstat: float = 0.0  # cross-check: live threads' schedstat
    idle_empty_pct: float = math.nan
    idle_connected_pct: float = math.nan
    idle_window_packets: int = 0
    rss_mb: float = 0.0
    rss_empty_mb: float = 0.0
    other_server_pct: float = 0.0
    other_server_detail: dict[str, float] = field(default_factory=dict)
    sfu_udp_drops: int = 0  # datagrams dropped by the media process's sockets (receive buffer full)
    sfu_udp_queued: int = 0  # bytes waiting in them at the end of the window
    client_udp_drops: int = 0
    client_cpu_pct: float = 0.0
    cpu_busy: dict[str, float] = field(default_factory=dict)
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lat_first: list[float] = field(default_factory=list)
    lat_last: list[float] = field(default_factory=list)
    frames_seen: int = 0
    plis: int = 0
    keyframes_forced: int = 0
    srtp_errors: int = 0
    missing: list[str] = field(default_factory=list)
    pre_join_frames: list[str] = field(default_factory=list)
    join_retries: int = 0
    leaves: int = 0  # LeaveRequests the subscribers received by the end of the window (run invalid)
    errors: list[str] = field(default_factory=list)

    @property
    def fwd_pps(self) -> float:
        return self.fwd_packets / self.window_s if self.window_s else 0.0

    @property
    def sfu_pct(self) -> float:
        return 100.0 * self.sfu_cpu_s / self.window_s if self.window_s else 0.0

    @property
    def us_per_pkt(self) -> float:
        return 1e6 * self.sfu_cpu_s / self.fwd_packets if self.fwd_packets else math.nan

    @property
    def net_us_per_pkt(self) -> float:
        if not self.fwd_packets or math.isnan(self.idle_connected_pct):
            return math.nan
        return 1e6 * (self.sfu_cpu_s - self.idle_connected_pct / 100 * self.window_s) / self.fwd_packets

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n, "window_s": round(self.window_s, 2), "fwd_packets": self.fwd_packets,
            "expected_packets": self.expected_packets, "fwd_pps": round(self.fwd_pps, 1),
            "pub_pps": round(self.pub_pps, 1), "lost_gaps": self.lost_gaps, "sfu_cpu_pct": round(self.sfu_pct, 2),
            "us_per_pkt": round(self.us_per_pkt, 2),
            "us_per_pkt_schedstat": round(1e6 * self.sfu_cpu_s_schedstat / self.fwd_packets, 2)
            if self.fwd_packets else None, "net_us_per_pkt": round(self.net_us_per_pkt, 2),
            "idle_empty_pct": round(self.idle_empty_pct, 2), "idle_connected_pct": round(self.idle_connected_pct, 2),
            "idle_window_packets": self.idle_window_packets, "rss_mb": round(self.rss_mb, 1),
            "rss_empty_mb": round(self.rss_empty_mb, 1), "other_server_pct": round(self.other_server_pct, 2),
            "other_server_detail": self.other_server_detail, "sfu_udp_drops": self.sfu_udp_drops,
            "sfu_udp_queued": self.sfu_udp_queued, "client_udp_drops": self.client_udp_drops,
            "client_cpu_pct": round(self.client_cpu_pct, 2),
            "cpu_busy_pct": {k: round(v, 1) for k, v in self.cpu_busy.items()}, "loadavg": self.loadavg,
            "lat_first_p50_ms": round(percentile(self.lat_first, 0.5), 3),
            "lat_first_p99_ms": round(percentile(self.lat_first, 0.99), 3),
            "lat_last_p50_ms": round(percentile(self.lat_last, 0.5), 3),
            "lat_last_p99_ms": round(percentile(self.lat_last, 0.99), 3),
            "frames_matched": len(self.lat_first), "frames_seen": self.frames_seen, "plis": self.plis,
            "keyframes_forced": self.keyframes_forced, "srtp_errors": self.srtp_errors,
            "missing": self.missing, "errors": self.errors[:5], "pre_join_frames": len(self.pre_join_frames),
            "join_retries": self.join_retries, "leaves": self.leaves,
        }


def sub_totals(snaps: list[dict[str, Any]]) -> tuple[int, int, int]:
    packets = lost = srtp = 0
    for snap in snaps:
        for c in snap["subs"]:
            packets += c["video_packets"] + c["audio_packets"]
            lost += c["lost"]
            srtp += c["srtp_errors"]
    return packets, lost, srtp


async def measure_window(workers: list[Worker], pub: Worker, seconds: float,
                         cpu_pids: dict[str, list[int]]) -> dict[str, Any]:
    """Snapshots of every counter at the start and end of a window of ``seconds``."""

    async def snap() -> dict[str, Any]:
        ticks = {name: sum(_safe_ticks(p) for p in pids) for name, pids in cpu_pids.items()}
        ns = {name: sum(_safe_ns(p) for p in pids) for name, pids in cpu_pids.items()}
        per_pid = {str(p): _safe_ticks(p) for p in cpu_pids.get("others", [])}
        udp = {name: udp_stats(pids) for name, pids in cpu_pids.items() if name in ("media", "clients")}
        t = time.monotonic()
        cpus = cpu_times()
        replies = await asyncio.gather(pub.request("snap", "snap"), *(w.request("snap", "snap") for w in workers))
        return {"t": t, "ticks": ticks, "ns": ns, "per_pid": per_pid, "udp": udp, "cpus": cpus,
                "pub": replies[0], "subs": list(replies[1:])}

    a = await snap()
    loadavg = os.getloadavg()
    await asyncio.sleep(seconds)
    b = await snap()
    return {"a": a, "b": b, "loadavg": loadavg}


def _short_name(cmdline: str) -> str:
    if "nats-server" in cmdline:
        return "nats-server"
    match = re.search(r"meshrtc (serve \w+|dev)", cmdline)
    return match.group(1) if match else cmdline[:40]


def _safe_ticks(pid: int) -> int:
    try:
        return proc_ticks(pid)
    except OSError:
        return 0


def _safe_ns(pid: int) -> int:
    try:
        return proc_cpu_ns(pid)
    except OSError:
        return 0


async def run_sfu(n: int, args: argparse.Namespace, media_path: Path, log_dir: Path,
                  profile: Path | None = None, code: Path | None = None) -> Result:
    result = Result(n=n)
    server = await asyncio.to_thread(start_dev, args.sfu_cpu, log_dir, code)
    workers: list[Worker] = []
    pub: Worker | None = None
    try:
        media_pid = server.media_pid
        room = f"bench-{n}"
        # idle media node, nobody connected
        await asyncio.sleep(1.0)
        t0, c0 = time.monotonic(), proc_cpu_ns(media_pid)
        await asyncio.sleep(args.idle_seconds)
        result.idle_empty_pct = 100.0 * (proc_cpu_ns(media_pid) - c0) / 1e9 / (time.monotonic() - t0)
        result.rss_empty_mb = proc_rss_mb(media_pid)

        procs = max(1, min(n, args.sub_procs))
        groups = [[f"sub-{i}" for i in range(n) if i % procs == g] for g in range(procs)]

        async def start_publisher() -> Worker:
            worker = await Worker.start(f"n{n}-pub", ["--worker", "pub", "--url", server.url, "--room", room,
                                                      "--media", str(media_path)], log_dir)
            await worker.wait("ready", 60)
            return worker

        if args.publisher_first:
            pub = await start_publisher()
        workers = list(await asyncio.gather(*(
            Worker.start(f"n{n}-subs{g}", ["--worker", "sub", "--url", server.url, "--room", room,
                                           "--identities", ",".join(ids), "--stagger", str(args.stagger),
                                           "--ready-timeout", str(args.ready_timeout)], log_dir)
            for g, ids in enumerate(groups))))
        joined = await asyncio.gather(*(w.wait("joined", args.ready_timeout + 60) for w in workers))
        failed = [f for j in joined for f in j["failed"]]
        result.pre_join_frames = [k for j in joined for k in j["pre_join"]]
        result.join_retries = sum(j["join_retries"] for j in joined)
        if result.join_retries:
            print(f"  N={n}: {result.join_retries} joins refused (HTTP 503) and retried", flush=True)
        if result.pre_join_frames:
            print(f"  N={n}: {len(result.pre_join_frames)} frames arrived before a JoinResponse "
                  f"(protocol violation, tolerated): {sorted(set(result.pre_join_frames))}", flush=True)
        if failed:
            print(f"  N={n}: {len(failed)} subscriber PeerConnections never connected: {failed[:5]}", flush=True)
        if pub is None:
            pub = await start_publisher()
        readies = await asyncio.gather(*(w.wait("ready", args.ready_timeout + 60) for w in workers))
        result.missing = [m for r in readies for m in r["missing"]]
        result.errors = [e for r in readies for e in r["errors"]]
        if result.missing:
            print(f"  N={n}: {len(result.missing)} subscribers receive nothing: {result.missing[:5]}", flush=True)
        await asyncio.sleep(args.warmup)

        server_pids = server.server_pids()
        client_pids = [w.proc.pid for w in workers] + [pub.proc.pid]
        cpu_pids = {"media": [media_pid], "others": [p for p in server_pids if p != media_pid],
                    "clients": client_pids}
        spy = None
        if profile is not None:
            spy = await asyncio.to_thread(start_pyspy, media_pid, profile, args.seconds)
        window = await measure_window(workers, pub, args.seconds, cpu_pids)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # stop sampling at the end of the window (it writes on SIGINT)
            await asyncio.to_thread(spy.wait, 60)
        result.rss_mb = proc_rss_mb(media_pid)
        a, b = window["a"], window["b"]
        result.window_s = b["t"] - a["t"]
        result.loadavg = window["loadavg"]
        result.sfu_cpu_s = (b["ticks"]["media"] - a["ticks"]["media"]) / CLK_TCK
        result.sfu_cpu_s_schedstat = (b["ns"]["media"] - a["ns"]["media"]) / 1e9
        result.other_server_pct = 100.0 * (b["ticks"]["others"] - a["ticks"]["others"]) / CLK_TCK / result.window_s
        for pid, ticks in b["per_pid"].items():
            name = _short_name(proc_cmdline(int(pid))) or pid
            pct = 100.0 * (ticks - a["per_pid"].get(pid, ticks)) / CLK_TCK / result.window_s
            result.other_server_detail[name] = round(result.other_server_detail.get(name, 0.0) + pct, 2)
        result.sfu_udp_drops = b["udp"]["media"][0] - a["udp"]["media"][0]
        result.sfu_udp_queued = b["udp"]["media"][1]
        result.client_udp_drops = b["udp"]["clients"][0] - a["udp"]["clients"][0]
        client_cpu = sum(s["cpu"] for s in b["subs"]) + b["pub"]["cpu"] - sum(s["cpu"] for s in a["subs"]) \
            - a["pub"]["cpu"]
        result.client_cpu_pct = 100.0 * client_cpu / result.window_s
        result.cpu_busy = cpu_busy_pct(a["cpus"], b["cpus"])
        result.leaves = sum(c["leaves"] for snap in b["subs"] for c in snap["subs"])
        pa, la, _ = sub_totals(a["subs"])
        pb, lb, srtp = sub_totals(b["subs"])
        result.fwd_packets = pb - pa
        result.lost_gaps = lb - la
        result.srtp_errors = srtp
        sent_a, sent_b = a["pub"]["sent"], b["pub"]["sent"]
        pub_sent = sum(sent_b[k] - sent_a[k] for k in ("video_packets", "audio_packets"))
        result.pub_pps = pub_sent / result.window_s
        result.expected_packets = pub_sent * n
        result.plis = b["pub"]["plis"]
        result.keyframes_forced = b["pub"]["keyframes_forced"]

        pub_frames = await pub.request("frames", "frames", 60)
        for w in workers:
            frames = await w.request("frames", "frames", 60)
            for sub in frames["subs"]:
                first, last, seen = frame_latencies(pub_frames, sub, a["t"], b["t"])
                result.lat_first += first
                result.lat_last += last
                result.frames_seen += seen

        # background: N subscribers connected, publisher paused (RTCP, ICE consent, SCTP, timers)
        await pub.request("pause", "paused")
        await asyncio.sleep(2.0)
        idle = await measure_window(workers, pub, args.idle_seconds, {"media": [media_pid]})
        result.idle_connected_pct = 100.0 * (idle["b"]["ns"]["media"] - idle["a"]["ns"]["media"]) / 1e9 \
            / (idle["b"]["t"] - idle["a"]["t"])
        result.idle_window_packets = sub_totals(idle["b"]["subs"])[0] - sub_totals(idle["a"]["subs"])[0]
        return result
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        if pub is not None:
            await pub.stop()
        await asyncio.to_thread(stop_dev, server)


async def run_direct(args: argparse.Namespace, media_path: Path, log_dir: Path) -> Result:
    """Publisher -> one MediaPeer answerer, no SFU: the clients' own latency."""
    result = Result(n=0)
    pub = await Worker.start("direct-pub", ["--worker", "pub", "--direct", "--media", str(media_path)], log_dir)
    sub = await Worker.start("direct-sub", ["--worker", "sub", "--direct", "--identities", "direct",
                                            "--ready-timeout", str(args.ready_timeout)], log_dir)
    try:
        offer = await pub.wait("offer", 60)
        await sub.send(cmd="offer", sdp=offer["sdp"])
        answer = await sub.wait("answer", 60)
        await pub.send(cmd="answer", sdp=answer["sdp"])
        await pub.wait("ready", 60)
        ready = await sub.wait("ready", args.ready_timeout + 30)
        result.missing = ready["missing"]
        await asyncio.sleep(min(args.warmup, 3.0))
        window = await measure_window([sub], pub, min(args.seconds, 15.0), {"clients": [pub.proc.pid, sub.proc.pid]})
        a, b = window["a"], window["b"]
        result.window_s = b["t"] - a["t"]
        result.fwd_packets = sub_totals(b["subs"])[0] - sub_totals(a["subs"])[0]
        pub_frames = await pub.request("frames", "frames", 60)
        frames = await sub.request("frames", "frames", 60)
        first, last, seen = frame_latencies(pub_frames, frames["subs"][0], a["t"], b["t"])
        result.lat_first, result.lat_last, result.frames_seen = first, last, seen
        return result
    finally:
        await asyncio.gather(sub.stop(), pub.stop(), return_exceptions=True)


# ---- report


def machine_info() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                "services", "shared", "meshrtc"], capture_output=True, text=True, timeout=10).stdout
        if dirty.strip():
            commit += f" + uncommitted changes in {len(dirty.splitlines())} server files"
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": sys.version.split()[0],
            "kernel": os.uname().release, "commit": commit}


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def report(results: list[Result], direct: Result | None) -> str:
    d50 = percentile(direct.lat_first, 0.5) if direct else math.nan
    d99 = percentile(direct.lat_first, 0.99) if direct else math.nan
    lines = [
        "| N | fwd pkt/s | SFU CPU % | **CPU µs / fwd pkt** | idle CPU % (N connected, no media) "
        "| net µs / fwd pkt (minus idle) | added latency p50 / p99 ms (minus direct) | e2e first pkt p50 / p99 ms "
        "| e2e marker pkt p50 / p99 ms | RSS MB (empty -> N) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if direct is not None:
        lines.append(
            f"| direct (no SFU) | {fmt(direct.fwd_pps)} | - | - | - | - | - | {fmt(d50, 2)} / {fmt(d99, 2)} "
            f"| {fmt(percentile(direct.lat_last, 0.5), 2)} / {fmt(percentile(direct.lat_last, 0.99), 2)} | - |")
    for r in results:
        p50, p99 = percentile(r.lat_first, 0.5), percentile(r.lat_first, 0.99)
        lines.append(
            f"| {r.n}{' (INVALID)' if r.leaves or r.missing else ''} | {fmt(r.fwd_pps)} | {fmt(r.sfu_pct)} "
            f"| **{fmt(r.us_per_pkt)}** | {fmt(r.idle_connected_pct)} "
            f"| {fmt(r.net_us_per_pkt)} | {fmt(p50 - d50, 2)} / {fmt(p99 - d99, 1)} | {fmt(p50, 2)} / {fmt(p99, 1)} "
            f"| {fmt(percentile(r.lat_last, 0.5), 2)} / {fmt(percentile(r.lat_last, 0.99), 1)} "
            f"| {fmt(r.rss_empty_mb, 0)} -> {fmt(r.rss_mb, 0)} |")
    lines += [
        "",
        "| N | pub pkt/s x N | seq gaps at subs (loss %) | SFU socket drops (input) | subscriber socket drops "
        "| SFU rx backlog at end KB | rest of server CPU % | clients CPU % | CPU0 / CPU1 busy % | load avg "
        "| frames before JoinResponse |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        busy = " / ".join(fmt(r.cpu_busy.get(c, math.nan), 0) for c in ("cpu0", "cpu1"))
        expected = r.expected_packets / r.window_s if r.window_s else math.nan
        loss = 100.0 * r.lost_gaps / max(1, r.fwd_packets + r.lost_gaps)
        top = sorted(r.other_server_detail.items(), key=lambda kv: -kv[1])[:3]
        detail = ", ".join(f"{name} {pct:.1f}" for name, pct in top)
        lines.append(
            f"| {r.n} | {fmt(expected)} | {r.lost_gaps} ({loss:.2f} %) | {r.sfu_udp_drops} | {r.client_udp_drops} "
            f"| {r.sfu_udp_queued / 1024:.0f} | {fmt(r.other_server_pct)} ({detail}) | {fmt(r.client_cpu_pct)} "
            f"| {busy} | {r.loadavg[0]:.1f} | {len(r.pre_join_frames)} |")
    lines.append("")
    lines.append("| N | CPU µs / fwd pkt | vs notes' Python fast path (27 µs) | vs prototype (same N) "
                 "| vs Janus default (same N) | vs Janus event_loops=1 (same N) |")
    lines.append("|---|---|---|---|---|---|")
    for r in results:
        us = r.us_per_pkt
        ratios = [f"{us / NOTES_FAST_PATH_US:.2f}x"]
        for table in (PROTOTYPE_US, JANUS_US, JANUS_EL1_US):
            ratios.append(f"{us / table[r.n]:.2f}x ({table[r.n]} µs)" if r.n in table else "-")
        lines.append(f"| {r.n} | {fmt(us)} | " + " | ".join(ratios) + " |")
    by_n = {r.n: r for r in results}
    ns = sorted(by_n)
    for lo, hi in itertools.pairwise(ns):
        a, b = by_n[lo], by_n[hi]
        if b.fwd_pps > a.fwd_pps:
            marginal = 1e4 * (b.sfu_pct - a.sfu_pct) / (b.fwd_pps - a.fwd_pps)
            ref = ""
            if (lo, hi) == (10, 50):
                ref = (f" (prototype {MARGINAL_10_50['prototype']}, Janus default {MARGINAL_10_50['janus']}, "
                       f"Janus event_loops=1 {MARGINAL_10_50['janus_el1']})")
            lines.append(f"\nMarginal cost N {lo}→{hi}: {marginal:.1f} µs per forwarded packet{ref}")
    return "\n".join(lines)


def export_tree(ref: str, log_dir: Path) -> Path:
    """``git archive`` of ``ref`` (the baseline server code) into the logs directory."""
    out = log_dir / "baseline-tree"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def compare(before: list[Result], after: list[Result], ref: str) -> str:
    """Side-by-side per N (means over repeats): this checkout against the baseline."""
    lines = [f"| N | CPU µs / fwd pkt: {ref} -> this | ratio | net µs (minus idle): {ref} -> this | ratio "
             f"| idle CPU % {ref} -> this | loss % {ref} -> this |", "|---|---|---|---|---|---|---|"]

    def mean(rs: list[Result], key: str) -> float:
        values = [getattr(r, key) for r in rs]
        return sum(values) / len(values) if values else math.nan

    def loss(rs: list[Result]) -> float:
        return 100.0 * sum(r.lost_gaps for r in rs) / max(1, sum(r.fwd_packets + r.lost_gaps for r in rs))

    for n in sorted({r.n for r in after} & {r.n for r in before}):
        b = [r for r in before if r.n == n]
        a = [r for r in after if r.n == n]
        us_b, us_a = mean(b, "us_per_pkt"), mean(a, "us_per_pkt")
        net_b, net_a = mean(b, "net_us_per_pkt"), mean(a, "net_us_per_pkt")
        lines.append(f"| {n} | {fmt(us_b)} -> **{fmt(us_a)}** | {us_a / us_b:.2f}x | {fmt(net_b)} -> {fmt(net_a)} "
                     f"| {net_a / net_b:.2f}x | {fmt(mean(b, 'idle_connected_pct'))} -> "
                     f"{fmt(mean(a, 'idle_connected_pct'))} | {loss(b):.2f} -> {loss(a):.2f} |")
    return "\n".join(lines)


async def orchestrate(args: argparse.Namespace) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="meshrtc-bench-logs-"))
    ns = [int(x) for x in args.subscribers.split(",") if x.strip()]
    if (os.cpu_count() or 1) < 2 or args.no_pin:
        args.sfu_cpu = None
    elif args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})  # the client processes inherit it
    info = machine_info()
    print(f"machine: nproc={info['nproc']} cpu={info['cpu']!r} python={info['python']} kernel={info['kernel']}")
    print(f"code: {info['commit']}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"pinning: media process -> CPU {args.sfu_cpu}, clients -> CPU {args.client_cpu}, "
          "rest of meshrtc dev unpinned" if args.sfu_cpu is not None else "pinning: off")
    print(f"logs: {log_dir}", flush=True)
    media_path = await asyncio.to_thread(prepare_media, Path(args.cache_dir))
    direct = None
    if not args.skip_direct:
        print("direct baseline (publisher -> MediaPeer, no SFU) ...", flush=True)
        direct = await run_direct(args, media_path, log_dir)
        print(f"  {direct.fwd_pps:.0f} pkt/s, first-packet latency p50 {percentile(direct.lat_first, 0.5):.2f} ms "
              f"p99 {percentile(direct.lat_first, 0.99):.2f} ms ({len(direct.lat_first)} frames)", flush=True)
    results: list[Result] = []
    baseline: list[Result] = []
    invalid: list[Result] = []
    baseline_code = export_tree(args.baseline, log_dir) if args.baseline else None

    async def valid_run(n: int, code: Path | None) -> Result | None:
        for attempt in range(1 + args.retries):
            r = await run_sfu(n, args, media_path, log_dir, code=code)
            print(f"  {'baseline ' if code else ''}{json.dumps(r.summary())}", flush=True)
            if not (r.leaves or r.missing):
                return r
            invalid.append(r)
            print(f"  N={n}: INVALID run (attempt {attempt + 1}): {r.leaves} LeaveRequests received, "
                  f"{len(r.missing)} subscribers without media (the server dropped sessions; see the dev "
                  f"log: 'missed its heartbeats')", flush=True)
        return None

    for n in ns:
        print(f"N={n}: starting meshrtc dev, 1 publisher, {n} subscribers ...", flush=True)
        for _ in range(args.repeat):
            if baseline_code is not None:  # interleaved, so both see the same machine load
                print(f"  baseline ({args.baseline}) ...", flush=True)
                if (b := await valid_run(n, baseline_code)) is not None:
                    baseline.append(b)
            if (r := await valid_run(n, None)) is not None:
                results.append(r)
    if args.pyspy:
        n = max(ns)
        print(f"profile run (excluded from the table): N={n}, py-spy on the media process ...", flush=True)
        await run_sfu(n, args, media_path, log_dir, profile=Path(args.pyspy))
        print(f"  py-spy raw output: {args.pyspy}", flush=True)
    print()
    print(report(results, direct))
    if baseline:
        print(f"\nBaseline {args.baseline} (same command, runs interleaved with the ones above):\n")
        print(report(baseline, direct))
        print()
        print(compare(baseline, results, args.baseline))
    if invalid:
        print(f"\nInvalid runs (discarded, sessions dropped by the server): "
              f"{', '.join(f'N={r.n}' for r in invalid)}")
    targets = [r.us_per_pkt for r in results if r.n == 50 and not (r.leaves or r.missing)]
    if targets:
        verdict = "MET" if max(targets) <= 30.0 else "NOT met"
        print(f"\nTarget ≤ 30 µs per forwarded packet at N=50: {verdict} "
              f"({', '.join(f'{us:.1f}' for us in targets)} µs)")
    if args.json:
        text = json.dumps({"machine": info, "args": vars(args), "direct": direct.summary() if direct else None,
                           "results": [r.summary() for r in results],
                           "baseline": [r.summary() for r in baseline],
                           "invalid": [r.summary() for r in invalid]}, indent=1)
        await asyncio.to_thread(Path(args.json).write_text, text)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", default="1,10,50", help="comma-separated N values (default 1,10,50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady measurement window (default 20)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per N (default 1)")
    parser.add_argument("--retries", type=int, default=2,
                        help="re-runs of an N whose sessions the server dropped mid-run (default 2)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after every subscriber receives")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle (background) windows (default 5)")
    parser.add_argument("--sub-procs", type=int, default=5, help="max subscriber processes (default 5)")
    parser.add_argument("--stagger", type=float, default=0.1, help="seconds between joins within a process")
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument("--sfu-cpu", type=int, default=0, help="CPU for the media process (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU for the client processes (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--skip-direct", action="store_true", help="skip the no-SFU latency baseline")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "meshrtc-bench-cache"))
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--pyspy", help="extra run at max N: py-spy (--nonblocking, 250 Hz) on the media process")
    parser.add_argument("--publisher-first", action="store_true",
                        help="publish before the subscribers join (late joiners; see docs/BENCHMARKS.md)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server/client logs directory")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also run the server code of this git ref (interleaved) and print before/after ratios")
    # internal: client worker processes
    parser.add_argument("--worker", choices=["pub", "sub"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--room", help=argparse.SUPPRESS)
    parser.add_argument("--media", help=argparse.SUPPRESS)
    parser.add_argument("--identities", help=argparse.SUPPRESS)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return 0
    return asyncio.run(orchestrate(args))


if __name__ == "__main__":
    sys.exit(main())

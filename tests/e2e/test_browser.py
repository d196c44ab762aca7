"""livekit-client 2.23 in headless Chromium against `meshrtc dev`, with LiveKit's Python SDK on the
other side.

(a) The browser connects with default Room options (so it tries /rtc/v1, gets the 404 and falls back
    to /rtc), publishes the fake camera (simulcast) and microphone; a Python participant decodes both.
(b) A Python participant publishes a synthetic 640x360 video; the browser, already in the room,
    subscribes and decodes it.
(c) The same, with the browser joining after the video is published.

The page (tests/e2e/browser) is bundled here with esbuild and served from its own origin, so the
server's CORS answers matter just as they do for a real web app. The browser is Debian's
Chromium (`.ci/run` installs it), driven by Playwright's Python package without
`playwright install`, with fake media devices and loopback ICE candidates allowed (the flags below).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)
try:
    from playwright.async_api import Page, async_playwright
except ImportError:
    pytest.skip("python playwright is not installed (pip install -e '.[test]')", allow_module_level=True)

from livekit import api, rtc  # noqa: E402

from shared.natsserver import free_port  # noqa: E402

from .sdk_helpers import SyntheticVideo, publish_synthetic_video  # noqa: E402

# Generous per-test limit: the first test also pays for npm ci + bundling + server start, which take
# ~10 s on an idle 2-core box but several times that on a loaded one. A normal run takes ~1 min.
pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(150),
              pytest.mark.filterwarnings("ignore:.*HMAC key.*")]

APP_DIR = Path(__file__).resolve().parent / "browser"
API_KEY, API_SECRET = "devkey", "secret"
LIVEKIT_CLIENT_VERSION = "2.23.0"
JS_LOG_LEVEL = os.environ.get("MESHRTC_E2E_JS_LOG", "info")  # "debug" for livekit-client's signalling trace
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",  # without it Chromium offers no 127.0.0.1 candidate
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH",
                  "EHOSTUNREACH", "network request", "request to https://registry")


# ---- page bundle ----------------------------------------------------------------------------
def _bundle_deps_present() -> bool:
    package = APP_DIR / "node_modules" / "livekit-client" / "package.json"
    if not package.exists() or not (APP_DIR / "node_modules" / ".bin" / "esbuild").exists():
        return False
    return json.loads(package.read_text()).get("version") == LIVEKIT_CLIENT_VERSION


@pytest.fixture(scope="module")
def bundle() -> Path:
    """Builds dist/lk.js from src/main.js (npm ci first when node_modules is missing or stale)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed: cannot build the livekit-client page bundle")
    started = time.monotonic()
    if not _bundle_deps_present():
        result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=APP_DIR, capture_output=True,
                                text=True, timeout=180)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            if any(marker in output for marker in NETWORK_ERRORS):
                pytest.skip(f"npm registry unreachable, cannot install livekit-client:\n{output[-1500:]}")
            pytest.fail(f"npm ci failed:\n{output[-3000:]}")
    out = APP_DIR / "dist" / "lk.js"
    result = subprocess.run(
        [str(APP_DIR / "node_modules" / ".bin" / "esbuild"), "src/main.js", "--bundle", "--format=esm", "--minify",
         "--target=chrome110", f"--outfile={out.relative_to(APP_DIR)}", "--log-level=warning"],
        cwd=APP_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"esbuild failed:\n{result.stdout}{result.stderr}"
    print(f"\n[bundle] dist/lk.js {out.stat().st_size} B in {time.monotonic() - started:.1f}s")
    return out


# ---- static page server (its own origin) ------------------------------------------------------
class _PageHandler(SimpleHTTPRequestHandler):
    """/dist/* from the bundle output, everything else from public/."""

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith("/dist/"):
            base, rest = APP_DIR / "dist", clean[len("/dist/"):]
        else:
            base, rest = APP_DIR / "public", clean.lstrip("/")
        target = (base / rest).resolve()
        if base.resolve() not in target.parents and target != base.resolve():
            return str(base / "__forbidden__")
        return str(target)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page_url(bundle: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ---- meshrtc dev -------------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    http_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_in: float = 0.0

    def token(self, identity: str, room: str) -> str:
        grants = api.VideoGrants(room_join=True, room=room)
        return api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_name(identity) \
            .with_grants(grants).to_jwt()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    tmp = Path(tempfile.mkdtemp(prefix="meshrtc-browser-e2e-"))
    port = free_port()
    log_path = tmp / "dev.log"
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "meshrtc", "dev", "--port", str(port), "--data-dir", str(tmp / "data")],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    srv = Server(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = started + 90
        ready = False
        while time.monotonic() < deadline and not ready:
            if process.poll() is not None:
                pytest.fail(f"meshrtc dev exited early:\n{srv.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(srv.http_url + "/", timeout=1).status_code == 200
                # GET / is the signal edge; joins also need the media node to be up.
                ready = ready and re.search(r"media media-\S+ started", srv.log()) is not None
            if not ready:
                time.sleep(0.2)
        if not ready:
            pytest.fail(f"meshrtc dev did not come up in 90 s:\n{srv.log()[-4000:]}")
        srv.started_in = time.monotonic() - started
        print(f"\n[server] meshrtc dev ready at {srv.url} in {srv.started_in:.1f}s")
        yield srv
    finally:
        _stop(process)
        shutil.rmtree(tmp, ignore_errors=True)


# ---- Chromium --------------------------------------------------------------------------------
@dataclass
class Browser:
    page: Page
    console: list[str] = field(default_factory=list)

    async def call(self, expression: str, *args: object) -> object:
        return await self.page.evaluate(expression, list(args) if len(args) != 1 else args[0])

    async def diagnostics(self) -> str:
        lines = ["--- browser console ---", *self.console[-150:]]
        with contextlib.suppress(Exception):
            events = await self.page.evaluate("() => window.lk.events.slice(-60)")
            lines += ["--- room events ---", *(json.dumps(e) for e in events)]
            logs = await self.page.evaluate("() => window.lk.logs.slice(-300)")
            lines += ["--- livekit-client log ---", *(json.dumps(e) for e in logs)]
        return "\n".join(lines)


@contextlib.asynccontextmanager
async def chromium(page_url: str) -> AsyncIterator[Browser]:
    profile = tempfile.mkdtemp(prefix="meshrtc-chromium-")
    try:
        async with async_playwright() as pw:
            # XDG dirs inside the temp profile too, so crashpad's "Crash Reports" does not land in ~/.config.
            env = {**os.environ, "XDG_CONFIG_HOME": f"{profile}/config", "XDG_CACHE_HOME": f"{profile}/cache"}
            context = await pw.chromium.launch_persistent_context(
                f"{profile}/profile", executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, env=env)
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                browser = Browser(page)
                page.on("console", lambda m: browser.console.append(f"[{m.type}] {m.text}"))
                page.on("pageerror", lambda e: browser.console.append(f"[pageerror] {e}"))
                await page.goto(page_url)
                await page.wait_for_function("() => window.lk && window.lk.version", timeout=10_000)
                yield browser
            finally:
                with contextlib.suppress(Exception):
                    await page.evaluate("() => window.lk.disconnect()")
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# ---- Python side -----------------------------------------------------------------------------
@dataclass
class MediaCount:
    video_frames: int = 0
    first_video_at: float | None = None
    video_size: tuple[int, int] | None = None
    audio_frames: int = 0
    audio_peak: int = 0
    subscribed: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def count_media(room: rtc.Room, count: MediaCount) -> None:
    async def read_video(track: rtc.RemoteVideoTrack) -> None:
        async for event in rtc.VideoStream(track):
            if count.first_video_at is None:
                count.first_video_at = time.monotonic()
            count.video_frames += 1
            count.video_size = (event.frame.width, event.frame.height)

    async def read_audio(track: rtc.RemoteAudioTrack) -> None:
        async for event in rtc.AudioStream(track):
            count.audio_frames += 1
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            if samples.size:
                count.audio_peak = max(count.audio_peak, int(np.abs(samples).max()))

    @room.on("track_subscribed")
    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                      participant: rtc.RemoteParticipant) -> None:
        count.subscribed.append(f"{participant.identity}:{publication.sid}:{track.kind}")
        if isinstance(track, rtc.RemoteVideoTrack):
            count.tasks.append(asyncio.ensure_future(read_video(track)))
        elif isinstance(track, rtc.RemoteAudioTrack):
            count.tasks.append(asyncio.ensure_future(read_audio(track)))


async def wait_until(predicate: object, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# ---- tests -----------------------------------------------------------------------------------
async def test_browser_publishes_camera_and_mic_to_python(page_url: str, server: Server) -> None:
    room_name = "browser-to-python"
    receiver = rtc.Room()
    count = MediaCount()
    count_media(receiver, count)
    try:
        await receiver.connect(server.url, server.token("py-receiver", room_name))
        async with chromium(page_url) as browser:
            try:
                t0 = time.monotonic()
                info = await browser.call("([u, t, l]) => window.lk.connect(u, t, {logLevel: l})",
                                          server.url, server.token("browser-pub", room_name), JS_LOG_LEVEL)
                print(f"[a] browser connected in {info['connectMs']} ms, sid={info['sid']}, "
                      f"server {info['serverVersion']}, fell back to /rtc: {info['v0SignalPath']}")
                assert info["state"] == "connected"
                assert info["sid"].startswith("PA_")
                assert info["v0SignalPath"] is True, "expected the /rtc/v1 404 -> /rtc fallback"
                published = await browser.call("() => window.lk.publishCameraAndMic()")
                t_published = time.monotonic()
                print(f"[a] published {[(p['kind'], p['sid'], p['label']) for p in published]} "
                      f"{time.monotonic() - t0:.1f}s after connect started")
                assert sorted(p["kind"] for p in published) == ["audio", "video"]

                got_both = await wait_until(lambda: len(count.subscribed) >= 2, 10)
                assert got_both, f"python subscribed only to {count.subscribed}"
                await wait_until(lambda: count.video_frames > 10, 10)
                first = (count.first_video_at - t_published) if count.first_video_at else None
                window_start, frames_start = time.monotonic(), count.video_frames
                await asyncio.sleep(3)
                fps = (count.video_frames - frames_start) / (time.monotonic() - window_start)
                layers = await browser.call("() => window.lk.localVideoStats()")
                print(f"[a] python decoded {count.video_frames} video frames "
                      f"(first {first if first is None else round(first, 2)}s after publish, "
                      f"{fps:.1f} fps, {count.video_size}), {count.audio_frames} audio frames "
                      f"(peak {count.audio_peak}); browser simulcast layers: "
                      + ", ".join(f"{s.get('rid')}={s.get('width')}x{s.get('height')}/{s.get('framesEncoded')}"
                                  for s in layers))
                assert count.video_frames > 10, f"only {count.video_frames} video frames decoded"
                assert count.audio_frames > 0, "no audio frames decoded"
            except BaseException:
                print(await browser.diagnostics())
                print("--- server log (tail) ---\n" + server.log()[-6000:])
                raise
    finally:
        await cancel_all(count.tasks)
        await receiver.disconnect()


async def browser_decodes_remote_video(browser: Browser, video: SyntheticVideo, label: str, since: float,
                                       after: str) -> None:
    """framesDecoded > 0 on the browser's subscribed track within 10 s of `since`, then > 10."""
    stats: dict = {"framesDecoded": 0, "tracks": []}
    while time.monotonic() - since < 10:
        stats = await browser.call("() => window.lk.remoteVideoStats()")
        if stats["framesDecoded"] > 0:
            break
        await asyncio.sleep(0.2)
    first = time.monotonic() - since
    assert stats["framesDecoded"] > 0, f"browser decoded no frames in 10 s: {stats}"
    await asyncio.sleep(3)
    stats = await browser.call("() => window.lk.remoteVideoStats()")
    element = await browser.call("() => window.lk.remoteVideoElement()")
    tracks = [{k: t.get(k) for k in ("framesDecoded", "width", "height", "fps", "decoder", "packetsLost")}
              for t in stats["tracks"]]
    print(f"[{label}] browser decoded its first frame {first:.2f}s after {after}; "
          f"3 s later: {tracks}; <video> {element}; python sent {video.frames_sent} frames")
    assert stats["framesDecoded"] > 10


async def test_python_video_reaches_the_browser(page_url: str, server: Server) -> None:
    """The browser is in the room first; the Python participant then publishes."""
    room_name = "python-to-browser"
    publisher = rtc.Room()
    video: SyntheticVideo | None = None
    try:
        async with chromium(page_url) as browser:
            try:
                info = await browser.call("([u, t, l]) => window.lk.connect(u, t, {logLevel: l})",
                                          server.url, server.token("browser-sub", room_name), JS_LOG_LEVEL)
                print(f"\n[b] browser connected in {info['connectMs']} ms")
                await publisher.connect(server.url, server.token("py-publisher", room_name))
                video = await publish_synthetic_video(publisher)
                await browser_decodes_remote_video(browser, video, "b", time.monotonic(), "publish")
            except BaseException:
                print(await browser.diagnostics())
                print("--- server log (tail) ---\n" + server.log()[-6000:])
                raise
    finally:
        if video is not None and video.task is not None:
            await cancel_all([video.task])
        await publisher.disconnect()


# The server's first subscriber offer to a participant joining a room that already has a published
# track carries the media m-line (mid 0) before the data channels' m-line (mid 1). The subscriber
# PeerConnection creates its data channels first, so aiortc 1.16 gives the SCTP transport the only
# ICE/DTLS transport and bundles the video transceiver onto it; on setRemoteDescription(answer) its
# BUNDLE handling then treats the SCTP transport as a secondary one and stops it -- the shared, only
# transport ("RTCIceTransport(controlling) - new -> closed", "connection_lost"). Every SDK fails to
# connect such a subscriber PC (JS: "could not establish pc connection"; Python:
# "wait_pc_connection timed out"). Remove the marker once the media node is fixed.
async def test_browser_joins_room_with_existing_publisher(page_url: str, server: Server) -> None:
    """The Python participant publishes first; the browser joins the room afterwards."""
    room_name = "python-then-browser"
    publisher = rtc.Room()
    video: SyntheticVideo | None = None
    try:
        await publisher.connect(server.url, server.token("py-publisher", room_name))
        video = await publish_synthetic_video(publisher)
        await asyncio.sleep(0.5)
        async with chromium(page_url) as browser:
            try:
                started = time.monotonic()
                info = await browser.call("([u, t, l]) => window.lk.connect(u, t, {logLevel: l, timeoutMs: 12000})",
                                          server.url, server.token("browser-late", room_name), JS_LOG_LEVEL)
                print(f"\n[c] browser connected in {info['connectMs']} ms, remotes: {info['remotes']}")
                await browser_decodes_remote_video(browser, video, "c", started, "connect started")
            except BaseException as exc:
                events: object = None
                with contextlib.suppress(Exception):
                    events = await browser.call("() => window.lk.events.slice(-4)")
                print(f"[c] failed as expected until the server is fixed: {str(exc).splitlines()[0]}; "
                      f"last room events: {events}")
                raise
    finally:
        if video is not None and video.task is not None:
            await cancel_all([video.task])
        await publisher.disconnect()

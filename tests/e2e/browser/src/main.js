// Page-side helpers for meshrtc's browser end-to-end test (tests/e2e/test_browser.py).
// Bundled by esbuild into dist/lk.js; the test drives these through Playwright as `window.lk.*`.
import * as LK from 'livekit-client';

const logs = [];
const events = [];

function record(list, entry) {
  list.push({ t: Math.round(performance.now()), ...entry });
  if (list.length > 2000) list.splice(0, list.length - 2000);
}

// Keep the SDK's own log lines (they carry the signalling errors) so the test can dump them on failure.
LK.setLogExtension((level, msg, context) => {
  let ctx = '';
  try {
    ctx = context ? JSON.stringify(context) : '';
  } catch {
    ctx = String(context);
  }
  record(logs, { level, msg: String(msg), ctx: ctx.slice(0, 8000) });
});

let room = null;

function setStatus(text) {
  const el = document.getElementById('status');
  if (el) el.textContent = text;
}

// Connect with the given RoomOptions (default: none, i.e. the SDK's defaults, which start on /rtc/v1).
async function connect(url, token, opts = {}) {
  const { roomOptions = undefined, connectOptions = undefined, logLevel = 'info', timeoutMs = 20000 } = opts;
  LK.setLogLevel(logLevel);
  if (room) await room.disconnect();
  room = new LK.Room(roomOptions);
  const RE = LK.RoomEvent;
  for (const name of [
    RE.Connected, RE.Reconnecting, RE.Reconnected, RE.Disconnected, RE.SignalReconnecting,
    RE.ParticipantConnected, RE.ParticipantDisconnected, RE.TrackPublished, RE.TrackSubscribed,
    RE.TrackSubscriptionFailed, RE.TrackUnsubscribed, RE.LocalTrackPublished, RE.MediaDevicesError,
    RE.ConnectionStateChanged,
  ]) {
    room.on(name, (...args) => {
      const detail = args.map((a) => {
        if (a === null || a === undefined) return a;
        if (typeof a !== 'object') return a;
        if (a.identity) return `participant:${a.identity}`;
        if (a.trackSid) return `pub:${a.trackSid}:${a.kind}:${a.source}`;
        if (a.sid && a.kind) return `track:${a.sid}:${a.kind}`;
        if (a.message) return `error:${a.message}`;
        return String(a);
      });
      record(events, { event: name, detail });
    });
  }
  room.on(RE.TrackSubscribed, (track) => {
    if (track.kind === LK.Track.Kind.Video) attachRemoteVideo();
  });
  const started = performance.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([room.connect(url, token, connectOptions), timeout]);
  } catch (e) {
    record(events, { event: 'connectError', detail: [String(e && e.message ? e.message : e)] });
    try {
      await room.disconnect();
    } catch {
      // ignore
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
  setStatus(`connected to ${room.name} as ${room.localParticipant.identity}`);
  return { ...roomInfo(), connectMs: Math.round(performance.now() - started) };
}

function roomInfo() {
  if (!room) return { state: 'none' };
  const client = room.engine && room.engine.client;
  return {
    state: room.state,
    name: room.name,
    sid: room.localParticipant.sid,
    identity: room.localParticipant.identity,
    serverVersion: room.serverInfo && room.serverInfo.version,
    // private field of the SDK's SignalClient; true after the /rtc/v1 -> /rtc fallback
    v0SignalPath: client ? Boolean(client.useV0SignalPath) : null,
    remotes: [...room.remoteParticipants.values()].map((p) => ({
      identity: p.identity,
      sid: p.sid,
      tracks: [...p.trackPublications.values()].map((t) => ({
        sid: t.trackSid, kind: t.kind, source: t.source, subscribed: t.isSubscribed,
      })),
    })),
  };
}

// Publish the fake camera (simulcast on unless told otherwise) and the fake microphone.
async function publishCameraAndMic(opts = {}) {
  const { simulcast = true, resolution = LK.VideoPresets.h360.resolution, publishOptions = {} } = opts;
  const tracks = await LK.createLocalTracks({ audio: true, video: { resolution } });
  const published = [];
  for (const track of tracks) {
    const options = track.kind === LK.Track.Kind.Video ? { simulcast, ...publishOptions } : publishOptions;
    const pub = await room.localParticipant.publishTrack(track, options);
    published.push({
      sid: pub.trackSid, kind: pub.kind, source: pub.source, label: track.mediaStreamTrack.label,
      settings: track.mediaStreamTrack.getSettings(),
    });
    if (track.kind === LK.Track.Kind.Video) {
      const el = document.getElementById('local');
      if (el) track.attach(el);
    }
  }
  return published;
}

// Outbound video stats of our own published camera (per simulcast layer).
async function localVideoStats() {
  const out = [];
  for (const pub of room.localParticipant.trackPublications.values()) {
    if (pub.kind !== LK.Track.Kind.Video || !pub.track) continue;
    const report = await pub.track.getRTCStatsReport();
    if (!report) continue;
    report.forEach((s) => {
      if (s.type === 'outbound-rtp') {
        out.push({
          rid: s.rid, framesEncoded: s.framesEncoded, width: s.frameWidth, height: s.frameHeight,
          bytesSent: s.bytesSent, qualityLimitationReason: s.qualityLimitationReason,
        });
      }
    });
  }
  return out;
}

// Sum framesDecoded over the inbound-rtp video stats of every subscribed remote video track.
async function remoteVideoStats() {
  const tracks = [];
  let framesDecoded = 0;
  for (const p of room.remoteParticipants.values()) {
    for (const pub of p.trackPublications.values()) {
      if (pub.kind !== LK.Track.Kind.Video || !pub.isSubscribed || !pub.track) continue;
      const report = await pub.track.getRTCStatsReport();
      if (!report) continue;
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          framesDecoded += s.framesDecoded || 0;
          tracks.push({
            participant: p.identity, trackSid: pub.trackSid, framesDecoded: s.framesDecoded || 0,
            framesReceived: s.framesReceived, width: s.frameWidth, height: s.frameHeight,
            fps: s.framesPerSecond, bytesReceived: s.bytesReceived, packetsLost: s.packetsLost,
            decoder: s.decoderImplementation,
          });
        }
      });
    }
  }
  return { framesDecoded, tracks };
}

// Attach the first subscribed remote video track to <video id="remote">.
function attachRemoteVideo() {
  const el = document.getElementById('remote');
  if (!el || !room) return false;
  for (const p of room.remoteParticipants.values()) {
    for (const pub of p.trackPublications.values()) {
      if (pub.kind === LK.Track.Kind.Video && pub.isSubscribed && pub.track) {
        pub.track.attach(el);
        return true;
      }
    }
  }
  return false;
}

function remoteVideoElement() {
  const el = document.getElementById('remote');
  if (!el) return null;
  return { width: el.videoWidth, height: el.videoHeight, currentTime: el.currentTime, paused: el.paused };
}

// Reliable data every `intervalMs` ("<prefix>-<n>"), kept going across reconnects; stopDataLoop()
// returns what publishData accepted, in order.
let dataLoop = null;
function startDataLoop(prefix, intervalMs = 50) {
  const sent = [];
  const failed = [];
  let n = 0;
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || !room) return;
    busy = true;
    const text = `${prefix}-${n}`;
    n += 1;
    try {
      await room.localParticipant.publishData(new TextEncoder().encode(text), { reliable: true, topic: 'resume' });
      sent.push(text);
    } catch (e) {
      failed.push(`${text}: ${e && e.message ? e.message : e}`);
    } finally {
      busy = false;
    }
  }, intervalMs);
  dataLoop = { timer, sent, failed };
}

function stopDataLoop() {
  if (!dataLoop) return { sent: [], failed: [] };
  clearInterval(dataLoop.timer);
  const { sent, failed } = dataLoop;
  dataLoop = null;
  return { sent, failed };
}

async function disconnect() {
  if (room) await room.disconnect();
  room = null;
}

window.lk = {
  LK,
  version: LK.version,
  get room() {
    return room;
  },
  logs,
  events,
  connect,
  roomInfo,
  publishCameraAndMic,
  localVideoStats,
  remoteVideoStats,
  attachRemoteVideo,
  remoteVideoElement,
  startDataLoop,
  stopDataLoop,
  disconnect,
};
setStatus(`livekit-client ${LK.version} loaded`);

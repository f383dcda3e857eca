// StableFace browser client: microphone (or an audio file) in over WebRTC, the avatar out.
// Plain JavaScript, no build step. State for tests and debugging lives on window.stableface.
"use strict";

const $ = (id) => document.getElementById(id);
const PING_INTERVAL_MS = 1000;
const STATS_INTERVAL_MS = 1000;

const state = {
  status: "idle",        // idle | connecting | live | error
  framesReceived: 0,
  fps: 0,
  rttMs: null,
  pipelineLatencyMs: null,
  glassToGlassMs: null,
  framesSkipped: 0,
  backend: null,
  error: null,
};
window.stableface = state;

let pc = null;
let channel = null;
let localStream = null;
let fileContext = null;
let timers = [];
let pings = new Map();
let nextPing = 0;
let serverConfig = null;

function setMessage(text, isError = false) {
  const el = $("message");
  el.textContent = text;
  el.classList.toggle("error", isError);
  if (isError) {
    state.error = text;
    state.status = "error";
  }
}

// A token given in the address goes in the fragment (#token=...): browsers never send the
// fragment to the server, so it stays out of every log. It is taken off the address bar at once.
const linkToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (linkToken) history.replaceState(null, "", location.pathname + location.search);

function tokenHeader() {
  const token = $("token").value || linkToken;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function fetchConfig() {
  // with the token, the server adds its TURN servers (credentials go to authorised callers only)
  const response = await fetch("/config", { headers: tokenHeader() });
  serverConfig = await response.json();
}

async function loadConfig() {
  try {
    await fetchConfig();
  } catch (err) {
    setMessage("Cannot reach the server.", true);
    return;
  }
  const choice = $("avatar-choice");
  choice.innerHTML = "";
  for (const avatar of serverConfig.avatars) {
    const option = new Option(`${avatar.name} (${Math.round(avatar.latency_ms)} ms)`, avatar.name);
    option.selected = avatar.default;
    choice.add(option);
  }
  $("avatar-field").hidden = serverConfig.avatars.length < 2;
  $("token-field").hidden = !serverConfig.token_required || Boolean(linkToken);
}

async function listMicrophones() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const select = $("mic");
  const current = select.value;
  select.innerHTML = "";
  select.add(new Option("Default", ""));
  devices
    .filter((d) => d.kind === "audioinput" && d.deviceId && d.deviceId !== "default")
    .forEach((d, i) => select.add(new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
  select.value = current;
}

async function microphoneStream() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("This page needs https (or localhost) for the microphone: start the server with --cert and --key.");
  }
  const deviceId = $("mic").value;
  const audio = {
    echoCancellation: true,
    noiseSuppression: true,
    autoGainControl: true,
    ...(deviceId ? { deviceId: { exact: deviceId } } : {}),
  };
  try {
    return await navigator.mediaDevices.getUserMedia({ audio, video: false });
  } catch (err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      throw new Error("Microphone access was denied. Allow it in the browser's site settings, or drive the avatar from an audio file.");
    }
    if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      throw new Error("No microphone found. Plug one in, pick another, or use an audio file.");
    }
    throw new Error(`The microphone could not be opened: ${err.message}`);
  }
}

async function fileStream() {
  const file = $("file").files[0];
  if (!file) throw new Error("Choose an audio file first.");
  fileContext = new AudioContext();
  let buffer;
  try {
    buffer = await fileContext.decodeAudioData(await file.arrayBuffer());
  } catch (err) {
    throw new Error(`${file.name} is not an audio file the browser can decode.`);
  }
  const source = fileContext.createBufferSource();
  source.buffer = buffer;
  const destination = fileContext.createMediaStreamDestination();
  source.connect(destination);
  source.connect(fileContext.destination);
  source.onended = () => setMessage("The file has finished; the avatar rests until you stop.");
  source.start();
  return destination.stream;
}

async function start() {
  $("start").disabled = true;
  setMessage("Connecting…");
  state.status = "connecting";
  state.error = null;
  state.framesReceived = 0;
  try {
    localStream = $("source").value === "file" ? await fileStream() : await microphoneStream();
    await listMicrophones();
    await connect();
  } catch (err) {
    await stop(false);
    setMessage(err.message, true);
  }
}

async function connect() {
  if (serverConfig && serverConfig.token_required && $("token").value) await fetchConfig();
  const iceServers = (serverConfig && serverConfig.ice_servers) || [];
  pc = new RTCPeerConnection({ iceServers: iceServers.map((s) => ({ urls: s.urls, username: s.username || undefined, credential: s.credential || undefined })) });
  pc.addTransceiver("video", { direction: "recvonly" });
  for (const track of localStream.getAudioTracks()) pc.addTrack(track, localStream);

  channel = pc.createDataChannel("control");
  channel.onmessage = (event) => onServerMessage(event.data);
  channel.onopen = () => timers.push(setInterval(sendPing, PING_INTERVAL_MS));

  pc.ontrack = (event) => {
    if (event.track.kind !== "video") return;
    const video = $("avatar");
    video.srcObject = event.streams[0] || new MediaStream([event.track, ...pc.getReceivers().filter((r) => r.track.kind === "audio").map((r) => r.track)]);
    video.play().catch(() => {});
    $("placeholder").hidden = true;
    countFrames(video);
  };
  pc.onconnectionstatechange = () => {
    if (!pc) return;
    if (pc.connectionState === "connected") {
      state.status = "live";
      setMessage("Live — speak and watch the avatar.");
      $("stop").disabled = false;
      $("mute").disabled = false;
    } else if (pc.connectionState === "failed") {
      stop(false).then(() => setMessage("The connection failed (network or firewall). A TURN server may be needed: --ice-server.", true));
    } else if (pc.connectionState === "disconnected") {
      setMessage("Connection interrupted, retrying…");
    }
  };

  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc);
  const response = await fetch("/offer", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...tokenHeader() },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, avatar: $("avatar-choice").value || undefined }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 503) throw new Error("The server is full right now. Try again in a minute.");
    if (response.status === 401) {
      $("token-field").hidden = false;
      throw new Error("This server needs an access token: enter it and start again.");
    }
    throw new Error(`The server refused the call: ${body.error || response.statusText}`);
  }
  await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
  timers.push(setInterval(readStats, STATS_INTERVAL_MS));
}

function iceGatheringComplete(connection) {
  if (connection.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (connection.iceGatheringState === "complete") {
        connection.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    connection.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000); // send what has been gathered; the server gathers its own
  });
}

function countFrames(video) {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const onFrame = (_now, metadata) => {
    state.framesReceived = metadata.presentedFrames;
    $("stat-frames").textContent = String(state.framesReceived);
    if (pc) video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

function sendPing() {
  if (!channel || channel.readyState !== "open") return;
  const id = nextPing++;
  pings.set(id, performance.now());
  channel.send(JSON.stringify({ type: "ping", id }));
}

function onServerMessage(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return;
  }
  if (message.type === "pong" && pings.has(message.id)) {
    state.rttMs = performance.now() - pings.get(message.id);
    pings.delete(message.id);
    $("stat-rtt").textContent = `${state.rttMs.toFixed(0)} ms`;
  } else if (message.type === "stats") {
    state.pipelineLatencyMs = message.pipeline_latency_ms;
    state.framesSkipped = message.frames_skipped;
    state.backend = message.backend;
    $("stat-pipeline").textContent = `${Math.round(message.pipeline_latency_ms)} ms`;
    $("stat-skipped").textContent = String(message.frames_skipped);
    $("stat-backend").textContent = message.backend;
  } else if (message.type === "error") {
    setMessage(`The server ended the call: ${message.reason}`, true);
  }
}

async function readStats() {
  if (!pc) return;
  const reports = await pc.getStats();
  let jitterMs = 0;
  let decodeMs = 0;
  reports.forEach((report) => {
    if (report.type === "inbound-rtp" && report.kind === "video") {
      state.fps = report.framesPerSecond || 0;
      if (report.jitterBufferEmittedCount) jitterMs = (1000 * report.jitterBufferDelay) / report.jitterBufferEmittedCount;
      if (report.framesDecoded) decodeMs = (1000 * report.totalDecodeTime) / report.framesDecoded;
    }
  });
  $("stat-fps").textContent = `${state.fps.toFixed(0)} fps`;
  if (state.rttMs !== null && state.pipelineLatencyMs !== null) {
    state.glassToGlassMs = state.rttMs + state.pipelineLatencyMs + jitterMs + decodeMs;
    $("stat-g2g").textContent = `${state.glassToGlassMs.toFixed(0)} ms`;
    if (channel && channel.readyState === "open") {
      channel.send(JSON.stringify({ type: "report", rtt_ms: state.rttMs, glass_to_glass_ms: state.glassToGlassMs }));
    }
  }
}

async function stop(announce = true) {
  timers.forEach(clearInterval);
  timers = [];
  pings = new Map();
  if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "hangup" }));
  if (pc) pc.close();
  pc = null;
  channel = null;
  if (localStream) localStream.getTracks().forEach((t) => t.stop());
  localStream = null;
  if (fileContext) await fileContext.close();
  fileContext = null;
  $("avatar").srcObject = null;
  $("placeholder").hidden = false;
  $("start").disabled = false;
  $("stop").disabled = true;
  $("mute").disabled = true;
  $("mute").setAttribute("aria-pressed", "false");
  $("mute").textContent = "Mute";
  state.status = "idle";
  if (announce) setMessage("Stopped.");
}

function toggleMute() {
  if (!localStream) return;
  const muted = $("mute").getAttribute("aria-pressed") !== "true";
  localStream.getAudioTracks().forEach((t) => (t.enabled = !muted));
  $("mute").setAttribute("aria-pressed", String(muted));
  $("mute").textContent = muted ? "Unmute" : "Mute";
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => stop(true));
$("mute").addEventListener("click", toggleMute);
$("show-stats").addEventListener("change", (e) => ($("stats").hidden = !e.target.checked));
$("source").addEventListener("change", (e) => {
  $("mic-field").hidden = e.target.value !== "mic";
  $("file-field").hidden = e.target.value !== "file";
});
window.addEventListener("beforeunload", () => stop(false));
$("stats").hidden = !$("show-stats").checked;
loadConfig().then(listMicrophones);

// "My camera": on a click, grab frames from the browser's webcam, send each (downscaled JPEG) over
// the WebSocket, and draw the pipeline's answer over the live <video>. At most one frame in flight:
// while one is out, newer video frames are simply not sent (dropped, never queued).
//
// Wire format (see services/web/ws.py): client -> server binary = 4-byte big-endian seq + JPEG;
// server -> client text JSON {type: "ready"|"result"|"busy"|"timeout"|"error", seq, ...}.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const video = $("video"), overlay = $("overlay"), stage = $("stage");
  const startBtn = $("start"), pauseBtn = $("pause"), downloadBtn = $("download");
  const widthSel = $("width"), statusEl = $("status");
  const timelineCanvas = $("timeline");
  const grab = document.createElement("canvas");
  const grabCtx = grab.getContext("2d");
  const WINDOW_MS = 60000, LOST_AFTER_MS = 2000;

  let ws = null, stream = null, paused = false, seq = 0, inflight = null;
  let videoFrame = 0, sentFrame = -1, sessionStart = 0, timelineDirty = false;
  const rows = [];               // CSV rows of this session (numbers only; no frame is kept)
  const timeline = [];           // {t, scores} for the last 60 s
  const doneTimes = [];          // result arrival times, for frames/s
  const recentRtt = [];          // last 100 round trips, for the p95 shown

  // Read by the tests and the benchmark (page.evaluate); never sent anywhere.
  window.ferlive = { rtts: [], results: 0, faces: 0, lost: 0, errors: [], source: null, last: null };

  function setStatus(text, bad) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", !!bad);
  }

  // ------------------------------------------------------------------ camera and socket
  startBtn.addEventListener("click", async () => {
    if (stream) { stop(); return; }
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (e) {
      setStatus("camera refused: " + e.message + (isSecureContext ? "" : " (needs https or localhost)"), true);
      stream = null;
      return;
    }
    video.srcObject = stream;
    await video.play();
    stage.classList.add("live");
    startBtn.textContent = "Stop camera";
    startBtn.classList.remove("primary");
    pauseBtn.disabled = false;
    sessionStart = sessionStart || Date.now();
    connect();
    watchFrames();
  });

  function stop() {
    for (const t of stream.getTracks()) t.stop();
    stream = null;
    video.srcObject = null;
    if (ws) ws.close();
    ws = null;
    inflight = null;
    stage.classList.remove("live");
    FER.drawFaces(overlay, [], 1, 1);
    startBtn.textContent = "Start my camera";
    startBtn.classList.add("primary");
    pauseBtn.disabled = true;
    setStatus("camera off");
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws/frames`);
    ws.binaryType = "arraybuffer";
    ws.addEventListener("open", () => setStatus("connected"));
    ws.addEventListener("message", (ev) => onMessage(ev.data));
    ws.addEventListener("close", () => {
      inflight = null;
      if (stream) {
        setStatus("connection lost, retrying…", true);
        setTimeout(() => { if (stream) connect(); }, 1000);
      }
    });
  }

  function watchFrames() {
    const tick = () => {
      if (!stream) return;
      videoFrame += 1;
      pump();
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(tick);
      else requestAnimationFrame(tick);
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(tick);
    else requestAnimationFrame(tick);
  }

  // Send the current video frame if nothing is in flight and it has not been sent yet.
  function pump() {
    if (!ws || ws.readyState !== WebSocket.OPEN || paused || inflight || !video.videoWidth) return;
    if (videoFrame === sentFrame) return;
    sentFrame = videoFrame;
    const w = Math.min(Number(widthSel.value), video.videoWidth);
    const h = Math.round(video.videoHeight * w / video.videoWidth);
    if (grab.width !== w || grab.height !== h) { grab.width = w; grab.height = h; }
    const t0 = performance.now();
    grabCtx.drawImage(video, 0, 0, w, h);
    const mine = { seq: (seq = (seq + 1) >>> 0), t0, w, h };
    inflight = mine;
    grab.toBlob(async (blob) => {
      if (inflight !== mine) return;
      if (!blob || !ws || ws.readyState !== WebSocket.OPEN) { inflight = null; return; }
      const jpeg = new Uint8Array(await blob.arrayBuffer());
      const msg = new Uint8Array(4 + jpeg.length);
      new DataView(msg.buffer).setUint32(0, mine.seq);
      msg.set(jpeg, 4);
      ws.send(msg);
    }, "image/jpeg", 0.8);
  }

  setInterval(() => {   // an answer that never comes (dropped under load) must not stall the loop
    if (inflight && performance.now() - inflight.t0 > LOST_AFTER_MS) {
      inflight = null;
      window.ferlive.lost += 1;
      pump();
    }
  }, 250);

  // ------------------------------------------------------------------ answers
  function onMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    const mine = inflight && msg.seq === inflight.seq ? inflight : null;
    if (msg.type === "ready") {
      window.ferlive.source = msg.source_id;
      setStatus("connected: analysing your camera");
      pump();
    } else if (msg.type === "result" && mine) {
      onResult(msg, mine);
    } else if (msg.type === "error") {
      window.ferlive.errors.push(msg.error);
      setStatus("server: " + msg.error, true);
      if (mine) inflight = null;
    } else if ((msg.type === "busy" || msg.type === "timeout") && mine) {
      inflight = null;
      window.ferlive.lost += 1;
      pump();
    }
  }

  function onResult(msg, sent) {
    const r = overlay.parentElement.querySelector("video").getBoundingClientRect();
    FER.fitCanvas(overlay, video);
    FER.drawFaces(overlay, msg.faces, r.width / sent.w, r.height / sent.h);
    const now = performance.now();
    const rtt = now - sent.t0;           // frame grabbed -> results drawn
    inflight = null;

    const f = window.ferlive;
    f.results += 1;
    f.faces += msg.faces.length;
    f.last = msg;
    f.rtts.push(rtt);
    if (f.rtts.length > 10000) f.rtts.shift();
    recentRtt.push(rtt);
    if (recentRtt.length > 100) recentRtt.shift();
    doneTimes.push(now);
    while (doneTimes.length && now - doneTimes[0] > 2000) doneTimes.shift();

    record(msg, rtt);
    showStats();
    pump();
  }

  function showStats() {
    const span = doneTimes.length > 1 ? (doneTimes[doneTimes.length - 1] - doneTimes[0]) / 1000 : 0;
    $("fps").textContent = span > 0 ? ((doneTimes.length - 1) / span).toFixed(1) : "–";
    $("rtt").textContent = recentRtt[recentRtt.length - 1].toFixed(0);
    const sorted = [...recentRtt].sort((a, b) => a - b);
    $("rtt95").textContent = sorted[Math.min(sorted.length - 1, Math.floor(0.95 * sorted.length))].toFixed(0);
    // One frame is in flight at a time, so frames/s can be no more than 1000 / round trip: say so when
    // that, not the camera, is what limits it.
    const fps = span > 0 ? (doneTimes.length - 1) / span : 0;
    const rtt = recentRtt[recentRtt.length - 1];
    const hint = $("slow-hint");
    const slow = fps > 0 && fps < 15 && rtt > 0 && fps * rtt / 1000 > 0.6;
    hint.hidden = !slow;
    if (slow) {
      hint.textContent = `Limited by the round trip: each frame waits for the last one's answer (${rtt.toFixed(0)} ms), ` +
        `so at most ${(1000 / rtt).toFixed(1)} frames/s. A smaller width, or a less busy server, is faster.`;
    }
  }

  // ------------------------------------------------------------------ session record: CSV + timeline
  function record(msg, rtt) {
    const t = Date.now();
    msg.faces.forEach((face, i) => {
      rows.push([new Date(t).toISOString(), t - sessionStart, msg.seq, i, face.track_id ?? "",
                 ...face.box, face.emotion, ...FER.EMOTIONS.map((e) => (face.scores[e] || 0).toFixed(4)),
                 rtt.toFixed(1)]);
    });
    $("rows").textContent = rows.length;
    downloadBtn.disabled = rows.length === 0;
    if (msg.faces.length) {
      const mean = {};
      for (const e of FER.EMOTIONS) {
        mean[e] = msg.faces.reduce((s, face) => s + (face.scores[e] || 0), 0) / msg.faces.length;
      }
      timeline.push({ t, scores: mean });
    }
    while (timeline.length && t - timeline[0].t > WINDOW_MS) timeline.shift();
    timelineDirty = true;
  }

  downloadBtn.addEventListener("click", () => {
    const head = ["time", "elapsed_ms", "seq", "face", "track_id", "x", "y", "w", "h", "emotion",
                  ...FER.EMOTIONS, "round_trip_ms"];
    const csv = [head, ...rows].map((r) => r.join(",")).join("\n") + "\n";
    const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    const a = document.createElement("a");
    const stampName = new Date(sessionStart || Date.now()).toISOString().slice(0, 19).replace(/[:T]/g, "-");
    a.href = url;
    a.download = `ferlive-session-${stampName}.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });

  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    setStatus(paused ? "paused: nothing is sent" : "connected");
    if (paused) FER.drawFaces(overlay, [], 1, 1); else pump();
  });

  const legend = $("legend");
  for (const e of FER.EMOTIONS) {
    const li = document.createElement("li");
    li.textContent = e;
    li.style.setProperty("--c", FER.COLORS[e]);
    legend.append(li);
  }

  function drawTimeline() {
    requestAnimationFrame(drawTimeline);
    if (!timelineDirty && !(stream && !paused)) return;
    timelineDirty = false;
    const c = timelineCanvas, ctx = c.getContext("2d");
    const W = c.width, H = c.height, padL = 28, padB = 18, now = Date.now();
    ctx.clearRect(0, 0, W, H);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#8b90a0";
    ctx.strokeStyle = "#262a34";
    ctx.lineWidth = 1;
    for (const v of [0, 0.5, 1]) {
      const y = (H - padB) * (1 - v) + 0.5;
      ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(W, y); ctx.stroke();
      ctx.fillText(v.toFixed(1), 4, Math.max(8, Math.min(H - padB, y + 3)));
    }
    for (const s of [60, 45, 30, 15, 0]) {
      const x = padL + (W - padL) * (1 - s / 60);
      ctx.fillText(s ? `-${s}s` : "now", Math.min(W - 22, x - 8), H - 4);
    }
    const xOf = (t) => padL + (W - padL) * (1 - (now - t) / WINDOW_MS);
    const yOf = (v) => (H - padB) * (1 - v);
    ctx.lineWidth = 1.6;
    for (const e of FER.EMOTIONS) {
      ctx.strokeStyle = FER.COLORS[e];
      ctx.beginPath();
      let prevT = null;
      for (const p of timeline) {
        const x = xOf(p.t), y = yOf(p.scores[e]);
        if (prevT === null || p.t - prevT > 1500) ctx.moveTo(x, y); else ctx.lineTo(x, y);
        prevT = p.t;
      }
      ctx.stroke();
    }
  }
  requestAnimationFrame(drawTimeline);
})();

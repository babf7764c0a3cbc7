// Video page: upload a video to POST /api/jobs, poll GET /api/jobs/<id>, then show the annotated video,
// the overview figure, the downloads and one card per face track.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), input = $("file"), status = $("job-status"), bar = $("job-progress");
  let timer = null;

  function say(text, isError = false) {
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function fmtTime(s) {
    if (s == null) return "–";
    const m = Math.floor(s / 60);
    return m ? `${m} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`;
  }

  function showDone(job) {
    const files = job.files || {};
    const video = $("result-video"), overview = $("overview");
    const name = Object.keys(files).find((n) => n.endsWith(".webm"));
    if (name) { video.src = files[name]; video.hidden = false; }
    if (files["overview.png"]) { overview.src = files["overview.png"]; overview.hidden = false; }
    const list = $("downloads");
    list.replaceChildren();
    for (const [n, url] of Object.entries(files)) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = url + "?download=1";
      a.textContent = n;
      li.append(a);
      list.append(li);
    }
    const s = job.summary || {};
    const tracks = Object.entries(s.tracks || {});
    $("result-text").textContent = tracks.length
      ? `${tracks.length} face track(s) in ${s.frames_analysed} analysed frames (${s.speed.frames_per_s} frames/s).`
      : `No face found in ${s.frames_analysed} analysed frames.`;
    // one card per track: its mean probabilities, and how long it was on screen
    FER.renderList($("tracks"), tracks.map(([id, t]) => ({
      track_id: Number(id), scores: t.mean_scores, box: [0, 0, 0, 0],
      note: `${t.time_on_screen_s.toFixed(1)} s on screen, mostly ${t.dominant_emotion}` })));
  }

  async function poll(url) {
    try {
      const r = await fetch(url);
      const job = await r.json();
      if (!r.ok) throw new Error(job.error || `HTTP ${r.status}`);
      if (job.status === "queued") {
        say(`Waiting: position ${job.position} in the queue (one video is analysed at a time).`);
      } else if (job.status === "running") {
        const p = job.progress || {};
        bar.value = p.fraction || 0;
        say(`Analysing: ${p.frames_done}${p.frames_total ? " of " + p.frames_total : ""} frames` +
            (p.frames_per_s ? `, ${p.frames_per_s} frames/s, about ${fmtTime(p.eta_s)} left.` : "…"));
      } else if (job.status === "done") {
        bar.value = 1;
        say(`Done: ${job.name}.`);
        showDone(job);
        return;
      } else {
        say(`The analysis failed: ${job.error || "unknown error"}`, true);
        return;
      }
      timer = setTimeout(() => poll(url), 700);
    } catch (e) {
      say("Lost the job: " + e.message, true);
    }
  }

  async function send(file) {
    if (!file) return;
    clearTimeout(timer);
    $("job").hidden = false;
    $("result-video").hidden = true;
    $("overview").hidden = true;
    $("downloads").replaceChildren();
    $("tracks").replaceChildren();
    bar.value = 0;
    say(`Uploading ${file.name} (${(file.size / 1048576).toFixed(1)} MB)…`);
    const form = new FormData();
    form.append("video", file);
    try {
      const r = await fetch("/api/jobs", { method: "POST", body: form });
      const d = await r.json();
      if (!r.ok) throw new Error(d.error || `HTTP ${r.status}`);
      poll(d.url);
    } catch (e) {
      say("Not accepted: " + e.message, true);
    }
  }

  input.addEventListener("change", () => send(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); send(e.dataTransfer.files[0]); });
})();

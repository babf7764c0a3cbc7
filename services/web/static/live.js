// The live page: the MJPEG <img> plays by itself; this polls /api/latest for the faces and
// /api/health for the stages, frames/s and latency. One request of each kind in flight at a time.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const source = new URLSearchParams(location.search).get("source");
  const q = source ? "?source=" + encodeURIComponent(source) : "";
  let lastKey = null;

  async function pollLatest() {
    try {
      const r = await fetch("/api/latest" + q, { cache: "no-store" });
      if (r.ok) {
        const d = await r.json();
        const key = `${d.source_id}:${d.seq}`;
        if (key !== lastKey) {
          lastKey = key;
          // by track id, so a face's card stays in place from frame to frame
          const faces = (d.faces || []).slice().sort((a, b) => (a.track_id ?? 0) - (b.track_id ?? 0));
          FER.renderList($("faces"), faces);
          $("face-count").textContent = faces.length;
          $("faces-empty").hidden = faces.length > 0;
          $("faces-empty").textContent = d.seq == null ? "Waiting for the first annotated frame…"
                                                       : "No face in the latest frame.";
        }
      }
    } catch (e) { /* server restarting: try again */ }
    setTimeout(pollLatest, 150);
  }

  function fmt(v) { return v == null ? "–" : v.toFixed(v < 10 ? 1 : 0); }

  async function pollHealth() {
    try {
      const r = await fetch("/api/health", { cache: "no-store" });
      const h = await r.json();
      const stages = $("stages");
      stages.replaceChildren();
      for (const [name, s] of Object.entries(h.stages)) {
        const pill = document.createElement("span");
        pill.className = "pill " + (s.alive ? "up" : "down");
        pill.textContent = name + (s.instances > 1 ? ` ×${s.instances}` : "");
        pill.title = s.alive ? `alive, last heartbeat ${fmt(s.age_s)} s ago` : (s.detail || "no heartbeat");
        stages.append(pill);
      }
      // Why the stream is not running, on the page (not only in a tooltip): a stage down, or capture
      // retrying a camera it cannot open.
      const problems = Object.entries(h.stages)
        .filter(([, s]) => !s.alive || (s.status && !["ok", "idle"].includes(s.status)))
        .map(([name, s]) => `${name}: ${s.detail || s.status || "no heartbeat"}`);
      const note = $("pipeline-note");
      note.hidden = problems.length === 0;
      note.textContent = problems.length ? "Not streaming — " + problems.join("; ") : "";
      const src = h.sources[source || h.main_source] || {};
      $("fps").textContent = fmt(src.fps);
      const total = (h.latency_ms || {}).total || {};
      $("lat-p50").textContent = fmt(total.p50);
      $("lat-p95").textContent = fmt(total.p95);
    } catch (e) { /* try again */ }
    setTimeout(pollHealth, 1000);
  }

  pollLatest();
  pollHealth();
})();

// The live page: one tile per source (or the one source of ?source=). Each tile's MJPEG <img> plays by
// itself; this polls /api/sources + /api/health once a second (tiles come and go, each tile's health,
// the stages) and /api/latest?source= for one tile after another (its faces). At most two requests are
// in flight, so up to data-max-streams MJPEG streams fit in a browser's six connections per server;
// tiles beyond that show a still refreshed every second.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const grid = $("grid");
  const only = grid.dataset.source || null;          // ?source=ID: that tile alone
  const maxStreams = +grid.dataset.maxStreams || 4;
  const tiles = new Map();                            // source id -> {el, lastKey, still}
  for (const el of grid.querySelectorAll(".tile")) tiles.set(el.dataset.source, { el, lastKey: null });

  const feed = (id) => "/video_feed?source=" + encodeURIComponent(id);
  const q = (el, sel) => el.querySelector(sel);
  function fmt(v) { return v == null ? "–" : v.toFixed(v < 10 ? 1 : 0); }

  function addTile(id) {
    const el = $("tile-template").content.firstElementChild.cloneNode(true);
    el.dataset.source = id;
    q(el, ".tile-name").textContent = id;
    q(el, ".tile-name").title = id;
    q(el, ".stream").alt = "annotated stream of " + id;
    grid.append(el);
    const t = { el, lastKey: null };
    tiles.set(id, t);
    return t;
  }

  function removeTile(id) {
    const t = tiles.get(id);
    q(t.el, ".stream").removeAttribute("src");       // closes its MJPEG connection
    t.el.remove();
    tiles.delete(id);
  }

  // The first maxStreams tiles stream; the others show a still, refreshed by refreshStills().
  function placeStreams() {
    let i = 0;
    for (const [id, t] of tiles) {
      const img = q(t.el, ".stream");
      t.still = i++ >= maxStreams;
      if (!t.still && !(img.getAttribute("src") || "").startsWith(feed(id))) img.src = feed(id);
    }
  }

  function refreshStills() {
    for (const [id, t] of tiles) {
      if (t.still) q(t.el, ".stream").src = feed(id) + "&frames=1&t=" + Date.now();
    }
  }

  function showHealth(t, s) {
    const pill = q(t.el, ".tile-status");
    pill.textContent = s.status;
    pill.className = "pill tile-status " + (s.status === "ok" ? "up" : "down");
    q(t.el, ".fps").textContent = fmt(s.fps);
    q(t.el, ".age").textContent = fmt(s.age_s);
    const detail = q(t.el, ".tile-detail");
    detail.hidden = s.status === "ok" || !s.detail;
    detail.textContent = s.status === "ok" ? "" : (s.detail || "");
  }

  function updateTiles(list) {
    const shown = only ? list.filter((s) => s.id === only) : list;
    const ids = new Set(shown.map((s) => s.id));
    if (only) ids.add(only);                           // the chosen source's tile stays, waiting
    for (const id of [...tiles.keys()]) if (!ids.has(id)) removeTile(id);
    for (const s of shown) showHealth(tiles.get(s.id) || addTile(s.id), s);
    if (only && !tiles.has(only)) addTile(only);
    placeStreams();
    $("grid-empty").hidden = tiles.size > 0;
    $("source-count").textContent = tiles.size;
  }

  function updateStages(h) {
    const stages = $("stages");
    stages.replaceChildren();
    for (const [name, s] of Object.entries(h.stages)) {
      const pill = document.createElement("span");
      pill.className = "pill " + (s.alive ? "up" : "down");
      pill.textContent = name + (s.instances > 1 ? ` ×${s.instances}` : "");
      pill.title = s.alive ? `alive, last heartbeat ${fmt(s.age_s)} s ago` : (s.detail || "no heartbeat");
      stages.append(pill);
    }
    // Why nothing streams, on the page (not only in a tooltip): a stage down, or capture retrying a
    // camera it cannot open. A source's own trouble is told on its tile.
    const problems = Object.entries(h.stages)
      .filter(([, s]) => !s.alive || (s.status && !["ok", "idle", "degraded"].includes(s.status)))
      .map(([name, s]) => `${name}: ${s.detail || s.status || "no heartbeat"}`);
    const note = $("pipeline-note");
    note.hidden = problems.length === 0;
    note.textContent = problems.length ? "Not streaming — " + problems.join("; ") : "";
    const total = (h.latency_ms || {}).total || {};
    $("lat-p50").textContent = fmt(total.p50);
    $("lat-p95").textContent = fmt(total.p95);
  }

  async function pollStatus() {
    try {
      const r = await fetch("/api/sources", { cache: "no-store" });
      if (r.ok) updateTiles((await r.json()).sources || []);
      const h = await fetch("/api/health", { cache: "no-store" });
      if (h.ok) updateStages(await h.json());
      refreshStills();
    } catch (e) { /* server restarting: try again */ }
    setTimeout(pollStatus, 1000);
  }

  // Faces: one tile after another, so N tiles cost one request at a time, not N.
  let turn = 0;
  async function pollFaces() {
    const ids = [...tiles.keys()];
    if (ids.length) {
      const id = ids[turn++ % ids.length];
      try {
        const r = await fetch("/api/latest?source=" + encodeURIComponent(id), { cache: "no-store" });
        const t = tiles.get(id);
        if (r.ok && t) {
          const d = await r.json();
          const key = `${d.source_id}:${d.seq}`;
          if (key !== t.lastKey) {
            t.lastKey = key;
            // by track id, so a face's card stays in place from frame to frame
            const faces = (d.faces || []).slice().sort((a, b) => (a.track_id ?? 0) - (b.track_id ?? 0));
            FER.renderList(q(t.el, ".faces"), faces);
            q(t.el, ".face-count").textContent = faces.length;
            const empty = q(t.el, ".faces-empty");
            empty.hidden = faces.length > 0;
            empty.textContent = d.seq == null ? "Waiting for the first annotated frame…" : "No face in the latest frame.";
          }
        }
      } catch (e) { /* try again */ }
    }
    setTimeout(pollFaces, Math.max(50, 150 / Math.max(1, ids.length)));
  }

  placeStreams();
  pollStatus();
  pollFaces();
})();

// Drawing shared by every page: a box, a label and seven probability bars per face, on a canvas;
// and the same faces as an HTML list. Drawing only: no network, no state.
"use strict";

const FER = (() => {
  const EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"];
  const COLORS = {
    angry: "#e5484d", disgust: "#46a758", fear: "#8e4ec6", happy: "#f5c518",
    sad: "#3e8ef7", surprise: "#f76b15", neutral: "#9ba1b0",
  };

  function topEmotion(face) {
    if (face.emotion) return face.emotion;
    let best = EMOTIONS[0];
    for (const e of EMOTIONS) if ((face.scores[e] || 0) > (face.scores[best] || 0)) best = e;
    return best;
  }

  function pct(v) { return Math.round((v || 0) * 100); }

  // Size the overlay canvas to the element it covers (CSS pixels x devicePixelRatio).
  function fitCanvas(canvas, covered) {
    const r = covered.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    canvas.style.width = r.width + "px";
    canvas.style.height = r.height + "px";
    return { w: r.width, h: r.height, dpr };
  }

  function overlaps(a, b) {
    return a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3];
  }

  function placePanel(x, y, w, h, labelY, pw, ph, cw, ch, occupied) {
    const candidates = [[x, y + h + 6], [x + w + 8, y], [x - pw - 8, y], [x, labelY - ph - 4]];
    for (const [px, py] of candidates) {
      const r = [px, py, pw, ph];
      if (px < 0 || py < 0 || px + pw > cw || py + ph > ch) continue;
      if (occupied.some((o) => !(o[0] === x && o[1] === y) && overlaps(r, o))) continue;
      return { px, py };
    }
    return { px: Math.max(0, Math.min(cw - pw, x)), py: Math.max(0, Math.min(ch - ph, y + h + 6)) };
  }

  // faces: [{box:[x,y,w,h], emotion, scores:{...}, landmarks:[[x,y]x5]|null}] in source pixels; sx, sy: source -> CSS pixels.
  // Returns what was drawn, also stored on canvas.dataset (boxes, labels, bars) for tests and tools.
  function drawFaces(canvas, faces, sx, sy) {
    const ctx = canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const cw = canvas.width / dpr, ch = canvas.height / dpr;
    const labels = [];
    let bars = 0;
    const occupied = faces.map((f) => [f.box[0] * sx, f.box[1] * sy, f.box[2] * sx, f.box[3] * sy]);
    for (const face of faces) {
      const [bx, by, bw, bh] = face.box;
      const x = bx * sx, y = by * sy, w = bw * sx, h = bh * sy;
      const emo = topEmotion(face);
      const color = COLORS[emo] || "#fff";
      // box
      ctx.lineWidth = 3;
      ctx.strokeStyle = color;
      ctx.strokeRect(x, y, w, h);
      // the five landmarks, when the detector gives them
      ctx.fillStyle = color;
      for (const p of face.landmarks || []) {
        if (!p) continue;
        ctx.beginPath();
        ctx.arc(p[0] * sx, p[1] * sy, 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
      // label above the box (inside it if there is no room)
      const label = `${emo} ${pct(face.scores[emo])}%`;
      ctx.font = "600 15px system-ui, sans-serif";
      const tw = ctx.measureText(label).width + 12;
      const ly = y - 24 >= 0 ? y - 24 : y;
      ctx.fillStyle = color;
      ctx.fillRect(x - 1.5, ly, tw, 24);
      ctx.fillStyle = emo === "happy" || emo === "neutral" ? "#111" : "#fff";
      ctx.textBaseline = "middle";
      ctx.fillText(label, x + 5, ly + 12);
      labels.push(emo);
      // seven bars: below the box, else right, left or above it; avoiding other faces and panels
      const pw = 150, rowH = 15, ph = EMOTIONS.length * rowH + 10;
      const { px, py } = placePanel(x, y, w, h, ly, pw, ph, cw, ch, occupied);
      occupied.push([px, py, pw, ph]);
      ctx.fillStyle = "rgba(15, 17, 21, 0.78)";
      ctx.fillRect(px, py, pw, ph);
      ctx.font = "11px system-ui, sans-serif";
      EMOTIONS.forEach((e, i) => {
        const v = face.scores[e] || 0;
        const ry = py + 5 + i * rowH;
        ctx.fillStyle = e === emo ? "#fff" : "#b8bdc9";
        ctx.fillText(e, px + 6, ry + rowH / 2);
        ctx.fillStyle = "#2a2f3a";
        ctx.fillRect(px + 62, ry + 4, 80, rowH - 8);
        ctx.fillStyle = COLORS[e];
        ctx.fillRect(px + 62, ry + 4, Math.max(1, 80 * v), rowH - 8);
        bars += 1;
      });
    }
    canvas.dataset.boxes = String(faces.length);
    canvas.dataset.labels = labels.join(",");
    canvas.dataset.bars = String(bars);
    return { boxes: faces.length, labels, bars };
  }

  // The same faces as <li> cards with HTML bars (sorted by the detector's order).
  function renderList(ol, faces) {
    ol.replaceChildren();
    faces.forEach((face, i) => {
      const emo = topEmotion(face);
      const li = document.createElement("li");
      li.className = "face";
      const head = document.createElement("div");
      head.className = "face-head";
      const title = document.createElement("span");
      title.textContent = `Face ${face.track_id !== undefined ? "#" + face.track_id : i + 1}: ${emo}`;
      title.style.color = COLORS[emo];
      const where = document.createElement("small");
      where.textContent = face.note || `${face.box[2]}×${face.box[3]} at ${face.box[0]},${face.box[1]}`;
      head.append(title, where);
      li.append(head);
      for (const e of EMOTIONS) {
        const v = face.scores[e] || 0;
        const row = document.createElement("div");
        row.className = "bar" + (e === emo ? " top" : "");
        const name = document.createElement("span");
        name.className = "name";
        name.textContent = e;
        const track = document.createElement("span");
        track.className = "track";
        const fill = document.createElement("span");
        fill.className = "fill";
        fill.style.display = "block";
        fill.style.width = (100 * v).toFixed(1) + "%";
        fill.style.background = COLORS[e];
        track.append(fill);
        const val = document.createElement("span");
        val.className = "val";
        val.textContent = pct(v) + "%";
        row.append(name, track, val);
        li.append(row);
      }
      ol.append(li);
    });
  }

  async function showModelTag() {
    const tag = document.getElementById("model-tag");
    if (!tag) return;
    try {
      const r = await fetch("/api/model");
      if (!r.ok) throw new Error(r.status);
      const m = await r.json();
      const acc = m.accuracy != null ? ` · test acc ${(100 * m.accuracy).toFixed(1)}%` : "";
      tag.textContent = `model ${m.version || "?"}${acc}`;
    } catch (e) {
      tag.textContent = "model unavailable";
    }
  }
  document.addEventListener("DOMContentLoaded", showModelTag);

  return { EMOTIONS, COLORS, topEmotion, fitCanvas, drawFaces, renderList, pct };
})();

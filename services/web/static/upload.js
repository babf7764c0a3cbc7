// Upload page: drop or choose one image, POST it to /api/predict, draw the answer over it.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), input = $("file"), stage = $("stage"), photo = $("photo"), overlay = $("overlay");
  const text = $("result-text");
  let current = null;   // {faces, width, height}
  let objectUrl = null;

  function redraw() {
    if (!current || !photo.complete) return;
    const r = FER.fitCanvas(overlay, photo);
    FER.drawFaces(overlay, current.faces, r.w / current.width, r.h / current.height);
  }

  async function send(file) {
    if (!file) return;
    text.classList.remove("error");
    text.textContent = `Sending ${file.name} (${Math.round(file.size / 1024)} kB)…`;
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(file);
    current = null;
    FER.drawFaces(overlay, [], 1, 1);
    photo.src = objectUrl;
    stage.hidden = false;
    const form = new FormData();
    form.append("image", file);
    try {
      const r = await fetch("/api/predict", { method: "POST", body: form });
      const d = await r.json();
      if (!r.ok) throw new Error(d.error || `HTTP ${r.status}`);
      current = d;
      FER.renderList($("faces"), d.faces);
      $("face-count").textContent = d.faces.length;
      text.textContent = d.faces.length
        ? `${d.faces.length} face(s) in ${d.width}×${d.height}, answered in ${d.timing_ms.toFixed(0)} ms.`
        : `No face found in ${d.width}×${d.height} (${d.timing_ms.toFixed(0)} ms). Try a frontal, well-lit face.`;
      if (photo.complete) redraw(); else photo.addEventListener("load", redraw, { once: true });
    } catch (e) {
      text.textContent = "Could not annotate: " + e.message;
      text.classList.add("error");
      FER.renderList($("faces"), []);
      $("face-count").textContent = 0;
    }
  }

  input.addEventListener("change", () => send(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    send(e.dataTransfer.files[0]);
  });
  window.addEventListener("resize", redraw);
})();

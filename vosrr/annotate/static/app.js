// vosrr annotate: the page. Plain JS, no build step, nothing loaded from elsewhere.
// The server owns the truth (strokes, masks, jobs); the page draws what it is sent and sends strokes as points.
"use strict";

(() => {
  const token = document.querySelector('meta[name="vosrr-token"]').content;
  const api = (path) => `api/${path}?token=${encodeURIComponent(token)}`;
  const $ = (id) => document.getElementById(id);
  const view = $("view");
  const ctx = view.getContext("2d");
  const track = $("track");
  const ERASE = 255;
  const MAX_OBJECTS = 32;

  const ui = {
    frame: 0, frames: 1, label: 1, objects: 1, radius: 8, opacity: 0.5,
    images: { frame: null, mask: null, strokes: null },
    drawing: null, hover: null, status: null, valid: new Uint8Array(1), annotated: new Set(),
    shown: -1, showing: 0, pending: 0, answered: 0, job: null, followFrame: null, followBusy: false, drawQueued: false,
  };

  // the DAVIS / PASCAL VOC colour map, as the masks use it
  function colour(index) {
    let r = 0, g = 0, b = 0, c = index;
    for (let shift = 7; shift >= 0; shift--) {
      r |= (c & 1) << shift; g |= ((c >> 1) & 1) << shift; b |= ((c >> 2) & 1) << shift; c >>= 3;
    }
    return `rgb(${r},${g},${b})`;
  }
  const brushColour = (label) => (label === 0 ? "rgb(235,235,235)" : label === ERASE ? "rgba(0,0,0,0.55)" : colour(label));

  function setMessage(text, error = false) {
    $("message").textContent = text || "";
    $("message").classList.toggle("error", !!error);
  }

  function setPending(delta) {
    ui.pending += delta;
    document.body.dataset.pending = String(ui.pending);
  }

  async function fetchJSON(path, options = {}) {
    const response = await fetch(api(path), { cache: "no-store", ...options });
    let body = {};
    try { body = await response.json(); } catch (_) { body = { error: `${response.status} ${response.statusText}` }; }
    if (!response.ok) throw new Error(body.error || `${response.status}`);
    return body;
  }

  async function loadImage(path) {
    const response = await fetch(api(path), { cache: "no-store" });
    if (!response.ok) return null;
    return createImageBitmap(await response.blob());
  }

  // ------------------------------------------------------------------ status
  function applyStatus(status) {
    ui.status = status;
    ui.frames = status.frames;
    if (ui.valid.length !== status.frames) ui.valid = new Uint8Array(status.frames);
    else ui.valid.fill(0);
    for (const [a, b] of status.ranges) ui.valid.fill(1, a, Math.min(b, status.frames));
    ui.annotated = new Set(status.annotated);
    ui.objects = Math.min(MAX_OBJECTS, Math.max(ui.objects, status.objects, 1));
    $("scrubber").max = String(status.frames - 1);
    $("name").textContent = status.name;
    $("size").textContent = `${status.width}x${status.height}, ${status.frames}${status.exact ? "" : "?"} frames, ` +
      `${status.done} with masks`;
    $("out").textContent = status.out;
    $("command").textContent = status.command;
    if (status.job) applyJob(status.job);
    brushes();
    drawTrack();
  }

  function applyJob(job) {
    ui.job = job;
    const running = job.state === "running";
    document.body.dataset.job = `${job.name}:${job.state}:${job.id}`;
    $("propagate").disabled = running;
    $("export").disabled = running;
    $("stop").disabled = !running;
    $("progress").value = job.total ? job.done / job.total : running ? 0 : 1;
    $("job").textContent = `${job.name}: ${job.state}` + (job.total ? ` (${job.done}/${job.total})` : "");
    if (job.state === "failed") setMessage(job.message, true);
    else if (job.state !== "running" && job.message) setMessage(job.message);
  }

  function drawTrack() {
    const w = track.clientWidth || 1000;
    track.width = w;
    const t = track.getContext("2d");
    const n = Math.max(1, ui.frames);
    t.fillStyle = "#333"; t.fillRect(0, 0, w, track.height);
    t.fillStyle = "#3f9c5a";
    for (let i = 0; i < n; i++) {
      if (!ui.valid[i]) continue;
      let j = i;
      while (j + 1 < n && ui.valid[j + 1]) j++;
      t.fillRect((i / n) * w, 3, Math.max(1, ((j + 1 - i) / n) * w), track.height - 6);
      i = j;
    }
    t.fillStyle = "#f0a030";
    for (const a of ui.annotated) t.fillRect((a / n) * w, 0, Math.max(2, w / n), track.height);
    t.fillStyle = "#fff";
    t.fillRect(((ui.frame + 0.5) / n) * w - 1, 0, 2, track.height);
  }

  // ------------------------------------------------------------------ brushes
  function brushes() {
    const box = $("brushes");
    if (box.childElementCount !== ui.objects) {
      box.replaceChildren();
      for (let k = 1; k <= ui.objects; k++) {
        const button = document.createElement("button");
        button.className = "brush";
        button.dataset.label = String(k);
        button.title = k <= 9 ? `object ${k} (${k})` : `object ${k}`;
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = colour(k);
        button.append(swatch, `object ${k}`);
        box.append(button);
      }
    }
    for (const button of document.querySelectorAll("button.brush")) {
      button.classList.toggle("active", Number(button.dataset.label) === ui.label);
    }
    $("add-object").disabled = ui.objects >= MAX_OBJECTS;
  }

  function choose(label) {
    ui.label = label;
    brushes();
  }

  // ------------------------------------------------------------------ frames
  async function show(index) {
    index = Math.max(0, Math.min(ui.frames - 1, index | 0));
    ui.frame = index;
    $("scrubber").value = String(index);
    $("frame-label").textContent = `frame ${index} / ${ui.frames - 1}` + (ui.annotated.has(index) ? " (strokes)" : "");
    drawTrack();
    const ticket = ++ui.showing;
    const [frame, mask, strokes] = await Promise.all([
      loadImage(`frame/${index}`),
      ui.valid[index] ? loadImage(`mask/${index}`) : null,
      ui.annotated.has(index) ? loadImage(`strokes/${index}`) : null,
    ]);
    if (ticket !== ui.showing) return; // a later frame was asked for meanwhile
    if (!frame) { setMessage(`frame ${index} could not be read`, true); return; }
    if (view.width !== frame.width || view.height !== frame.height) {
      view.width = frame.width; view.height = frame.height;
      fit();
    }
    ui.images = { frame, mask, strokes };
    ui.shown = index;
    document.body.dataset.shown = String(index);
    render();
  }

  // the frame as large as the window allows, its aspect kept (pointer positions are scaled back in toFrame)
  function fit() {
    const room = Math.max(100, $("stage").clientWidth - 8);
    const scale = Math.min(room / view.width, (window.innerHeight * 0.68) / view.height);
    view.style.width = `${Math.floor(view.width * scale)}px`;
    view.style.height = `${Math.floor(view.height * scale)}px`;
  }

  function render() {
    ui.drawQueued = false;
    const { frame, mask, strokes } = ui.images;
    ctx.clearRect(0, 0, view.width, view.height);
    if (frame) ctx.drawImage(frame, 0, 0);
    if (mask && ui.opacity > 0) {
      ctx.globalAlpha = ui.opacity; ctx.drawImage(mask, 0, 0); ctx.globalAlpha = 1;
    }
    if (strokes) ctx.drawImage(strokes, 0, 0);
    const live = ui.drawing;
    if (live) {
      ctx.strokeStyle = ctx.fillStyle = brushColour(live.label);
      ctx.lineWidth = 2 * live.radius + 1; ctx.lineCap = ctx.lineJoin = "round";
      ctx.beginPath();
      live.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (live.points.length === 1) ctx.lineTo(live.points[0][0] + 0.01, live.points[0][1]);
      ctx.stroke();
    } else if (ui.hover) {
      ctx.strokeStyle = brushColour(ui.label === ERASE ? 0 : ui.label); ctx.lineWidth = 1;
      ctx.beginPath(); ctx.arc(ui.hover[0], ui.hover[1], ui.radius, 0, 2 * Math.PI); ctx.stroke();
    }
  }

  function queueRender() {
    if (!ui.drawQueued) { ui.drawQueued = true; requestAnimationFrame(render); }
  }

  // follow a running job: show its latest frame, one load at a time
  async function follow(index) {
    ui.followFrame = index;
    if (ui.followBusy) return;
    ui.followBusy = true;
    try {
      while (ui.followFrame !== null) {
        const next = ui.followFrame;
        ui.followFrame = null;
        await show(next);
      }
    } finally { ui.followBusy = false; }
  }

  // ------------------------------------------------------------------ painting
  function toFrame(event) {
    const rect = view.getBoundingClientRect();
    return [
      Math.round(((event.clientX - rect.left) * view.width) / rect.width * 10) / 10,
      Math.round(((event.clientY - rect.top) * view.height) / rect.height * 10) / 10,
    ];
  }

  view.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || ui.shown !== ui.frame) return;
    view.setPointerCapture(event.pointerId);
    ui.drawing = { label: ui.label, radius: ui.radius, points: [toFrame(event)], frame: ui.frame };
    queueRender();
  });
  view.addEventListener("pointermove", (event) => {
    const point = toFrame(event);
    if (ui.drawing) {
      const [lx, ly] = ui.drawing.points[ui.drawing.points.length - 1];
      if (Math.hypot(point[0] - lx, point[1] - ly) >= 1 && ui.drawing.points.length < 20000) ui.drawing.points.push(point);
    } else {
      ui.hover = point;
    }
    queueRender();
  });
  view.addEventListener("pointerleave", () => { ui.hover = null; queueRender(); });
  const finish = () => {
    const stroke = ui.drawing;
    ui.drawing = null;
    if (stroke) send(stroke);
  };
  view.addEventListener("pointerup", finish);
  view.addEventListener("pointercancel", finish);

  // every change of strokes: the server answers once the frame's mask is inferred again
  async function change(index, path, options) {
    setPending(1);
    try {
      const result = await fetchJSON(`strokes/${index}${path}`, options);
      setMessage(result.message || "", !!result.message);
    } catch (error) {
      setMessage(error.message, true);
    } finally {
      await refresh(index);
      ui.answered += 1;  // how many changes the server has answered (what a test waits for)
      document.body.dataset.answered = String(ui.answered);
      setPending(-1);
    }
  }

  function send(stroke) {
    setMessage("solving…");
    const body = { strokes: [{ label: stroke.label, radius: stroke.radius, points: stroke.points }] };
    const headers = { "content-type": "application/json" };
    return change(stroke.frame, "", { method: "POST", headers, body: JSON.stringify(body) });
  }

  const edit = (path, method) => change(ui.frame, path, { method });

  async function refresh(index) {
    applyStatus(await fetchJSON("status"));
    if (ui.frame === index) await show(index);
  }

  async function job(name) {
    try {
      const result = await fetchJSON(name, { method: "POST" });
      if (result.job) applyJob(result.job);
    } catch (error) {
      setMessage(error.message, true);
    }
  }

  // ------------------------------------------------------------------ controls
  $("scrubber").addEventListener("input", (event) => show(Number(event.target.value)));
  $("prev").addEventListener("click", () => show(ui.frame - 1));
  $("next").addEventListener("click", () => show(ui.frame + 1));
  $("radius").addEventListener("input", (event) => {
    ui.radius = Number(event.target.value); $("radius-value").textContent = String(ui.radius); queueRender();
  });
  $("opacity").addEventListener("input", (event) => { ui.opacity = Number(event.target.value) / 100; queueRender(); });
  $("tools").addEventListener("click", (event) => {
    const button = event.target.closest("button.brush");
    if (button) choose(Number(button.dataset.label));
  });
  $("add-object").addEventListener("click", () => {
    ui.objects = Math.min(MAX_OBJECTS, ui.objects + 1); brushes(); choose(ui.objects);
  });
  $("undo").addEventListener("click", () => edit("/undo", "POST"));
  $("clear").addEventListener("click", () => edit("", "DELETE"));
  $("propagate").addEventListener("click", () => job("propagate"));
  $("stop").addEventListener("click", () => job("stop"));
  $("export").addEventListener("click", () => job("export"));
  window.addEventListener("resize", () => { fit(); drawTrack(); });
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
    if (event.key === "ArrowLeft") { show(ui.frame - 1); event.preventDefault(); }
    else if (event.key === "ArrowRight") { show(ui.frame + 1); event.preventDefault(); }
    else if ((event.ctrlKey || event.metaKey) && event.key === "z") { edit("/undo", "POST"); event.preventDefault(); }
    else if (event.key === "b") choose(0);
    else if (event.key === "e") choose(ERASE);
    else if (/^[1-9]$/.test(event.key) && Number(event.key) <= ui.objects) choose(Number(event.key));
  });

  // ------------------------------------------------------------------ events from the server
  function listen() {
    const events = new EventSource(api("events"));
    events.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "info") {
        applyStatus(event);
      } else if (event.type === "job") {
        applyJob(event.job);
        if (event.job.state !== "running") refresh(ui.frame);
      } else if (event.type === "progress") {
        if (event.frame < ui.valid.length) ui.valid[event.frame] = 1;
        $("progress").value = event.total ? event.done / event.total : 0;
        $("job").textContent = `${ui.job ? ui.job.name : "job"}: ${event.done}/${event.total}, frame ${event.frame}`;
        if ($("follow").checked) follow(event.frame);
        else if (event.frame === ui.frame) show(ui.frame);
        drawTrack();
      }
    };
    events.onerror = () => setMessage("lost the connection to vosrr annotate; is it still running?", true);
    events.onopen = () => { if ($("message").textContent.startsWith("lost the connection")) setMessage(""); };
  }

  async function start() {
    try {
      applyStatus(await fetchJSON("status"));
      choose(1);
      await show(0);
      listen();
      document.body.dataset.ready = "1";
    } catch (error) {
      setMessage(`cannot start: ${error.message}`, true);
    }
  }
  start();
})();

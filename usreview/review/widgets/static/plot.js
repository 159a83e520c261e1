// SpectralViewer and MModeViewer: a time-based display (spectral Doppler or M-mode strip) with
// axes calibrated from its ultrasound region, the automatic trace overlaid, and point picking
// for the reviewer's own values (computed in the kernel by usreview.review.measure).
// DOM hooks: .usr-plot[data-kind, data-role, data-ready]; canvas.usr-canvas;
// .usr-role[data-role] buttons; .usr-result[data-name, data-value, data-unit] in
// .usr-results; .usr-measure-error; .usr-tick-x / .usr-tick-y counts in data-ticks-x/-y.

const MARGIN = { left: 64, right: 12, top: 12, bottom: 40 };
const PICK_COLOURS = ["#ff4d4d", "#00e0ff", "#7dff7d", "#ff9cf0"];

function render({ model, el }) {
  const root = h("div", { class: "usr-plot", dataset: { kind: model.get("kind") } });
  const toolbar = h("div", { class: "usr-controls" });
  const canvas = h("canvas", { class: "usr-canvas" });
  const results = h("div", { class: "usr-results" });
  const error = h("div", { class: "usr-measure-error", role: "alert" });
  const clear = h("button", { class: "usr-clear", type: "button" }, "Clear");
  root.append(toolbar, canvas, results, error);
  el.append(root);

  const [x0, y0] = model.get("origin");
  const width = model.get("width");
  const height = model.get("height");
  canvas.width = MARGIN.left + width + MARGIN.right;
  canvas.height = MARGIN.top + height + MARGIN.bottom;
  const ctx = canvas.getContext("2d");
  let bitmap = null;
  const buttons = {};

  for (const [i, role] of model.get("roles").entries()) {
    const button = h("button", {
      class: "usr-role", type: "button", dataset: { role: role.key },
      style: { borderColor: PICK_COLOURS[i % PICK_COLOURS.length] },
    }, role.label);
    button.addEventListener("click", () => {
      model.set("active_role", role.key);
      model.save_changes();
    });
    buttons[role.key] = button;
    toolbar.append(button);
  }
  toolbar.append(clear);

  function colourOf(key) {
    const index = model.get("roles").findIndex((r) => r.key === key);
    return PICK_COLOURS[Math.max(index, 0) % PICK_COLOURS.length];
  }

  function toCanvas(x, y) {
    return pixelToCanvas(x, y, x0, y0, MARGIN.left, MARGIN.top);
  }

  function drawAxes() {
    ctx.save();
    ctx.fillStyle = "#ddd";
    ctx.strokeStyle = "#aaa";
    ctx.font = "11px sans-serif";
    ctx.lineWidth = 1;
    const left = MARGIN.left;
    const top = MARGIN.top;
    const bottom = MARGIN.top + height;
    ctx.strokeRect(left - 0.5, top - 0.5, width + 1, height + 1);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const [position, text] of model.get("x_ticks")) {
      const [cx] = toCanvas(position, y0);
      ctx.beginPath(); ctx.moveTo(cx, bottom); ctx.lineTo(cx, bottom + 5); ctx.stroke();
      ctx.fillText(text, cx, bottom + 7);
    }
    ctx.fillText(model.get("x_label"), left + width / 2, bottom + 22);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const [position, text] of model.get("y_ticks")) {
      const [, cy] = toCanvas(x0, position);
      ctx.beginPath(); ctx.moveTo(left - 5, cy); ctx.lineTo(left, cy); ctx.stroke();
      ctx.fillText(text, left - 7, cy);
    }
    ctx.save();
    ctx.translate(12, top + height / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText(model.get("y_label"), 0, 0);
    ctx.restore();
    root.dataset.ticksX = String(model.get("x_ticks").length);
    root.dataset.ticksY = String(model.get("y_ticks").length);
    ctx.restore();
  }

  function drawOverlay() {
    const baseline = model.get("baseline");
    ctx.save();
    if (baseline !== null && baseline !== undefined) {
      const [, cy] = toCanvas(x0, baseline);
      ctx.strokeStyle = "rgba(255,255,255,0.6)";
      ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(MARGIN.left, cy); ctx.lineTo(MARGIN.left + width, cy); ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.strokeStyle = "#ffd400";
    ctx.lineWidth = 1.5;
    for (const line of model.get("traces")) {
      ctx.beginPath();
      let open = false;
      for (const point of line) {
        if (point === null) { open = false; continue; }
        const [cx, cy] = toCanvas(point[0], point[1]);
        if (open) ctx.lineTo(cx, cy); else ctx.moveTo(cx, cy);
        open = true;
      }
      ctx.stroke();
    }
    const picks = model.get("picks");
    for (const [key, point] of Object.entries(picks)) {
      const [cx, cy] = toCanvas(point[0], point[1]);
      drawMarker(ctx, cx, cy, colourOf(key));
    }
    ctx.restore();
  }

  function redraw() {
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (bitmap) ctx.drawImage(bitmap, MARGIN.left, MARGIN.top);
    drawAxes();
    drawOverlay();
  }

  function updateRole() {
    const active = model.get("active_role");
    root.dataset.role = active;
    for (const [key, button] of Object.entries(buttons)) {
      button.classList.toggle("usr-active", key === active);
    }
  }

  function showResults() {
    results.replaceChildren(...model.get("results").map((m) => h("div", {
      class: "usr-result",
      dataset: { name: m.name, value: String(m.value), unit: m.unit },
    }, m.text)));
    error.textContent = model.get("error");
    root.dataset.error = model.get("error") ? "true" : "false";
  }

  canvas.addEventListener("click", (event) => {
    const [x, y] = eventToPixel(canvas, event, x0, y0, MARGIN.left, MARGIN.top);
    if (x < x0 - 0.5 || y < y0 - 0.5 || x > x0 + width - 0.5 || y > y0 + height - 0.5) return;
    const roles = model.get("roles").map((r) => r.key);
    const active = model.get("active_role") || roles[0];
    const picks = { ...model.get("picks") };
    picks[active] = [Math.round(x * 100) / 100, Math.round(y * 100) / 100];
    model.set("picks", picks);
    const next = roles[(roles.indexOf(active) + 1) % roles.length];
    if (!(next in picks)) model.set("active_role", next);
    model.save_changes();
  });
  clear.addEventListener("click", () => {
    model.set("picks", {});
    model.set("active_role", model.get("roles")[0].key);
    model.save_changes();
  });

  model.on("change:picks", redraw);
  model.on("change:traces", redraw);
  model.on("change:active_role", updateRole);
  model.on("change:results", showResults);
  model.on("change:error", showResults);
  model.on("change:image", async () => {
    bitmap = await decodeImage(bytesOf(model.get("image")), "image/png");
    redraw();
  });

  updateRole();
  showResults();
  redraw();
  decodeImage(bytesOf(model.get("image")), "image/png").then((b) => {
    bitmap = b;
    redraw();
    root.dataset.ready = "true";
  });
}

export default { render };

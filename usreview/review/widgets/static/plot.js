// SpectralViewer and MModeViewer: a time-based display (spectral Doppler or M-mode strip) with
// axes calibrated from its ultrasound region, the automatic trace overlaid, and point picking
// for the reviewer's own values (computed in the kernel by usreview.review.measure).
// "Whole image" (button.usr-whole[aria-pressed], the view trait) shows the whole frame instead
// of the strip: the B-mode image with the Doppler gate and angle cursor, or the M-line; the
// strip's outline is dashed on it, and there are no axes or picks until the strip is back.
// DOM hooks: .usr-plot[data-kind, data-role, data-ready, data-view, data-shown-width,
// data-shown-height] (the view and size of the image drawn now); canvas.usr-canvas;
// .usr-role[data-role] buttons; .usr-result[data-name, data-value, data-unit] in
// .usr-results; .usr-measure-error; .usr-readout and .usr-readout-warning (the spectral angle);
// .usr-tick-x / .usr-tick-y counts in data-ticks-x/-y.

const MARGIN = { left: 64, right: 12, top: 12, bottom: 40 };
const PICK_COLOURS = ["#ff4d4d", "#00e0ff", "#7dff7d", "#ff9cf0"];

function render({ model, el }) {
  const root = h("div", { class: "usr-plot", dataset: { kind: model.get("kind") } });
  const toolbar = h("div", { class: "usr-controls" });
  const canvas = h("canvas", { class: "usr-canvas" });
  const results = h("div", { class: "usr-results" });
  const error = h("div", { class: "usr-measure-error", role: "alert" });
  const clear = h("button", { class: "usr-clear", type: "button" }, "Clear");
  const whole = h("button", {
    class: "usr-whole", type: "button", "aria-pressed": "false",
    title: "Show the whole frame: the 2D image above the strip, with the gate, angle or M-line",
  }, "Whole image");
  const readout = h("div", { class: "usr-readout" });
  const warning = h("div", { class: "usr-readout-warning", role: "alert" });
  root.append(toolbar, readout, warning, canvas, results, error);
  el.append(root);

  const [x0, y0] = model.get("origin");
  const width = model.get("width");
  const height = model.get("height");
  const [frameWidth, frameHeight] = model.get("frame_size");
  const ctx = canvas.getContext("2d");
  let bitmap = null;
  let wholeBitmap = null;
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
  // nothing more to see when the strip is the whole frame
  if (frameWidth > width || frameHeight > height) toolbar.append(whole);

  function showingWhole() {
    return model.get("view") === "whole" && wholeBitmap !== null;
  }

  /** The image drawn now: its origin in the frame and its size. */
  function shown() {
    return showingWhole()
      ? { x: 0, y: 0, width: frameWidth, height: frameHeight, image: wholeBitmap }
      : { x: x0, y: y0, width, height, image: bitmap };
  }

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

  function drawStripOutline() {
    ctx.save();
    ctx.strokeStyle = "rgba(255,212,0,0.8)";
    ctx.setLineDash([4, 4]);
    ctx.strokeRect(MARGIN.left + x0 - 0.5, MARGIN.top + y0 - 0.5, width + 1, height + 1);
    ctx.restore();
  }

  function redraw() {
    const view = shown();
    const canvasWidth = MARGIN.left + view.width + MARGIN.right;
    const canvasHeight = MARGIN.top + view.height + MARGIN.bottom;
    if (canvas.width !== canvasWidth) canvas.width = canvasWidth;
    if (canvas.height !== canvasHeight) canvas.height = canvasHeight;
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (view.image) ctx.drawImage(view.image, MARGIN.left, MARGIN.top);
    if (showingWhole()) {
      drawStripOutline();
    } else {
      drawAxes();
      drawOverlay();
    }
    root.dataset.view = showingWhole() ? "whole" : "strip";
    if (view.image) {
      root.dataset.shownWidth = String(view.image.width);
      root.dataset.shownHeight = String(view.image.height);
    }
  }

  function updateView() {
    const wanted = model.get("view") === "whole";
    whole.setAttribute("aria-pressed", String(wanted));
    whole.classList.toggle("usr-active", wanted);
    for (const button of [...Object.values(buttons), clear]) button.disabled = wanted;
    root.classList.toggle("usr-plot-whole", wanted);
    redraw();
  }

  async function decodeWhole() {
    const bytes = bytesOf(model.get("whole_image"));
    wholeBitmap = bytes.length ? await decodeImage(bytes, "image/png") : null;
    redraw();
  }

  function showReadout() {
    readout.textContent = model.get("readout");
    readout.hidden = !model.get("readout");
    warning.textContent = model.get("warning");
    warning.hidden = !model.get("warning");
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
    if (model.get("view") === "whole") return; // no picks on the whole frame
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
  whole.addEventListener("click", () => {
    model.set("view", model.get("view") === "whole" ? "strip" : "whole");
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
  model.on("change:view", updateView);
  model.on("change:whole_image", decodeWhole);
  model.on("change:readout", showReadout);
  model.on("change:warning", showReadout);
  model.on("change:image", async () => {
    bitmap = await decodeImage(bytesOf(model.get("image")), "image/png");
    redraw();
  });

  updateRole();
  showResults();
  showReadout();
  updateView();
  if (bytesOf(model.get("whole_image")).length) decodeWhole();
  decodeImage(bytesOf(model.get("image")), "image/png").then((b) => {
    bitmap = b;
    redraw();
    root.dataset.ready = "true";
  });
}

export default { render };

// ImageViewer: a still (or one frame) with distance and ellipse calipers. Clicks become image
// pixels; the kernel computes calibrated values (usreview.review.measure) and sends them back.
// DOM hooks: .usr-caliper[data-tool, data-showing, data-pending, data-request, data-measured
// (the number of values shown)];
// canvas.usr-canvas[data-role=original|filtered]; .usr-tool[data-tool]; .usr-toggle;
// .usr-clear; .usr-measure-text[data-name, data-value, data-unit, data-request] (one per
// value in .usr-measure-list); .usr-measure-error.

const NEEDED = { distance: 2, ellipse: 3 };
const COLOURS = { done: "#ffd400", pending: "#00e0ff" };

function render({ model, el }) {
  const root = h("div", { class: "usr-caliper" });
  const toolbar = h("div", { class: "usr-controls" });
  const tools = {};
  for (const tool of ["distance", "ellipse"]) {
    tools[tool] = h("button", { class: "usr-tool", type: "button", dataset: { tool } },
      tool === "distance" ? "Distance" : "Ellipse");
    tools[tool].addEventListener("click", () => {
      model.set("tool", tool);
      model.save_changes();
    });
    toolbar.append(tools[tool]);
  }
  const toggle = h("button", { class: "usr-toggle", type: "button" });
  const clear = h("button", { class: "usr-clear", type: "button" }, "Clear");
  const hint = h("span", { class: "usr-hint" });
  toolbar.append(toggle, clear, hint);
  const views = h("div", { class: "usr-views" });
  const list = h("div", { class: "usr-measure-list" });
  const error = h("div", { class: "usr-measure-error", role: "alert" });
  root.append(toolbar, views, list, error);
  el.append(root);

  const width = model.get("width");
  const height = model.get("height");
  const bitmaps = { original: null, filtered: null };
  const canvases = {};
  let pending = [];
  let shown = [];
  let shownTool = null;
  let counter = (model.get("request") || {}).n || 0;

  function hasFiltered() {
    return bytesOf(model.get("filtered")).length > 0;
  }

  function roles() {
    if (!hasFiltered()) return ["original"];
    if (model.get("layout") === "side-by-side") return ["original", "filtered"];
    return [model.get("showing") === "filtered" ? "filtered" : "original"];
  }

  function drawShape(ctx, points, tool, colour) {
    const c = points.map(([x, y]) => pixelToCanvas(x, y));
    for (const [x, y] of c) drawMarker(ctx, x, y, colour);
    ctx.save();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([5, 4]);
    if (tool === "distance" && c.length === 2) {
      ctx.beginPath(); ctx.moveTo(...c[0]); ctx.lineTo(...c[1]); ctx.stroke();
    } else if (tool === "ellipse" && c.length >= 2) {
      const [cx, cy] = c[0];
      const ux = c[1][0] - cx;
      const uy = c[1][1] - cy;
      const a = Math.hypot(ux, uy);
      let b = a;
      if (c.length === 3 && a > 0) {
        b = Math.abs(ux * (c[2][1] - cy) - uy * (c[2][0] - cx)) / a;
      }
      ctx.beginPath();
      ctx.ellipse(cx, cy, a, Math.max(b, 0.5), Math.atan2(uy, ux), 0, 2 * Math.PI);
      ctx.stroke();
    }
    ctx.restore();
  }

  function redraw() {
    for (const [role, canvas] of Object.entries(canvases)) {
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (bitmaps[role]) ctx.drawImage(bitmaps[role], 0, 0);
      if (shown.length) drawShape(ctx, shown, shownTool, COLOURS.done);
      if (pending.length) drawShape(ctx, pending, model.get("tool"), COLOURS.pending);
    }
  }

  function layout() {
    views.replaceChildren();
    for (const key of Object.keys(canvases)) delete canvases[key];
    for (const role of roles()) {
      const canvas = h("canvas", { class: "usr-canvas", dataset: { role } });
      canvas.width = width;
      canvas.height = height;
      canvas.addEventListener("click", (event) => pick(eventToPixel(canvas, event)));
      const labels = model.get("labels");
      const caption = h("div", { class: "usr-caption" }, role === "filtered" ? labels[1] : labels[0]);
      views.append(h("figure", { class: "usr-view", dataset: { role } }, canvas, caption));
      canvases[role] = canvas;
    }
    root.dataset.showing = roles().join(",");
    toggle.hidden = !hasFiltered() || model.get("layout") === "side-by-side";
    const labels = model.get("labels");
    toggle.textContent = model.get("showing") === "filtered" ? `Show ${labels[0]}` : `Show ${labels[1]}`;
    redraw();
  }

  function updateTool() {
    const tool = model.get("tool");
    root.dataset.tool = tool;
    for (const [name, button] of Object.entries(tools)) {
      button.classList.toggle("usr-active", name === tool);
    }
    hint.textContent = tool === "ellipse"
      ? "click the centre, the end of one axis, then the edge across"
      : "click both ends";
    pending = [];
    root.dataset.pending = "0";
    redraw();
  }

  function pick(point) {
    const tool = model.get("tool");
    pending.push(point.map((v) => Math.round(v * 100) / 100));
    root.dataset.pending = String(pending.length);
    if (pending.length >= NEEDED[tool]) {
      counter += 1;
      shown = pending;
      shownTool = tool;
      pending = [];
      root.dataset.pending = "0";
      root.dataset.request = String(counter);
      model.set("request", { tool, points: shown, n: counter });
      model.save_changes();
    }
    redraw();
  }

  function showResult() {
    const result = model.get("result") || {};
    const items = result.measurements || [];
    list.replaceChildren(...items.map((m) => h("div", {
      class: "usr-measure-text",
      dataset: { name: m.name, value: String(m.value), unit: m.unit, request: String(result.n ?? "") },
    }, m.text)));
    error.textContent = model.get("error");
    root.dataset.error = model.get("error") ? "true" : "false";
    // an empty result (Clear, here or from the kernel) leaves nothing drawn
    shown = result.points && result.points.length ? result.points : [];
    shownTool = result.tool || null;
    root.dataset.measured = String(items.length);
    redraw();
  }

  async function load(role) {
    const bytes = bytesOf(model.get(role));
    bitmaps[role] = bytes.length ? await decodeImage(bytes, "image/png") : null;
    redraw();
  }

  toggle.addEventListener("click", () => {
    model.set("showing", model.get("showing") === "filtered" ? "original" : "filtered");
    model.save_changes();
  });
  clear.addEventListener("click", () => {
    pending = [];
    shown = [];
    model.set("result", {});
    model.set("error", "");
    model.save_changes();
    showResult();
  });
  model.on("change:tool", updateTool);
  model.on("change:showing", layout);
  model.on("change:layout", layout);
  model.on("change:result", showResult);
  model.on("change:error", showResult);
  model.on("change:original", () => load("original"));
  model.on("change:filtered", () => load("filtered").then(layout));

  layout();
  updateTool();
  showResult();
  Promise.all([load("original"), load("filtered")]).then(() => {
    root.dataset.ready = "true";
  });
}

export default { render };

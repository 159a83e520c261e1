// WorklistTable: thousands of studies rendered in the browser. Only the rows in view exist
// in the DOM (virtual scrolling); sorting (click a header), a free-text filter and site and
// status filters run client-side and survive updates of the rows from the kernel.
// DOM hooks: .usr-worklist[data-total, data-shown, data-render-ms, data-sort-key,
// data-sort-dir, data-first-uid, data-ready]; .usr-wl-th[data-key]; input.usr-wl-query;
// select.usr-wl-site; select.usr-wl-status; .usr-wl-row[data-uid, data-urgency, data-index];
// .usr-wl-td[data-key]; button.usr-open / button.usr-claim; .usr-wl-count.

const ROW_HEIGHT = 30;
const OVERSCAN = 8;
const URGENCY_RANK = { stat: 0, urgent: 1, high: 1, priority: 2, routine: 3, low: 4 };
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

function cellText(row, key) {
  const value = row[key];
  if (value === null || value === undefined || value === "") return "";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

function compareBy(key) {
  if (key === "urgency") {
    const rank = (r) => URGENCY_RANK[String(r.urgency || "").toLowerCase()] ?? 9;
    return (a, b) => rank(a) - rank(b);
  }
  return (a, b) => {
    const x = a[key];
    const y = b[key];
    if (typeof x === "number" && typeof y === "number") return x - y;
    return collator.compare(cellText(a, key), cellText(b, key));
  };
}

// The kernel sends the rows by column ({count, columns: {key: [values]}}): each key once.
function fromColumns(table) {
  const count = (table && table.count) || 0;
  const columns = (table && table.columns) || {};
  const keys = Object.keys(columns);
  const out = new Array(count);
  for (let i = 0; i < count; i++) {
    const row = {};
    for (const key of keys) row[key] = columns[key][i];
    out[i] = row;
  }
  return out;
}

function render({ model, el }) {
  const root = h("div", { class: "usr-worklist", dataset: { ready: "false" } });
  const query = h("input", { class: "usr-wl-query", type: "search", placeholder: "Filter…" });
  const site = h("select", { class: "usr-wl-site", title: "Site" });
  const status = h("select", { class: "usr-wl-status", title: "Status" });
  const count = h("span", { class: "usr-wl-count" });
  const filters = h("div", { class: "usr-controls" }, query, site, status, count);
  const header = h("div", { class: "usr-wl-header" });
  const spacer = h("div", { class: "usr-wl-spacer" });
  const body = h("div", { class: "usr-wl-rows" });
  const viewport = h("div", { class: "usr-wl-viewport" }, spacer, body);
  viewport.style.height = `${model.get("height")}px`;
  root.append(filters, header, viewport);
  el.append(root);

  let rows = [];
  let haystack = [];
  let order = [];
  let counter = (model.get("action") || {}).n || 0;
  const columns = model.get("columns");
  const template = columns.map((c) => c.width || "1fr").join(" ") + " 118px";
  header.style.gridTemplateColumns = template;

  for (const column of columns) {
    const th = h("div", { class: "usr-wl-th", dataset: { key: column.key }, role: "button" },
      column.label);
    th.addEventListener("click", () => {
      const sort = model.get("sort") || {};
      const descending = sort.key === column.key ? !sort.descending : false;
      model.set("sort", { key: column.key, descending });
      model.save_changes();
    });
    header.append(th);
  }
  header.append(h("div", { class: "usr-wl-th usr-wl-actions" }, ""));

  function options(select, values, label, current) {
    select.replaceChildren(h("option", { value: "" }, `All ${label}`),
      ...values.map((v) => h("option", { value: v }, v)));
    select.value = values.includes(current) ? current : "";
  }

  function index() {
    rows = fromColumns(model.get("table"));
    // the visible columns, and the UIDs and accession number people paste in
    haystack = rows.map((r) =>
      [...columns.map((c) => cellText(r, c.key)), r.study_instance_uid, r.accession_number || ""]
        .join("\u0001")
        .toLowerCase()
    );
    const sites = [...new Set(rows.map((r) => String(r.site ?? "")))].filter(Boolean).sort(collator.compare);
    const statuses = [...new Set(rows.map((r) => String(r.status ?? "")))].filter(Boolean).sort(collator.compare);
    options(site, sites, "sites", model.get("site_filter"));
    options(status, statuses, "statuses", model.get("status_filter"));
  }

  function recompute() {
    const started = performance.now();
    const q = model.get("query").trim().toLowerCase();
    const terms = q ? q.split(/\s+/) : [];
    const wantSite = model.get("site_filter");
    const wantStatus = model.get("status_filter");
    order = [];
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i];
      if (wantSite && String(r.site) !== wantSite) continue;
      if (wantStatus && String(r.status) !== wantStatus) continue;
      if (terms.length && !terms.every((t) => haystack[i].includes(t))) continue;
      order.push(i);
    }
    const sort = model.get("sort") || {};
    if (sort.key) {
      const compare = compareBy(sort.key);
      const sign = sort.descending ? -1 : 1;
      order.sort((a, b) => sign * compare(rows[a], rows[b]) || a - b);
    }
    for (const th of header.querySelectorAll(".usr-wl-th[data-key]")) {
      const active = th.dataset.key === sort.key;
      th.classList.toggle("usr-sorted", active);
      th.dataset.dir = active ? (sort.descending ? "desc" : "asc") : "";
    }
    root.dataset.sortKey = sort.key || "";
    root.dataset.sortDir = sort.key ? (sort.descending ? "desc" : "asc") : "";
    root.dataset.total = String(rows.length);
    root.dataset.shown = String(order.length);
    root.dataset.firstUid = order.length ? String(rows[order[0]].study_instance_uid) : "";
    count.textContent = `${order.length} of ${rows.length} studies`;
    spacer.style.height = `${order.length * ROW_HEIGHT}px`;
    draw(true);
    root.dataset.renderMs = (performance.now() - started).toFixed(1);
  }

  let drawnRange = [-1, -1];
  function draw(force = false) {
    const first = Math.max(Math.floor(viewport.scrollTop / ROW_HEIGHT) - OVERSCAN, 0);
    const visible = Math.ceil(viewport.clientHeight / ROW_HEIGHT) + 2 * OVERSCAN;
    const last = Math.min(first + visible, order.length);
    if (!force && first === drawnRange[0] && last === drawnRange[1]) return;
    drawnRange = [first, last];
    body.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const fragment = document.createDocumentFragment();
    for (let k = first; k < last; k++) {
      const r = rows[order[k]];
      const urgency = String(r.urgency || "").toLowerCase();
      const line = h("div", {
        class: `usr-wl-row usr-urgency-${urgency || "none"}`,
        dataset: { uid: r.study_instance_uid, urgency, index: String(k) },
      });
      line.style.gridTemplateColumns = template;
      for (const column of columns) {
        const text = cellText(r, column.key);
        line.append(h("div", { class: "usr-wl-td", dataset: { key: column.key }, title: text }, text));
      }
      const open = h("button", { class: "usr-open", type: "button" }, "Open");
      const claim = h("button", { class: "usr-claim", type: "button" }, r.claim ? "Claimed" : "Claim");
      open.addEventListener("click", () => act("open", r.study_instance_uid));
      claim.addEventListener("click", () => act("claim", r.study_instance_uid));
      line.append(h("div", { class: "usr-wl-td usr-wl-actions" }, open, claim));
      fragment.append(line);
    }
    body.replaceChildren(fragment);
    root.dataset.drawn = String(last - first);
  }

  function act(kind, study) {
    counter += 1;
    model.set("action", { kind, study, n: counter });
    model.save_changes();
    root.dataset.lastAction = `${kind}:${study}:${counter}`;
  }

  let pendingQuery = null;
  query.value = model.get("query");
  query.addEventListener("input", () => {
    clearTimeout(pendingQuery);
    pendingQuery = setTimeout(() => {
      model.set("query", query.value);
      model.save_changes();
    }, 120);
  });
  site.addEventListener("change", () => {
    model.set("site_filter", site.value);
    model.save_changes();
  });
  status.addEventListener("change", () => {
    model.set("status_filter", status.value);
    model.save_changes();
  });
  viewport.addEventListener("scroll", () => draw(false), { passive: true });

  model.on("change:table", () => { index(); recompute(); });
  model.on("change:sort", recompute);
  model.on("change:query", () => {
    if (query.value !== model.get("query")) query.value = model.get("query");
    recompute();
  });
  model.on("change:site_filter", () => { site.value = model.get("site_filter"); recompute(); });
  model.on("change:status_filter", () => { status.value = model.get("status_filter"); recompute(); });

  index();
  recompute();
  root.dataset.ready = "true";
  model.send({ event: "shown" }); // the kernel starts following the list once someone sees it
  // sizes are known only once attached: draw again on the next frame
  requestAnimationFrame(() => draw(true));
}

export default { render };

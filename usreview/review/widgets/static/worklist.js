// WorklistTable: thousands of studies rendered in the browser. Only the rows in view exist
// in the DOM (virtual scrolling); sorting (click a header, or Enter / Space on it), a
// free-text filter and site and status filters run client-side and survive updates of the
// rows from the kernel. The urgency order comes from the kernel (model "urgencies", most
// urgent first); the Waiting column is computed here from received_ms and kept current.
// Each row has Open and Claim, and Release when the signed-in reviewer (model "user")
// holds it (its claim column is her name); each sends an action to the kernel.
// DOM hooks: .usr-worklist[data-total, data-shown, data-render-ms, data-sort-key,
// data-sort-dir, data-first-uid, data-ready]; .usr-wl-th[data-key, data-dir, aria-sort]
// with button.usr-wl-sort; input.usr-wl-query; select.usr-wl-site; select.usr-wl-status;
// .usr-wl-row[data-uid, data-urgency, data-index]; .usr-wl-td[data-key];
// button.usr-open / button.usr-claim / button.usr-release (one's own claims); .usr-wl-count.

const ROW_HEIGHT = 30;
const ACTIONS_WIDTH = "208px"; // Open, Claim(ed) and Release side by side
const OVERSCAN = 8;
const TICK_MS = 30_000; // how often the waiting times are brought up to date
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

function receivedMs(row) {
  return typeof row.received_ms === "number" ? row.received_ms : null;
}

/** How long since `since` (ms since 1970): "12 min" below an hour, "3 h" below two days, then "4 d". */
function waited(since, now) {
  if (since === null) return "";
  const ms = Math.max(now - since, 0);
  if (ms < HOUR) return `${Math.floor(ms / MINUTE)} min`;
  if (ms < 2 * DAY) return `${Math.floor(ms / HOUR)} h`;
  return `${Math.floor(ms / DAY)} d`;
}

function cellText(row, key) {
  if (key === "waiting") return waited(receivedMs(row), Date.now());
  const value = row[key];
  if (value === null || value === undefined || value === "") return "";
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

// How to sort by `key`: `missing(row)` is 1 for rows that sort last in either direction
// (no urgency, no received time), `compare` orders the others.
function sorterFor(key, urgencies) {
  if (key === "urgency") {
    const ranks = new Map(urgencies.map((u, i) => [String(u).toLowerCase(), i]));
    const rank = (r) => ranks.get(String(r.urgency || "").toLowerCase()) ?? urgencies.length;
    return { missing: (r) => (r.urgency ? 0 : 1), compare: (a, b) => rank(a) - rank(b) };
  }
  if (key === "waiting") {
    // received later = waited less: ascending is the shortest wait first
    return {
      missing: (r) => (receivedMs(r) === null ? 1 : 0),
      compare: (a, b) => receivedMs(b) - receivedMs(a),
    };
  }
  return {
    missing: () => 0,
    compare: (a, b) => {
      const x = a[key];
      const y = b[key];
      if (typeof x === "number" && typeof y === "number") return x - y;
      return collator.compare(cellText(a, key), cellText(b, key));
    },
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
  const header = h("div", { class: "usr-wl-header", role: "row", "aria-rowindex": "1" });
  const spacer = h("div", { class: "usr-wl-spacer" });
  const body = h("div", { class: "usr-wl-rows", role: "rowgroup" });
  const viewport = h("div", { class: "usr-wl-viewport" }, spacer, body);
  viewport.style.height = `${model.get("height")}px`;
  const table = h("div", { class: "usr-wl-table", role: "table", "aria-label": "Studies" },
    header, viewport);
  root.append(filters, table);
  el.append(root);

  let rows = [];
  let haystack = [];
  let order = [];
  let counter = (model.get("action") || {}).n || 0;
  const columns = model.get("columns");
  const template = columns.map((c) => c.width || "1fr").join(" ") + ` ${ACTIONS_WIDTH}`;
  header.style.gridTemplateColumns = template;

  table.setAttribute("aria-colcount", String(columns.length + 1));
  for (const column of columns) {
    // a real button in each column header: focusable, Enter and Space click it
    const button = h("button", { class: "usr-wl-sort", type: "button" }, column.label);
    const th = h("div", { class: "usr-wl-th", dataset: { key: column.key }, role: "columnheader" },
      button);
    th.addEventListener("click", () => {
      const sort = model.get("sort") || {};
      const descending = sort.key === column.key ? !sort.descending : false;
      model.set("sort", { key: column.key, descending });
      model.save_changes();
    });
    header.append(th);
  }
  header.append(h("div", { class: "usr-wl-th usr-wl-actions", role: "columnheader",
    "aria-label": "Actions" }, ""));

  function options(select, values, label, current) {
    select.replaceChildren(h("option", { value: "" }, `All ${label}`),
      ...values.map((v) => h("option", { value: v }, v)));
    select.value = values.includes(current) ? current : "";
  }

  function index() {
    rows = fromColumns(model.get("table"));
    // the visible columns, and the UIDs and accession number people paste in
    const searched = columns.filter((c) => c.key !== "waiting"); // changes with the clock
    haystack = rows.map((r) =>
      [...searched.map((c) => cellText(r, c.key)), r.study_instance_uid, r.accession_number || ""]
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
      const { missing, compare } = sorterFor(sort.key, model.get("urgencies") || []);
      const sign = sort.descending ? -1 : 1;
      order.sort((a, b) => {
        const x = rows[a];
        const y = rows[b];
        return missing(x) - missing(y) || sign * compare(x, y) || a - b;
      });
    }
    for (const th of header.querySelectorAll(".usr-wl-th[data-key]")) {
      const active = th.dataset.key === sort.key;
      th.classList.toggle("usr-sorted", active);
      th.dataset.dir = active ? (sort.descending ? "desc" : "asc") : "";
      if (active) th.setAttribute("aria-sort", sort.descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
    table.setAttribute("aria-rowcount", String(order.length + 1));
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
        role: "row",
        "aria-rowindex": String(k + 2),
      });
      line.style.gridTemplateColumns = template;
      for (const column of columns) {
        const text = cellText(r, column.key);
        const title = column.key === "waiting" && text ? `received ${cellText(r, "received_at")} UTC` : text;
        line.append(h("div", { class: "usr-wl-td", dataset: { key: column.key }, title, role: "cell" },
          text));
      }
      const open = h("button", { class: "usr-open", type: "button" }, "Open");
      const claim = h("button", { class: "usr-claim", type: "button" }, r.claim ? "Claimed" : "Claim");
      open.addEventListener("click", () => act("open", r.study_instance_uid));
      claim.addEventListener("click", () => act("claim", r.study_instance_uid));
      const buttons = [open, claim];
      const user = model.get("user");
      if (user && r.claim === user) {
        // a real button, as Open and Claim: Tab reaches it, Enter or Space clicks it
        const release = h("button", { class: "usr-release", type: "button",
          title: "Give the study back to the worklist" }, "Release");
        release.addEventListener("click", () => act("release", r.study_instance_uid));
        buttons.push(release);
      }
      line.append(h("div", { class: "usr-wl-td usr-wl-actions", role: "cell" }, ...buttons));
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
  model.on("change:urgencies", recompute);
  model.on("change:user", () => draw(true));
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
  // the waiting times grow: rewrite those cells (only), so focus and hover stay put
  const tick = setInterval(() => {
    const now = Date.now();
    for (const cell of body.querySelectorAll('.usr-wl-td[data-key="waiting"]')) {
      const r = rows[order[Number(cell.parentElement.dataset.index)]];
      if (r) cell.textContent = waited(receivedMs(r), now);
    }
  }, TICK_MS);
  return () => clearInterval(tick);
}

export default { render };

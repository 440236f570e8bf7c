// darkstore staff dashboard: one store's live state over the WebSocket feed `store/{id}`.
// Plain ES module, no build step, no third-party code, no map tiles: the map is the store's H3
// service area drawn as SVG polygons from `GET /v1/stores/{id}/area`.

const $ = (sel) => document.querySelector(sel);
const state = {
  token: localStorage.getItem("darkstore.token") || "",
  claims: null,
  storeId: null,
  orders: new Map(),
  stock: new Map(),
  riders: new Map(),
  etas: new Map(),
  promiseMinutes: 10,
  seq: 0,
  ws: null,
  project: null,
};

function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { "content-type": "application/json", authorization: `Bearer ${state.token}`, ...(options.headers || {}) },
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.message || `${res.status}`);
  return body;
}

function showSignIn(message) {
  $("#sign-in").hidden = false;
  $("#board").hidden = true;
  $("#sign-out").hidden = true;
  $("#sign-in-error").hidden = !message;
  $("#sign-in-error").textContent = message || "";
}

async function start() {
  state.claims = claimsOf(state.token);
  if (!state.token || !state.claims) return showSignIn();
  if (state.claims.exp * 1000 < Date.now()) return showSignIn("That token has expired.");
  if (state.claims.role !== "staff" && state.claims.role !== "admin") return showSignIn("The dashboard needs a staff or admin token.");
  $("#sign-in").hidden = true;
  $("#sign-out").hidden = false;
  let storeId = state.claims.store;
  if (state.claims.role === "admin") {
    const { stores } = await api("/v1/stores");
    const pick = $("#store-pick");
    pick.innerHTML = stores.map((s) => `<option value="${esc(s.id)}">${esc(s.name)} (${esc(s.id)})</option>`).join("");
    pick.hidden = false;
    storeId = localStorage.getItem("darkstore.store") || (stores[0] && stores[0].id);
    if (storeId) pick.value = storeId;
    pick.onchange = () => {
      localStorage.setItem("darkstore.store", pick.value);
      openStore(pick.value);
    };
  }
  if (!storeId) return showSignIn("No store to show.");
  await openStore(storeId);
}

async function openStore(storeId) {
  state.storeId = storeId;
  state.orders.clear();
  state.stock.clear();
  state.riders.clear();
  state.etas.clear();
  $("#board").hidden = false;
  const area = await api(`/v1/stores/${encodeURIComponent(storeId)}/area`);
  drawArea(area);
  connect();
  renderForecast();
  renderStoreState(await api(`/v1/stores/${encodeURIComponent(storeId)}`));
}

// Open, closed (until when) or paused (why), and the button that pauses or resumes orders.
function renderStoreState(store) {
  state.paused = Boolean(store.paused);
  const el = $("#store-open");
  if (store.paused) el.textContent = `paused: ${store.paused.reason}`;
  else if (store.open === false) el.textContent = store.opens_at ? `closed until ${new Date(store.opens_at).toLocaleString()}` : "closed";
  else el.textContent = "open";
  el.className = `open-state ${store.open ? "on" : "off"}`;
  const b = $("#pause");
  b.hidden = false;
  b.textContent = state.paused ? "resume orders" : "pause orders";
}

// ----- the map -----

function drawArea(area) {
  const svg = $("#map");
  let minLat = Infinity, maxLat = -Infinity, minLng = Infinity, maxLng = -Infinity;
  for (const c of area.cells) for (const [lat, lng] of c.boundary) {
    minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
    minLng = Math.min(minLng, lng); maxLng = Math.max(maxLng, lng);
  }
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const scale = 10000;
  state.project = (lat, lng) => [((lng - minLng) * k * scale).toFixed(2), ((maxLat - lat) * scale).toFixed(2)];
  const w = (maxLng - minLng) * k * scale, h = (maxLat - minLat) * scale;
  svg.setAttribute("viewBox", `0 0 ${w.toFixed(2)} ${h.toFixed(2)}`);
  const r = Math.max(w, h) / 90;
  state.riderRadius = r;
  const cells = area.cells.map((c) => {
    const pts = c.boundary.map(([lat, lng]) => state.project(lat, lng).join(",")).join(" ");
    return `<polygon class="cell" data-cell="${c.cell}" points="${pts}" fill="#ffffff"></polygon>`;
  }).join("");
  const [sx, sy] = state.project(area.lat, area.lng);
  svg.innerHTML = `<g id="cells">${cells}</g><rect class="store" x="${sx - r}" y="${sy - r}" width="${2 * r}" height="${2 * r}"><title>store</title></rect><g id="riders"></g>`;
}

function shadeCells() {
  const counts = new Map();
  for (const o of state.orders.values()) {
    if (isOpen(o) && o.h3_cell) counts.set(o.h3_cell, (counts.get(o.h3_cell) || 0) + 1);
  }
  for (const poly of document.querySelectorAll("#cells .cell")) {
    const n = counts.get(poly.dataset.cell) || 0;
    poly.setAttribute("fill", n ? `rgba(31,122,92,${Math.min(0.2 + n * 0.2, 0.9)})` : "#ffffff");
  }
}

function drawRider(r) {
  if (!state.project || r.lat == null) return;
  const g = $("#riders");
  if (!g) return;
  let dot = document.getElementById(`rider-${r.id}`);
  if (!dot) {
    dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
    dot.id = `rider-${r.id}`;
    dot.setAttribute("r", state.riderRadius);
    dot.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "title"));
    g.appendChild(dot);
  }
  const [x, y] = state.project(r.lat, r.lng);
  dot.setAttribute("cx", x);
  dot.setAttribute("cy", y);
  dot.setAttribute("class", `rider ${r.status === "idle" ? "" : "busy"}`);
  dot.firstChild.textContent = `${r.id} · ${r.status}`;
}

// ----- the feed -----

function connect() {
  if (state.ws) state.ws.close();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  const topic = `store/${state.storeId}`;
  // Positions arrive batched: one "riders" frame of the riders that moved, a few times a second.
  const subscribe = JSON.stringify({ op: "subscribe", topic, batch: true });
  ws.onopen = () => ws.send(subscribe);
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.topic !== topic) return;
    if (msg.type === "error") return showSignIn(`The feed refused ${topic}: ${msg.data.error}`);
    if (msg.type !== "snapshot" && msg.seq !== state.seq + 1) {
      // A gap: something was missed, start over from a fresh snapshot.
      ws.send(JSON.stringify({ op: "unsubscribe", topic }));
      ws.send(subscribe);
      return;
    }
    state.seq = msg.seq;
    apply(msg.type, msg.data);
  };
  ws.onclose = () => {
    setConn(false);
    if (state.ws === ws) setTimeout(connect, 2000);
  };
  ws.onerror = () => setConn(false);
  setConn(true);
}

function setConn(on) {
  const el = $("#conn");
  el.textContent = on ? "live" : "offline";
  el.className = `conn ${on ? "on" : "off"}`;
}

function apply(type, data) {
  if (type === "snapshot") {
    $("#store-name").textContent = `${data.store.name} (${data.store.id})`;
    state.promiseMinutes = data.promise_minutes;
    state.orders = new Map(data.orders.map((o) => [o.id, o]));
    state.stock = new Map(data.stock.map((l) => [l.sku, l]));
    state.riders = new Map(data.riders.map((r) => [r.id, r]));
    const g = $("#riders");
    if (g) g.innerHTML = "";
    for (const r of state.riders.values()) drawRider(r);
    renderQueue(); renderStock(); renderNumbers(); shadeCells();
    state.etas = new Map(data.orders.filter((o) => o.eta_at).map((o) => [o.id, o.eta_at]));
    renderArea(data.area);
  } else if (type === "order") {
    state.orders.set(data.id, data);
    renderQueue(); renderNumbers(); shadeCells();
  } else if (type === "eta") {
    state.etas.set(data.order_id, data.eta_at);
    renderEta(data.order_id);
  } else if (type === "area") {
    renderArea(data);
  } else if (type === "stock") {
    state.stock.set(data.sku, data);
    renderStockRow(data);
  } else if (type === "rider" || type === "riders") {
    for (const r of type === "riders" ? data : [data]) {
      state.riders.set(r.id, r);
      drawRider(r);
    }
    renderNumbers();
  }
}

// ----- tables and numbers -----

const isOpen = (o) => !["delivered", "cancelled", "expired"].includes(o.status);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function renderQueue() {
  const rows = [...state.orders.values()].filter(isOpen).sort((a, b) => a.created_at.localeCompare(b.created_at));
  $("#queue tbody").innerHTML = rows.map((o) => `
    <tr data-order="${esc(o.id)}">
      <td>${esc(o.id)}</td>
      <td><span class="status ${esc(o.status)}">${esc(o.status.replace("_", " "))}</span>${o.payment_status === "held" ? ` <span class="status pending_payment">awaiting payment</span>` : ""}</td>
      <td>${esc(o.rider_id || "–")}</td>
      <td class="num">${o.lines.reduce((n, l) => n + l.qty, 0)}</td>
      <td class="timer" data-deadline="${esc(o.promised_by)}"></td>
      <td class="eta"></td>
      <td>${o.status === "confirmed" || (o.status === "assigned" && !o.packed_at) ? `<button class="pack" data-order="${esc(o.id)}">packed</button>` : ""}</td>
    </tr>`).join("");
  for (const o of rows) renderEta(o.id);
  tick();
}

// The live ETA of an order in the queue: when the rider is expected at the door, red when past
// the promise.
function renderEta(id) {
  const td = document.querySelector(`#queue tr[data-order="${CSS.escape(id)}"] .eta`);
  const o = state.orders.get(id);
  const eta = state.etas.get(id);
  if (!td || !o) return;
  if (!eta) { td.textContent = "–"; td.classList.remove("late"); return; }
  td.textContent = new Date(eta).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  td.classList.toggle("late", Date.parse(eta) > Date.parse(o.promised_by));
}

const AREA_STATES = ["normal", "busy", "very busy", "surging"];

function renderArea(area) {
  if (!area) return;
  $("#n-fee").textContent = (area.fee_minor / 100).toFixed(2);
  $("#area-state").textContent = `${AREA_STATES[area.level] || `level ${area.level}`} (demand ÷ supply ${area.pressure})`;
  $("#area").className = `area level-${area.level}`;
}

async function renderForecast() {
  if (!state.storeId || !state.token) return;
  try {
    const f = await api(`/v1/stores/${encodeURIComponent(state.storeId)}/forecast?hours=6`);
    $("#forecast tbody").innerHTML = f.hours.map((h) => `
      <tr class="${h.riders_needed > f.riders_on_shift ? "short" : ""}">
        <td>${esc(new Date(h.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }))}</td>
        <td class="num">${esc(h.orders)}</td>
        <td class="num">${esc(h.riders_needed)}</td>
        <td class="num">${esc(f.riders_on_shift)}</td>
      </tr>`).join("");
  } catch (e) {
    $("#forecast tbody").innerHTML = `<tr><td colspan="4">${esc(e.message)}</td></tr>`;
  }
}

function tick() {
  const now = Date.now();
  for (const td of document.querySelectorAll("#queue .timer")) {
    const left = Math.round((Date.parse(td.dataset.deadline) - now) / 1000);
    const a = Math.abs(left);
    td.textContent = `${left < 0 ? "-" : ""}${Math.floor(a / 60)}:${String(a % 60).padStart(2, "0")}`;
    td.classList.toggle("late", left < 0);
  }
}

function stockRow(l) {
  const soon = l.next_expiry && Date.parse(l.next_expiry) - Date.now() < 24 * 3600 * 1000;
  return `<td>${esc(l.sku)}</td><td>${esc(l.name || "")}</td>
    <td class="num on-hand">${l.on_hand}</td><td class="num reserved">${l.reserved}</td><td class="num available">${l.available}</td>
    <td>${l.low_stock ? '<span class="badge low">low stock</span>' : ""}${soon ? '<span class="badge expiring">expiring soon</span>' : ""}</td>
    <td><button class="restock" data-sku="${esc(l.sku)}">restock</button></td>`;
}

function renderStock() {
  const filter = $("#stock-filter").value.toLowerCase();
  const lines = [...state.stock.values()]
    .filter((l) => !filter || l.sku.includes(filter) || (l.name || "").toLowerCase().includes(filter))
    .sort((a, b) => a.sku.localeCompare(b.sku));
  $("#stock tbody").innerHTML = lines.map((l) => `<tr data-sku="${esc(l.sku)}">${stockRow(l)}</tr>`).join("");
}

function renderStockRow(l) {
  const row = document.querySelector(`#stock tr[data-sku="${CSS.escape(l.sku)}"]`);
  if (row) row.innerHTML = stockRow(l);
  else renderStock();
}

function renderNumbers() {
  const hourAgo = Date.now() - 3600 * 1000;
  const recent = [...state.orders.values()].filter((o) => Date.parse(o.created_at) >= hourAgo);
  const delivered = recent.filter((o) => o.delivered_at);
  const onTime = delivered.filter((o) => Date.parse(o.delivered_at) <= Date.parse(o.promised_by));
  $("#n-orders-hour").textContent = recent.length;
  $("#n-on-time").textContent = delivered.length ? `${Math.round((100 * onTime.length) / delivered.length)}%` : "–";
  const onShift = [...state.riders.values()].filter((r) => r.on_shift);
  $("#n-riders-idle").textContent = onShift.filter((r) => r.status === "idle").length;
  $("#n-riders-busy").textContent = onShift.filter((r) => r.status !== "idle").length;
  $("#n-open").textContent = [...state.orders.values()].filter(isOpen).length;
  $("#n-cancelled").textContent = recent.filter((o) => o.status === "cancelled").length;
  $("#n-refunds").textContent = [...state.orders.values()].filter((o) => o.payment_status === "refund_due").length;
}

// ----- actions -----

document.addEventListener("click", async (ev) => {
  const t = ev.target;
  if (t.matches("button.restock")) {
    const qty = parseInt(prompt(`Restock ${t.dataset.sku}: how many units arrived?`, "10") || "", 10);
    if (!(qty > 0)) return;
    try {
      await api(`/v1/stores/${encodeURIComponent(state.storeId)}/stock`, {
        method: "POST",
        body: JSON.stringify({ sku: t.dataset.sku, delta: qty, reason: "restock" }),
      });
    } catch (e) {
      alert(`Restock failed: ${e.message}`);
    }
  } else if (t.matches("#pause")) {
    let paused = null;
    if (!state.paused) {
      const reason = prompt("Pause new orders: why?", "short-staffed");
      if (!reason) return;
      paused = { reason };
    }
    try {
      const store = await api(`/v1/stores/${encodeURIComponent(state.storeId)}`, { method: "PATCH", body: JSON.stringify({ paused }) });
      renderStoreState(store);
    } catch (e) {
      alert(`Could not change the pause: ${e.message}`);
    }
  } else if (t.matches("button.pack")) {
    try {
      await api(`/v1/orders/${encodeURIComponent(t.dataset.order)}/packed`, { method: "POST" });
    } catch (e) {
      alert(`Could not mark packed: ${e.message}`);
    }
  }
});

$("#sign-in-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("#token").value.trim();
  localStorage.setItem("darkstore.token", state.token);
  start().catch((e) => showSignIn(e.message));
});
$("#sign-out").addEventListener("click", () => {
  localStorage.removeItem("darkstore.token");
  state.token = "";
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
  showSignIn();
});
$("#stock-filter").addEventListener("input", renderStock);
setInterval(tick, 1000);
setInterval(renderNumbers, 30000);
setInterval(renderForecast, 60000);

// A token in the URL fragment (#token=…) signs in directly, as `darkstore demo` prints it.
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  state.token = fromHash;
  localStorage.setItem("darkstore.token", fromHash);
  history.replaceState(null, "", location.pathname);
}
start().catch((e) => showSignIn(e.message));

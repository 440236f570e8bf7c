// The dashboard in a real browser (Debian's Chromium, driven by playwright-core) against a real
// darkstore server with its embedded MQTT broker. Run by `scripts/test`; `npm test` here after
// `cargo build` works too. DARKSTORE_BIN overrides the server binary; CHROMIUM the browser.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { createServer } from "node:http";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import mqtt from "mqtt";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.DARKSTORE_BIN || join(root, "target/debug/darkstore");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SECRET = "browser-test-secret-0123456789";
const STORE = { lat: 12.9719, lng: 77.6412 };

const b64 = (s) => Buffer.from(s).toString("base64url");
function token(claims) {
  const body = `${b64(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims }))}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}
const admin = token({ sub: "admin", role: "admin" });
const staff = token({ sub: "sam", role: "staff", store: "s1" });
const customer = token({ sub: "alice", role: "customer" });
const rider = token({ sub: "r1", role: "rider" });

const cleanups = [];
after(async () => {
  for (const f of cleanups.reverse()) await f();
});

async function startServer(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), "darkstore-browser-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const child = spawn(BIN, [
    "serve", "--http", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0",
    "--database-url", `sqlite://${dir}/test.db`, "--jwt-secret", SECRET, "--dispatch-tick-ms", "500", ...extra,
  ], { env: { ...process.env, DARKSTORE_LOG: "warn,rumqttd=off" }, stdio: ["ignore", "pipe", "inherit"] });
  cleanups.push(() => child.kill("SIGKILL"));
  const line = await new Promise((ok, fail) => {
    const rl = createInterface({ input: child.stdout });
    rl.once("line", ok);
    child.once("exit", (code) => fail(new Error(`darkstore exited with ${code}`)));
  });
  assert.match(line, /^darkstore ready http=\S+ mqtt=mqtt:\/\/\S+$/);
  return { http: `http://${line.match(/http=(\S+)/)[1]}`, mqtt: line.match(/mqtt=(\S+)/)[1] };
}

async function call(base, method, path, tok, body, headers = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${tok}`, "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

test("the dashboard follows riders, orders and stock live", async () => {
  const server = await startServer();
  await call(server.http, "PUT", "/v1/stores/s1", admin, { name: "Indiranagar", ...STORE });
  await call(server.http, "PUT", "/v1/catalog/milk", admin, { name: "Toned Milk 1 l", category: "dairy", price_minor: 2700 });
  await call(server.http, "POST", "/v1/stores/s1/stock", admin, { sku: "milk", delta: 10, reason: "restock" });
  await call(server.http, "PUT", "/v1/riders/r1", admin, { name: "Ravi", store_id: "s1" });

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  cleanups.push(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${server.http}/#token=${staff}`);
  await page.waitForSelector('#stock tr[data-sku="milk"]');
  assert.equal(await page.textContent('#stock tr[data-sku="milk"] .available'), "10");
  assert.match(await page.textContent("#store-name"), /Indiranagar/);

  // A rider position published over MQTT moves its marker.
  const client = await mqtt.connectAsync(server.mqtt, { username: "r1", password: rider, clientId: "r1:browser-test", reconnectPeriod: 0 });
  cleanups.push(() => client.endAsync());
  await client.publishAsync("riders/r1/shift", JSON.stringify({ on_shift: true }), { qos: 1 });
  const t0 = Date.now();
  await client.publishAsync("riders/r1/location", JSON.stringify({ lat: STORE.lat - 0.004, lng: STORE.lng, ts: t0 }), { qos: 1 });
  await page.waitForSelector("#rider-r1");
  const y1 = Number(await page.getAttribute("#rider-r1", "cy"));
  await client.publishAsync("riders/r1/location", JSON.stringify({ lat: STORE.lat + 0.004, lng: STORE.lng, ts: t0 + 60000 }), { qos: 1 });
  await page.waitForFunction((y) => Number(document.querySelector("#rider-r1").getAttribute("cy")) < y - 1, y1);

  // A new order appears in the queue with its timer running.
  const order = await call(server.http, "POST", "/v1/orders", customer,
    { lat: STORE.lat + 0.002, lng: STORE.lng, lines: [{ sku: "milk", qty: 2 }] }, { "idempotency-key": "browser-1" });
  const row = `#queue tr[data-order="${order.id}"]`;
  await page.waitForSelector(row);
  const timer1 = await page.textContent(`${row} .timer`);
  await page.waitForFunction((sel, t) => document.querySelector(sel)?.textContent !== t, `${row} .timer`, timer1, { timeout: 5000 });
  assert.match(await page.textContent(`${row} .timer`), /^-?\d+:\d\d$/);
  await page.waitForFunction(() => document.querySelector('#stock tr[data-sku="milk"] .available').textContent === "8");
  // The area's delivery fee (no surge with one order) and the next hours' forecast are on screen.
  assert.equal(await page.textContent("#n-fee"), "25.00");
  await page.waitForSelector("#forecast tbody tr:nth-child(6)");

  // The one rider takes it while it is picked, and its live ETA shows beside the promise; staff
  // mark it packed from the dashboard.
  await page.waitForFunction((sel) => /assigned/.test(document.querySelector(sel)?.textContent || ""), `${row} .status`);
  await page.waitForFunction((sel) => /\d\d:\d\d/.test(document.querySelector(sel)?.textContent || ""), `${row} .eta`);
  await page.click(`button.pack[data-order="${order.id}"]`);
  await page.waitForSelector(`button.pack[data-order="${order.id}"]`, { state: "detached" });

  // A restock from the dashboard changes the count on screen.
  page.once("dialog", (d) => d.accept("5"));
  await page.click('button.restock[data-sku="milk"]');
  await page.waitForFunction(() => document.querySelector('#stock tr[data-sku="milk"] .available').textContent === "13");
  assert.equal(await page.textContent("#n-orders-hour"), "1");

  // The customer cancels: the order leaves the queue and counts as cancelled; its units return.
  await call(server.http, "POST", `/v1/orders/${order.id}/cancel`, customer);
  await page.waitForSelector(row, { state: "detached" });
  await page.waitForFunction(() => document.querySelector("#n-cancelled").textContent === "1");
  await page.waitForFunction(() => document.querySelector('#stock tr[data-sku="milk"] .available').textContent === "15");

  // Staff pause the store from the dashboard: customers are told it is paused; then resume.
  await page.waitForFunction(() => document.querySelector("#store-open").textContent === "open");
  page.once("dialog", (d) => d.accept("inventory count"));
  await page.click("#pause");
  await page.waitForFunction(() => /paused: inventory count/.test(document.querySelector("#store-open").textContent));
  const paused = await call(server.http, "GET", `/v1/availability?lat=${STORE.lat}&lng=${STORE.lng}`, customer);
  assert.equal(paused.reason, "paused");
  await page.click("#pause");
  await page.waitForFunction(() => document.querySelector("#store-open").textContent === "open");

  mkdirSync(join(root, "artifacts"), { recursive: true });
  await page.screenshot({ path: join(root, "artifacts/dashboard.png"), fullPage: true });
  assert.deepEqual(errors, []);
});

// A page on another origin: a tiny static server on a port of its own.
async function staticOrigin() {
  const server = createServer((_, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>shop</title><p>shop</p>");
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  cleanups.push(() => new Promise((ok) => server.close(ok)));
  return `http://127.0.0.1:${server.address().port}`;
}

test("a browser app on an allowed origin calls the API; another origin is refused", async () => {
  const shop = await staticOrigin();
  const evil = await staticOrigin();
  const server = await startServer(["--cors-origin", shop]);
  await call(server.http, "PUT", "/v1/stores/s1", admin, { name: "Indiranagar", ...STORE });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"],
  });
  cleanups.push(() => browser.close());
  // A request with Authorization and JSON needs a preflight: the browser makes it, as for a real app.
  const fetchOrders = (page) => page.evaluate(async ([api, tok]) => {
    try {
      const r = await fetch(`${api}/v1/orders`, { headers: { authorization: `Bearer ${tok}`, "content-type": "application/json" } });
      return { status: r.status, body: await r.json(), requestId: r.headers.get("x-request-id") };
    } catch (e) {
      return { error: String(e) };
    }
  }, [server.http, customer]);
  const page = await browser.newPage();
  await page.goto(shop);
  const ok = await fetchOrders(page);
  assert.equal(ok.status, 200, JSON.stringify(ok));
  assert.deepEqual(ok.body.orders, []);
  assert.ok(ok.requestId, "an exposed header is readable");
  const other = await browser.newPage();
  await other.goto(evil);
  const refused = await fetchOrders(other);
  assert.ok(refused.error, `an origin not listed is refused by the browser: ${JSON.stringify(refused)}`);
});

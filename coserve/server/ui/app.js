// coserve dashboard: reads /ui/api/* (state polled, decisions streamed over SSE read with fetch,
// since EventSource cannot send the Authorization header). The API key, when the server wants one,
// is kept in this tab's sessionStorage and sent only as "Authorization: Bearer"; never in a URL.
// Every value from the server is written with textContent, never parsed as HTML.

const STATE_EVERY_MS = 1500;
const MAP_EVERY_MS = 5000;
const FEED_ROWS = 200;
const KEY_SLOT = "coserve.ui.key";

const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem(KEY_SLOT) || "";
let needKey = false;
const decisions = [];
const seen = { experts: new Set(), categories: new Set() };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

class Refused extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Error("the server is unreachable"); // the browser's own words ("Failed to fetch") say less
  }
  if (response.status === 401) throw new Refused("a valid API key is needed");
  return response;
}

async function json(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => null); // a proxy's error page is not JSON
  if (!response.ok) throw new Error(body?.error?.message || `HTTP ${response.status}`);
  if (body === null) throw new Error("the server's answer is not JSON");
  return body;
}

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function bar(fraction, tier = "") {
  const outer = el("div", { class: `bar ${tier}`, role: "presentation" });
  const inner = el("span");
  inner.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  outer.append(inner);
  return outer;
}

function share(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)}% (${part})` : "–";
}

function pill(id, text, kind) {
  const node = $(id);
  node.textContent = text;
  node.className = `pill ${kind}`;
}

// -- the key ----------------------------------------------------------------------------------
function askForKey(message) {
  needKey = true;
  $("key-form").hidden = false;
  $("key-message").textContent = message;
  pill("server-status", "locked: API key needed", "warn");
}

function keyAccepted() {
  $("key-message").textContent = needKey ? "key accepted" : "";
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key = $("api-key").value.trim();
  $("api-key").value = "";
  sessionStorage.setItem(KEY_SLOT, key);
  start();
});

$("forget-key").addEventListener("click", () => {
  key = "";
  sessionStorage.removeItem(KEY_SLOT);
  stopFeed();
  askForKey("key forgotten");
});

// -- experts and memory -------------------------------------------------------------------------
let lastState = null;

function renderState(state) {
  lastState = state;
  pill("server-status", state.status === "ok" ? `serving · ${state.residency}` : state.status,
    state.status === "ok" ? "ok" : "warn");
  const memory = $("memory");
  memory.replaceChildren();
  for (const [tier, used, budget] of [
    ["ACTIVE", state.memory.active_bytes, state.memory.active_budget_bytes],
    ["RAM", state.memory.ram_bytes, state.memory.ram_budget_bytes],
  ]) {
    memory.append(el("div", {},
      el("div", { class: "muted" }, `${tier}: ${bytes(used)} of ${bytes(budget)}`),
      bar(budget ? used / budget : 0, tier)));
  }
  memory.append(el("div", { class: "muted" },
    `pending ${state.pending} · switches ${state.switches} · feed viewers ${state.feed_subscribers}`));
  const body = $("experts").tBodies[0];
  body.replaceChildren();
  const answered = decisions.filter((d) => d.status === "200");
  for (const e of state.experts) {
    const name = e.tier.toUpperCase();
    const tier = el("span", { class: `tier ${name}${e.loading ? " loading" : ""}`, "data-tier": e.tier },
      e.loading ? `${name} (moving)` : name);
    const error = e.last_error || e.unavailable || (e.backoff_s > 0 ? `backing off ${e.backoff_s}s` : "");
    body.append(el("tr", { "data-expert": e.name },
      el("th", { scope: "row" }, e.name, el("div", { class: "muted" }, `${e.backend} · ${e.params_b}B · ctx ${e.context}`)),
      el("td", {}, tier),
      el("td", {}, bytes(e.weights_bytes)),
      el("td", {}, e.in_flight), el("td", {}, e.queued),
      el("td", {}, share(answered.filter((d) => d.expert === e.name).length, answered.length)), el("td", {}, e.loads), el("td", {}, e.evictions),
      el("td", {}, `${e.hits} / ${e.misses}`),
      el("td", { class: "error" }, error || "–")));
    addOption("filter-expert", seen.experts, e.name);
  }
}

async function pollState() {
  try {
    renderState(await json("/ui/api/state"));
    keyAccepted();
    return true;
  } catch (error) {
    if (error instanceof Refused) askForKey(key ? "that key was refused" : "this server needs an API key");
    else pill("server-status", "unreachable", "bad");
    return false;
  }
}

// -- the live feed --------------------------------------------------------------------------------
let feedAbort = null;

function stopFeed() {
  if (feedAbort) feedAbort.abort();
  feedAbort = null;
  pill("feed-status", "feed: off", "");
}

function addOption(selectId, set, value) {
  if (!value || set.has(value)) return;
  set.add(value);
  $(selectId).append(el("option", { value }, value));
}

function feedRow(d, fresh) {
  const time = new Date(d.time * 1000).toLocaleTimeString([], { hour12: false });
  const category = d.category ? `${d.category} ${(d.confidence * 100).toFixed(0)}%` : "– (pinned)";
  const reasonClass = d.reason.startsWith("fallback") ? "reason fallback" : "reason";
  const tokens = d.completion_tokens == null ? "–" : `${d.prompt_tokens} → ${d.completion_tokens}`;
  const fallback = d.fallback_from.length ? `${d.fallback_from.join(", ")} → ${d.expert}` : "–";
  return el("tr", { class: fresh ? "new" : "", "data-expert": d.expert, "data-category": d.category || "" },
    el("td", {}, time), el("td", {}, category), el("td", {}, d.expert),
    el("td", {}, el("span", { class: reasonClass }, d.reason)), el("td", {}, fallback),
    el("td", {}, d.ttft_s == null ? "–" : `${Math.round(d.ttft_s * 1000)} ms`),
    el("td", {}, tokens), el("td", {}, d.status));
}

function renderFeed(fresh = null) {
  const expert = $("filter-expert").value;
  const category = $("filter-category").value;
  const shown = decisions.filter((d) => (!expert || d.expert === expert) && (!category || d.category === category));
  $("feed").tBodies[0].replaceChildren(...shown.map((d) => feedRow(d, d === fresh)));
  const dropped = decisions.length ? decisions[0].dropped : 0;
  $("feed-count").textContent = `${shown.length} of ${decisions.length} shown` + (dropped ? ` · ${dropped} dropped` : "");
}

function onDecision(d) {
  if (decisions.some((x) => x.id === d.id)) return; // replayed after a reconnect
  decisions.unshift(d);
  decisions.length = Math.min(decisions.length, FEED_ROWS);
  addOption("filter-expert", seen.experts, d.expert);
  addOption("filter-category", seen.categories, d.category);
  renderFeed(d);
  if (lastState) renderState(lastState); // the experts' share of the feed
}

async function runFeed() {
  stopFeed();
  const controller = new AbortController();
  feedAbort = controller;
  let wait = 1000;
  while (!controller.signal.aborted) {
    try {
      const response = await api("/ui/api/events", { signal: controller.signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      pill("feed-status", "feed: live", "ok");
      wait = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) onDecision(JSON.parse(data));
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof Refused) { askForKey("that key was refused"); stopFeed(); return; }
    }
    if (controller.signal.aborted) return;
    pill("feed-status", "feed: reconnecting", "warn");
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = Math.min(wait * 2, 15000);
  }
}

$("filter-expert").addEventListener("change", () => renderFeed());
$("filter-category").addEventListener("change", () => renderFeed());

// -- try a prompt ---------------------------------------------------------------------------------
$("route-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("route-result");
  out.replaceChildren(el("p", { class: "muted" }, "routing…"));
  try {
    const d = await json("/ui/api/route", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: $("prompt").value }),
    });
    const probs = el("div", { class: "probs", role: "list", "aria-label": "category probabilities" });
    for (const [category, p] of Object.entries(d.probabilities)) {
      probs.append(el("span", { role: "listitem" }, category), bar(p), el("span", { class: "muted" }, p.toFixed(3)));
    }
    out.replaceChildren(
      el("p", { class: "decision" }, "→ ", el("strong", { id: "route-expert" }, d.expert),
        ` · ${d.category ?? "–"} ${(d.confidence * 100).toFixed(1)}% `,
        el("span", { class: d.reason.startsWith("fallback") ? "reason fallback" : "reason" }, d.reason)),
      d.alternatives.length ? el("p", { class: "muted" }, `then: ${d.alternatives.join(", ")}`) : "",
      probs);
  } catch (error) {
    out.replaceChildren(el("p", { class: "message", role: "alert" }, error.message));
  }
});

// -- the map and the front ------------------------------------------------------------------------
function frontPlot(m, current) {
  const W = 460, H = 240, L = 46, R = 40, T = 22, B = 36;
  const points = [...m.front.map((p) => [p.avg_cost, p.quality]),
    ...Object.values(m.singles).map((s) => [s.avg_cost, s.quality])];
  if (current) points.push([current.avg_cost, current.quality]);
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "front", role: "img",
    "aria-label": "quality/cost front: expected quality against average cost" });
  plot.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  const label = (x, y, text, anchor = "middle", cls = "") => {
    const t = svg("text", { x, y, "text-anchor": anchor, class: cls });
    t.textContent = text;
    plot.append(t);
  };
  label((L + W - R) / 2, H - 4, `average cost (${m.unit})`);
  label(L - 6, T + 4, y1.toFixed(2), "end");
  label(L - 6, H - B + 4, y0.toFixed(2), "end");
  label(L, H - B + 16, x0.toFixed(2), "middle");
  label(W - R, H - B + 16, x1.toFixed(2), "middle");
  const yTitle = svg("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(T + H - B) / 2})` });
  yTitle.textContent = "quality";
  plot.append(yTitle);
  const sorted = [...m.front].sort((a, b) => a.avg_cost - b.avg_cost);
  plot.append(svg("polyline", { class: "line", points: sorted.map((p) => `${sx(p.avg_cost)},${sy(p.quality)}`).join(" ") }));
  for (const p of sorted) plot.append(svg("circle", { cx: sx(p.avg_cost), cy: sy(p.quality), r: 3, class: "point" }));
  for (const [name, s] of Object.entries(m.singles)) {
    const x = sx(s.avg_cost), y = sy(s.quality);
    plot.append(svg("circle", { cx: x, cy: y, r: 4.5, class: "single" }));
    label(x + 8, y - 8, name, x > W - R - 30 ? "end" : "start", "name");
  }
  if (current) {
    const x = sx(current.avg_cost), y = sy(current.quality);
    plot.append(svg("circle", { cx: x, cy: y, r: 6.5, class: "current" }));
    label(x + 9, y + 16, "now", "start", "now");
  }
  const legend = el("p", { class: "muted legend" }, el("span", {}, el("i", { class: "front-dot" }), "the front (best map per cost)"),
    el("span", {}, el("i", { class: "single-dot" }), "one expert for everything"),
    el("span", {}, el("i", { class: "now-dot" }), "the map serving now"));
  return [plot, legend];
}

function budgetLine(budget) {
  // The live budget controller (router.online): the map in force moves with the cost weight.
  const unit = budget.axis === "price" ? "USD/M" : "B params";
  const realised = budget.realised == null ? "nothing served yet" : `${budget.realised.toFixed(3)} ${unit}`;
  return el("p", { id: "budget" }, el("strong", {}, "Budget controller: "),
    `target ${budget.target.toFixed(3)} ${unit}, realised over the window ${realised}, `
    + `cost weight ${budget.weight.toFixed(3)}, map version ${budget.map_version}`);
}

function renderMap(data) {
  const box = $("map");
  const measured = data.measured && !data.measured.error ? data.measured : null;
  if (data.budget) data = { ...data, map: data.budget.map };  // the online map is the one serving
  const head = el("tr", {}, el("th", { scope: "col" }, "Category"), el("th", { scope: "col" }, "Expert"));
  if (measured) for (const e of measured.experts) head.append(el("th", { scope: "col" }, e));
  if (measured) head.append(el("th", { scope: "col" }, "n"));
  const rows = data.categories.map((c) => {
    const row = el("tr", {}, el("th", { scope: "row" }, c), el("td", {}, el("strong", {}, data.map[c] ?? "–")));
    if (measured) {
      const k = measured.categories.indexOf(c);
      measured.experts.forEach((e, j) => {
        row.append(el("td", { class: e === data.map[c] ? "chosen" : "" }, k >= 0 ? measured.S[k][j].toFixed(3) : "–"));
      });
      row.append(el("td", { class: "muted" }, k >= 0 ? Math.max(...measured.n[k]) : "–"));
    }
    return row;
  });
  const table = el("table", {}, el("caption", { class: "sr-only" }, "category to expert map"), el("thead", {}, head),
    el("tbody", {}, ...rows));
  const parts = [el("div", { class: "scroll" }, table),
    el("p", { class: "muted" }, `below ${data.fallback.min_confidence} confidence: ${data.fallback.expert}`)];
  if (data.budget) parts.unshift(budgetLine(data.budget));
  if (measured) {
    const current = measured.maps[0];
    parts.push(el("p", { class: "muted" }, `measured mean scores; now: quality ${current.quality.toFixed(3)} at `
      + `${current.avg_cost.toFixed(3)} ${measured.unit}` + (current.budget == null ? "" : ` (budget ${current.budget})`)));
    parts.push(...frontPlot(measured, current));
  } else {
    parts.push(el("p", { class: "muted" }, data.measured?.error || (data.source === "trained"
      ? "This library routes with a trained router (router.trained): no measured table or front."
      : "This library's map is written by hand (no router.outcomes): no measured table or front.")));
  }
  box.replaceChildren(...parts);
  for (const c of data.categories) addOption("filter-category", seen.categories, c);
}

// -- start ------------------------------------------------------------------------------------------
let poller = null;
let mapPoller = null;

async function start() {
  if (!(await pollState())) return;
  keyAccepted();
  let live = false;
  const loadMap = async () => {
    try {
      const data = await json("/ui/api/map");
      live = Boolean(data.budget);
      renderMap(data);
    } catch (error) { $("map").textContent = error.message; }
  };
  await loadMap();
  if (poller) clearInterval(poller);
  poller = setInterval(pollState, STATE_EVERY_MS);
  if (mapPoller) clearInterval(mapPoller);
  mapPoller = live ? setInterval(loadMap, MAP_EVERY_MS) : null;  // the online map and its weight move with traffic
  runFeed();
}

start();

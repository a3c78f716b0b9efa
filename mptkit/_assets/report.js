// mptkit report: draws the page from the JSON in #mptkit-data. Every text from the bank reaches the
// page as a text node (textContent, canvas fillText, SVG text), never as markup; nothing is fetched.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("mptkit-data").textContent);
  const SVGNS = document.getElementById("prov").namespaceURI;
  const tasks = D.tasks || [];
  const T = tasks.length;
  const tip = document.getElementById("tip");

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }
  const bdi = (text) => el("bdi", {}, text);
  const n = (x) => (typeof x === "string" ? Number(x) : x === null || x === undefined ? NaN : x);
  function fmt(x, digits) {
    const v = n(x);
    if (x === null || x === undefined) return "\u2013";
    if (!Number.isFinite(v)) return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
    return v.toPrecision(digits || 4);
  }

  // -- summary ---------------------------------------------------------------------------------
  document.getElementById("title").textContent = D.title;
  const S = D.summary;
  const p = S.parameters;
  const facts = [
    ["format", S.format || "\u2013"],
    ["kind", S.kind],
    ["dtype", S.dtype],
    ["tasks T", fmt(S.num_tasks) + (S.named ? " (named)" : " (no names: shown by index)")],
    ["prompt rows N", fmt(S.N) + (S.num_virtual_tokens && S.num_transformer_submodules
      ? ` (${S.num_virtual_tokens} virtual tokens \u00d7 ${S.num_transformer_submodules} submodule(s))` : "")],
    ["rank r", fmt(S.r)],
    ["hidden size d", fmt(S.d)],
    ["parameters", `${fmt(p.total)} (shared ${fmt(p.shared)}, per task ${fmt(p.per_task)}` +
      (p.saving !== null ? `; ${(100 * n(p.saving)).toFixed(1)}% fewer than ${fmt(p.as_separate_prompts)} in separate prompts)` : ")")],
    ["task type", S.task_type || "not recorded"],
    ["base model", S.base_model || "not recorded"],
    ["non-finite values", Object.entries(S.nonfinite).map(([k, v]) => `${k} ${fmt(v)}`).join(", ")],
    ["prompt_embeddings norm", fmt(S.prompt_embeddings_norm)],
  ];
  const dl = document.getElementById("facts");
  for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, v));
  const tensors = document.getElementById("tensors");
  tensors.append(el("tr", {}, el("th", {}, "tensor"), el("th", {}, "shape"), el("th", {}, "dtype")));
  for (const [k, v] of Object.entries(S.tensors)) {
    tensors.append(el("tr", {}, el("td", {}, k), el("td", {}, "[" + v.shape.join(", ") + "]"), el("td", {}, v.dtype)));
  }
  const cfg = document.getElementById("config");
  const cfgItems = Object.entries(D.config);
  if (!cfgItems.length) cfg.append(el("tr", {}, el("td", {}, "no adapter_config.json")));
  for (const [k, v] of cfgItems) cfg.append(el("tr", {}, el("td", {}, bdi(k)), el("td", {}, bdi(v))));
  const notes = document.getElementById("notes");
  for (const t of S.notes) notes.append(el("li", {}, t));

  // -- provenance: sources (left) feed operations (right), each operation feeds the next ---------
  (function provenance() {
    const svg = document.getElementById("prov");
    const svgEl = (tag, attrs, text) => {
      const e = document.createElementNS(SVGNS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
      if (text !== undefined) e.textContent = text;
      return e;
    };
    const short = (t, k) => (t.length > k ? t.slice(0, k - 1) + "\u2026" : t);
    const box = (x, y, w, h, cls, label, full) => {
      const g = svgEl("g", {});
      g.append(svgEl("title", {}, full), svgEl("rect", { x, y, width: w, height: h, rx: 5, class: cls }));
      g.append(svgEl("text", { x: x + 8, y: y + 17 }, short(label, 34)));
      svg.append(g);
    };
    const P = D.provenance;
    if (!P.length) {
      document.getElementById("prov-note").textContent =
        "No provenance recorded (the bank was trained or saved outside mptkit, or by PEFT, which drops it).";
      svg.setAttribute("height", "0");
      return;
    }
    const W = 260, H = 26, gap = 16;
    let y = 10;
    let prev = null;
    for (const [i, e] of P.entries()) {
      const srcs = e.sources.length ? e.sources : [];
      const band = Math.max(H, srcs.length * (H + 6) - 6);
      const oy = y + (band - H) / 2;
      srcs.forEach((s, j) => {
        const sy = y + j * (H + 6);
        box(10, sy, W, H, "src", s.name, `${s.name}${s.sha256 ? " sha256 " + s.sha256 : ""}`);
        svg.append(svgEl("line", { x1: 10 + W, y1: sy + H / 2, x2: W + 60, y2: oy + H / 2 }));
      });
      const args = Object.entries(e.arguments).map(([k, v]) => `${k}=${v}`).join(", ");
      box(W + 60, oy, W, H, "op", `${i + 1}. ${e.operation}`, `${e.operation}(${args})${e.version ? " mptkit " + e.version : ""}`);
      if (prev !== null) svg.append(svgEl("line", { x1: W + 60 + W / 2, y1: prev + H, x2: W + 60 + W / 2, y2: oy }));
      prev = oy;
      y += band + gap;
    }
    box(W + 60, y, W, H, "out", "this bank", D.title);
    svg.append(svgEl("line", { x1: W + 60 + W / 2, y1: prev + H, x2: W + 60 + W / 2, y2: y }));
    svg.setAttribute("width", String(2 * W + 80));
    svg.setAttribute("height", String(y + H + 10));
  })();

  // -- colours: a diverging scale for cosines (-1 blue, 0 light, +1 red); grey for no cosine -----
  const STOPS = [[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]];
  function colour(c) {
    if (c === null || !Number.isFinite(c)) return [160, 160, 160];
    const t = (Math.max(-1, Math.min(1, c)) + 1) * 2;
    const i = Math.min(3, Math.floor(t));
    const f = t - i, a = STOPS[i], b = STOPS[i + 1];
    return [0, 1, 2].map((k) => Math.round(a[k] + f * (b[k] - a[k])));
  }
  function unpack(b64) {
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    const v = new DataView(bytes.buffer);
    const out = new Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) {
      const q = v.getInt16(2 * i, true);
      out[i] = q === -32768 ? null : q / 10000;
    }
    return out;
  }
  function showTip(ev, parts) {
    tip.replaceChildren(...parts.map((x) => (x instanceof Node ? x : document.createTextNode(x))));
    tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 430) + "px";
    tip.style.top = ev.clientY + 14 + "px";
  }
  const hideTip = () => { tip.style.display = "none"; };
  const name = (k) => tasks[k].name;
  const cosText = (c) => (c === null ? "no cosine (a zero or non-finite prompt)" : c.toFixed(4));

  // -- heatmap ----------------------------------------------------------------------------------
  (function heatmapView() {
    const H = D.heatmap;
    const canvas = document.getElementById("heatmap");
    const note = document.getElementById("heat-note");
    if (!H) { note.textContent = "No tasks to compare."; canvas.remove(); return; }
    const cells = H.cells, size = H.size, order = D.order;
    const mean = unpack(H.mean), lo = H.min ? unpack(H.min) : null, hi = H.max ? unpack(H.max) : null;
    note.textContent = size === 1
      ? `Cosine similarity of the full prompts, ${T} task(s) in clustered order (average linkage on 1 \u2212 cosine). Hover a cell for the two tasks.`
      : `${T} tasks in clustered order, drawn as ${cells} \u00d7 ${cells} blocks of up to ${size} tasks: each cell is the mean cosine of its block pair (hover for min and max). The table lists every task's ${D.limits.top_k} nearest tasks.`;
    const longest = size === 1 && cells <= 60 ? Math.max(...order.map((k) => Math.min(18, name(k).length))) : 0;
    const label = longest ? Math.round(Math.min(130, 16 + 7 * longest)) : 0;
    const side = Math.min(640, Math.max(360, cells * 4));
    const dpr = window.devicePixelRatio || 1;
    canvas.width = (side + label) * dpr;
    canvas.height = (side + label) * dpr;
    canvas.style.width = side + label + "px";
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    const off = document.createElement("canvas");
    off.width = cells; off.height = cells;
    const og = off.getContext("2d");
    const img = og.createImageData(cells, cells);
    for (let i = 0; i < cells * cells; i++) {
      const c = colour(mean[i]);
      img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2]; img.data[4 * i + 3] = 255;
    }
    og.putImageData(img, 0, 0);
    g.imageSmoothingEnabled = false;
    g.drawImage(off, label, label, side, side);
    if (label) {
      g.fillStyle = "#1d2430";
      g.font = "11px system-ui, sans-serif";
      const step = side / cells;
      const cutName = (t) => (t.length > 18 ? t.slice(0, 17) + "\u2026" : t);
      for (let i = 0; i < cells; i++) {
        g.textAlign = "right"; g.textBaseline = "middle";
        g.fillText(cutName(name(order[i])), label - 4, label + (i + 0.5) * step, label - 6);
        g.save(); g.translate(label + (i + 0.5) * step, label - 4); g.rotate(-Math.PI / 2);
        g.textAlign = "left"; g.fillText(cutName(name(order[i])), 0, 0, label - 6); g.restore();
      }
    }
    const block = (i) => {
      const a = i * size, b = Math.min(T, a + size) - 1;
      return a === b ? [bdi(name(order[a]))] : [bdi(name(order[a])), " \u2026 ", bdi(name(order[b])), ` (${b - a + 1} tasks)`];
    };
    canvas.addEventListener("mousemove", (ev) => {
      const r = canvas.getBoundingClientRect(), scale = r.width / (side + label);
      const x = (ev.clientX - r.left) / scale - label, y = (ev.clientY - r.top) / scale - label;
      if (x < 0 || y < 0 || x >= side || y >= side) return hideTip();
      const i = Math.floor((y / side) * cells), j = Math.floor((x / side) * cells);
      const k = i * cells + j;
      const parts = [...block(i), " \u00d7 ", ...block(j), ": "];
      if (size === 1) parts.push("cosine " + cosText(mean[k]));
      else parts.push(`mean cosine ${cosText(mean[k])}, min ${cosText(lo[k])}, max ${cosText(hi[k])}`);
      showTip(ev, parts);
    });
    canvas.addEventListener("mouseleave", hideTip);
    const legend = document.getElementById("heat-legend");
    const bar = document.createElement("canvas");
    bar.width = 200; bar.height = 12;
    const bg = bar.getContext("2d");
    for (let x = 0; x < 200; x++) { const c = colour(x / 99.5 - 1); bg.fillStyle = `rgb(${c})`; bg.fillRect(x, 0, 1, 12); }
    legend.append("\u22121", bar, "+1 cosine; grey: none");
  })();

  // -- 2-D map ----------------------------------------------------------------------------------
  (function mapView() {
    const canvas = document.getElementById("map");
    if (!T) { canvas.remove(); return; }
    const side = 480, pad = 16, dpr = window.devicePixelRatio || 1;
    canvas.width = side * dpr; canvas.height = side * dpr;
    canvas.style.width = side + "px";
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    g.fillStyle = "#fff"; g.fillRect(0, 0, side, side);
    const xs = tasks.map((t) => n(t.xy[0])), ys = tasks.map((t) => n(t.xy[1]));
    const range = (v) => { let a = Infinity, b = -Infinity; for (const x of v) if (Number.isFinite(x)) { a = Math.min(a, x); b = Math.max(b, x); } return a < b ? [a, b] : [a - 1, a + 1]; };
    const [x0, x1] = range(xs), [y0, y1] = range(ys);
    const px = tasks.map((t, k) => [pad + ((xs[k] - x0) / (x1 - x0)) * (side - 2 * pad), side - pad - ((ys[k] - y0) / (y1 - y0)) * (side - 2 * pad)]);
    const rad = T > 500 ? 2 : 4;
    tasks.forEach((t, k) => {
      const ok = Number.isFinite(n(t.prompt_norm)) && n(t.prompt_norm) > 0;
      g.fillStyle = ok ? `hsl(${Math.round((300 * t.cluster_position) / Math.max(1, T))}, 70%, 45%)` : "#999";
      g.beginPath(); g.arc(px[k][0], px[k][1], rad, 0, 2 * Math.PI); g.fill();
    });
    canvas.addEventListener("mousemove", (ev) => {
      const r = canvas.getBoundingClientRect();
      const x = ((ev.clientX - r.left) * side) / r.width, y = ((ev.clientY - r.top) * side) / r.height;
      let best = -1, bd = 64;
      px.forEach(([a, b], k) => { const dd = (a - x) ** 2 + (b - y) ** 2; if (dd < bd) { bd = dd; best = k; } });
      if (best < 0) return hideTip();
      const t = tasks[best];
      showTip(ev, [bdi(t.name), ` (task ${t.index})`]);
    });
    canvas.addEventListener("mouseleave", hideTip);
  })();

  // -- task table: sorts (click a heading) and filters (name or index; non-finite only) --------
  (function tableView() {
    const MAX_ROWS = 500;
    const cols = [
      ["index", "#", true], ["name", "name", false], ["prompt_norm", "prompt norm", true],
      ["cols_norm", "cols norm", true], ["rows_norm", "rows norm", true], ["nonfinite", "non-finite", true],
      ["rank_used", `rank used (of ${S.r})`, true], ["effective_rank", "effective rank", true],
      ["sv", "singular values of cols @ rows", false], ["nearest", "nearest tasks (cosine)", false],
    ];
    const table = document.getElementById("task-table");
    const head = el("tr", {});
    let key = "index", dir = 1;
    for (const [k, label, numeric] of cols) {
      const th = el("th", { "data-key": k, class: numeric ? "num" : "" }, label);
      th.addEventListener("click", () => { dir = key === k ? -dir : 1; key = k; render(); });
      head.append(th);
    }
    table.tHead.append(head);
    const body = table.tBodies[0];
    const filter = document.getElementById("filter"), bad = document.getElementById("only-bad");
    const count = document.getElementById("count");
    filter.addEventListener("input", render);
    bad.addEventListener("change", render);
    function sortValue(t) {
      if (key === "name") return t.name.toLowerCase();
      if (key === "sv") return t.sv ? n(t.sv[0]) : NaN;
      if (key === "nearest") return t.nearest.length ? n(t.nearest[0][1]) : NaN;
      return n(t[key]);
    }
    function cmp(a, b) {
      const x = sortValue(a), y = sortValue(b);
      const xn = typeof x === "number" && Number.isNaN(x), yn = typeof y === "number" && Number.isNaN(y);
      if (xn || yn) return xn === yn ? a.index - b.index : xn ? 1 : -1;
      return (x < y ? -1 : x > y ? 1 : a.index - b.index) * dir;
    }
    function row(t) {
      const tr = el("tr", {});
      const cell = (v, cls) => tr.append(el("td", { class: cls || "num" }, v));
      cell(String(t.index));
      tr.append(el("td", { class: "name" }, bdi(t.name)));
      cell(fmt(t.prompt_norm)); cell(fmt(t.cols_norm)); cell(fmt(t.rows_norm));
      cell(fmt(t.nonfinite), t.nonfinite ? "num bad" : "num");
      cell(fmt(t.rank_used)); cell(fmt(t.effective_rank, 3));
      const bars = el("span", { class: "bars", title: t.sv ? t.sv.map((s) => fmt(s, 3)).join(", ") : "not finite" });
      if (t.sv) {
        const top = n(t.sv[0]) || 1;
        for (const s of t.sv) { const b = el("span", {}); b.style.height = Math.max(1, Math.round((18 * n(s)) / top)) + "px"; bars.append(b); }
      }
      tr.append(el("td", {}, bars, t.sv ? " " + t.sv.slice(0, 3).map((s) => fmt(s, 3)).join(" ") : "not finite"));
      const near = el("td", {});
      t.nearest.slice(0, 3).forEach(([j, c], i) => {
        const full = tasks[j].name, b = bdi(full.length > 40 ? full.slice(0, 39) + "\u2026" : full);
        b.setAttribute("title", full);
        if (i) near.append("; ");
        near.append(b, ` ${fmt(c, 3)}`);
      });
      tr.append(near);
      return tr;
    }
    function render() {
      for (const th of head.children) {
        if (th.dataset.key === key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
        else th.removeAttribute("aria-sort");
      }
      const q = filter.value.trim().toLowerCase();
      let shown = tasks.filter((t) => (!q || t.name.toLowerCase().includes(q) || String(t.index) === q) && (!bad.checked || t.nonfinite > 0));
      shown = shown.slice().sort(cmp);
      body.replaceChildren(...shown.slice(0, MAX_ROWS).map(row));
      count.textContent = shown.length > MAX_ROWS
        ? `showing ${MAX_ROWS} of ${shown.length} matching tasks (of ${T}); filter or sort to see others`
        : `${shown.length} of ${T} task(s)`;
    }
    render();
  })();
  document.body.setAttribute("data-ready", "1");
})();

/* leakyspanner dashboard: vanilla JS, no framework, no network beyond the serving host.
 *
 * Every string that comes from a log (routes, file names, host names, headlines)
 * reaches the page through text nodes only: there is no innerHTML anywhere.
 * Served by `leakyspanner inspect` it reads the JSON API; inside a saved report
 * it reads the JSON embedded in the page (the element with id "leakyspanner-data").
 */
"use strict";

(function () {
  const MB = 1024 * 1024;
  const POLL_MS = 3000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const dataBlock = document.getElementById("leakyspanner-data");
  const REPORT = dataBlock ? JSON.parse(dataBlock.textContent) : null;
  // A saved `report --compare --html` page also carries its before/after comparison.
  const compareBlock = document.getElementById("leakyspanner-compare");
  const COMPARE = compareBlock ? JSON.parse(compareBlock.textContent) : null;

  // ------------------------------------------------------------------ DOM
  function setAttrs(el, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) throw new Error("no inline handlers: " + name);
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) append(el, child);
      else el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  /** An HTML element; string children become text nodes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  /** An SVG element. */
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  // ----------------------------------------------------------- formatting
  const numberFormat = new Intl.NumberFormat("en-US");

  function isNum(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  // Units and rounding come with every payload (leakyspanner/formatting.py), so the page and the
  // terminal report write a size or a duration the same way; figures the server sent as text
  // ("labels") are shown as sent.
  let UNITS = null;

  function learnUnits(payload) {
    if (payload && payload.units) UNITS = payload.units;
    return payload;
  }

  function fmtBytes(n, signed) {
    if (!isNum(n) || !UNITS) return "–";
    const sign = signed && n > 0 ? "+" : n < 0 ? "-" : "";
    const a = Math.abs(n);
    const [scale, unit, decimals] = UNITS.bytes.find((u) => a >= u[0] || u[0] === 1);
    return sign + (a / scale).toFixed(decimals) + " " + unit;
  }

  function exact(n, unit) {
    if (!isNum(n)) return "no value";
    const text = Number.isInteger(n) ? numberFormat.format(n) : String(n);
    return unit ? text + " " + unit : text;
  }

  function fmtDuration(sec) {
    if (!isNum(sec) || !UNITS) return "–";
    const sign = sec < 0 ? "-" : "";
    const a = Math.abs(sec);
    for (const [below, per, unit, decimals] of UNITS.short_durations) {
      const rounded = Number((a / per).toFixed(decimals));
      if (rounded * per < below) return sign + rounded.toFixed(decimals) + " " + unit;
    }
    const total = Math.round(a);
    const hours = Math.floor(total / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const pad = (v) => String(v).padStart(2, "0");
    return sign + (hours ? hours + " h " + pad(minutes) + " min" : minutes + " min " + pad(total % 60) + " s");
  }

  function fmtClock(sec) {
    if (!isNum(sec)) return "–";
    const total = Math.max(0, Math.round(sec));
    const pad = (v) => String(v).padStart(2, "0");
    return Math.floor(total / 3600) + ":" + pad(Math.floor((total % 3600) / 60)) + ":" + pad(total % 60);
  }

  function fmtTime(ts) {
    if (!isNum(ts)) return "–";
    const d = new Date(ts * 1000);
    const pad = (v) => String(v).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function fmtRatio(v) {
    return isNum(v) ? (v * 100).toFixed(1) + " %" : "–";
  }

  function fmtNumber(v) {
    if (!isNum(v)) return "–";
    return Number.isInteger(v) ? numberFormat.format(v) : numberFormat.format(Math.round(v * 100) / 100);
  }

  /** [text shown, exact value for the title] of a table cell; `label` is the server's text for it. */
  function fmtCell(value, unit, label) {
    if (value === null || value === undefined) return ["–", "no value"];
    if (typeof label === "string") {
      return [label, isNum(value) ? exact(value, unit === "seconds" ? "s" : unit) : String(value)];
    }
    switch (unit) {
      case "bytes": return [fmtBytes(value, false), exact(value, "bytes")];
      case "seconds": return [fmtDuration(value), exact(value, "s")];
      case "ratio": return [fmtRatio(value), exact(value)];
      case "number": return [fmtNumber(value), exact(value)];
      case "bool": return [value ? "yes" : "no", String(value)];
      case "id": return [String(value), String(value)];
      default: return [String(value), String(value)];
    }
  }

  const STATUS_CLASS = {
    "leaking": "bad", "possible leak": "warn", "plateau": "warn", "sawtooth": "warn", "no leak": "good",
    "not enough data": "muted", "error": "bad",
  };

  function badge(status, testid) {
    return h("span", {class: "badge " + (STATUS_CLASS[status] || "muted"), "data-testid": testid || "status-badge",
                      "data-status": status}, status || "unknown");
  }

  // ------------------------------------------------------------------ API
  async function getJSON(url) {
    const response = await fetch(url, {cache: "no-store", headers: {Accept: "application/json"}});
    if (response.status === 204) return null;
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) throw new Error((body && body.error) || ("HTTP " + response.status));
    return body;
  }

  function query(params) {
    return new URLSearchParams(params).toString();
  }

  const serverApi = {
    report: false,
    sessions: () => getJSON("/api/sessions").then(learnUnits),
    fleet: () => getJSON("/api/fleet"),
    session: (id, since) => getJSON("/api/sessions/" + encodeURIComponent(id) + (since ? "?" + query({since}) : ""))
      .then(learnUnits),
    endpoint: (id, method, route) =>
      getJSON("/api/sessions/" + encodeURIComponent(id) + "/endpoint?" + query({method, route})).then(learnUnits),
    diff: (id, a, b) => getJSON("/api/sessions/" + encodeURIComponent(id) + "/diff?" + query({a, b})),
    compare: (before, after) => getJSON("/api/compare?" + query({before, after})).then(learnUnits),
  };

  function reportApi(data) {
    const missing = (what) => Promise.reject(new Error(what + " is not in this saved report"));
    return {
      report: true,
      sessions: () => Promise.resolve({root: data.title, follow: false, problems: [], sessions: data.sessions}),
      fleet: () => Promise.resolve({fleet: data.fleet || null}),
      session: (id, since) => since ? Promise.resolve(null) :
        (data.details[id] ? Promise.resolve(data.details[id]) : missing("session " + id)),
      endpoint: (id, method, route) => {
        const found = (data.endpoints[id] || {})[method + " " + route];
        return found ? Promise.resolve(found) : missing("endpoint " + method + " " + route);
      },
      diff: (id, a, b) => {
        const found = (data.diffs[id] || {})[a + ":" + b];
        return found ? Promise.resolve(found) : missing("the diff of snapshots " + a + " and " + b);
      },
      compare: (before, after) => {
        const saved = COMPARE && COMPARE.before.session.session_id === before &&
          COMPARE.after.session.session_id === after;
        return saved ? Promise.resolve(COMPARE) : missing("the comparison of " + before + " and " + after);
      },
    };
  }

  const api = REPORT ? reportApi(learnUnits(REPORT)) : serverApi;

  function reportLabel() {
    return "saved report, generated " + fmtTime(REPORT.generated_ts);
  }

  // -------------------------------------------------------------- tooltip
  const tooltip = document.getElementById("tooltip");

  function showTooltip(event, lines) {
    tooltip.replaceChildren(...lines.map((line, i) => h("div", {class: i === 0 ? "tip-title" : "tip-line"}, line)));
    tooltip.hidden = false;
    const pad = 14;
    const rect = tooltip.getBoundingClientRect();
    let left = event.clientX + pad;
    let top = event.clientY + pad;
    if (left + rect.width > window.innerWidth - 4) left = event.clientX - rect.width - pad;
    if (top + rect.height > window.innerHeight - 4) top = event.clientY - rect.height - pad;
    tooltip.style.left = Math.max(4, left) + "px";
    tooltip.style.top = Math.max(4, top) + "px";
  }

  function hideTooltip() {
    tooltip.hidden = true;
  }

  // --------------------------------------------------------------- charts
  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const unit = raw / power;
    return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 2.5 ? 2.5 : unit <= 5 ? 5 : 10) * power;
  }

  function ticks(min, max, count, bytes) {
    if (!(max > min)) return [min];
    let step = niceStep(max - min, count);
    if (bytes && step >= MB / 4) step = Math.max(MB / 4, niceStep((max - min) / MB, count) * MB);
    const out = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(v);
    return out;
  }

  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

  /** Ticks for an elapsed-seconds axis, on whole seconds, minutes or hours. */
  function timeTicks(min, max, count) {
    const raw = (max - min) / Math.max(1, count);
    const step = TIME_STEPS.find((st) => st >= raw) || Math.ceil(raw / 86400) * 86400;
    const out = [];
    for (let v = Math.ceil(min / step) * step; v <= max; v += step) out.push(v);
    return out;
  }

  function extent(values) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (!isNum(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return lo <= hi ? [lo, hi] : [0, 1];
  }

  /** Index of the x nearest to `target` in ascending `xs`. */
  function nearest(xs, target) {
    let lo = 0;
    let hi = xs.length - 1;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] < target) lo = mid; else hi = mid;
    }
    return Math.abs(xs[lo] - target) <= Math.abs(xs[hi] - target) ? lo : hi;
  }

  /**
   * A line chart. series: [{name, x, y, color}]; unit "bytes" or "count";
   * hlines: [{y, label, cls}]; vlines: [{x, label, cls, lines}]. Hovering shows exact values.
   */
  function lineChart(opts) {
    const width = opts.width || 960;
    const height = opts.height || 300;
    const m = {left: opts.unit === "bytes" ? 74 : 52, right: 16, top: 14, bottom: 30};
    const series = opts.series.filter((sr) => sr.y && sr.y.some(isNum));
    const wrap = h("div", {class: "chart", "data-testid": opts.testid, "data-points": 0});
    if (!series.length) {
      wrap.appendChild(h("p", {class: "muted empty"}, opts.empty || "No data."));
      return wrap;
    }
    const allX = series.flatMap((sr) => sr.x);
    const [x0, x1raw] = extent(allX);
    const x1 = x1raw > x0 ? x1raw : x0 + 1;
    let [y0, y1] = extent(series.flatMap((sr) => sr.y).concat((opts.hlines || []).map((l) => l.y)));
    if (opts.zero !== false && y0 > 0 && opts.unit !== "bytes") y0 = 0;
    const pad = (y1 - y0) * 0.06 || Math.abs(y1) * 0.1 || 1;
    y0 -= pad; y1 += pad;
    if (opts.unit !== "bytes" && y0 < 0 && extent(series.flatMap((sr) => sr.y))[0] >= 0) y0 = 0;
    const px = (x) => m.left + (x - x0) / (x1 - x0) * (width - m.left - m.right);
    const py = (y) => m.top + (1 - (y - y0) / (y1 - y0)) * (height - m.top - m.bottom);
    const fmtY = opts.unit === "bytes" ? (v) => fmtBytes(v) : fmtNumber;

    const svg = s("svg", {viewBox: "0 0 " + width + " " + height, class: "chart-svg", role: "img",
                          "aria-label": opts.label || "chart", preserveAspectRatio: "xMidYMid meet"});
    const grid = s("g", {class: "grid"});
    for (const v of ticks(y0, y1, 5, opts.unit === "bytes")) {
      grid.appendChild(s("line", {x1: m.left, x2: width - m.right, y1: py(v), y2: py(v)}));
      grid.appendChild(s("text", {x: m.left - 6, y: py(v) + 4, class: "tick y"}, fmtY(v)));
    }
    for (const v of timeTicks(x0, x1, Math.max(3, Math.round(width / 120)))) {  // ~120 px per label
      const edge = px(v) > width - m.right - 24 ? " end" : "";  // keep the last label inside the chart
      grid.appendChild(s("text", {x: px(v), y: height - 10, class: "tick x" + edge}, fmtClock(v)));
    }
    svg.appendChild(grid);
    for (const line of opts.hlines || []) {
      if (!isNum(line.y)) continue;
      svg.appendChild(s("line", {class: "hline " + (line.cls || ""), x1: m.left, x2: width - m.right,
                                 y1: py(line.y), y2: py(line.y)}));
      svg.appendChild(s("text", {class: "hline-label " + (line.cls || ""), x: width - m.right - 4, y: py(line.y) - 4},
                        line.label + " " + fmtBytes(line.y)));
    }
    for (const line of opts.vlines || []) {
      if (!isNum(line.x)) continue;
      svg.appendChild(s("line", {class: "vline " + (line.cls || ""), x1: px(line.x), x2: px(line.x),
                                 y1: m.top, y2: height - m.bottom, "data-testid": "alert-marker"}));
      svg.appendChild(s("text", {class: "vline-label " + (line.cls || ""), x: px(line.x) + 3, y: m.top + 10}, line.label));
    }
    let points = 0;
    series.forEach((sr, i) => {
      let d = "";
      let pen = false;
      for (let k = 0; k < sr.x.length; k++) {
        const y = sr.y[k];
        if (!isNum(y) || !isNum(sr.x[k])) { pen = false; continue; }
        d += (pen ? "L" : "M") + px(sr.x[k]).toFixed(1) + " " + py(y).toFixed(1);
        pen = true;
        points++;
      }
      svg.appendChild(s("path", {d, class: "series s" + (sr.cls || i), fill: "none"}));
    });
    wrap.dataset.points = String(points);

    // Hover: a guide line, a dot per series, exact values in the tooltip.
    const guide = s("line", {class: "guide", y1: m.top, y2: height - m.bottom, visibility: "hidden"});
    const dots = series.map((sr, i) => s("circle", {r: 4, class: "dot s" + (sr.cls || i), visibility: "hidden"}));
    svg.appendChild(guide);
    dots.forEach((d) => svg.appendChild(d));
    const overlay = s("rect", {x: m.left, y: m.top, width: width - m.left - m.right, height: height - m.top - m.bottom,
                               class: "overlay", "data-testid": opts.testid + "-overlay"});
    svg.appendChild(overlay);
    overlay.addEventListener("mousemove", (event) => {
      const ctm = svg.getScreenCTM();
      if (!ctm) return;
      const pt = new DOMPoint(event.clientX, event.clientY).matrixTransform(ctm.inverse());
      const target = x0 + (pt.x - m.left) / (width - m.left - m.right) * (x1 - x0);
      const lines = [];
      let shownX = null;
      series.forEach((sr, i) => {
        const k = nearest(sr.x, target);
        const y = sr.y[k];
        if (shownX === null) shownX = sr.x[k];
        if (isNum(y)) {
          dots[i].setAttribute("cx", px(sr.x[k]));
          dots[i].setAttribute("cy", py(y));
          dots[i].setAttribute("visibility", "visible");
          lines.push(sr.name + ": " + (opts.unit === "bytes" ? exact(y, "bytes") + " (" + fmtBytes(y) + ")" : exact(y)));
        } else {
          dots[i].setAttribute("visibility", "hidden");
        }
      });
      guide.setAttribute("x1", px(shownX));
      guide.setAttribute("x2", px(shownX));
      guide.setAttribute("visibility", "visible");
      for (const line of opts.vlines || []) {
        if (Math.abs(px(line.x) - px(shownX)) < 6 && line.lines) lines.push(...line.lines);
      }
      showTooltip(event, ["elapsed " + fmtClock(shownX) + " (" + fmtDuration(shownX) + ")", ...lines]);
    });
    overlay.addEventListener("mouseleave", () => {
      hideTooltip();
      guide.setAttribute("visibility", "hidden");
      dots.forEach((d) => d.setAttribute("visibility", "hidden"));
    });
    wrap.appendChild(svg);
    wrap.appendChild(h("div", {class: "legend"}, series.map((sr, i) =>
      h("span", {class: "legend-item"}, h("span", {class: "swatch s" + (sr.cls || i)}), sr.name))));
    return wrap;
  }

  /** A histogram: bins [{lo, hi, count}] plus tail counts drawn apart at both ends. */
  function histogram(hist, opts) {
    const wrap = h("div", {class: "chart", "data-testid": opts.testid, "data-bins": hist.bins.length});
    if (!hist.count) {
      wrap.appendChild(h("p", {class: "muted empty"}, "No requests."));
      return wrap;
    }
    const bars = [];
    if (hist.below) bars.push({label: "below " + fmtBytes(hist.bins[0].lo), count: hist.below, tail: true,
                               range: "< " + exact(hist.bins[0].lo, "bytes")});
    for (const b of hist.bins) {
      bars.push({label: fmtBytes(b.lo), count: b.count, lo: b.lo, hi: b.hi,
                 range: "[" + exact(b.lo) + ", " + exact(b.hi) + ") bytes"});
    }
    if (hist.above) {
      const last = hist.bins[hist.bins.length - 1];
      bars.push({label: "above " + fmtBytes(last.hi), count: hist.above, tail: true,
                 range: "> " + exact(last.hi, "bytes")});
    }
    const width = 960;
    const height = 240;
    const m = {left: 64, right: 12, top: 24, bottom: 34};
    const maxCount = Math.max(1, ...bars.map((b) => b.count));
    const bw = (width - m.left - m.right) / bars.length;
    const py = (c) => m.top + (1 - c / maxCount) * (height - m.top - m.bottom);
    const svg = s("svg", {viewBox: "0 0 " + width + " " + height, class: "chart-svg", role: "img",
                          "aria-label": opts.label || "histogram"});
    const grid = s("g", {class: "grid"});
    for (const v of ticks(0, maxCount, 4)) {
      if (!Number.isInteger(v)) continue;
      grid.appendChild(s("line", {x1: m.left, x2: width - m.right, y1: py(v), y2: py(v)}));
      grid.appendChild(s("text", {x: m.left - 6, y: py(v) + 4, class: "tick y"}, fmtNumber(v)));
    }
    grid.appendChild(s("text", {x: m.left - 6, y: m.top - 10, class: "tick y", "data-testid": "histogram-y-unit"},
                       "requests"));
    svg.appendChild(grid);
    const labelEvery = Math.max(1, Math.ceil(bars.length / 8));
    bars.forEach((b, i) => {
      const x = m.left + i * bw;
      const zeroBin = isNum(b.lo) && b.lo <= 0 && b.hi > 0;
      const rect = s("rect", {x: x + 1, y: py(b.count), width: Math.max(1, bw - 2), height: py(0) - py(b.count),
                              class: "bar" + (b.tail ? " tail" : "") + (zeroBin ? " zero" : ""),
                              "data-count": b.count, "data-testid": "histogram-bar"});
      rect.addEventListener("mousemove", (event) =>
        showTooltip(event, [b.range, exact(b.count) + " request" + (b.count === 1 ? "" : "s")]));
      rect.addEventListener("mouseleave", hideTooltip);
      svg.appendChild(rect);
      const nearTail = !b.tail && ((hist.above && i > bars.length - 1 - labelEvery) || (hist.below && i > 0 && i < labelEvery));
      if ((i % labelEvery === 0 && !nearTail) || b.tail) {
        // Labels at either end are anchored inside the chart so none is cut off.
        const anchor = x + bw / 2 < m.left + 50 ? " start" : x + bw / 2 > width - m.right - 50 ? " end" : "";
        const at = anchor === " start" ? x + 1 : anchor === " end" ? x + bw - 1 : x + bw / 2;
        svg.appendChild(s("text", {x: at, y: height - 14, class: "tick x" + anchor, "data-testid": "histogram-x-tick"},
                          b.label));
      }
    });
    svg.appendChild(s("text", {x: width / 2, y: height - 1, class: "axis-label"}, opts.xLabel || ""));
    wrap.appendChild(svg);
    return wrap;
  }

  // --------------------------------------------------------------- tables
  /**
   * A table sorted by clicking its headers. columns: [{key, label, unit}]; rows: objects.
   * Each cell carries data-key and data-value (the exact value) and the exact value as its title.
   */
  /** One column of a dataTable: its row key, header label and unit (how cells are shown and sorted). */
  function col(key, label, unit = "text") {
    return {key, label, unit};
  }

  function dataTable(opts) {
    const state = {key: opts.sortKey || null, dir: opts.sortDir || "desc"};
    const table = h("table", {class: "data", "data-testid": opts.testid});
    const headRow = h("tr");
    const body = h("tbody");
    const ths = opts.columns.map((col) => {
      const th = h("th", {"data-key": col.key, "data-testid": "col-" + col.key, scope: "col",
                          class: col.unit === "text" ? "" : "num", title: "sort by " + col.label}, col.label);
      th.addEventListener("click", () => {
        state.dir = state.key === col.key && state.dir === "desc" ? "asc" : "desc";
        state.key = col.key;
        draw();
      });
      headRow.appendChild(th);
      return th;
    });
    table.appendChild(h("thead", null, headRow));
    table.appendChild(body);

    function compare(a, b) {
      const va = a[state.key];
      const vb = b[state.key];
      if (va === vb) return 0;
      if (va === null || va === undefined) return 1;  // missing values sort last either way
      if (vb === null || vb === undefined) return -1;
      const order = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
      return state.dir === "asc" ? order : -order;
    }

    function draw() {
      const rows = state.key ? opts.rows.slice().sort(compare) : opts.rows;
      ths.forEach((th, i) => {
        const sorted = opts.columns[i].key === state.key;
        th.setAttribute("aria-sort", sorted ? (state.dir === "asc" ? "ascending" : "descending") : "none");
        th.classList.toggle("sorted", sorted);
      });
      body.replaceChildren(...rows.map((row) => {
        const tr = h("tr", {"data-testid": opts.rowTestid || "row"});
        if (opts.rowAttrs) setAttrs(tr, opts.rowAttrs(row));
        for (const col of opts.columns) {
          const value = row[col.key];
          const [text, title] = fmtCell(value, col.unit, row.labels ? row.labels[col.key] : undefined);
          const extra = opts.cellTitle ? opts.cellTitle(col, row) : "";
          const td = h("td", {"data-key": col.key, "data-value": value === null || value === undefined ? "" : String(value),
                              title: title + extra, class: col.unit === "text" ? "text" : "num"});
          td.appendChild(opts.cell ? opts.cell(col, row, text) : document.createTextNode(text));
          tr.appendChild(td);
        }
        if (opts.onRowClick) {
          tr.classList.add("clickable");
          tr.tabIndex = 0;
          tr.addEventListener("click", () => opts.onRowClick(row, tr));
          tr.addEventListener("keydown", (event) => { if (event.key === "Enter") opts.onRowClick(row, tr); });
        }
        return tr;
      }));
    }
    draw();
    // A wide table scrolls inside its card instead of spilling out of it on a narrow window.
    return h("div", {class: "table-wrap"}, table);
  }

  function keyValues(pairs, testid) {
    return h("dl", {class: "kv", "data-testid": testid}, pairs.map(([k, v, title]) =>
      [h("dt", null, k), h("dd", {title: title || null}, v)]));
  }

  function card(title, testid, ...children) {
    return h("section", {class: "card", "data-testid": testid}, h("h2", null, title), children);
  }

  function statCard(label, value, title, testid) {
    return h("div", {class: "stat", "data-testid": testid, title: title || null},
      h("div", {class: "stat-value"}, value), h("div", {class: "stat-label"}, label));
  }

  function errorBox(message) {
    return h("p", {class: "error", "data-testid": "error"}, message);
  }

  // ---------------------------------------------------------------- pages
  const page = document.getElementById("page");
  let timers = [];
  let generation = 0;

  function stopTimers() {
    timers.forEach((t) => clearInterval(t));
    timers = [];
  }

  function ready(name) {
    document.body.dataset.page = name;
    document.body.dataset.ready = "true";
  }

  function setLive(on) {
    document.getElementById("live").hidden = !on;
  }

  const LIST_COLUMNS = [
    col("status", "status"),
    col("session_id", "session"),
    col("folder", "folder"),
    col("host", "host"),
    col("level", "level"),
    col("start_ts", "started", "time"),
    col("duration_s", "duration", "seconds"),
    col("peak_rss_bytes", "peak RSS", "bytes"),
    col("requests_total", "requests", "number"),
    col("headline", "verdict"),
  ];

  function sessionHref(id) {
    return "#/session/" + encodeURIComponent(id);
  }

  /** The fleet verdict across the listed sessions (two hosts or more): routes leaking on how many hosts, outliers. */
  function fleetCard(fleet) {
    const title = "Across " + exact(fleet.hosts) + " hosts";
    if (fleet.status !== "ok") {
      return card(title, "fleet-card", h("p", {class: "muted", "data-testid": "fleet-headline"}, fleet.headline));
    }
    const parts = [
      h("p", {"data-testid": "fleet-headline"}, fleet.headline),
      h("p", {class: "hint", "data-testid": "fleet-rule"}, "A session counts here when its RSS grows faster than " +
        fmtBytes(fleet.growth_threshold_bytes_per_h) + "/h after warm-up, and a route when it holds at least a " +
        "quarter of that growth; the per-session verdicts below weigh more evidence and may call slow growth flat."),
    ];
    if (fleet.routes.rows.length) {
      parts.push(h("h3", null, "Routes that leak, by the number of hosts they leak on"), dataTable({
        testid: "fleet-routes", rowTestid: "fleet-route", columns: fleet.routes.columns, rows: fleet.routes.rows,
        rowAttrs: (row) => ({"data-method": row.method, "data-route": row.route})}));
    } else {
      parts.push(h("p", {class: "muted", "data-testid": "fleet-no-routes"}, "No route leaks on any host."));
    }
    if (fleet.outliers.rows.length) {
      parts.push(h("h3", null, "Hosts that stand out (median RSS growth far above the fleet's)"), dataTable({
        testid: "fleet-outliers", rowTestid: "fleet-outlier", columns: fleet.outliers.columns,
        rows: fleet.outliers.rows, rowAttrs: (row) => ({"data-host": row.host})}));
    }
    return card(title, "fleet-card", parts);
  }

  /** Fills ``slot`` with the fleet card (empty for one host); data-ready="true" once settled. */
  async function fillFleet(gen, slot) {
    let content = null;
    try {
      const answer = await api.fleet();
      content = answer && answer.fleet ? fleetCard(answer.fleet) : null;
    } catch (e) {
      content = h("p", {class: "muted", "data-testid": "fleet-error"}, "No fleet verdict: " + e.message);
    }
    if (gen !== generation) return;
    slot.replaceChildren(...(content ? [content] : []));
    slot.dataset.ready = "true";
  }

  async function renderList(gen) {
    const data = await api.sessions();
    if (gen !== generation) return;
    // Filled when the verdict across hosts arrives; kept across redraws of the list.
    const fleetSlot = h("div", {"data-testid": "fleet-slot"});
    document.getElementById("root-path").textContent = REPORT ? reportLabel() : data.root || "";
    const rows = data.sessions;
    const draw = (rowsNow) => {
      const content = [h("h1", null, "Sessions")];
      if (data.problems && data.problems.length) {
        content.push(h("ul", {class: "problems"}, data.problems.map((p) => h("li", null, p))));
      }
      content.push(fleetSlot);
      content.push(dataTable({
        testid: "sessions-table", rowTestid: "session-row", columns: LIST_COLUMNS, rows: rowsNow,
        sortKey: "start_ts", sortDir: "desc",
        rowAttrs: (row) => ({"data-session-id": row.session_id}),
        cell: (col, row, text) => {
          if (col.key === "status") return badge(row.status);
          if (col.key === "start_ts") return document.createTextNode(fmtTime(row.start_ts));
          if (col.key === "session_id") return h("a", {href: sessionHref(row.session_id), "data-testid": "session-link"}, row.session_id);
          return document.createTextNode(text);
        },
        onRowClick: (row) => { location.hash = sessionHref(row.session_id); },
      }));
      if (!api.report && rowsNow.length > 1) content.push(compareForm(rowsNow));
      page.replaceChildren(...content);
    };
    draw(rows);
    ready("sessions");
    fillFleet(gen, fleetSlot);
    if (data.follow && !api.report) {
      let last = JSON.stringify(rows);
      timers.push(setInterval(async () => {
        try {
          const fresh = await api.sessions();
          if (gen !== generation) return;
          const text = JSON.stringify(fresh.sessions);
          if (text !== last) { last = text; draw(fresh.sessions); fillFleet(gen, fleetSlot); }
        } catch (e) { /* the next poll will try again */ }
      }, POLL_MS));
    }
  }

  function compareForm(rows, before, after) {
    const options = (selected) => rows.map((r) => h("option", {value: r.session_id, selected: r.session_id === selected},
      (r.label || r.status || "") + " — started " + fmtTime(r.start_ts)));
    const leaking = rows.find((r) => r.status === "leaking");
    const first = before || (leaking ? leaking.session_id : rows[rows.length - 1].session_id);
    const other = rows.find((r) => r.session_id !== first && r.status !== "leaking") ||
      rows.find((r) => r.session_id !== first) || rows[0];
    const second = after || other.session_id;
    const selBefore = h("select", {"data-testid": "compare-before", id: "compare-before"}, options(first));
    const selAfter = h("select", {"data-testid": "compare-after", id: "compare-after"}, options(second));
    const button = h("button", {type: "button", "data-testid": "compare-button"}, "Compare");
    button.addEventListener("click", () => {
      location.hash = "#/compare/" + encodeURIComponent(selBefore.value) + "/" + encodeURIComponent(selAfter.value);
    });
    return h("section", {class: "card compare-form", "data-testid": "compare-form"},
      h("h2", null, "Did the fix work? Compare two sessions"),
      h("div", {class: "fields"},
        h("div", {class: "field"}, h("label", {for: "compare-before"}, "before (the leaking run)"), selBefore),
        h("div", {class: "field"}, h("label", {for: "compare-after", "data-testid": "compare-after-label"},
                                     "after (the run with the fix)"), selAfter),
        h("div", {class: "field"}, button)));
  }

  // -- the session page
  function sessionHeader(detail) {
    const ses = detail.session;
    const v = detail.verdict;
    const meta = [ses.host, "pid " + (ses.pid === null ? "–" : ses.pid), "level " + (ses.level || "–"),
                  "started " + fmtTime(ses.start_ts), fmtDuration(ses.duration_s),
                  exact(ses.samples) + " samples", exact(ses.requests_total) + " requests",
                  ses.complete ? "complete" : "still being written"].join(" · ");
    const single = REPORT && REPORT.sessions.length === 1;
    return [
      single ? null : h("nav", {class: "crumbs"}, h("a", {href: "#/", "data-testid": "back"}, "← all sessions")),
      h("h1", {"data-testid": "session-title"}, ses.session_id),
      h("p", {class: "meta", "data-testid": "session-meta"}, meta),
      h("p", {class: "path muted", "data-testid": "session-path"}, ses.path || ""),
      h("div", {class: "headline"}, badge(ses.status, "verdict-status"),
        h("span", {"data-testid": "verdict-headline"}, ses.headline || "")),
      h("div", {class: "stats"},
        statCard("baseline RSS", fmtBytes(ses.baseline_rss_bytes), exact(ses.baseline_rss_bytes, "bytes"), "stat-baseline"),
        statCard("peak RSS", fmtBytes(ses.peak_rss_bytes), exact(ses.peak_rss_bytes, "bytes"), "stat-peak"),
        statCard("net growth", fmtBytes(ses.net_growth_bytes, true), exact(ses.net_growth_bytes, "bytes"), "stat-growth"),
        statCard("RSS trend", v && v.rss && isNum(v.rss.mb_per_hour) ? v.rss.mb_per_hour.toFixed(1) + " MB/h" : "–",
                 v && v.rss ? exact(v.rss.mb_per_hour, "MB/hour") : "", "stat-slope"),
        statCard("samples", exact(ses.samples), "", "stat-samples"),
        statCard("alerts", exact(detail.alerts.length), "", "stat-alerts")),
    ];
  }

  /** The growing line with a few lines around it, as the server read them (never run, shown as text). */
  function sourceCard(detail) {
    const src = detail.source;
    if (!src) return null;
    const title = "The growing line: " + src.path + ":" + src.line;
    const why = src.caused_by ? "the allocation happens in " + src.site + ", called from this line of your code" :
      "allocated here, and still held at the end of the session";
    let body;
    if (src.status === "ok") {
      body = h("pre", {class: "source", "data-testid": "source-preview"}, src.lines.map((row) =>
        h("div", {class: "source-line" + (row.n === src.line ? " hit" : ""), "data-line": row.n},
          h("span", {class: "source-n"}, String(row.n)), h("code", null, row.text))));
    } else {
      body = h("p", {class: "muted", "data-testid": "source-absent"}, src.status === "outside" ?
        "Not shown: the file is outside the project folder (an installed package, the standard library, " +
        "or another folder), or not a .py file." :
        "Not shown: the file is not on this machine or no longer has that line.");
    }
    return card(title, "source-card", h("p", {class: "hint"}, why), body);
  }

  function nextStepsBox(detail) {
    const steps = detail.next_steps || [];
    if (!steps.length) return null;
    return h("section", {class: "next-steps", "data-testid": "next-steps"}, h("h2", null, "What to do next"),
      h("ul", null, steps.map((line) => h("li", null, h("code", null, line)))));
  }

  function memoryCard(detail) {
    const t = detail.trend;
    const hlines = [];
    if (isNum(detail.baseline_rss_bytes)) hlines.push({y: detail.baseline_rss_bytes, label: "baseline", cls: "baseline"});
    if (isNum(detail.baseline_rss_bytes) && isNum(detail.threshold_bytes)) {
      hlines.push({y: detail.baseline_rss_bytes + detail.threshold_bytes, label: "alert threshold", cls: "threshold"});
    }
    const vlines = detail.alerts.map((a) => ({x: a.elapsed_s, label: "alert", cls: "alert",
      lines: ["ALERT " + (a.alert || "") + ": RSS " + exact(a.rss_bytes, "bytes") + ", growth " +
              exact(a.growth_bytes, "bytes") + " > threshold " + exact(a.threshold_bytes, "bytes")]}));
    const chart = lineChart({
      testid: "rss-chart", unit: "bytes", label: "RSS and traced memory over time", hlines, vlines,
      series: [{name: "RSS", x: t.x, y: t.rss_bytes, cls: "rss"},
               {name: "traced (tracemalloc)", x: t.x, y: t.traced_bytes || [], cls: "traced"}],
      empty: "No samples yet.",
    });
    const alerts = detail.alerts.length ? h("ul", {class: "alerts", "data-testid": "alerts"}, detail.alerts.map((a) =>
      h("li", null, "at " + fmtClock(a.elapsed_s) + ": RSS " + fmtBytes(a.rss_bytes) + ", " +
        fmtBytes(a.growth_bytes, true) + " above baseline (threshold " + fmtBytes(a.threshold_bytes) + ")"))) : null;
    return card("Memory over time", "memory-card", chart, alerts);
  }

  const ENDPOINT_HIDDEN = new Set(["low_bytes_per_call", "high_bytes_per_call", "avg_duration_s", "p95_duration_s"]);

  function endpointsCard(detail, state, onPick) {
    const table = detail.endpoints;
    const columns = table.columns.filter((c) => !ENDPOINT_HIDDEN.has(c.key));
    const significant = (row) => row.significant === true;
    return card("Endpoints", "endpoints-card",
      h("p", {class: "hint"}, "Per-request RSS change (Δ) and the bytes each call leaves behind, estimated from growth " +
        "per sampling interval (retained / call). Click a column to sort, a row to see its distribution."),
      dataTable({
        testid: "endpoint-table", rowTestid: "endpoint-row", columns, rows: table.rows,
        sortKey: state.endpointSort || null, sortDir: "desc",
        rowAttrs: (row) => ({"data-method": row.method, "data-route": row.route,
                             class: (significant(row) ? "suspect " : "") +
                                    (state.endpoint && state.endpoint.method === row.method &&
                                     state.endpoint.route === row.route ? "selected" : "")}),
        cellTitle: (col, row) => col.key === "retained_bytes_per_call" && isNum(row.low_bytes_per_call)
          ? "; 90% band " + exact(row.low_bytes_per_call) + " .. " + exact(row.high_bytes_per_call) + " bytes" : "",
        onRowClick: (row, tr) => {
          tr.parentNode.querySelectorAll("tr.selected").forEach((el) => el.classList.remove("selected"));
          tr.classList.add("selected");
          onPick({method: row.method, route: row.route});
        },
      }));
  }

  async function endpointDetail(id, chosen, target) {
    const token = chosen.method + " " + chosen.route;
    target.dataset.endpoint = token;
    target.dataset.ready = "";
    target.replaceChildren(h("p", {class: "muted"}, "Loading " + token + "…"));
    let data;
    try {
      data = await api.endpoint(id, chosen.method, chosen.route);
    } catch (e) {
      if (target.dataset.endpoint === token) target.replaceChildren(errorBox(e.message));
      return;
    }
    if (target.dataset.endpoint !== token) return;  // another endpoint was picked meanwhile
    const row = data.row || {};
    const at = data.attribution;
    const pairs = [
      ["calls", exact(row.calls)], ["errors (5xx)", exact(row.errors)],
      ["avg Δ RSS", fmtBytes(row.avg_delta_bytes, true), exact(row.avg_delta_bytes, "bytes")],
      ["p50 Δ RSS", fmtBytes(row.p50_delta_bytes, true), exact(row.p50_delta_bytes, "bytes")],
      ["p95 Δ RSS", fmtBytes(row.p95_delta_bytes, true), exact(row.p95_delta_bytes, "bytes")],
      ["max Δ RSS", fmtBytes(row.max_delta_bytes, true), exact(row.max_delta_bytes, "bytes")],
      ["avg duration", fmtDuration(row.avg_duration_s), exact(row.avg_duration_s, "s")],
      ["p95 duration", fmtDuration(row.p95_duration_s), exact(row.p95_duration_s, "s")],
    ];
    if (at) {
      pairs.push(["retained / call", fmtBytes(at.retained_bytes_per_call) + " (90%: " + fmtBytes(at.low_bytes_per_call) +
                  " .. " + fmtBytes(at.high_bytes_per_call) + ")", exact(at.retained_bytes_per_call, "bytes")]);
      pairs.push(["share of growth", fmtRatio(at.share_of_growth), exact(at.share_of_growth)]);
      pairs.push(["leaks?", at.significant ? "yes: the band excludes zero" : "no evidence", String(at.significant)]);
    }
    const charts = [];
    for (const [metric, label] of [["rss_delta_bytes", "RSS change per request"],
                                   ["traced_delta_bytes", "traced-memory change per request"]]) {
      const hist = data.metrics[metric];
      if (!hist) continue;
      charts.push(h("h3", null, label + " (" + exact(hist.count) + " requests; " + exact(hist.zero) + " exactly 0; min " +
                    fmtBytes(hist.min, true) + ", max " + fmtBytes(hist.max, true) + ")"));
      charts.push(histogram(hist, {testid: metric === "rss_delta_bytes" ? "endpoint-histogram" : "endpoint-histogram-traced",
                                   xLabel: label + " (bytes)"}));
    }
    target.replaceChildren(
      h("h3", {"data-testid": "endpoint-name"}, data.method + " " + data.route),
      keyValues(pairs, "endpoint-stats"), ...charts);
    target.dataset.ready = "true";
  }

  function sitesCard(id, detail, state) {
    const v = detail.verdict;
    const growing = v && v.sites && v.sites.length ? dataTable({
      testid: "growing-sites", rowTestid: "growing-site-row", sortKey: "growth_bytes", sortDir: "desc",
      columns: [
        col("site", "site"),
        col("growth_bytes", "growth", "bytes"),
        col("growth_per_hour_bytes", "growth / hour", "bytes"),
        col("rising_fraction", "rising in", "ratio"),
        col("count_growth", "+ blocks", "number"),
        col("bytes_per_call", "bytes / call", "bytes"),
        col("per_call_route", "of route"),
      ], rows: v.sites,
    }) : h("p", {class: "muted", "data-testid": "growing-sites-empty"},
      detail.snapshots.length ? "No allocation site keeps growing across snapshots." :
        "No tracemalloc snapshot in this session (level basic, or auto that never triggered).");
    const result = h("div", {"data-testid": "site-diff-result"});
    const content = [h("h3", null, "Sites that keep growing"), growing];
    if (detail.snapshots.length >= 2) {
      const option = (sn, selected) => h("option", {value: sn.seq, selected: sn.seq === selected},
        "#" + sn.seq + " at " + fmtClock(sn.elapsed_s) + " (" + fmtBytes(sn.traced_bytes) + " traced)");
      const first = state.snapA !== undefined ? state.snapA : detail.snapshots[0].seq;
      const last = state.snapB !== undefined ? state.snapB : detail.snapshots[detail.snapshots.length - 1].seq;
      const pickA = h("select", {"data-testid": "snapshot-a", id: "snapshot-a"}, detail.snapshots.map((sn) => option(sn, first)));
      const pickB = h("select", {"data-testid": "snapshot-b", id: "snapshot-b"}, detail.snapshots.map((sn) => option(sn, last)));
      const button = h("button", {type: "button", "data-testid": "diff-button"}, "Diff");
      const run = async () => {
        state.snapA = Number(pickA.value);
        state.snapB = Number(pickB.value);
        result.dataset.ready = "";
        result.replaceChildren(h("p", {class: "muted"}, "Loading…"));
        try {
          const diff = await api.diff(id, state.snapA, state.snapB);
          result.replaceChildren(
            h("p", {class: "hint", "data-testid": "site-diff-caption"}, "Snapshot #" + diff.a + " → #" + diff.b +
              ": the " + diff.rows.length + " sites that grew most"),
            dataTable({testid: "site-diff", rowTestid: "site-diff-row", columns: diff.columns, rows: diff.rows}));
        } catch (e) {
          result.replaceChildren(errorBox(e.message));
        }
        result.dataset.ready = "true";
      };
      button.addEventListener("click", run);
      content.push(h("h3", null, "Compare two snapshots"),
        h("div", {class: "controls"}, h("label", {for: "snapshot-a"}, "A "), pickA,
          h("label", {for: "snapshot-b"}, " B "), pickB, " ", button), result);
      run();
    }
    return card("Allocation sites (tracemalloc)", "sites-card", content);
  }

  function resourcesCard(detail) {
    const r = detail.resources;
    const small = (key, name, testid) => h("div", {class: "small-chart"}, h("h3", null, name),
      lineChart({testid, unit: "count", height: 180, width: 480, series: [{name, x: r.x, y: r[key] || [], cls: key}],
                 empty: "Not recorded."}));
    const tasks = detail.tasks_by_coro.length ? dataTable({
      testid: "tasks-by-coro", rowTestid: "coro-row", sortKey: "tasks", sortDir: "desc",
      columns: [col("coro", "coroutine"), col("tasks", "unfinished tasks", "number")],
      rows: detail.tasks_by_coro}) : null;
    return card("Tasks, file descriptors, threads", "resources-card",
      h("div", {class: "grid3"}, small("asyncio_tasks", "asyncio tasks", "chart-tasks"),
        small("open_fds", "open file descriptors", "chart-fds"), small("threads", "threads", "chart-threads")),
      tasks ? [h("h3", null, "Unfinished tasks by coroutine at the last sample"), tasks] : null);
  }

  function trendRow(t) {
    return t ? {metric: t.metric, status: t.status, mb_per_hour: t.mb_per_hour,
                band: isNum(t.slope_low_bytes_per_s) ? (t.slope_low_bytes_per_s * 3600 / MB).toFixed(2) + " .. " +
                  (t.slope_high_bytes_per_s * 3600 / MB).toFixed(2) : null,
                confidence: t.confidence, bytes_per_1k_requests: t.bytes_per_1k_requests, warmup_s: t.warmup_s,
                samples: t.samples, start_bytes: t.start_bytes, end_bytes: t.end_bytes} : null;
  }

  function verdictCard(detail) {
    const v = detail.verdict;
    if (!v) return card("Verdict", "verdict-card", errorBox(detail.session.headline || "No verdict."));
    const trends = [trendRow(v.rss), trendRow(v.traced)].filter(Boolean);
    const kinds = v.kinds.map((k) => h("div", {class: "kind", "data-testid": "leak-kind", "data-kind": k.kind},
      h("h3", null, k.kind.replace(/_/g, " ") + ": " + k.summary),
      Object.keys(k.evidence || {}).length ? keyValues(Object.entries(k.evidence).map(([name, value]) =>
        [name.replace(/_/g, " "), typeof value === "number" ? fmtNumber(value) : JSON.stringify(value),
         typeof value === "number" ? exact(value) : null]), "evidence") : null,
      k.remedies && k.remedies.length ? h("ul", {class: "remedies"}, k.remedies.map((rm) => h("li", null, rm))) : null));
    return card("Verdict and evidence", "verdict-card",
      h("div", {class: "headline"}, badge(v.status, "verdict-card-status"), h("span", null, v.headline)),
      h("h3", null, "Memory trend after warm-up (Theil–Sen slope, 90% band)"),
      dataTable({testid: "trends", rowTestid: "trend-row", rows: trends, columns: [
        col("metric", "metric"), col("status", "status"),
        col("mb_per_hour", "MB / hour", "number"), col("band", "90% band (MB/h)"),
        col("confidence", "confidence", "ratio"),
        col("bytes_per_1k_requests", "per 1k requests", "bytes"),
        col("warmup_s", "warm-up", "seconds"), col("samples", "samples", "number"),
        col("start_bytes", "start", "bytes"), col("end_bytes", "end", "bytes")]}),
      kinds.length ? [h("h3", null, "What kind of leak"), kinds] : null,
      v.notes && v.notes.length ? h("p", {class: "muted notes"}, "Notes: " + v.notes.join("; ")) : null);
  }

  async function renderSession(gen, id) {
    const state = {endpoint: null};
    let detail = await api.session(id);
    if (gen !== generation) return;
    document.getElementById("root-path").textContent = REPORT ? reportLabel() : "";

    const draw = () => {
      const endpointBox = h("div", {class: "endpoint-detail", "data-testid": "endpoint-detail"},
        h("p", {class: "muted"}, "Pick an endpoint in the table above."));
      const pick = (chosen) => { state.endpoint = chosen; endpointDetail(id, chosen, endpointBox); };
      if (!state.endpoint) {  // start with the endpoint the verdict blames, else the table's first
        const rows = detail.endpoints.rows;
        const first = rows.find((r) => r.significant === true) || rows[0];
        if (first) state.endpoint = {method: first.method, route: first.route};
      }
      // replaceChildren writes a null as the text "null": leave the absent parts out.
      page.replaceChildren(...[
        ...sessionHeader(detail), nextStepsBox(detail), sourceCard(detail), memoryCard(detail),
        endpointsCard(detail, state, pick), card("Per-request distribution", "distribution-card", endpointBox),
        sitesCard(id, detail, state), resourcesCard(detail), verdictCard(detail)].filter(Boolean));
      page.dataset.version = detail.version || "";
      if (state.endpoint) endpointDetail(id, state.endpoint, endpointBox);
      setLive(Boolean(detail.follow && !detail.session.complete && !api.report));
      ready("session");
    };
    draw();
    if (detail.follow && !api.report) {
      timers.push(setInterval(async () => {
        if (detail.session.complete) return;
        try {
          const fresh = await api.session(id, detail.version);
          if (gen !== generation || !fresh) return;
          detail = fresh;
          const y = window.scrollY;
          draw();
          window.scrollTo(0, y);
        } catch (e) { /* keep polling */ }
      }, POLL_MS));
    }
  }

  // -- the compare page
  async function renderCompare(gen, before, after) {
    const [list, data] = await Promise.all([api.sessions(), api.compare(before, after)]);
    if (gen !== generation) return;
    const fc = data.fixcheck;
    const verdictClass = fc.fixed ? "good" : fc.before_status === "leaking" ? "bad" : "muted";
    const verdictText = fc.fixed ? "FIXED" : fc.before_status === "leaking" ? "NOT FIXED" :
      fc.after_status === "leaking" ? "REGRESSION" : "NO CHANGE";
    const endpointRows = fc.endpoints.map((e) => ({endpoint: e.method + " " + e.route, ...e}));
    page.replaceChildren(
      h("nav", {class: "crumbs"}, h("a", {href: "#/", "data-testid": "back"}, "← all sessions")),
      h("h1", null, "Before / after"),
      h("div", {class: "headline"}, h("span", {class: "badge " + verdictClass, "data-testid": "fixcheck-status"}, verdictText),
        h("span", {"data-testid": "fixcheck-headline"}, fc.headline)),
      h("div", {class: "stats"},
        statCard("before: " + fc.before_status, fc.before_mb_per_hour.toFixed(1) + " MB/h", exact(fc.before_mb_per_hour, "MB/hour"), "before-rate"),
        statCard("after: " + fc.after_status, fc.after_mb_per_hour.toFixed(1) + " MB/h", exact(fc.after_mb_per_hour, "MB/hour"), "after-rate")),
      card("RSS over time", "compare-card", lineChart({
        testid: "compare-chart", unit: "bytes", label: "RSS of both sessions",
        series: [{name: "before " + data.before.session.session_id, x: data.before.trend.x, y: data.before.trend.rss_bytes, cls: "before"},
                 {name: "after " + data.after.session.session_id, x: data.after.trend.x, y: data.after.trend.rss_bytes, cls: "after"}],
      })),
      card("Retained bytes per call", "compare-endpoints-card", dataTable({
        testid: "compare-endpoints", rowTestid: "compare-endpoint-row", rows: endpointRows,
        sortKey: "before_retained_bytes_per_call", sortDir: "desc", columns: [
          col("endpoint", "endpoint"),
          col("before_calls", "calls before", "number"),
          col("before_retained_bytes_per_call", "retained / call before", "bytes"),
          col("after_calls", "calls after", "number"),
          col("after_retained_bytes_per_call", "retained / call after", "bytes"),
          col("before_significant", "leaked before", "bool"), col("after_significant", "leaks after", "bool"),
        ]})),
      ...(api.report ? [] : [compareForm(list.sessions, before, after)]));
    ready("compare");
  }

  // --------------------------------------------------------------- router
  function decodePart(part) {
    try {
      return decodeURIComponent(part);
    } catch (e) {
      return null;  // malformed escape: treated as no such part
    }
  }

  async function route() {
    stopTimers();
    hideTooltip();
    setLive(false);
    generation += 1;
    const gen = generation;
    document.body.dataset.ready = "";
    // A hash typed or pasted by hand may hold a lone "%": show the list rather than throw a URIError.
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodePart);
    try {
      if (parts[0] === "session" && parts[1]) {
        await renderSession(gen, parts[1]);
      } else if (parts[0] === "compare" && parts[1] && parts[2]) {
        await renderCompare(gen, parts[1], parts[2]);
      } else if (COMPARE && !location.hash) {  // a saved comparison opens on it; "#/" lists the sessions
        await renderCompare(gen, COMPARE.before.session.session_id, COMPARE.after.session.session_id);
      } else if (REPORT && REPORT.sessions.length === 1) {
        await renderSession(gen, REPORT.sessions[0].session_id);
      } else {
        await renderList(gen);
      }
    } catch (e) {
      if (gen !== generation) return;
      page.replaceChildren(h("nav", {class: "crumbs"}, h("a", {href: "#/"}, "← all sessions")), errorBox(e.message));
      document.body.dataset.page = "error";
      document.body.dataset.ready = "true";
    }
  }

  window.addEventListener("hashchange", route);
  route();
})();

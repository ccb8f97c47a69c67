// chatcore's charts for Locust's web UI and its HTML report (loadtest/_chatview.py).
//
// Locust's page is a bundled React app: an extra tab can only carry a table
// (its echarts copy is inside the bundle, not reachable from here). So this
// script, served by the load test and added to the page, draws small SVG
// charts itself, with no library and nothing fetched from elsewhere:
// deliveries and messages per second, delivery latency p50 and p99, and the
// losses so far, from the history /chatcore/history keeps (a point every two
// seconds). It puts them above the Chat tab's table when that tab is shown,
// and it says what the header's "RPS" counts: deliveries per second.
//
// In the HTML report the same drawing runs once, over the run's history
// written into the page (window.chatcoreHistory).
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const PANEL_ID = "chatcore-charts";
  // Locust's own chart colours, so the charts read like its Charts tab.
  const CHARTS = [
    {
      title: "Deliveries per second (last 10 s)",
      unit: "/s",
      lines: [
        { key: "rate", name: "deliveries/s", color: "#00ca5a" },
        { key: "mrate", name: "messages sent/s", color: "#2f7ed8" },
      ],
    },
    {
      title: "Delivery latency (last 10 s)",
      unit: "latency",
      lines: [
        { key: "p50", name: "p50", color: "#ff9f00" },
        { key: "p99", name: "p99", color: "#9966cc" },
      ],
    },
    {
      title: "Losses so far",
      unit: "",
      least: 4, // counts: a flat 0 line under 0, 1, 2, 3, 4 rather than fractions
      lines: [
        { key: "lost", name: "lost", color: "#ff6d6d" },
        { key: "duplicated", name: "duplicated", color: "#b8860b" },
        { key: "reordered", name: "reordered", color: "#8e4585" },
        { key: "corrupted", name: "corrupted", color: "#555555" },
      ],
    },
  ];

  function latencyText(ms) {
    if (ms < 1) return Math.round(ms * 1000) + "\u00a0µs"; // a unit never wraps apart
    return (ms < 1000 ? Number(ms.toPrecision(3)) : Math.round(ms)) + "\u00a0ms";
  }

  function valueText(value, unit) {
    if (value === 0) return "0";
    if (unit === "latency") return latencyText(value);
    const rounded = value >= 100 ? Math.round(value) : Number(value.toPrecision(3));
    return rounded.toLocaleString("en") + unit;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 4, 8, 10]) { // four grid steps of round values
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  function clock(seconds) {
    return new Date(seconds * 1000).toTimeString().slice(0, 8);
  }

  function element(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // One chart: an SVG that scales to its box (viewBox), a line per series,
  // gaps where a point has no value (no deliveries in its window).
  function chart(spec, points) {
    const figure = document.createElement("figure");
    figure.className = "chatcore-chart";
    figure.dataset.chart = spec.lines[0].key;
    const caption = document.createElement("figcaption");
    caption.textContent = spec.title;
    figure.append(caption);
    const width = 400, height = 190, left = 64, right = 10, top = 10, bottom = 24;
    const svg = element("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": spec.title });
    const values = points.flatMap((p) => spec.lines.map((l) => p[l.key]).filter((v) => v !== null && v !== undefined));
    const top_value = niceMax(Math.max(spec.least || 0, ...values));
    const t0 = points.length ? points[0].t : 0;
    const t1 = points.length > 1 ? points[points.length - 1].t : t0 + 1;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
    const y = (v) => top + (1 - v / top_value) * (height - top - bottom);
    for (let i = 0; i <= 4; i++) {
      const v = (top_value * i) / 4;
      svg.append(element("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(element("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" }, valueText(v, spec.unit)));
    }
    if (points.length) {
      svg.append(element("text", { x: left, y: height - 6 }, clock(t0)));
      svg.append(element("text", { x: width - right, y: height - 6, "text-anchor": "end" }, clock(t1)));
    }
    for (const line of spec.lines) {
      let path = "";
      let pen = "M";
      for (const point of points) {
        const v = point[line.key];
        if (v === null || v === undefined) {
          pen = "M";
          continue;
        }
        path += `${pen}${x(point.t).toFixed(1)},${y(v).toFixed(1)} `;
        pen = "L";
      }
      const drawn = element("path", { d: path.trim(), stroke: line.color, fill: "none", "stroke-width": 2 });
      drawn.dataset.series = line.key;
      drawn.dataset.points = String(points.filter((p) => p[line.key] !== null && p[line.key] !== undefined).length);
      svg.append(drawn);
    }
    figure.append(svg);
    const legend = document.createElement("div");
    legend.className = "legend";
    const last = points[points.length - 1];
    for (const line of spec.lines) {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = line.color;
      const now = last && last[line.key] !== null && last[line.key] !== undefined ? valueText(last[line.key], spec.unit) : "-";
      item.append(swatch, `${line.name} ${now}`);
      legend.append(item);
    }
    figure.append(legend);
    return figure;
  }

  const STYLE = `
    #${PANEL_ID} { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 16px;
      margin: 16px 0; font: 13px/1.4 Roboto, Helvetica, Arial, sans-serif; }
    #${PANEL_ID} .chatcore-chart { margin: 0; min-width: 0; }
    #${PANEL_ID} figcaption { font-weight: 500; margin-bottom: 4px; }
    #${PANEL_ID} svg { width: 100%; height: auto; display: block; overflow: visible; }
    #${PANEL_ID} svg text { font-size: 11px; fill: currentColor; opacity: 0.75; }
    #${PANEL_ID} svg .grid { stroke: currentColor; opacity: 0.15; }
    #${PANEL_ID} .legend { display: flex; flex-wrap: wrap; gap: 4px 14px; }
    #${PANEL_ID} .legend i { display: inline-block; width: 10px; height: 10px; margin-right: 5px; border-radius: 2px; }
    #${PANEL_ID} .note { grid-column: 1 / -1; margin: 0; opacity: 0.8; }
  `;

  function draw(panel, history) {
    const points = history.points || [];
    const children = CHARTS.map((spec) => chart(spec, points));
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = points.length
      ? "A point every " + history.interval + " s. Locust's header \"Deliveries/s\" (its RPS) and its Aggregated row count deliveries only."
      : "No chat figures yet: the charts start with the run.";
    panel.replaceChildren(...children, note);
  }

  function newPanel() {
    const panel = document.createElement("section");
    panel.id = PANEL_ID;
    if (!document.getElementById(PANEL_ID + "-style")) {
      const style = document.createElement("style");
      style.id = PANEL_ID + "-style";
      style.textContent = STYLE;
      document.head.append(style);
    }
    return panel;
  }

  // -- the HTML report: draw once, from the history written into the page.
  if (window.chatcoreHistory) {
    const place = document.getElementById("chatcore-chat-summary");
    const panel = newPanel();
    (place || document.body).append(panel);
    draw(panel, window.chatcoreHistory);
    return;
  }

  // -- the live web UI.
  let history = { points: [], interval: 2 };

  // Locust's header says "RPS"; here it is deliveries per second only (the
  // load test keeps everything else out of Locust's total), so say that.
  function labelHeader() {
    for (const node of document.querySelectorAll("#root .MuiTypography-root")) {
      if (node.childElementCount === 0 && node.textContent === "RPS") {
        node.textContent = "Deliveries/s";
        node.title = "Locust's RPS: chat messages delivered per second (messages sent are in the Chat tab)";
      }
    }
  }

  function chatTable() {
    const head = document.querySelector('#root th[data-sortkey="scope"]');
    return head && head.closest(".MuiTableContainer-root, .MuiPaper-root");
  }

  function place() {
    labelHeader();
    const table = chatTable();
    let panel = document.getElementById(PANEL_ID);
    if (!table) return null;
    if (!panel || panel.nextElementSibling !== table) {
      if (panel) panel.remove();
      panel = newPanel();
      table.before(panel); // the trends first: the table grows with the servers
      draw(panel, history);
    }
    return panel;
  }

  async function refresh() {
    try {
      const answer = await fetch("./chatcore/history", { cache: "no-store" });
      if (answer.ok) history = await answer.json();
    } catch (error) {
      return; // the load test stopped; keep what is drawn
    }
    const panel = place();
    if (panel) draw(panel, history);
  }

  let queued = false;
  new MutationObserver(() => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      place();
    });
  }).observe(document.getElementById("root") || document.body, { childList: true, subtree: true });
  refresh();
  setInterval(refresh, 2000);
})();

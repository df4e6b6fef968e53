// The report's page: everything is drawn from the JSON in #report-data (written by rlhf.report) with Plotly.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const RUNS = DATA.runs;
  const MANY = RUNS.length > 1;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"];
  const PLOT_CONFIG = {displaylogo: false, responsive: true};
  const main = document.getElementById("report");
  const toc = document.getElementById("toc");
  main.textContent = "";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      const a = Math.abs(v);
      return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
    }
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function section(id, title, note) {
    toc.append(el("a", {href: "#" + id}, title));
    const s = el("section", {id: id}, el("h2", {}, title));
    if (note) s.append(el("p", {class: "note"}, note));
    main.append(s);
    return s;
  }

  function table(rows, attrs) {
    const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
    const body = rows.map((r) => el("tr", {}, cols.map((c) =>
      el("td", {class: typeof r[c] === "number" ? "num" : ""}, fmt(r[c])))));
    return el("div", {class: "scroll"},
      el("table", attrs || {}, el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))), el("tbody", {}, body)));
  }

  const isRecordList = (v) => Array.isArray(v) && v.length > 0 && v.every((x) => x && typeof x === "object" && !Array.isArray(x));
  const isScalar = (v) => v === null || typeof v !== "object";

  // a summary.json, whatever its shape: lists of records as tables, mappings of scalars as key/value tables
  function renderValue(value, depth) {
    if (isRecordList(value)) {
      if (value.every((r) => Object.values(r).every((x) => isScalar(x) || Array.isArray(x)))) return table(value);
      return el("div", {}, value.map((r, i) => el("details", {}, el("summary", {}, `#${i + 1}`), renderValue(r, depth + 1))));
    }
    if (Array.isArray(value)) return el("p", {}, value.map(fmt).join(", "));
    if (value && typeof value === "object") {
      const scalars = Object.entries(value).filter(([, v]) => isScalar(v) || (Array.isArray(v) && v.every(isScalar)));
      const nested = Object.entries(value).filter(([, v]) => !(isScalar(v) || (Array.isArray(v) && v.every(isScalar))));
      const out = el("div", {});
      if (scalars.length) out.append(table(scalars.map(([k, v]) => ({key: k, value: Array.isArray(v) ? v.map(fmt).join(", ") : v}))));
      for (const [k, v] of nested) {
        if (depth < 1) out.append(el("h3", {}, k), renderValue(v, depth + 1));
        else out.append(el("details", {}, el("summary", {}, k), renderValue(v, depth + 1)));
      }
      return out;
    }
    return el("p", {}, fmt(value));
  }

  const partTitle = (run, part) => (MANY ? run.label + " · " : "") + (part.name === "." ? run.label : part.name);

  // ------------------------------------------------------------------ header
  document.getElementById("subtitle").textContent = `generated ${DATA.generated} · ` +
    RUNS.map((r) => `${r.label} (${r.kind}, ${r.parts.length} run folder${r.parts.length > 1 ? "s" : ""})`).join(" · ");

  // ------------------------------------------------------------------ runs side by side
  if (MANY) {
    const s = section("compare", "Runs side by side",
      "The configs of the runs named, flattened; rows whose values differ are marked.");
    const rows = DATA.config_diff;
    const ndiff = rows.filter((r) => r.differs).length;
    const only = el("input", {type: "checkbox", id: "only-differing"});
    only.checked = ndiff > 0;
    const tbody = el("tbody", {}, rows.map((r) => el("tr", {class: r.differs ? "differs" : "same"},
      el("td", {class: "key"}, r.key), r.values.map((v) => el("td", {}, v)))));
    const apply = () => tbody.querySelectorAll("tr.same").forEach((tr) => { tr.hidden = only.checked; });
    only.addEventListener("change", apply);
    apply();
    s.append(el("div", {class: "controls"}, el("label", {}, only, `only the ${ndiff} key${ndiff === 1 ? "" : "s"} that differ${ndiff === 1 ? "s" : ""}`)),
      el("div", {class: "scroll"}, el("table", {id: "config-diff"},
        el("thead", {}, el("tr", {}, el("th", {}, "config key"), RUNS.map((r) => el("th", {}, r.label)))), tbody)));
    const flat = RUNS.map((r) => flattenSummary(r.parts[0].name === "." ? r.parts[0].summary : null));
    const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))];
    if (keys.length) {
      s.append(el("h3", {}, "results side by side"), table(keys.map((k) => {
        const row = {result: k};
        RUNS.forEach((r, i) => { row[r.label] = flat[i][k]; });
        return row;
      }), {id: "result-diff"}));
    }
  }

  function flattenSummary(value, prefix, out, depth) {
    out = out || {};
    prefix = prefix || "";
    depth = depth || 0;
    if (depth > 3 || value === null || value === undefined) return out;
    if (isRecordList(value)) {  // tables whose rows are named (stage, method): one entry per named cell
      value.forEach((r) => {
        const name = r.stage || r.method || r.name;
        if (typeof name !== "string") return;
        for (const [k, v] of Object.entries(r)) {
          if (typeof v === "number") out[`${prefix}${name} / ${k}`] = v;
        }
      });
    } else if (typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) {
        if (isScalar(v)) out[prefix + k] = v;
        else flattenSummary(v, `${prefix}${k} / `, out, depth + 1);
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ summaries
  {
    const s = section("summary", "Summary", "Each run folder's summary.json (the tables of its summary.md).");
    for (const run of RUNS) {
      if (MANY) s.append(el("h3", {}, run.label));
      const [first, ...rest] = run.parts;
      if (first.summary !== null && first.summary !== undefined) s.append(el("div", {class: "summary"}, renderValue(first.summary, 0)));
      else s.append(el("p", {class: "note"}, `${first.name === "." ? run.label : first.name}: no summary.json (the run did not finish?)`));
      for (const part of rest) {
        if (part.summary === null || part.summary === undefined) continue;
        s.append(el("details", {class: "summary"}, el("summary", {}, part.name), renderValue(part.summary, 1)));
      }
    }
  }

  // ------------------------------------------------------------------ metric curves
  const partNames = [];
  for (const run of RUNS) for (const p of run.parts) {
    if (Object.keys(p.metrics).length && !partNames.includes(p.name)) partNames.push(p.name);
  }
  if (partNames.length) {
    const s = section("curves", "Metric curves",
      "metrics.jsonl of each run folder, one chart per metric" + (MANY ? ", the runs overlaid" : "") +
      ". Zoom by dragging, double-click to reset; the smoothing is an exponential moving average (as TensorBoard's).");
    const preferred = partNames.find((n) => RUNS.some((r) => r.parts.some((p) => p.name === n && "rm_score" in p.metrics)));
    const pick = el("select", {id: "curve-part"}, partNames.map((n) => el("option", {value: n}, n === "." ? "(the run itself)" : n)));
    pick.value = preferred || partNames[0];
    const smooth = el("input", {type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01", value: "0"});
    const smoothLabel = el("span", {id: "smoothing-value"}, "0");
    const filter = el("input", {type: "search", id: "curve-filter", placeholder: "metric name contains"});
    const grid = el("div", {class: "grid", id: "curve-grid"});
    s.append(el("div", {class: "controls"}, el("label", {}, "run folder", pick),
      el("label", {}, "smoothing", smooth, smoothLabel), el("label", {}, "metrics", filter)), grid);

    const draw = () => {
      const w = Number(smooth.value);
      smoothLabel.textContent = w.toFixed(2);
      grid.querySelectorAll(".curve").forEach((d) => Plotly.purge(d));
      grid.textContent = "";
      const sources = RUNS.map((r, i) => [r, i, r.parts.find((p) => p.name === pick.value)]).filter(([, , p]) => p);
      const keys = [...new Set(sources.flatMap(([, , p]) => Object.keys(p.metrics)))]
        .filter((k) => k.includes(filter.value.trim()));
      for (const key of keys) {
        const div = el("div", {class: "curve", "data-metric": key});
        grid.append(div);
        const traces = [];
        for (const [run, i, part] of sources) {
          const series = part.metrics[key];
          if (!series) continue;
          const color = COLORS[i % COLORS.length];
          if (w > 0) traces.push({x: series[0], y: series[1], mode: "lines", line: {color: color, width: 1},
            opacity: 0.25, hoverinfo: "skip", showlegend: false});
          traces.push({x: series[0], y: ema(series[1], w), name: run.label, mode: series[0].length < 30 ? "lines+markers" : "lines",
            line: {color: color, width: 2}});
        }
        Plotly.newPlot(div, traces, {title: {text: key, font: {size: 13}}, margin: {l: 50, r: 10, t: 30, b: 35},
          xaxis: {title: {text: "step"}}, hovermode: "x unified", showlegend: MANY,
          legend: {orientation: "h", y: -0.2}}, PLOT_CONFIG);
      }
      if (!keys.length) grid.append(el("p", {class: "note"}, "no metric matches"));
    };
    pick.addEventListener("change", draw);
    smooth.addEventListener("input", draw);
    filter.addEventListener("input", draw);
    draw();
  }

  function ema(ys, w) {
    if (!(w > 0)) return ys;
    let last = 0, n = 0;
    return ys.map((y) => {
      if (y === null) return null;
      last = last * w + (1 - w) * y;
      n += 1;
      return Number((last / (1 - Math.pow(w, n))).toPrecision(12));  // a constant series stays constant
    });
  }

  // ------------------------------------------------------------------ over-optimization
  {
    const views = [];
    for (const [i, run] of RUNS.entries()) for (const part of run.parts) {
      const m = part.metrics;
      const train = m.gold && m.kl && m.rm_score;
      const held = m.eval_gold && m.eval_kl && m.eval_proxy;
      if (train || held) views.push({run, i, part, m, train, held});
    }
    const s = section("overopt", "Over-optimization",
      views.length ? "The reward model's score (proxy) and the gold reward against sqrt(KL to the reference policy), " +
        "step by step (Gao et al. 2022): proxy rising while gold falls is the reward model being exploited. " +
        "Training batches: rm_score, gold and kl of each step (points) and their means over bins of sqrt(KL) " +
        "(lines, 4+ steps a bin); held-out: eval_proxy, eval_gold, eval_kl, joined in step order."
        : "No gold reward was logged in these runs (the world's PPO runs log `gold` beside `rm_score`).");
    const grid = el("div", {class: "grid wide"});
    s.append(grid);
    for (const v of views) {
      const traces = [];
      // one point per step; training batches (noisy) also as the mean over bins of sqrt(KL), held-out points joined in step order
      const xy = (kKey, yKey, name, color, binned) => {
        const kl = new Map(v.m[kKey][0].map((st, j) => [st, v.m[kKey][1][j]]));
        const steps = v.m[yKey][0].filter((st) => kl.has(st));
        const ys = new Map(v.m[yKey][0].map((st, j) => [st, v.m[yKey][1][j]]));
        const pts = steps.map((st) => [Math.sqrt(Math.max(0, kl.get(st))), ys.get(st), st]);
        traces.push({x: pts.map((p) => p[0]), y: pts.map((p) => p[1]), text: pts.map((p) => "step " + p[2]),
          name: name, legendgroup: name, mode: binned ? "markers" : "lines+markers", opacity: binned ? 0.45 : 1,
          line: {dash: "dot", color: color}, marker: {size: binned ? 5 : 7, color: color}});
        if (binned && pts.length >= 8) {
          const sorted = [...pts].sort((a, b) => a[0] - b[0]);
          const nbins = Math.min(10, Math.floor(sorted.length / 4));
          const bx = [], by = [];
          for (let b = 0; b < nbins; b++) {
            const chunk = sorted.slice(Math.floor(b * sorted.length / nbins), Math.floor((b + 1) * sorted.length / nbins));
            bx.push(chunk.reduce((s, p) => s + p[0], 0) / chunk.length);
            by.push(chunk.reduce((s, p) => s + p[1], 0) / chunk.length);
          }
          traces.push({x: bx, y: by, name: name + " (mean per sqrt(KL) bin)", legendgroup: name, mode: "lines",
            line: {color: color, width: 3}, hoverinfo: "x+y"});
        }
      };
      if (v.train) {
        xy("kl", "rm_score", "proxy (RM), training batch", "#1f77b4", true);
        xy("kl", "gold", "gold, training batch", "#d62728", true);
      }
      if (v.held) {
        xy("eval_kl", "eval_proxy", "proxy (RM), held-out", "#17becf", false);
        xy("eval_kl", "eval_gold", "gold, held-out", "#ff7f0e", false);
      }
      const div = el("div", {class: "overopt-plot"});
      grid.append(div);
      Plotly.newPlot(div, traces, {title: {text: partTitle(v.run, v.part), font: {size: 13}},
        margin: {l: 50, r: 10, t: 30, b: 40}, xaxis: {title: {text: "sqrt(KL)"}}, yaxis: {title: {text: "reward"}},
        legend: {orientation: "h", y: -0.25}}, PLOT_CONFIG);
    }
  }

  // ------------------------------------------------------------------ samples
  {
    const rows = [];
    for (const run of RUNS) for (const part of run.parts) {
      const kl = part.metrics.kl ? new Map(part.metrics.kl[0].map((st, j) => [st, part.metrics.kl[1][j]])) : null;
      for (const r of part.samples) {
        const row = {};
        if (MANY) row.run = run.label;
        row.folder = part.name === "." ? run.label : part.name;
        Object.assign(row, r);
        if (kl && r.step !== undefined && kl.has(r.step) && !("kl" in r)) row["kl (step mean)"] = kl.get(r.step);
        rows.push(row);
      }
    }
    const s = section("samples", "Samples",
      rows.length ? "Responses sampled during training (samples.jsonl), with the reward model's score (rm), the gold " +
        "reward (gold) where the task has one, and the KL to the reference averaged over that step's batch."
        : "No samples in these runs (RL trainers write samples.jsonl every samples_every steps).");
    if (rows.length) {
      const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
      const text = el("input", {type: "search", id: "sample-filter", placeholder: "prompt or response contains"});
      const steps = [...new Set(rows.map((r) => r.step))].sort((a, b) => a - b);
      const step = el("select", {id: "sample-step"}, el("option", {value: ""}, "all steps"),
        steps.map((st) => el("option", {value: String(st)}, `step ${st}`)));
      const folders = [...new Set(rows.map((r) => (r.run ? r.run + " · " : "") + r.folder))];
      const folder = el("select", {id: "sample-folder"}, el("option", {value: ""}, "all run folders"),
        folders.map((f) => el("option", {value: f}, f)));
      const count = el("span", {id: "sample-count"});
      const tbody = el("tbody", {});
      const LIMIT = 500;
      const render = () => {
        const needle = text.value.trim().toLowerCase();
        const shown = rows.filter((r) => (!step.value || String(r.step) === step.value) &&
          (!folder.value || (r.run ? r.run + " · " : "") + r.folder === folder.value) &&
          (!needle || String(r.prompt || "").toLowerCase().includes(needle) ||
           String(r.response || "").toLowerCase().includes(needle)));
        tbody.textContent = "";
        for (const r of shown.slice(0, LIMIT)) {
          tbody.append(el("tr", {}, cols.map((c) => el("td", {class: c === "prompt" || c === "response" ? "text"
            : typeof r[c] === "number" ? "num" : ""}, fmt(r[c])))));
        }
        count.textContent = `${Math.min(shown.length, LIMIT)} of ${rows.length} samples shown`;
      };
      [text, step, folder].forEach((c) => c.addEventListener("input", render));
      s.append(el("div", {class: "controls"}, el("label", {}, "filter", text), el("label", {}, "step", step),
        folders.length > 1 ? el("label", {}, "run folder", folder) : null, count),
        el("div", {class: "scroll"}, el("table", {id: "samples"},
          el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))), tbody)));
      render();
    }
  }

  // ------------------------------------------------------------------ figures drawn from summaries
  {
    const figs = [];
    for (const run of RUNS) for (const part of run.parts) for (const p of part.plots) figs.push([run, part, p]);
    if (figs.length) {
      const s = section("figures", "Figures", "The PNG plots of run folders that logged no metrics (drawn from their summaries).");
      s.append(el("div", {class: "plots"}, figs.map(([run, part, p]) => el("figure", {},
        el("img", {src: "data:image/png;base64," + p.png, alt: p.name}),
        el("figcaption", {}, `${partTitle(run, part)}: ${p.name}`)))));
    }
  }

  // ------------------------------------------------------------------ configs
  {
    const s = section("config", "Config", "config.yaml of each run folder: the resolved config the run ran with.");
    for (const run of RUNS) {
      run.parts.forEach((part, j) => {
        if (!part.config) return;
        const d = el("details", {class: "config"}, el("summary", {}, partTitle(run, part)), el("pre", {}, part.config));
        if (j === 0) d.open = true;
        s.append(d);
      });
    }
  }
})();

// SamuLLM views for Airflow 3's UI: plain JavaScript on the page's own React (globalThis.React),
// no build step. Airflow imports this file for each react_app of the plugin and renders
// globalThis[<app name>] with props {dagId, runId, taskId, mapIndex}.
//   "SamuLLM stages"  (DAG run tab):       Gantt of planned vs actual stages, live node progress
//   "SamuLLM node"    (task instance tab): the node's plan, bars and metrics
//   "SamuLLM dry run" (DAG tab):           the predicted plan before any run
// Data comes from the plugin's JSON API (same origin, Airflow's login cookie).
(function () {
  const R = globalThis.React;
  const h = R.createElement;
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                   "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295"];
  const POLL_MS = 2000;

  function apiUrl(path) {
    return new URL("samullm/api/" + path, document.baseURI).href;
  }
  const enc = encodeURIComponent;

  // Fetch JSON from the plugin API; poll while `keepPolling(data)` says so.
  function useApi(path, keepPolling) {
    const [state, setState] = R.useState({ data: null, error: null, loading: true });
    R.useEffect(() => {
      if (!path) return undefined;
      let stopped = false;
      let timer = null;
      const load = () => {
        fetch(apiUrl(path), { credentials: "same-origin" })
          .then((r) => r.json().then((body) => ({ ok: r.ok, status: r.status, body })))
          .then(({ ok, status, body }) => {
            if (stopped) return;
            if (!ok) {
              setState({ data: null, error: (body && body.detail) || `HTTP ${status}`, loading: false });
              return;
            }
            setState({ data: body, error: null, loading: false });
            if (keepPolling && keepPolling(body)) timer = setTimeout(load, POLL_MS);
          })
          .catch((e) => { if (!stopped) setState({ data: null, error: String(e), loading: false }); });
      };
      load();
      return () => { stopped = true; if (timer) clearTimeout(timer); };
    }, [path]);
    return state;
  }

  const fmt = (s) => (s == null ? "–" : s < 100 ? s.toFixed(1) + " s" : Math.round(s) + " s");
  const modelName = (m) => (m && m.startsWith("/") ? m.split("/").filter(Boolean).pop() : m);
  const planText = (p) => (p ? `TP${p.tp}${p.dp > 1 ? "×DP" + p.dp : ""} on [${p.devices.join(",")}]` : "–");

  function ticks(span) {
    if (span <= 0) return [0];
    const raw = span / 8;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let t = 0; t <= span + 1e-9; t += step) out.push(t);
    return out;
  }

  // One row per node, lanes: planned (first plan), re-planned (latest, if any), actual.
  function Gantt({ chart }) {
    const rows = chart.rows || [];
    const lanes = [["planned", "planned"], ["replanned", "re-planned"], ["actual", "actual"]]
      .filter(([key]) => rows.some((r) => (r[key] || []).length));
    const laneH = 18, rowGap = 10, left = 230, right = 170, top = 28, width = 1100;
    const rowH = lanes.length * laneH + rowGap;
    const height = top + rows.length * rowH + 10;
    const span = Math.max(chart.span || 0, 1e-6);
    const x = (t) => left + ((width - left - right) * t) / span;
    const children = [];
    ticks(span).forEach((t, i) => {
      children.push(h("line", { key: "g" + i, x1: x(t), x2: x(t), y1: top - 6, y2: height - 8, stroke: "#ccc", strokeDasharray: "2,3" }));
      children.push(h("text", { key: "t" + i, x: x(t), y: top - 10, fontSize: 10, textAnchor: "middle", fill: "#888" }, t.toFixed(t < 10 ? 1 : 0) + "s"));
    });
    if (chart.elapsed != null && chart.app && chart.app.state === "running") {
      children.push(h("line", { key: "now", x1: x(chart.elapsed), x2: x(chart.elapsed), y1: top - 6, y2: height - 8, stroke: "#d62728" }));
    }
    rows.forEach((row, i) => {
      const color = PALETTE[i % PALETTE.length];
      const y0 = top + i * rowH;
      children.push(h("text", { key: "n" + i, x: 4, y: y0 + (lanes.length * laneH) / 2 + 4, fontSize: 12, fill: "currentColor" },
        row.node.length > 22 ? row.node.slice(0, 21) + "…" : row.node));
      lanes.forEach(([key, label], li) => {
        const y = y0 + li * laneH;
        children.push(h("text", { key: `l${i}-${li}`, x: left - 6, y: y + 11, fontSize: 9, textAnchor: "end", fill: "#888" }, label));
        (row[key] || []).forEach((b, bi) => {
          const solid = key === "actual";
          children.push(h("rect", {
            key: `${key}-${i}-${bi}`, "data-kind": key, "data-node": row.node, "data-stage": b.stage,
            x: x(b.start), y: y + 2, width: Math.max(1, x(b.end) - x(b.start)), height: laneH - 4, rx: 2,
            fill: solid ? color : "none", fillOpacity: solid ? (b.open ? 0.6 : 0.9) : 0,
            stroke: color, strokeWidth: solid ? 0 : 1.5, strokeDasharray: key === "replanned" ? "4,2" : null,
          }, h("title", null, `${row.node} ${label} stage ${b.stage}: ${fmt(b.start)} → ${fmt(b.end)}, TP${b.tp}${b.dp > 1 ? "×DP" + b.dp : ""} on [${b.devices.join(",")}]`)));
          const tag = `TP${b.tp}${b.dp > 1 ? "×" + b.dp : ""} @${b.devices.join(",")}`;
          if (x(b.end) - x(b.start) > 7 * tag.length) {
            children.push(h("text", { key: `${key}-t-${i}-${bi}`, x: x(b.start) + 4, y: y + laneH - 6, fontSize: 9,
              fill: solid ? "#fff" : color, pointerEvents: "none" }, tag));
          }
        });
      });
      if (row.rows_total != null) {
        children.push(h("text", { key: "p" + i, x: width - right + 8, y: y0 + (lanes.length * laneH) / 2 + 4, fontSize: 11, fill: "currentColor" },
          `${row.state || ""} ${row.rows_done ?? 0}/${row.rows_total} rows`));
      }
    });
    return h("svg", { id: "samullm-gantt", viewBox: `0 0 ${width} ${height}`, width: "100%", style: { maxWidth: width + "px", fontFamily: "sans-serif" } }, children);
  }

  function ProgressBar({ value }) {
    return h("div", { style: { width: "120px", height: "8px", background: "#e5e5e5", borderRadius: "4px", display: "inline-block", verticalAlign: "middle" } },
      h("div", { style: { width: Math.round(100 * Math.min(1, value || 0)) + "%", height: "100%", background: "#59a14f", borderRadius: "4px" } }));
  }

  const cell = { padding: "4px 10px", borderBottom: "1px solid #ddd", textAlign: "left", whiteSpace: "nowrap" };

  function NodeTable({ rows }) {
    const head = ["node", "model", "state", "progress", "rows", "output tokens", "tok/s", "plan", "load", "running"];
    return h("table", { id: "samullm-nodes", style: { borderCollapse: "collapse", fontSize: "13px", marginTop: "12px" } },
      h("thead", null, h("tr", null, head.map((c) => h("th", { key: c, style: cell }, c)))),
      h("tbody", null, rows.map((r) => h("tr", { key: r.node, "data-node": r.node, "data-state": r.state },
        h("td", { style: cell }, r.node),
        h("td", { style: { ...cell, maxWidth: "260px", overflow: "hidden", textOverflow: "ellipsis" }, title: r.model }, modelName(r.model)),
        h("td", { style: cell }, r.state),
        h("td", { style: cell }, h(ProgressBar, { value: r.progress })),
        h("td", { style: cell, "data-rows": r.rows_done }, `${r.rows_done}/${r.rows_total}` + (r.rows_failed ? ` (${r.rows_failed} failed)` : "")),
        h("td", { style: cell }, r.output_tokens),
        h("td", { style: cell }, r.tokens_per_second == null ? "–" : r.tokens_per_second.toFixed(1)),
        h("td", { style: cell }, planText(r.plan)),
        h("td", { style: cell }, fmt(r.load_seconds)),
        h("td", { style: cell }, fmt(r.seconds_running))))));
  }

  function Message({ id, text }) {
    return h("div", { id, style: { padding: "12px", color: "#b00020", whiteSpace: "pre-wrap" } }, text);
  }

  function RunView(props) {
    const path = props.dagId && props.runId ? `runs/${enc(props.dagId)}/${enc(props.runId)}` : null;
    const { data, error, loading } = useApi(path, (d) => d.app && d.app.state === "running");
    if (loading) return h("div", { id: "samullm-run" }, "Loading SamuLLM stages…");
    if (error) return h("div", { id: "samullm-run" }, h(Message, { id: "samullm-error", text: error }));
    const plan = (data.plans || [])[0];
    const last = (data.plans || [])[(data.plans || []).length - 1];
    return h("div", { id: "samullm-run", style: { padding: "8px" } },
      h("h3", { style: { fontSize: "16px", fontWeight: 600 } }, `SamuLLM run ${data.app.app_run_id}`),
      h("p", { style: { fontSize: "13px" } },
        h("span", { id: "samullm-app-state", "data-state": data.app.state }, data.app.state), " · ",
        `elapsed ${fmt(data.elapsed)} · `,
        h("span", { id: "samullm-stage-counts" }, `${data.stages_planned} stages planned, ${data.stages_actual} actual`),
        plan ? ` · predicted makespan ${fmt(plan.makespan)} ± ${fmt(plan.makespan_std)} on ${plan.node_spec}` : "",
        last && last !== plan ? ` · ${data.plans.length} plans (last: ${last.reason})` : ""),
      data.app.error ? h(Message, { id: "samullm-app-error", text: data.app.error }) : null,
      h(Gantt, { chart: data }),
      h(NodeTable, { rows: data.rows }));
  }

  function NodeView(props) {
    const path = props.dagId && props.runId && props.taskId
      ? `runs/${enc(props.dagId)}/${enc(props.runId)}/tasks/${enc(props.taskId)}` : null;
    const { data, error, loading } = useApi(path, (d) => d.app && d.app.state === "running");
    if (loading) return h("div", { id: "samullm-node" }, "Loading SamuLLM node…");
    if (error) return h("div", { id: "samullm-node" }, h(Message, { id: "samullm-error", text: error }));
    const r = data.rows[0];
    const facts = [
      ["node", r.node], ["model", r.model], ["state", r.state],
      ["rows", `${r.rows_done}/${r.rows_total}` + (r.rows_failed ? ` (${r.rows_failed} failed)` : "")],
      ["prompt tokens", r.prompt_tokens], ["output tokens", r.output_tokens],
      ["throughput", r.tokens_per_second == null ? "–" : r.tokens_per_second.toFixed(1) + " tok/s"],
      ["plan", planText(r.plan)], ["engine load", fmt(r.load_seconds)], ["running", fmt(r.seconds_running)],
      ["attempts", r.attempts], ["result", r.result_uri || "–"],
    ];
    return h("div", { id: "samullm-node", style: { padding: "8px" } },
      h("h3", { style: { fontSize: "16px", fontWeight: 600 } }, `SamuLLM node ${r.node}`),
      r.error ? h(Message, { id: "samullm-node-error", text: r.error }) : null,
      h("table", { style: { fontSize: "13px", borderCollapse: "collapse" } },
        h("tbody", null, facts.map(([k, v]) => h("tr", { key: k, "data-fact": k },
          h("th", { style: cell }, k), h("td", { style: cell }, String(v)))))),
      (r.row_errors || []).length ? h("ul", null, r.row_errors.map(([why, n], i) => h("li", { key: i }, `${n} rows: ${why}`))) : null,
      h("p", { style: { fontSize: "13px", marginTop: "8px" } }, `Planned stages for this node (plan v1) vs actual:`),
      h(Gantt, { chart: data }));
  }

  function DryRunView(props) {
    const path = props.dagId ? `dags/${enc(props.dagId)}/dry-run` : null;
    const { data, error, loading } = useApi(path, null);
    if (loading) return h("div", { id: "samullm-dry-run" }, "Planning (dry run, nothing runs)…");
    if (error) return h("div", { id: "samullm-dry-run" }, h(Message, { id: "samullm-error", text: error }));
    return h("div", { id: "samullm-dry-run", style: { padding: "8px" } },
      h("h3", { style: { fontSize: "16px", fontWeight: 600 } }, `SamuLLM dry run of ${props.dagId}`),
      h("p", { style: { fontSize: "13px" } },
        `${data.stages_planned} stages on ${data.node_spec} (${data.num_devices} devices), predicted makespan `,
        h("span", { id: "samullm-makespan" }, `${fmt(data.makespan)} ± ${fmt(data.makespan_std)}`),
        ` · planned in ${fmt(data.planning_seconds)} · parameters: the DAG's defaults`),
      (data.notes || []).map((n, i) => h("p", { key: i, style: { fontSize: "12px", color: "#888" } }, "note: " + n)),
      h(Gantt, { chart: data }));
  }

  globalThis["SamuLLM stages"] = RunView;
  globalThis["SamuLLM node"] = NodeView;
  globalThis["SamuLLM dry run"] = DryRunView;
  globalThis.AirflowPlugin = RunView;
})();

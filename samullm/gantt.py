"""A schedule drawn as an SVG Gantt chart: one row per device, one bar per node and stage.

Each bar spans the stage on the devices the node holds, labelled with the node and its plan; the
hatched head of a bar is its engine load; a whisker at a stage's end shows the spread (one
standard deviation over the sampled output lengths). Plain SVG, no dependencies.
"""

from __future__ import annotations

from html import escape

from samullm.schedule import Schedule

PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#86bcb6", "#d37295", "#a0cbe8", "#ffbe7d", "#8cd17d", "#f1ce63",
]

ROW_H = 28
LEFT = 90
TOP = 40
RIGHT = 30


def _ticks(span: float) -> list[float]:
    if span <= 0:
        return [0.0]
    raw = span / 8
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    out, t = [], 0.0
    while t <= span + 1e-9:
        out.append(t)
        t += step
    return out


def render_svg(schedule: Schedule, width: int = 1000) -> str:
    n_dev = schedule.num_devices
    span = max(schedule.makespan, max((s.end + s.end_std for s in schedule.stages), default=0.0), 1e-9)
    plot_w = width - LEFT - RIGHT
    height = TOP + n_dev * ROW_H + 80

    def x(t: float) -> float:
        return LEFT + plot_w * t / span

    names = []
    for stage in schedule.stages:
        for n in stage.nodes:
            if n.node not in names:
                names.append(n.node)
    color = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        '<defs><pattern id="load" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#ffffff" opacity="0.55"/></pattern></defs>',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">'
        f"{escape(schedule.application)} on {escape(schedule.node_spec)} — {escape(schedule.method)}: "
        f"{schedule.makespan:.1f} s ± {schedule.makespan_std:.1f} s</text>",
    ]
    for d in range(n_dev):
        y = TOP + d * ROW_H
        out.append(f'<text x="{LEFT - 8}" y="{y + ROW_H / 2 + 4}" text-anchor="end">device {d}</text>')
        out.append(f'<line x1="{LEFT}" y1="{y + ROW_H}" x2="{LEFT + plot_w}" y2="{y + ROW_H}" stroke="#eee"/>')
    for t in _ticks(span):
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP}" x2="{x(t):.1f}" y2="{TOP + n_dev * ROW_H}" stroke="#ddd"/>')
        out.append(f'<text x="{x(t):.1f}" y="{TOP + n_dev * ROW_H + 14}" text-anchor="middle">{t:g}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + n_dev * ROW_H + 30}" text-anchor="middle">seconds</text>')

    # One bar per run: a node's consecutive stages on the same devices ("continue") merge.
    bars: dict[tuple[str, int], dict] = {}
    runs: list[dict] = []
    for stage in schedule.stages:
        for node in stage.nodes:
            for d in node.devices:
                open_bar = bars.get((node.node, d))
                if node.action == "continue" and open_bar is not None and open_bar["end"] >= stage.start - 1e-6:
                    open_bar["end"] = stage.end
                    open_bar["after"] = node.requests_done_after
                    continue
                bar = {"node": node, "device": d, "start": stage.start, "end": stage.end,
                       "after": node.requests_done_after, "stage": stage.index}
                bars[(node.node, d)] = bar
                runs.append(bar)
    for bar in runs:
        node, d = bar["node"], bar["device"]
        y = TOP + d * ROW_H + 3
        x0, x1 = x(bar["start"]), x(bar["end"])
        w = max(x1 - x0, 0.5)
        title = (
            f"{node.node} ({node.model}) TP{node.tp} DP{node.dp} on {node.devices}: from stage {bar['stage']}, "
            f"{bar['start']:.1f}–{bar['end']:.1f} s, {node.action}, requests "
            f"{node.requests_done_before:.0f}→{bar['after']:.0f} of {node.requests_total}"
        )
        out.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{ROW_H - 6}" '
            f'fill="{color[node.node]}" stroke="#fff"><title>{escape(title)}</title></rect>'
        )
        if node.load_seconds > 0:
            lw = min(w, x(bar["start"] + node.load_seconds) - x0)
            out.append(f'<rect x="{x0:.1f}" y="{y}" width="{lw:.1f}" height="{ROW_H - 6}" fill="url(#load)"/>')
        if w > 40:
            label = f"{node.node} TP{node.tp}{'×' + str(node.dp) if node.dp > 1 else ''}"
            out.append(f'<text x="{x0 + 4:.1f}" y="{y + ROW_H / 2 + 1}" fill="#fff">{escape(label[: max(3, int(w / 7))])}</text>')
    for stage in schedule.stages:
        if stage.end_std > 0:
            y0, y1 = TOP, TOP + n_dev * ROW_H
            xa, xb = x(max(0.0, stage.end - stage.end_std)), x(stage.end + stage.end_std)
            ym = y1 + 4
            out.append(f'<line x1="{xa:.1f}" y1="{ym}" x2="{xb:.1f}" y2="{ym}" stroke="#333"/>')
            out.append(f'<line x1="{x(stage.end):.1f}" y1="{y0}" x2="{x(stage.end):.1f}" y2="{y1}" stroke="#333" stroke-dasharray="2,3"/>')

    ly = TOP + n_dev * ROW_H + 50
    lx = LEFT
    for name in names:
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color[name]}"/>')
        out.append(f'<text x="{lx + 14}" y="{ly}">{escape(name)}</text>')
        lx += 24 + 7 * len(name)
        if lx > width - 120:
            lx, ly = LEFT, ly + 16
    out.append("</svg>")
    # grow the canvas if the legend wrapped
    svg = "\n".join(out)
    if ly + 20 > height:
        svg = svg.replace(f'height="{height}"', f'height="{ly + 20}"', 1)
    return svg


def save_svg(schedule: Schedule, path: str) -> str:
    with open(path, "w") as fh:
        fh.write(render_svg(schedule))
    return path

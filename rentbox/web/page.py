"""The status page as HTML: tables and inline SVG charts drawn on the server.

No script, no font, no request beyond the page itself: it works offline, is small, and
renders at once on a phone. Every value is escaped (numbers, operators and alert texts
come from outside). The one inline style sheet is allowed by its hash in the
Content-Security-Policy (`CSP`); nothing else may load or run.

On a narrow screen a chart keeps a legible size and scrolls sideways in its box,
starting from its right end (today). Each chart's `<svg>` carries `data-points` (how many points it draws), and each point is
an element of class `pt`: a bar per day, a stack per day, a dot per day with deliveries.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

from rentbox import __version__

STYLE = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#59636e;--bg:#fff;--card:#f6f8fa;
--line:#d0d7de;--ok:#1a7f37;--warn:#bc4c00;--bad:#cf222e;--a:#0969da;--b:#8250df;
--c:#bf8700;--d:#6e7781;--e:#1a7f37}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#8d96a0;--bg:#0d1117;
--card:#161b22;--line:#30363d;--ok:#3fb950;--warn:#d29922;--bad:#f85149;--a:#4493f8;
--b:#a371f7;--c:#d29922;--d:#8d96a0;--e:#3fb950}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1100px;padding:12px 16px 32px;font:14px/1.45 system-ui,
-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:20px;margin:4px 0 2px}h2{font-size:15px;margin:0 0 8px}
.sub{color:var(--muted);margin:0 0 12px}
.grid{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(320px,1fr))}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px;
min-width:0}
section.wide{grid-column:1/-1}
@media (min-width:700px){section.two{grid-column:span 2}}
td.t{white-space:nowrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;color:#fff}
.ok{background:var(--ok)}.warn{background:var(--warn)}
ul.warnings{margin:8px 0 0;padding-left:18px;color:var(--bad)}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid var(--line);
vertical-align:top}th{color:var(--muted);font-weight:600}td.n,th.n{text-align:right}
.scroll{overflow-x:auto;max-height:360px;overflow-y:auto}
.kv{display:flex;flex-wrap:wrap;gap:6px 18px}.kv b{font-size:18px;display:block}
.kv span{color:var(--muted);font-size:12px}
svg{width:100%;height:auto;display:block;min-width:540px;direction:ltr}
.chart{overflow-x:auto;direction:rtl}
svg text{fill:var(--muted);font-size:11px}svg .axis{stroke:var(--line)}
.s0{fill:var(--e)}.s1{fill:var(--d)}.s2{fill:var(--c)}.s3{fill:var(--b)}.s4{fill:var(--a)}
.bar{fill:var(--e)}.l50{stroke:var(--a);fill:none;stroke-width:1.5}
.l99{stroke:var(--bad);fill:none;stroke-width:1.5}.d50{fill:var(--a)}.d99{fill:var(--bad)}
.legend{color:var(--muted);font-size:12px;margin:4px 0 0}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 10px}
.k0{background:var(--e)}.k1{background:var(--d)}.k2{background:var(--c)}
.k3{background:var(--b)}.k4{background:var(--a)}.k99{background:var(--bad)}
.risk{color:var(--bad);font-weight:600}.muted{color:var(--muted)}
"""

CSP = ("default-src 'none'; style-src 'sha256-"
       + base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")
       + "'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# Chart geometry (SVG user units; the SVG scales to the width of its box).
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 800, 180, 46, 18, 8
OUTCOME_NAMES = {"sold": "sold", "cancelled": "cancelled", "refunded": "refunded",
                 "wrong_service": "wrong service", "open": "open"}


def render(data: dict) -> str:
    """The whole page for `dashboard.overview`'s dict."""
    health = data["health"]
    ok = not data["warnings"]
    server = health["server"] or {}
    call = health["last_onlinesim_call"] or {}
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        '<meta name=color-scheme content="light dark">',
        '<link rel=icon href="data:,">',
        "<title>rentbox status</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>rentbox status <span class='badge {'ok' if ok else 'warn'}'>"
        f"{'OK' if ok else _e(len(data['warnings'])) + ' warning(s)'}</span></h1>",
        f"<p class=sub>as of {_e(_short(data['at']))} · rentbox {_e(__version__)}</p>",
        "<div class=grid>",
        _section("health", "Health", _health(data, server, call)),
        _section("pool", "Pool", _pool(data["pool"])),
        _section("outbox", "Outbox", _outbox(data["outbox"])),
        _section("income", "Income credited per day (RUB), last 90 days", _income(data["charts"]),
                 wide=True),
        _section("rentals-chart", "Rentals per day by outcome", _rentals_chart(data["charts"]),
                 wide=True),
        _section("push-delay", "SMS push delay per day (p50, p99)",
                 _delay_chart(data["charts"]), wide=True),
        _section("rentals", f"Open rentals ({_e(data['rentals']['open'])})",
                 _rentals(data["rentals"]), wide=True),
        _section("operators", "Pool by country and operator",
                 _operators(data["pool"]["by_operator"])),
        _section("alerts", "Recent alerts", _alerts(data["alerts"]), wide="two"),
        "</div></body></html>",
    ]
    return "".join(parts)


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _short(stamp: str | None) -> str:
    return "—" if not stamp else f"{stamp[:10]} {stamp[11:16]} UTC"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _rub(kopecks: int) -> str:
    return f"{kopecks / 100:,.2f} RUB".replace(",", " ")


def _section(ident: str, title: str, body: str, wide: bool | str = False) -> str:
    span = " class=wide" if wide is True else f" class={wide}" if wide else ""
    return (f"<section id={ident}{span}><h2>{title}</h2>"
            f"{body}</section>")


def _figures(pairs: list[tuple[str, object]]) -> str:
    return "<div class=kv>" + "".join(
        f"<div><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in pairs) + "</div>"


def _health(data: dict, server: dict, call: dict) -> str:
    running = server.get("running")
    rows = [
        ("server", "running" if running else "not running" if server else "never started"),
        ("Onlinesim's last call", _short(call.get("at")) + (
            f" ({call['action']})" if call.get("action") else "")),
        ("database free space", "unknown" if data["health"]["database"]["free_bytes"] is None
         else f"{data['health']['database']['free_bytes'] / 1024 ** 3:.1f} GiB"),
    ]
    table = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                                for k, v in rows) + "</table>"
    warnings = data["warnings"]
    if not warnings:
        return table + "<p class=muted>No warnings.</p>"
    return table + "<ul class=warnings>" + "".join(
        f"<li>{_e(w)}</li>" for w in warnings) + "</ul>"


def _pool(pool: dict) -> str:
    states = pool["by_state"]
    sims = pool["presence"]
    return _figures([(k.replace("_", " "), states[k]) for k in
                     ("total", "free", "rented", "banned", "disabled", "offline")]) + (
        "<p class=legend>SIMs: " + _e(sims["online"]) + " online, " + _e(sims["offline"])
        + " offline, " + _e(sims["unwatched"]) + " not watched; "
        + _e(sims["at_risk"]) + " rented with the SIM offline</p>")


def _outbox(outbox: dict) -> str:
    text = _figures([("pending", outbox["pending"]), ("retrying", outbox["retrying"]),
                     ("failed for good", outbox["failed"]),
                     ("expired, rental ended", outbox["expired"]),
                     ("oldest undelivered", _age(outbox["oldest_pending_age_s"]))])
    if outbox["last_error"]:
        text += f"<p class=legend>last error: {_e(outbox['last_error'])}</p>"
    return text


def _rentals(rentals: dict) -> str:
    if not rentals["list"]:
        return "<p class=muted>No open rentals.</p>"
    rows = "".join(
        f"<tr><td class=n>{_e(r['id'])}</td><td>+{_e(r['number'])}</td>"
        f"<td>{_e(r['country'])}</td><td>{_e(r['operator'] or 'any')}</td>"
        f"<td class=n>{_e(_age(r['age_s']))}</td><td class=n>{_e(r['sms'])}</td>"
        f"<td>{_risk(r)}</td></tr>" for r in rentals["list"])
    shown = len(rentals["list"])
    more = (f"<p class=legend>the {shown} oldest of {_e(rentals['open'])} are shown</p>"
            if shown < rentals["open"] else "")
    return ("<div class=scroll><table><tr><th class=n>id</th><th>number</th><th>country</th>"
            "<th>operator</th><th class=n>age</th><th class=n>SMS</th><th>risk</th></tr>"
            f"{rows}</table></div>{more}")


def _risk(rental: dict) -> str:
    if rental["risk"] == "sim_offline":
        return "<span class=risk>SIM offline</span>"
    if rental["risk"] == "failed":
        return "<span class=risk>no SMS in time</span>"
    return "guard met" if rental["guard_met"] else "<span class=muted>waiting for SMS</span>"


def _operators(rows: list[dict]) -> str:
    if not rows:
        return "<p class=muted>The pool is empty.</p>"
    body = "".join(f"<tr><td>{_e(r['country'])}</td><td>{_e(r['operator'] or 'any')}</td>"
                   f"<td class=n>{_e(r['free'])}</td><td class=n>{_e(r['rented'])}</td></tr>"
                   for r in rows)
    return ("<div class=scroll><table><tr><th>country</th><th>operator</th>"
            f"<th class=n>free</th><th class=n>rented</th></tr>{body}</table></div>")


def _alerts(rows: list[dict]) -> str:
    if not rows:
        return "<p class=muted>No alerts.</p>"
    body = "".join(
        f"<tr><td>{'<span class=risk>active</span>' if r['state'] == 'active' else 'cleared'}"
        f"</td><td class=t>{_e(_short(r['started_at']))}</td><td>{_e(r['message'])}</td></tr>"
        for r in rows)
    return ("<div class=scroll><table><tr><th>state</th><th>since</th><th>message</th></tr>"
            f"{body}</table></div>")


# ---------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------


def _frame(name: str, points: int, top: float, unit: str, days: list[str], inner: str,
           label: str) -> str:
    """An SVG with a y axis from 0 to `top`, the first, middle and last day under it."""
    plot_h = HEIGHT - BOTTOM - TOP
    grid = []
    for share in (0, 0.5, 1):
        y = TOP + plot_h * (1 - share)
        grid.append(f"<line class=axis x1={LEFT} x2={WIDTH} y1={y:.1f} y2={y:.1f} />"
                    f"<text x={LEFT - 4} y={y + 3:.1f} text-anchor=end>"
                    f"{_e(_tick(top * share, unit))}</text>")
    for index, anchor in ((0, "start"), (len(days) // 2, "middle"), (len(days) - 1, "end")):
        grid.append(f"<text x={_x(index, len(days)) + _step(len(days)) / 2:.1f} "
                    f"y={HEIGHT - 4} text-anchor={anchor}>{_e(days[index][5:])}</text>")
    return (f"<div class=chart><svg data-chart={name} data-points={points} "
            f"viewBox='0 0 {WIDTH} {HEIGHT}' role=img aria-label='{_e(label)}'>"
            f"{''.join(grid)}{inner}</svg></div>")


def _tick(value: float, unit: str) -> str:
    if value == 0:
        return "0"
    if unit == "rub":
        return f"{value / 100:,.0f}".replace(",", " ")
    if unit == "s":
        return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"
    return f"{value:.0f}"


def _step(count: int) -> float:
    return (WIDTH - LEFT) / max(1, count)


def _x(index: int, count: int) -> float:
    return LEFT + index * _step(count)


def _y(value: float, top: float) -> float:
    plot_h = HEIGHT - BOTTOM - TOP
    return TOP + plot_h * (1 - (value / top if top else 0))


def _nice(value: float) -> float:
    """A round top for an axis, at least `value`."""
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _income(charts: dict) -> str:
    days, series = charts["days"], charts["income"]["credited_kopecks"]
    top = _nice(max(series, default=0))
    width = _step(len(days)) * 0.8
    bars = "".join(
        f"<rect class='pt bar' x={_x(i, len(days)):.1f} y={_y(v, top):.1f} width={width:.1f}"
        f" height={_y(0, top) - _y(v, top):.1f}><title>{_e(d)}: {_e(_rub(v))}</title></rect>"
        for i, (d, v) in enumerate(zip(days, series)))
    income = charts["income"]
    return (_frame("income", len(days), top, "rub", days, bars, "income credited per day")
            + f"<p class=legend>credited over 90 days: <b>{_e(_rub(income['credited_total_kopecks']))}"
            f"</b> · pending now: <b>{_e(_rub(income['pending_kopecks']))}</b></p>")


def _rentals_chart(charts: dict) -> str:
    days, rentals = charts["days"], charts["rentals"]
    names = list(OUTCOME_NAMES)
    totals = [sum(rentals[n][i] for n in names) for i in range(len(days))]
    top = _nice(max(totals, default=0))
    width = _step(len(days)) * 0.8
    stacks = []
    for i, day in enumerate(days):
        x, base, rects = _x(i, len(days)), 0, []
        for k, name in enumerate(names):
            value = rentals[name][i]
            if value:
                rects.append(f"<rect class=s{k} x={x:.1f} y={_y(base + value, top):.1f} "
                             f"width={width:.1f} height={_y(base, top) - _y(base + value, top):.1f} />")
                base += value
        detail = ", ".join(f"{rentals[n][i]} {OUTCOME_NAMES[n]}" for n in names if rentals[n][i])
        stacks.append(f"<g class=pt><title>{_e(day)}: {_e(detail or 'none')}</title>"
                      f"{''.join(rects)}</g>")
    legend = "".join(f"<i class=k{k}></i>{_e(OUTCOME_NAMES[n])}" for k, n in enumerate(names))
    failed = sum(rentals["failed"])
    return (_frame("rentals", len(days), top, "n", days, "".join(stacks),
                   "rentals per day by outcome")
            + f"<p class=legend>{legend} · {_e(failed)} failed their guard window</p>")


def _delay_chart(charts: dict) -> str:
    days, delay = charts["days"], charts["push_delay"]
    present = [i for i, v in enumerate(delay["p99_s"]) if v is not None]
    top = _nice(max((delay["p99_s"][i] for i in present), default=0))
    half = _step(len(days)) / 2
    inner = []
    for key, line, dot in (("p99_s", "l99", "d99"), ("p50_s", "l50", "d50")):
        coords = [(_x(i, len(days)) + half, _y(delay[key][i], top)) for i in present]
        if len(coords) > 1:
            inner.append(f"<polyline class={line} points='"
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + "'/>")
        if key == "p50_s":
            inner += [f"<circle class='pt {dot}' cx={x:.1f} cy={y:.1f} r=2>"
                      f"<title>{_e(days[i])}: p50 {_e(delay['p50_s'][i])} s, p99 "
                      f"{_e(delay['p99_s'][i])} s, {_e(delay['count'][i])} SMS</title></circle>"
                      for i, (x, y) in zip(present, coords)]
        else:
            inner += [f"<circle class={dot} cx={x:.1f} cy={y:.1f} r=1.5 />" for x, y in coords]
    total = sum(delay["count"])
    return (_frame("push_delay", len(present), top, "s", days, "".join(inner),
                   "SMS push delay per day")
            + f"<p class=legend><i class=k4></i>p50<i class=k99></i>p99 · {_e(total)} SMS "
            "delivered to Onlinesim in 90 days; a dot per day with deliveries</p>")

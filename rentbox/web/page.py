"""The status page as HTML: what needs doing first, then history as inline SVG charts.

No script, no font, no request beyond the page itself: it works offline, is small, and
renders at once on a phone. Every value is escaped (numbers, ports, operators, gateway
names and alert texts come from outside). The one inline style sheet is allowed by its
hash in the Content-Security-Policy (`CSP`); nothing else may load or run. The page
reloads itself every `REFRESH_S` seconds (`<meta http-equiv=refresh>`, no script).

Order: warnings, open rentals (port, window left, risk; their buyer once there are
several), offline SIMs (port, gateway), income to date, gateways, Onlinesim (push URL, last
call), the buyers (each one's last call and push URL, and which buyer gets what) once there
is another, income by service once there are activations, income by buyer and currency
once there is another buyer or currency, pool, outbox, health; then the charts, each only
once it has something to draw, the pool by operator and alerts.

On a narrow screen the tables turn into one block per row, each value under its column's
name, so nothing is cut off or scrolls sideways. Charts stretch to their box: bars and
lines are drawn in a `preserveAspectRatio=none` SVG, the axis labels are HTML text beside
and under it, so they stay legible at any width. Each chart's `<svg>` carries
`data-points` (how many points it draws), and each point is an element of class `pt`: a
bar per day, a stack per day, a dot per day with deliveries.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
from html import escape

from rentbox import __version__
from rentbox.clock import from_text

REFRESH_S = 30
# Narrower than this, tables stack (a block per row).
NARROW_PX = 700

STYLE = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#59636e;--bg:#fff;--card:#f6f8fa;
--line:#d0d7de;--ok:#1a7f37;--warn:#bc4c00;--bad:#cf222e;--a:#0969da;--b:#8250df;
--c:#bf8700;--d:#6e7781;--e:#1a7f37;--badbg:#ffebe9}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#8d96a0;--bg:#0d1117;
--card:#161b22;--line:#30363d;--ok:#3fb950;--warn:#d29922;--bad:#f85149;--a:#4493f8;
--b:#a371f7;--c:#d29922;--d:#8d96a0;--e:#3fb950;--badbg:#2d1214}}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1100px;padding:12px 16px 32px;font:14px/1.45 system-ui,
-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);
overflow-wrap:break-word}
h1{font-size:20px;margin:4px 0 2px}h2{font-size:15px;margin:0 0 8px}
h2.part{font-size:16px;margin:20px 0 8px}
.sub{color:var(--muted);margin:0 0 12px}
.grid{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(300px,1fr))}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px;
min-width:0}
section.wide{grid-column:1/-1}
section.alarm{border-color:var(--bad);background:var(--badbg)}
@media (min-width:700px){section.two{grid-column:span 2}}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;color:#fff}
.ok{background:var(--ok)}.warn{background:var(--warn)}
ul.warnings{margin:0;padding-left:18px}ul.warnings li{margin:2px 0}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:3px 6px;border-bottom:1px solid var(--line);
vertical-align:top}th{color:var(--muted);font-weight:600}td.n,th.n{text-align:right}
td.t{white-space:nowrap}td.wrap{overflow-wrap:anywhere}
@media (max-width:""" + str(NARROW_PX - 1) + """px){
table.stack,table.stack tbody{display:block;width:100%}
table.stack thead{display:none}
table.stack tr{display:grid;grid-template-columns:repeat(auto-fill,minmax(96px,1fr));
gap:4px 10px;padding:8px 0;border-bottom:1px solid var(--line)}
table.stack td,table.stack td.n{display:block;border:0;padding:0;text-align:left;
white-space:normal;min-width:0}
table.stack td::before{content:attr(data-label);display:block;color:var(--muted);
font-size:11px;line-height:1.3}
table.stack td.head,table.stack td.full{grid-column:1/-1}table.stack td.two{grid-column:span 2}
table.stack td.head{font-weight:600}
table.stack td.head::before{content:attr(data-label) " ";display:inline;font-size:inherit;
font-weight:400}}
.kv{display:flex;flex-wrap:wrap;gap:6px 18px}.kv b{font-size:18px;display:block}
.kv span{color:var(--muted);font-size:12px}
.legend{color:var(--muted);font-size:12px;margin:6px 0 0}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 10px}
.k0{background:var(--e)}.k1{background:var(--d)}.k2{background:var(--c)}
.k3{background:var(--b)}.k4{background:var(--a)}.k99{background:var(--bad)}
.risk{color:var(--bad);font-weight:600}.muted{color:var(--muted)}.good{color:var(--ok)}
p{margin:6px 0}
.chart{display:grid;grid-template-columns:auto 1fr;column-gap:6px}
.chart .y{display:flex;flex-direction:column;justify-content:space-between;padding:0;
text-align:right;color:var(--muted);font-size:11px;line-height:0;height:150px}
.chart svg{width:100%;height:150px;display:block;overflow:visible}
.chart .x{grid-column:2;display:flex;justify-content:space-between;color:var(--muted);
font-size:11px;margin-top:4px}
svg .axis{stroke:var(--line);stroke-width:1}
.s0{fill:var(--e)}.s1{fill:var(--d)}.s2{fill:var(--c)}.s3{fill:var(--b)}.s4{fill:var(--a)}
.bar{fill:var(--e)}.l50{stroke:var(--a);fill:none;stroke-width:1.5}
.l99{stroke:var(--bad);fill:none;stroke-width:1.5}
.d50{stroke:var(--a);stroke-width:5;stroke-linecap:round;fill:none}
"""

CSP = ("default-src 'none'; style-src 'sha256-"
       + base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")
       + "'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# Chart geometry in SVG user units: a day is one unit wide, the plot 100 high; the SVG
# stretches to its box (preserveAspectRatio=none), strokes keep their width on screen.
PLOT_H = 100
OUTCOME_NAMES = {"sold": "sold", "cancelled": "cancelled", "refunded": "refunded",
                 "wrong_service": "wrong service", "open": "open"}
# Why a SIM is offline (presence.py), for people.
OFFLINE_REASONS = {"silent": "its gateway stopped reporting it",
                   "dropped": "its gateway's report left it out",
                   "not reported": "not in its box's report",
                   "by hand": "set offline by hand"}


def render(data: dict) -> str:
    """The whole page for `dashboard.overview`'s dict."""
    ok = not data["warnings"]
    badge = ("OK" if ok else f"{len(data['warnings'])} warning"
             + ("s" if len(data["warnings"]) > 1 else ""))
    rentals = data["rentals"]
    opened = rentals["open"] + rentals.get("activations_open", 0)
    buyers = data.get("buyers") or {"list": [], "policy": []}
    # Several buyers (issue 23): configured, holding an operation, or in the books.
    several = (len(buyers["list"]) > 1
               or any(r.get("buyer", "onlinesim") != "onlinesim" for r in rentals["list"])
               or any((b["buyer"], b["currency"]) != ("onlinesim", "RUB")
                      for b in data.get("buyer_income", [])))
    title = ("Open rentals and activations" if rentals.get("activations_open")
             else "Open rentals")
    parts = [
        _head("rentbox status", refresh=True),
        f"<h1>rentbox status <span class='badge {'ok' if ok else 'warn'}'>{_e(badge)}</span>"
        "</h1>",
        f"<p class=sub>as of {_e(_short(data['at']))} · reloads every {REFRESH_S} s · "
        f"rentbox {_e(__version__)}</p>",
        "<div class=grid>",
        _attention(data["warnings"]),
        _section("rentals", f"{title} ({_e(opened)})", _rentals(rentals, several),
                 wide=True),
        _section("offline", f"Offline SIMs ({_e(data['offline_sims']['count'])})",
                 _offline(data["offline_sims"]), wide=True),
        _section("income", "Income (RUB)", _income(data["income"])),
        _section("gateways", "Gateways", _gateways(data["gateways"])),
        _section("onlinesim", "Onlinesim", _onlinesim(
            data["push"], data["health"]["last_onlinesim_call"], from_text(data["at"]))),
        (_section("buyers", "Buyers", _buyers(buyers), wide=True)
         if len(buyers["list"]) > 1 else ""),
        # Rent and each activation service apart, once there are activations.
        (_section("products", "Income by service (RUB)", _products(data["products"]),
                  wide=True)
         if any(p["product"] == "activations" for p in data["products"]) else ""),
        (_section("buyer-income", "Income by buyer", _buyer_income(data["buyer_income"]),
                  wide=True) if several else ""),
        _section("pool", "Pool", _pool(data["pool"])),
        _section("outbox", "Outbox", _outbox(data["outbox"])),
        _section("health", "Health", _health(data["health"])),
        f"</div><h2 class=part>Last {len(data['charts']['days'])} days</h2><div class=grid>",
        _charts(data["charts"]),
        _section("operators", "Pool by country and operator",
                 _operators(data["pool"]["by_operator"])),
        _section("alerts", "Recent alerts", _alerts(data["alerts"]), wide="two"),
        "</div></body></html>",
    ]
    return "".join(parts)


def message(title: str, paragraphs: list[str]) -> str:
    """A short page for a person, in the page's style: why the status page is not shown
    (no password yet, the page is off, an error). The paragraphs are escaped."""
    return (_head(title, refresh=False) + f"<h1>{_e(title)}</h1>"
            + "".join(f"<p>{_e(p)}</p>" for p in paragraphs) + "</body></html>")


def _head(title: str, *, refresh: bool) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            '<meta name=color-scheme content="light dark">'
            + (f'<meta http-equiv=refresh content="{REFRESH_S}">' if refresh else "")
            + '<link rel=icon href="data:,">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>")


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


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{_age(max(0, seconds))} ago"


def _rub(kopecks: int) -> str:
    return f"{kopecks / 100:,.2f} RUB".replace(",", " ")


def _section(ident: str, title: str, body: str, wide: bool | str = False,
             extra: str = "") -> str:
    classes = " ".join(c for c in ("wide" if wide is True else wide or "", extra) if c)
    attribute = f" class='{classes}'" if classes else ""
    return f"<section id={ident}{attribute}><h2>{title}</h2>{body}</section>"


def _figures(pairs: list[tuple[str, object]]) -> str:
    return "<div class=kv>" + "".join(
        f"<div><b>{_e(v)}</b><span>{_e(k)}</span></div>" for k, v in pairs) + "</div>"


def _table(columns: list[tuple[str, str]], rows: list[list[str]]) -> str:
    """A table that stacks on a narrow screen: a block per row, headed by its first cell,
    the others in a grid, each under its column's name. `columns`: (name, classes: `n`
    a number, `t` a time kept on one line, `wrap` text that may break anywhere, `full` a
    whole line of its own when stacked); a cell is HTML, already escaped."""
    head = "".join(f"<th class='{_e(c)}'>{_e(n)}</th>" if c else f"<th>{_e(n)}</th>"
                   for n, c in columns)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='{_e(' '.join(x for x in (c, 'head' if i == 0 else '') if x))}'"
            f" data-label='{_e(n)}'>{cell}</td>"
            for i, ((n, c), cell) in enumerate(zip(columns, row))) + "</tr>"
        for row in rows)
    return f"<table class=stack><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------------------
# What needs doing
# ---------------------------------------------------------------------------------------


def _attention(warnings: list[str]) -> str:
    if not warnings:
        return _section("attention", "Nothing needs attention",
                        "<p class=good>No warnings: rentbox is serving and nothing waits "
                        "for you.</p>", wide=True)
    return _section("attention", "Needs attention", "<ul class=warnings>" + "".join(
        f"<li>{_e(w)}</li>" for w in warnings) + "</ul>", wide=True, extra="alarm")


def _rentals(rentals: dict, by_buyer: bool = False) -> str:
    """The open rentals and activations; `by_buyer`: with a column naming each one's buyer."""
    if not rentals["list"]:
        return "<p class=muted>No open rentals.</p>"
    rows = [[f"{_e(r['id'])}" + ("" if r["service"] == "rent"
                                 else f" <span class=muted>({_e(r['service'])})</span>"),
             f"+{_e(r['number'])}", _e(r["port"] or "—"), _window(r), _risk(r),
             _e(", ".join(x for x in (r["country"], r["operator"]) if x)),
             _e(r["sms"]), _e(_age(r["age_s"]))]
            + ([_e(r.get("buyer", "onlinesim"))] if by_buyer else [])
            for r in rentals["list"]]
    shown, total = len(rentals["list"]), rentals["open"] + rentals.get("activations_open", 0)
    more = (f"<p class=legend>{shown} of {_e(total)} shown: the ones at risk or waiting for "
            "an SMS first</p>" if shown < total else "")
    return _table([("rental", ""), ("number", "two"), ("port", "wrap"), ("window", "two"),
                   ("risk", ""), ("where", "wrap two"), ("SMS", "n"), ("open for", "n")]
                  + ([("buyer", "wrap")] if by_buyer else []), rows) + more


def _window(rental: dict) -> str:
    window = rental["window"]
    if window == "open":
        return f"<b>{_e(_age(rental['window_left_s']))} left</b>"
    return {"met": "<span class=good>SMS in time</span>",
            "failed": "<span class=risk>no SMS in time</span>",
            "lapsed": "<span class=risk>out of time</span>",
            "deciding": "ending now"}[window]


def _risk(rental: dict) -> str:
    if rental["risk"] == "sim_offline":
        return "<span class=risk>SIM offline</span>"
    if rental["risk"] == "failed":
        return "<span class=risk>failed, awaiting FINISH</span>"
    return "<span class=muted>none</span>"


def _offline(sims: dict) -> str:
    if not sims["list"]:
        return "<p class=good>Every watched SIM is online.</p>"
    rows = [[f"+{_e(s['number'])}", _e(s["port"] or "—"), _e(s["gateway"] or "—"),
             _e(_age(s["offline_s"])),
             (f"<span class=risk>rental {_e(s['rental'])} at risk</span>"
              if s["rental"] is not None else _e(s["state"])),
             _e(OFFLINE_REASONS.get(s["reason"], s["reason"] or "—"))]
            for s in sims["list"]]
    more = (f"<p class=legend>{len(sims['list'])} of {_e(sims['count'])} shown: rented ones "
            "first, then the longest offline</p>" if len(sims["list"]) < sims["count"] else "")
    return _table([("number", ""), ("port", "wrap"), ("gateway", "wrap two"),
                   ("offline for", "n"), ("number is", "two"), ("why", "full")],
                  rows) + more


def _income(income: dict) -> str:
    return _figures([
        ("credited today", _rub(income["credited_today_kopecks"])),
        ("this week, from Monday", _rub(income["credited_week_kopecks"])),
        (f"this month, from {income['month_from'][5:]}", _rub(income["credited_month_kopecks"])),
        ("pending: open operations with an SMS in time", _rub(income["pending_kopecks"])),
    ]) + "<p class=legend>Days are UTC. Credited: FINISH with status 3.</p>" + "".join(
        # Never added to the roubles, never hidden either (income by buyer has them).
        f"<p class=legend>Not in these sums: "
        f"<b>{_e(_minor(c['credited_month_minor'], c['currency']))}</b> this month, "
        f"{_e(_minor(c['pending_minor'], c['currency']))} pending.</p>"
        for c in income.get("other_currencies", []))


def _products(products: list[dict]) -> str:
    rows = [[_e(p["service"]), _e(p["product"]), _e(_rub(p["credited_month_kopecks"])),
             _e(_rub(p["pending_kopecks"])),
             _e("-" if p["success_rate"] is None else f"{p['success_rate']:.0%}"),
             _e(p["open"])] for p in products]
    return _table([("service", ""), ("product", ""), ("credited this month", "n"),
                   ("pending", "n"), ("success, all time", "n"), ("open", "n")], rows)


def _minor(minor: int, currency: str) -> str:
    """A sum in minor units of its currency (kopecks, cents): 12.50 USD."""
    return f"{minor / 100:,.2f} {currency}".replace(",", " ")


def _buyer_income(rows: list[dict]) -> str:
    """Income per buyer and currency: a row each, never a sum across currencies."""
    if not rows:
        return "<p class=muted>Nothing sold yet.</p>"
    body = [[_e(r["buyer"]), _e(r["currency"]),
             _e(_minor(r["credited_month_minor"], r["currency"])),
             _e(_minor(r["pending_minor"], r["currency"])),
             _e("-" if r["success_rate"] is None else f"{r['success_rate']:.0%}"),
             _e(r["open"])] for r in rows]
    return _table([("buyer", ""), ("currency", ""), ("credited this month", "n"),
                   ("pending", "n"), ("success, all time", "n"), ("open", "n")], body) + (
        "<p class=legend>Each currency apart: a USD income is never added to roubles.</p>")


def _buyers(buyers: dict) -> str:
    """Each buyer: where its calls arrive, its last call, its push URL, its open
    operations; and which buyer gets what."""
    rows = []
    for b in buyers["list"]:
        call = b["last_call"]
        last = ("never" if call is None else
                f"{call['action']}, {_ago(b['last_call_age_s'])} ({_short(call['at'])})")
        push = ("<span class=muted>not served now</span>" if not b["configured"] else
                "<span class=muted>unknown</span>" if b["push_url_set"] is None else
                "<span class=good>set</span>" if b["push_url_set"] else
                "<span class=risk>not set</span>")
        rows.append([_e(b["name"]), _e(b["path"] or "—"),
                     f"<span class=risk>{_e(last)}</span>" if b["silent"] else _e(last),
                     push, _e(b["open"])])
    return _table([("buyer", ""), ("calls at", "wrap"), ("last call", "wrap two"),
                   ("push URL", ""), ("open", "n")], rows) + (
        "<p class=legend>Which buyer gets what: " + _e("; ".join(buyers["policy"]))
        + "</p>")


def _gateways(rows: list[dict]) -> str:
    if not rows:
        return ("<p class=muted>No gateway has reported SIM presence yet: every number is "
                "offered whatever its SIM.</p>")
    body = [[_e(g["gateway"]) + (" <span class=muted>(by hand)</span>"
                                 if g["gateway"] == "cli" else ""),
             (f"<span class=risk>{_e(_ago(g['last_report_age_s']))}</span>" if g["silent"]
              else _e(_ago(g["last_report_age_s"]))),
             _e(g["online"]), _e(g["offline"])] for g in rows]
    return _table([("gateway", "wrap"), ("last report", ""), ("SIMs online", "n"),
                   ("offline", "n")], body)


def _onlinesim(push: dict, call: dict | None, now: dt.datetime) -> str:
    """Whether SMS reach Onlinesim, and its last call (and the last of each other action)."""
    if push["url_set"] is None:
        text = ("<p>Push URL: <b>unknown</b>: rentbox serve has never run on this "
                "database.</p>")
    elif push["url_set"]:
        text = "<p>Push URL: <b class=good>set</b>: SMS go to Onlinesim as they arrive.</p>"
    else:
        text = ("<p>Push URL: <b class=risk>not set</b>: SMS are stored but Onlinesim never "
                "gets them. Set RENTBOX_PUSH_URL to the push URL Onlinesim gave you and "
                "restart rentbox serve.</p>")
    if push["services"] and not push["activation_url_set"]:
        text += ("<p>Activation push URL: <b class=risk>not set</b>: set "
                 "RENTBOX_ACTIVATION_PUSH_URL and restart rentbox serve.</p>")
    elif push["services"]:
        text += ("<p>Activation push URL: <b class=good>set</b>, for "
                 f"{_e(', '.join(push['services']))}.</p>")
    if not call:
        return text + "<p>Last call: <b>never</b>.</p>"
    def when(at: str) -> str:
        return f"{_ago((now - from_text(at)).total_seconds())} ({_short(at)})"

    others = sorted((at, action) for action, at in (call.get("actions") or {}).items()
                    if action != call["action"])
    text += f"<p>Last call: <b>{_e(call['action'])}</b>, {_e(when(call['at']))}</p>"
    if others:
        text += ("<p class=legend>before it: " + "; ".join(
            f"{_e(action)} {_e(when(at))}" for at, action in reversed(others)) + "</p>")
    return text


def _pool(pool: dict) -> str:
    states = pool["by_state"]
    sims = pool["presence"]
    # "offline" is a SIM's word only: a number that would be free but for its SIM is
    # "waiting for SIM" here, so that two different counts never share a name.
    return _figures([("numbers", states["total"]), ("free", states["free"]),
                     ("rented", states["rented"]), ("banned", states["banned"]),
                     ("disabled", states["disabled"]),
                     ("waiting for SIM", states["offline"])]) + (
        "<p class=legend>SIMs: " + _e(sims["online"]) + " online, " + _e(sims["offline"])
        + " offline (" + _e(sims["at_risk"]) + " of them rented), " + _e(sims["unwatched"])
        + " not watched by any gateway</p>")


def _outbox(outbox: dict) -> str:
    text = _figures([("waiting", outbox["pending"]), ("retrying", outbox["retrying"]),
                     ("refused for good", outbox["failed"]),
                     ("expired, rental ended", outbox["expired"]),
                     ("oldest waits", _age(outbox["oldest_pending_age_s"]))])
    if outbox["last_error"]:
        text += f"<p class=legend>last error: {_e(outbox['last_error'])}</p>"
    return text


def _health(health: dict) -> str:
    server = health["server"] or {}
    free = health["database"]["free_bytes"]
    rows = [
        ("server", "running" if server.get("running") else
         "not running" if server else "never started"),
        ("started", _short(server.get("started_at"))),
        ("database free space", "unknown" if free is None else f"{free / 1024 ** 3:.1f} GiB"),
    ]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
                               for k, v in rows) + "</table>"


def _operators(rows: list[dict]) -> str:
    if not rows:
        return "<p class=muted>The pool is empty.</p>"
    body = "".join(f"<tr><td>{_e(r['country'])}</td><td>{_e(r['operator'] or 'any')}</td>"
                   f"<td class=n>{_e(r['free'])}</td><td class=n>{_e(r['rented'])}</td></tr>"
                   for r in rows)
    return ("<table><thead><tr><th>country</th><th>operator</th>"
            f"<th class=n>free</th><th class=n>rented</th></tr></thead><tbody>{body}</tbody>"
            "</table>")


def _alerts(rows: list[dict]) -> str:
    if not rows:
        return "<p class=muted>No alerts.</p>"
    body = [["<span class=risk>active</span>" if r["state"] == "active" else "cleared",
             _e(_short(r["started_at"])), _e(r["message"])] for r in rows]
    return _table([("state", ""), ("since", "t two"), ("message", "wrap full")], body)


# ---------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------


def _charts(charts: dict) -> str:
    """Each chart once it has something to draw; a line saying so while none has."""
    days = charts["days"]
    drawn = []
    if any(charts["income"]["credited_kopecks"]):
        drawn.append(_section("income-chart", "Income credited per day (RUB)",
                              _income_chart(charts), wide=True))
    if any(any(series) for series in charts["rentals"].values()):
        drawn.append(_section("rentals-chart", "Rentals per day by outcome",
                              _rentals_chart(charts), wide=True))
    if any(charts["push_delay"]["count"]):
        drawn.append(_section("push-delay", "SMS push delay per day (p50, p99)",
                              _delay_chart(charts), wide=True))
    if drawn:
        return "".join(drawn)
    return _section("history", "No history yet",
                    f"<p class=muted>No rentals from {_e(days[0])} to {_e(days[-1])}: the "
                    "charts of income, rentals and push delay appear with the first.</p>",
                    wide=True)


def _frame(name: str, points: int, top: float, unit: str, days: list[str], inner: str,
           label: str) -> str:
    """An SVG one unit per day wide, 0 to `top` high, gridlines at 0, half and `top`;
    the axis labels as HTML beside it and the first, middle and last day under it."""
    grid = "".join(f"<line class=axis x1=0 x2={len(days)} y1={_y(top * share, top):.2f} "
                   f"y2={_y(top * share, top):.2f} vector-effect=non-scaling-stroke />"
                   for share in (0, 0.5, 1))
    ticks = "".join(f"<span>{_e(_tick(top * share, unit))}</span>" for share in (1, 0.5, 0))
    under = "".join(f"<span>{_e(days[i][5:])}</span>"
                    for i in (0, len(days) // 2, len(days) - 1))
    return (f"<div class=chart><div class=y>{ticks}</div>"
            f"<svg data-chart={name} data-points={points} viewBox='0 0 {len(days)} {PLOT_H}'"
            f" preserveAspectRatio=none role=img aria-label='{_e(label)}'>{grid}{inner}</svg>"
            f"<div class=x>{under}</div></div>")


def _tick(value: float, unit: str) -> str:
    if unit == "rub":
        return f"{value / 100:,.0f}".replace(",", " ")
    if unit == "s":
        return f"{value:g} s"
    return f"{value:.0f}"


def _y(value: float, top: float) -> float:
    return PLOT_H * (1 - (value / top if top else 0))


def _nice(value: float, *, whole: float = 0) -> float:
    """A round top for an axis, at least `value`; with `whole`, a multiple of 2 × whole,
    so that the half-way tick is a whole number of `whole` too (no "0 / 0 / 1")."""
    if value <= 0:
        return 2 * whole or 1
    magnitude = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 3, 4, 5, 6, 8, 10):
        top = factor * magnitude
        if top >= value and (not whole or (top / (2 * whole)).is_integer()):
            return top
    return 2 * whole * math.ceil(value / (2 * whole)) if whole else 10 * magnitude


def _income_chart(charts: dict) -> str:
    days, series = charts["days"], charts["income"]["credited_kopecks"]
    top = _nice(max(series), whole=100)  # whole roubles
    bars = "".join(
        f"<rect class='pt bar' x={i + 0.1:.1f} y={_y(v, top):.2f} width=0.8"
        f" height={PLOT_H - _y(v, top):.2f}><title>{_e(d)}: {_e(_rub(v))}</title></rect>"
        for i, (d, v) in enumerate(zip(days, series)))
    income = charts["income"]
    return (_frame("income", len(days), top, "rub", days, bars, "income credited per day")
            + f"<p class=legend>credited over {len(days)} days: "
            f"<b>{_e(_rub(income['credited_total_kopecks']))}</b></p>")


def _rentals_chart(charts: dict) -> str:
    days, rentals = charts["days"], charts["rentals"]
    names = list(OUTCOME_NAMES)
    totals = [sum(rentals[n][i] for n in names) for i in range(len(days))]
    top = _nice(max(totals), whole=1)
    stacks = []
    for i, day in enumerate(days):
        base, rects = 0, []
        for k, name in enumerate(names):
            value = rentals[name][i]
            if value:
                rects.append(f"<rect class=s{k} x={i + 0.1:.1f} y={_y(base + value, top):.2f}"
                             f" width=0.8 height={_y(base, top) - _y(base + value, top):.2f} />")
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
    top = _nice(max(delay["p99_s"][i] for i in present))
    inner = []
    for key, line in (("p99_s", "l99"), ("p50_s", "l50")):
        coords = [(i + 0.5, _y(delay[key][i], top)) for i in present]
        if len(coords) > 1:
            inner.append(f"<polyline class={line} vector-effect=non-scaling-stroke points='"
                         + " ".join(f"{x:.1f},{y:.2f}" for x, y in coords) + "'/>")
    # A dot per day with deliveries: a path of no length with a round cap, so that it
    # stays round however the SVG is stretched.
    inner += [f"<path class='pt d50' vector-effect=non-scaling-stroke "
              f"d='M{i + 0.5:.1f} {_y(delay['p50_s'][i], top):.2f}h0'>"
              f"<title>{_e(days[i])}: p50 {_e(delay['p50_s'][i])} s, p99 "
              f"{_e(delay['p99_s'][i])} s, {_e(delay['count'][i])} SMS</title></path>"
              for i in present]
    total = sum(delay["count"])
    return (_frame("push_delay", len(present), top, "s", days, "".join(inner),
                   "SMS push delay per day")
            + f"<p class=legend><i class=k4></i>p50<i class=k99></i>p99 · {_e(total)} SMS "
            f"delivered to Onlinesim in {len(days)} days; a dot per day with deliveries</p>")

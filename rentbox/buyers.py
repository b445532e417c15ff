"""Buyers: who buys the pool's numbers, what each is offered, and which numbers it may take.

One pool serves every buyer (protocol.md 7): Onlinesim (rent and activations, configured
by RENTBOX_API_KEY and its push URLs), SMSHub (RENTBOX_SMSHUB_KEY) and any further buyer
that speaks the SMSHub agent protocol (the RENTBOX_BUYERS file). A number is in one
operation at a time whoever holds it (`numbers.operation_id`), and every buyer's counts
come from the same tallies, so a number taken by one buyer leaves every buyer's counts at
once.

A buyer's protocol is an adapter (protocol.py for Onlinesim, smshub.py for the SMSHub
agent protocol): it turns its wire format into the calls here and in operations.py. This
module knows buyers, products and services, never a wire format.

Services are matched across buyers by name through an alias table (`wa` = `whatsapp`,
…): a number spent for a service at one buyer is spent for it at all, since the account
its client made exists whoever sold the number. The service's *canonical* name (the
short code SMSHub's list uses) is what operations and `service_uses` store.

Which buyer gets what: first come, first served, unless the buyers file reserves
countries for a buyer (only it, and any other buyer that lists them, is offered their
numbers) or a share of each country's numbers (kept back from every other buyer while
the buyer holds fewer than its share).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from rentbox.config import ONLINESIM, PROTOCOLS, SMSHUB, Buyer, Rules
from rentbox.db import Database
from rentbox.errors import InvalidInput
from rentbox.protocol import RENT, service_name

# Aliases shipped for the common services: a name some buyer uses → the canonical code,
# the short code of SMSHub's list (smshub.org/countries), which sms-activate, GrizzlySMS,
# SMSBower and Onlinesim's partner protocol use too; the long names are 5sim's and
# Onlinesim's client API's. The partner adds more in the buyers file's [aliases] table.
ALIASES: dict[str, str] = {
    "whatsapp": "wa", "telegram": "tg", "vkontakte": "vk", "vkcom": "vk",
    "odnoklassniki": "ok", "classmates": "ok", "odklru": "ok", "google": "go",
    "gmail": "go", "youtube": "go", "instagram": "ig", "facebook": "fb", "twitter": "tw",
    "viber": "vi", "wechat": "wb", "avito": "av", "yandex": "ya", "mailru": "ma",
    "microsoft": "mm", "yahoo": "mb", "aol": "pm", "uber": "ub", "discord": "ds",
    "tiktok": "lf", "douyin": "lf", "snapchat": "fu", "amazon": "am", "apple": "wx",
    "tinder": "oi", "steam": "mt", "netflix": "nf", "kakaotalk": "kt", "line": "me",
    "naver": "nv", "zalo": "mj", "imo": "im", "openai": "dr", "chatgpt": "dr",
    "paypal": "ts", "linkedin": "tn", "twitch": "hb", "skype": "rc", "bolt": "tx",
    "lyft": "tu", "binance": "aon", "coinbase": "re", "revolut": "ij", "wise": "bo",
    "shopee": "ka", "temu": "ep", "youla": "ym", "wildberries": "uu", "ozon": "sg",
    "olx": "sn", "airbnb": "uk", "blablacar": "ua", "protonmail": "dp", "proton": "dp",
    "googlevoice": "gf",
}

# A buyer's name: part of its path (/buyer/<name>) and of the outbox's routes.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Names a buyer in the file cannot take: Onlinesim's outbox routes, and the product.
_RESERVED_NAMES = {ONLINESIM, RENT, "activation"}


# ---------------------------------------------------------------------------------------
# Configuration: the buyers file
# ---------------------------------------------------------------------------------------


def load(path: Path | None, *, smshub_key: str | None = None,
         smshub_push_url: str | None = None) -> tuple[tuple[Buyer, ...],
                                                     tuple[tuple[str, str], ...]]:
    """The buyers beside Onlinesim and the partner's aliases, from the environment's
    SMSHub key and push URL and the RENTBOX_BUYERS file (None: no file). Onlinesim may
    appear in the file for its terms only. Raises InvalidInput naming what is wrong."""
    table: dict = {}
    if path is not None:
        import tomllib  # here: only serve and the self-test read the file

        try:
            table = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInput(f"the buyers file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidInput(f"cannot read the buyers file {path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise InvalidInput(f"the buyers file {path} is not valid TOML: {error}") from None
        unknown = set(table) - {"buyers", "aliases"}
        if unknown:
            raise InvalidInput(f"the buyers file has unknown tables: {', '.join(sorted(unknown))}"
                               " (it has [buyers.<name>] and [aliases])")
    entries = table.get("buyers", {})
    if not isinstance(entries, dict):
        raise InvalidInput("the buyers file's `buyers` must be tables: [buyers.<name>]")
    found: list[Buyer] = []
    if smshub_key or SMSHUB in entries:
        if not smshub_key:
            raise InvalidInput("the buyers file has [buyers.smshub] but RENTBOX_SMSHUB_KEY "
                               "is not set")
        found.append(_entry(SMSHUB, entries.get(SMSHUB, {}), key=smshub_key,
                            push_url=smshub_push_url))
    elif smshub_push_url:
        raise InvalidInput("RENTBOX_SMSHUB_PUSH_URL is set but RENTBOX_SMSHUB_KEY is not")
    for name, entry in entries.items():
        if name == SMSHUB:
            continue
        if name == ONLINESIM:
            found.insert(0, _entry(ONLINESIM, entry, key="", push_url=None))
            continue
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED_NAMES:
            raise InvalidInput(f"buyer name {name!r} is not allowed: lower-case letters, "
                               "digits, '_' and '-', at most 32, and not "
                               f"{', '.join(sorted(_RESERVED_NAMES))}")
        found.append(_entry(name, entry))
    aliases = _aliases(table.get("aliases", {}))
    _check_terms(found)
    return tuple(found), aliases


_KEYS = {"protocol", "key", "push_url", "services", "countries", "share"}


def _entry(name: str, entry: object, *, key: str | None = None,
           push_url: str | None = None) -> Buyer:
    where = f"[buyers.{name}]"
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where} must be a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise InvalidInput(f"{where} has unknown keys: {', '.join(sorted(unknown))}"
                           f" (known: {', '.join(sorted(_KEYS))})")
    configured_elsewhere = key is not None
    if configured_elsewhere:
        given = {"protocol", "key", "push_url"} & set(entry)
        if given:
            source = ("RENTBOX_API_KEY and the push URL settings" if name == ONLINESIM
                      else "RENTBOX_SMSHUB_KEY and RENTBOX_SMSHUB_PUSH_URL")
            raise InvalidInput(f"{where} may only set services, countries and share: its "
                               f"{', '.join(sorted(given))} come from {source}")
        protocol = ONLINESIM if name == ONLINESIM else SMSHUB
    else:
        protocol = entry.get("protocol", SMSHUB)
        if protocol not in PROTOCOLS or protocol == ONLINESIM:
            raise InvalidInput(f"{where} protocol must be \"smshub\" (the SMSHub agent "
                               f"protocol; Onlinesim is configured by RENTBOX_API_KEY), "
                               f"not {protocol!r}")
        key = entry.get("key")
        if not isinstance(key, str) or not key.strip(" \t"):
            raise InvalidInput(f"{where} needs its key (the one the buyer gave you)")
        key = key.strip(" \t")  # only spaces and tabs, as for every credential
        if any(c.isspace() for c in key):
            raise InvalidInput(f"{where} key must not contain spaces or line breaks")
        push_url = entry.get("push_url")
        if push_url is not None and not isinstance(push_url, str):
            raise InvalidInput(f"{where} push_url must be a string")
    services = entry.get("services")
    if services is not None:
        if not isinstance(services, list):
            raise InvalidInput(f"{where} services must be a list of names, e.g. [\"vk\", \"wa\"]")
        named = []
        for item in services:
            service = service_name(item, f"{where} services")
            if service == RENT:
                raise InvalidInput(f"{where} services: rent is Onlinesim's alone and is "
                                   "always offered to it")
            if service not in named:
                named.append(service)
        services = tuple(named)
    countries = entry.get("countries", [])
    if not isinstance(countries, list) or not all(
            isinstance(c, str) and c.strip() for c in countries):
        raise InvalidInput(f"{where} countries must be a list of country names, e.g. "
                           "[\"kazakhstan\"]")
    share = entry.get("share", 0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise InvalidInput(f"{where} share must be a number from 0 to below 1 (0.25: a "
                           "quarter of each country's numbers kept for it)")
    return Buyer(name=name, protocol=protocol, key=key or "", push_url=push_url or None,
                 services=services,
                 countries=tuple(dict.fromkeys(c.strip().lower() for c in countries)),
                 share=float(share))


def _aliases(table: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(table, dict):
        raise InvalidInput("the buyers file's [aliases] must be a table: alias = \"service\"")
    pairs = []
    for alias, service in table.items():
        pairs.append((service_name(alias, "an alias in [aliases]"),
                      service_name(service, f"[aliases] {alias}")))
    return tuple(pairs)


def _check_terms(found: list[Buyer]) -> None:
    total = sum(b.share for b in found)
    if total >= 1:
        raise InvalidInput(f"the buyers' shares add up to {total:g}: they must leave some of "
                           "the pool to the others (below 1)")


# ---------------------------------------------------------------------------------------
# Terms: who is a buyer, what it is offered
# ---------------------------------------------------------------------------------------


def all_buyers(rules: Rules) -> tuple[Buyer, ...]:
    """Every buyer, Onlinesim first (with its terms from the buyers file, if any)."""
    if rules.buyers and rules.buyers[0].name == ONLINESIM:
        return rules.buyers
    return (Buyer(ONLINESIM, ONLINESIM),) + rules.buyers


def of(rules: Rules, name: str) -> Buyer:
    """The buyer called `name` (Onlinesim's default terms if the file sets none)."""
    for buyer in all_buyers(rules):
        if buyer.name == name:
            return buyer
    raise InvalidInput(f"no buyer {name!r}")


def canonical(rules: Rules, name: str) -> str:
    """The name a service is stored under, whatever a buyer calls it."""
    for alias, service in rules.aliases:
        if alias == name:
            return service
    return ALIASES.get(name, name)


def offered(rules: Rules, buyer: str) -> dict[str, str]:
    """The services `buyer` is offered: {its name for it: the canonical name}."""
    named = of(rules, buyer).services
    return {s: canonical(rules, s) for s in (rules.services if named is None else named)}


def offers(rules: Rules, buyer: str, service: str) -> str | None:
    """The canonical name of `service` (as `buyer` asked for it) if `buyer` is offered it,
    else None."""
    wanted = canonical(rules, service)
    return wanted if wanted in offered(rules, buyer).values() else None


def display(buyer: str) -> str:
    """A buyer as texts name it: Onlinesim, or the name it has in the buyers file."""
    return "Onlinesim" if buyer == ONLINESIM else buyer


def taker(route: str) -> str:
    """Who takes the SMS pushed on `route` (see route()), as texts name it."""
    return "Onlinesim" if route in (RENT, "activation") else route


def route(buyer: str, service: str) -> str:
    """Where an operation's SMS are pushed: Onlinesim's rent or activation URL, or the
    buyer's own push URL (named by the buyer)."""
    if buyer == ONLINESIM:
        return RENT if service == RENT else "activation"
    return buyer


def policy(rules: Rules) -> list[str]:
    """Which buyer gets what, in words (`rentbox status`)."""
    said = []
    for buyer in all_buyers(rules):
        if buyer.countries:
            said.append(f"{', '.join(buyer.countries)} reserved for {buyer.name}")
        if buyer.share:
            said.append(f"{buyer.share:.0%} of each country kept for {buyer.name}")
    return said or ["first come, first served"]


# ---------------------------------------------------------------------------------------
# The pool as one buyer sees it
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stock:
    """The tallies a view is made of, read in one snapshot: free numbers per (country,
    operator), free numbers spent per (country, operator, service), and numbers held per
    (buyer, country)."""

    free: dict[tuple[str, str], int]
    spent: dict[tuple[str, str, str], int]
    held: dict[tuple[str, str], int]


def read_stock(db: Database, services: set[str], shares: bool) -> Stock:
    free = {(r["country"], r["operator"]): r["n"]
            for r in db.rows("SELECT country, operator, n FROM free_counts WHERE n > 0")}
    spent = {}
    if services:
        marks = ", ".join("?" * len(services))
        spent = {(r["country"], r["operator"], r["service"]): r["n"] for r in db.rows(
            f"SELECT country, operator, service, n FROM spent_free_counts"
            f" WHERE n > 0 AND service IN ({marks})", sorted(services))}
    held = ({(r["buyer"], r["country"]): r["n"]
             for r in db.rows("SELECT buyer, country, n FROM held_counts WHERE n > 0")}
            if shares else {})
    return Stock(free, spent, held)


def closed_countries(rules: Rules, buyer: str) -> set[str]:
    """Countries reserved for other buyers and not for `buyer`."""
    mine = set(of(rules, buyer).countries)
    return {c for b in all_buyers(rules) if b.name != buyer for c in b.countries} - mine


def kept_back(rules: Rules, buyer: str, country: str, free: int,
              held: dict[tuple[str, str], int]) -> int:
    """How many of `country`'s free numbers are kept for other buyers' shares: each other
    buyer with a share keeps back what it lacks of that share of the country's numbers
    in use (free, or held by anyone)."""
    others = [b for b in all_buyers(rules)
              if b.name != buyer and b.share and (not b.countries or country in b.countries)]
    if not others:
        return 0
    in_use = free + sum(n for (_, c), n in held.items() if c == country)
    return sum(max(0, math.ceil(b.share * in_use) - held.get((b.name, country), 0))
               for b in others)


def has_shares(rules: Rules) -> bool:
    return any(b.share for b in all_buyers(rules))


@dataclasses.dataclass(frozen=True)
class View:
    """What one buyer may be issued now: rent's {country: {operator: n}} and services'
    {country: {operator: {its name: n}}}; operator '' holds numbers without one, and no
    'any' is added (each protocol shapes that)."""

    rent: dict[str, dict[str, int]]
    services: dict[str, dict[str, dict[str, int]]]
    # The most numbers of each country it may take now, across operators (an operator's
    # count is capped by it, and so is a sum over operators).
    caps: dict[str, int] = dataclasses.field(default_factory=dict)


def view(db: Database, rules: Rules, buyer: str, *, rent: bool, activations: bool) -> View:
    """The pool as `buyer` may take it now, from the tallies: a count is never above what
    could be issued to it at this moment. The caller holds one read snapshot."""
    named = offered(rules, buyer) if activations else {}
    rent = rent and buyer == ONLINESIM
    if not rent and not named:
        return View({}, {})
    stock = read_stock(db, set(named.values()), has_shares(rules))
    closed = closed_countries(rules, buyer)
    per_country: dict[str, int] = {}
    for (country, _), n in stock.free.items():
        per_country[country] = per_country.get(country, 0) + n
    rents: dict[str, dict[str, int]] = {}
    services: dict[str, dict[str, dict[str, int]]] = {}
    caps: dict[str, int] = {}
    for (country, operator), n in sorted(stock.free.items()):
        if country in closed:
            continue
        if country not in caps:
            caps[country] = per_country[country] - kept_back(
                rules, buyer, country, per_country[country], stock.held)
        cap = caps[country]
        if cap <= 0:
            continue
        if rent:
            rents.setdefault(country, {})[operator] = min(n, cap)
        if named:
            counts = {s: min(cap, n - stock.spent.get((country, operator, c), 0))
                      for s, c in named.items()}
            if any(counts.values()):
                services.setdefault(country, {})[operator] = counts
    return View(rents, services, caps)


def may_take(db: Database, rules: Rules, buyer: str, country: str) -> bool:
    """Whether `buyer` may be issued a free number of `country` now (inside the claim's
    transaction): not reserved for others, and more free numbers than other buyers'
    shares keep back."""
    if country in closed_countries(rules, buyer):
        return False
    if not has_shares(rules):
        return True
    free = db.row("SELECT coalesce(sum(n), 0) AS n FROM free_counts WHERE country = ?",
                  (country,))["n"]
    held = {(r["buyer"], country): r["n"] for r in db.rows(
        "SELECT buyer, n FROM held_counts WHERE country = ? AND n > 0", (country,))}
    return free - kept_back(rules, buyer, country, free, held) >= 1

"""Onlinesim's country names, and the regions whose numbers each one may carry.

GET_SERVICES tells Onlinesim which countries rentbox offers, by Onlinesim's own lower-case
names: a name it does not know, or a German number offered as `russia`, is a number sold
wrongly or never. `rentbox numbers import` therefore refuses a row whose country is not a
name of this table, or whose number belongs to a region the name does not cover.

Where the names come from: Onlinesim's partner protocol (v1, "Reseller API UN") copies
SMSHub's agent protocol, whose appendix 1 refers to SMSHub's country list; Onlinesim's
own pages only show examples (`russia`, `ukraine`, `germany`). The names below are that
list as SMSHub and sms-activate integrators write it, lower-cased (e.g. the map in
github.com/LightRider5/lnvpn, client/src/data/smscountrymap.js, with its `furkinafaso`
typo corrected to `burkinafaso`). Each name is mapped here to the ISO 3166 regions of
its numbers, as libphonenumber names them, so that +7 is told apart between russia and
kazakhstan, and +1 between usa, canada and the Caribbean: the check is made on the
region of the number, not on its calling code. RENTBOX_COUNTRY_NAMES adds names (or
regions to a name) that Onlinesim uses and this table lacks.
"""

from __future__ import annotations

import difflib
import re
from typing import Mapping

from rentbox.errors import InvalidInput

# Onlinesim's name -> the regions (ISO 3166-1 alpha-2, as libphonenumber reports them)
# whose numbers it covers. Several regions where one country's numbering plan covers
# territories libphonenumber names apart (England: Jersey, Guernsey, the Isle of Man).
ONLINESIM_COUNTRIES: dict[str, tuple[str, ...]] = {
    "afghanistan": ("AF",), "albania": ("AL",), "algeria": ("DZ",), "angola": ("AO",),
    "anguilla": ("AI",), "antiguabarbuda": ("AG",), "argentina": ("AR",),
    "armenia": ("AM",), "aruba": ("AW",), "australia": ("AU", "CX", "CC"),
    "austria": ("AT",), "azerbaijan": ("AZ",), "bahamas": ("BS",), "bahrain": ("BH",),
    "bangladesh": ("BD",), "barbados": ("BB",), "belarus": ("BY",), "belgium": ("BE",),
    "belize": ("BZ",), "benin": ("BJ",), "bermuda": ("BM",), "bhutan": ("BT",),
    "bolivia": ("BO",), "bosnia": ("BA",), "botswana": ("BW",), "brazil": ("BR",),
    "brunei": ("BN",), "bulgaria": ("BG",), "burkinafaso": ("BF",), "burundi": ("BI",),
    "caf": ("CF",), "cambodia": ("KH",), "cameroon": ("CM",), "canada": ("CA",),
    "capeverde": ("CV",), "caymanislands": ("KY",), "chad": ("TD",), "chile": ("CL",),
    "china": ("CN",), "colombia": ("CO",), "comoros": ("KM",), "congo": ("CG",),
    "costarica": ("CR",), "croatia": ("HR",), "cyprus": ("CY",), "czech": ("CZ",),
    "dcongo": ("CD",), "denmark": ("DK",), "djibouti": ("DJ",), "dominica": ("DM",),
    "dominican": ("DO",), "ecuador": ("EC",), "egypt": ("EG",),
    "england": ("GB", "GG", "JE", "IM"), "equatorialguinea": ("GQ",), "eritrea": ("ER",),
    "estonia": ("EE",), "ethiopia": ("ET",), "fiji": ("FJ",), "finland": ("FI", "AX"),
    "france": ("FR",), "frenchguiana": ("GF",), "gabon": ("GA",), "gambia": ("GM",),
    "georgia": ("GE",), "germany": ("DE",), "ghana": ("GH",), "gibraltar": ("GI",),
    "greece": ("GR",), "grenada": ("GD",), "guadeloupe": ("GP", "BL", "MF"),
    "guatemala": ("GT",), "guinea": ("GN",), "guineabissau": ("GW",), "guyana": ("GY",),
    "haiti": ("HT",), "honduras": ("HN",), "hongkong": ("HK",), "hungary": ("HU",),
    "iceland": ("IS",), "india": ("IN",), "indonesia": ("ID",), "iraq": ("IQ",),
    "ireland": ("IE",), "israel": ("IL",), "italy": ("IT", "VA"), "ivory": ("CI",),
    "jamaica": ("JM",), "jordan": ("JO",), "kazakhstan": ("KZ",), "kenya": ("KE",),
    "kuwait": ("KW",), "kyrgyzstan": ("KG",), "laos": ("LA",), "latvia": ("LV",),
    "lebanon": ("LB",), "lesotho": ("LS",), "liberia": ("LR",), "libyan": ("LY",),
    "lithuania": ("LT",), "luxembourg": ("LU",), "macao": ("MO",),
    "madagascar": ("MG",), "malawi": ("MW",), "malaysia": ("MY",), "maldives": ("MV",),
    "mali": ("ML",), "mauritania": ("MR",), "mauritius": ("MU",), "mexico": ("MX",),
    "moldova": ("MD",), "monaco": ("MC",), "mongolia": ("MN",), "montenegro": ("ME",),
    "montserrat": ("MS",), "morocco": ("MA", "EH"), "mozambique": ("MZ",),
    "myanmar": ("MM",), "namibia": ("NA",), "nepal": ("NP",), "netherlands": ("NL",),
    "newcaledonia": ("NC",), "newzealand": ("NZ",), "nicaragua": ("NI",),
    "niger": ("NE",), "nigeria": ("NG",), "northmacedonia": ("MK",),
    "norway": ("NO", "SJ"), "oman": ("OM",), "pakistan": ("PK",), "panama": ("PA",),
    "papua": ("PG",), "paraguay": ("PY",), "peru": ("PE",), "philippines": ("PH",),
    "poland": ("PL",), "portugal": ("PT",), "puertorico": ("PR",), "qatar": ("QA",),
    "reunion": ("RE", "YT"), "romania": ("RO",), "russia": ("RU",), "rwanda": ("RW",),
    "saintkitts": ("KN",), "saintlucia": ("LC",), "saintvincentgrenadines": ("VC",),
    "salvador": ("SV",), "saotomeandprincipe": ("ST",), "saudiarabia": ("SA",),
    "senegal": ("SN",), "serbia": ("RS",), "seychelles": ("SC",),
    "sierraleone": ("SL",), "singapore": ("SG",), "slovakia": ("SK",),
    "slovenia": ("SI",), "somalia": ("SO",), "southafrica": ("ZA",),
    "southkorea": ("KR",), "southsudan": ("SS",), "spain": ("ES",), "srilanka": ("LK",),
    "suriname": ("SR",), "swaziland": ("SZ",), "sweden": ("SE",),
    "switzerland": ("CH",), "taiwan": ("TW",), "tajikistan": ("TJ",),
    "tanzania": ("TZ",), "thailand": ("TH",), "timorleste": ("TL",), "togo": ("TG",),
    "trinidad": ("TT",), "tunisia": ("TN",), "turkey": ("TR",),
    "turkmenistan": ("TM",), "uae": ("AE",), "uganda": ("UG",), "ukraine": ("UA",),
    "uruguay": ("UY",), "usa": ("US",), "uzbekistan": ("UZ",), "venezuela": ("VE",),
    "vietnam": ("VN",), "yemen": ("YE",), "zambia": ("ZM",), "zimbabwe": ("ZW",),
}

# Abbreviations people write for a country that are not its region code.
_ABBREVIATIONS = {"uk": "GB"}

_NAME = re.compile(r"^[a-z][a-z0-9]*$")
_REGION = re.compile(r"^([A-Z]{2}|001)$")


def table(extra: str | None = None) -> dict[str, tuple[str, ...]]:
    """Onlinesim's names with their regions, plus the `extra` ones (RENTBOX_COUNTRY_NAMES:
    `name=REGION` pairs, comma-separated, e.g. `kosovo=XK,uk=GB`; a name given again gets
    one region more). Raises InvalidInput for a malformed pair."""
    names = dict(ONLINESIM_COUNTRIES)
    for pair in (extra or "").split(","):
        if not pair.strip():
            continue
        name, sep, region = (part.strip() for part in pair.partition("="))
        name, region = name.lower(), region.upper()
        if not sep or not _NAME.match(name) or not _REGION.match(region):
            raise InvalidInput(
                f"country name {pair.strip()!r} must be written name=REGION: a lower-case "
                "name as Onlinesim writes it, and the two-letter ISO code of its numbers' "
                "region (e.g. kosovo=XK)")
        if region not in names.get(name, ()):
            names[name] = names.get(name, ()) + (region,)
    return names


def name_of_region(region: str, names: Mapping[str, tuple[str, ...]]) -> str | None:
    """The Onlinesim name whose numbers include `region`'s: the first in `names`' order
    (table(): Onlinesim's own before the added ones)."""
    for name, regions in names.items():
        if region in regions:
            return name
    return None


def unknown_name(name: str, names: Mapping[str, tuple[str, ...]]) -> str:
    """Why `name` is refused, with the name that was probably meant."""
    meant = name_of_region(_ABBREVIATIONS.get(name, name.upper()), names)
    if meant is not None:
        hint = f"use Onlinesim's country name, e.g. {meant}"
    else:
        close = difflib.get_close_matches(name.replace(" ", ""), list(names), n=1,
                                          cutoff=0.75)
        hint = (f"did you mean {close[0]}?" if close else
                "if Onlinesim uses it, add it with --country-names or RENTBOX_COUNTRY_NAMES "
                f"as {name.replace(' ', '')}=XX, XX being the two-letter ISO code of its "
                "numbers' region")
    return f"{name!r} is not one of Onlinesim's country names: {hint}"


def wrong_region(digits: str, region: str, name: str,
                 names: Mapping[str, tuple[str, ...]]) -> str:
    """Why +`digits`, a number of `region`, is refused under the country `name`."""
    owner = name_of_region(region, names)
    where = (f"a number of {owner} ({region})" if owner else
             "a number of no single country (an international network)" if region == "001"
             else f"a number of region {region}")
    return f"+{digits} is {where}, not of {name}"

import io

from rentbox import render


def draw(columns, rows, **kwargs):
    stream = io.StringIO()
    render.table(stream, columns, rows, **kwargs)
    return stream.getvalue()


def test_columns_align_by_terminal_cells_and_numbers_go_right():
    text = draw(["id", "from", "text"], [["1", "Bank", "code 12"], ["10", "中文", "🎉 ok"]])
    assert text == ("id  from  text\n"
                    "─────────────────\n"
                    " 1  Bank  code 12\n"
                    "10  中文  🎉 ok\n")


def test_a_terminal_width_cuts_only_the_free_text_columns():
    rows = [["1", "+4915123456789", "a very long message that will not fit at all"]]
    text = draw(["id", "to", "text"], rows, flexible=("text",), width=30)
    assert text.splitlines()[2] == " 1  +4915123456789  a very lo…"
    assert max(len(line) for line in text.splitlines()) <= 30
    assert draw(["id", "to", "text"], rows, flexible=("text",)).splitlines()[2].endswith("at all")


def test_title_and_empty_cells():
    assert draw(["a", "b"], [["x", ""]], title="Events") == "\nEvents\na  b\n────\nx\n"


def test_cell_helpers():
    assert render.when("2026-11-26T22:43:01.000005Z") == "2026-11-26 22:43"
    assert render.when_exactly("2026-11-26T22:43:01.000005Z") == "2026-11-26 22:43:01"
    assert render.rub(8705050) == "87,050.50" and render.rub(None) == ""
    assert render.flat(" two\nlines  here ") == "two lines here"
    assert render.detail({"a": 1, "b": None, "c": [], "d": "x"}) == "a=1 d=x"


def test_a_streamed_table_is_measured_on_its_first_rows():
    """Rows that come one at a time (`numbers list`): widths from the first `sample` rows;
    a later wider cell pushes its line right in a pipe, and on a terminal is cut only in a
    flexible column. A lone '-' is no number."""
    rows = iter([["1", "ab", "-"], ["22", "abcdefgh", "-"], ["3", "abcdefghijkl", "-"]])
    stream = io.StringIO()
    assert render.stream_table(stream, ["id", "port", "sim"], rows, sample=2) == 3
    assert stream.getvalue().splitlines() == ["id  port      sim", "─" * 17,
                                              " 1  ab        -", "22  abcdefgh  -",
                                              " 3  abcdefghijkl  -"]
    cut = io.StringIO()
    render.stream_table(cut, ["id", "port"], iter([["1", "ab"], ["3", "abcdefghijkl"]]),
                        flexible=("port",), width=12, sample=1)
    assert cut.getvalue().splitlines()[3] == " 3  abcde…"  # the column stays 6 wide


def test_plural():
    assert [render.plural(n, "number") for n in (0, 1, 2)] == ["0 numbers", "1 number",
                                                                "2 numbers"]
    assert render.plural(2, "reply", "replies") == "2 replies"


def test_money_keeps_its_currency():
    assert render.money(1250, "USD") == "12.50 USD"
    assert render.money(123456789, "RUB") == "1,234,567.89 RUB"
    assert render.money(None, "USD") == ""


def test_other_income_names_each_currency_and_never_a_zero():
    assert render.other_income([]) == ""
    assert render.other_income([
        {"currency": "USD", "credited_month_minor": 1250, "credited_week_minor": 0,
         "pending_minor": 300},
        {"currency": "EUR", "credited_month_minor": 0, "credited_week_minor": 700,
         "pending_minor": 0}]) == ("; + 12.50 USD this month, 3.00 USD pending"
                                   "; + 7.00 EUR this week")


def test_a_buyer_on_one_status_line():
    call = {"at": "2026-11-02T12:10:00.000000Z", "action": "GET_NUMBER"}
    smshub = {"name": "smshub", "path": "/smshub", "configured": True, "push_url_set": True,
              "open": 3, "last_call": call, "last_call_age_s": 3725}
    assert render.buyer(smshub) == ("smshub (/smshub): 3 open; last call 2026-11-02 12:10:00 "
                                    "UTC (GET_NUMBER, 1 h 2 min ago); push URL set")
    assert render.buyer({**smshub, "last_call": None, "push_url_set": False}) == (
        "smshub (/smshub): 3 open; never called; push URL NOT set")
    gone = {"name": "bower", "path": None, "configured": False, "push_url_set": None,
            "open": 1, "last_call": None, "last_call_age_s": None}
    assert render.buyer(gone) == "bower: 1 open; never called; not served by the server now"
    onlinesim = {**gone, "name": "onlinesim", "configured": True}
    assert render.buyer(onlinesim).endswith("; push URL unknown")  # no server ever ran

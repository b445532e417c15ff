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

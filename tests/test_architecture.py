"""Imports point one way: CLI and HTTP on top, the rules in the middle, db/clock/config below."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rentbox"
BOTTOM = {"clock", "config", "settings", "errors", "db", "events", "meta", "logs", "workers",
          "writer", "countries"}
MIDDLE = {"protocol", "pool", "bans", "operations", "sms", "gateways", "push", "housekeeping",
          "presence", "tallies", "retention", "alerts", "backups", "replication",
          "reports", "dashboard", "metrics", "selftest", "spool", "services", "buyers",
          "smshub"}
TOP = {"web", "server", "cli", "render"}
# Who may import whom at the top: cli starts the server and renders tables, the server
# serves the web app.
TOP_ALLOWED = {"cli": {"server", "render"}, "server": {"web"}, "web": set(), "render": set()}


def rentbox_imports(module: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "rentbox":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("rentbox."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rentbox.")}
    return found - {"__version__"}


def layer_name(path: Path) -> str:
    """A module's name for the layers; a module of a subpackage (gateways/) is its package."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else path.stem


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert modules | packages == BOTTOM | MIDDLE | TOP


def test_imports_point_down():
    for path in PACKAGE.rglob("*.py"):
        name, imported = layer_name(path), rentbox_imports(path) - {layer_name(path)}
        if name in ("__init__", "__main__"):
            continue
        if name in BOTTOM:
            assert imported <= BOTTOM, f"{name} (bottom) imports {imported - BOTTOM}"
        elif name in MIDDLE:
            assert not imported & TOP, f"{name} (middle) imports {imported & TOP}"
        elif name in TOP:
            assert imported & TOP <= TOP_ALLOWED[name], f"{name} imports {imported & TOP}"


def test_no_sql_in_the_cli_or_the_routes():
    for path in [PACKAGE / "cli.py", *sorted((PACKAGE / "web").glob("*.py"))]:
        text = path.read_text()
        for keyword in ("SELECT ", "INSERT ", "UPDATE ", "DELETE "):
            assert keyword not in text, f"{path.name} contains SQL ({keyword.strip()})"



def test_the_core_never_knows_a_buyers_wire_format():
    """A buyer's protocol is an adapter (smshub.py), as a gateway is: only the HTTP layer,
    the server (its push wire) and the self-test (which plays a buyer) import one."""
    importers = {layer_name(path) for path in PACKAGE.rglob("*.py")
                 if "smshub" in rentbox_imports(path) and path.stem != "smshub"}
    assert importers <= {"web", "server", "selftest"}

"""The layout's rules, checked: no import cycles between modules or packages (imports inside functions
count too), the core never imports napari or Qt, and reading a scan does not pull in torch."""
import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "napari_ssl"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = base.split(".")
                mod = ".".join(parts[: len(parts) - (node.level - 1)]) + (f".{mod}" if mod else "")
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                deps.add(t)
    return deps


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules_or_packages():
    mods = _modules()
    edges = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert _cycles(edges) == [], "module import cycles"
    top = lambda m: ".".join(m.split(".")[:2])  # noqa: E731 - napari_ssl.<subpackage or module>
    pkg_edges: dict[str, set[str]] = {}
    for a, deps in edges.items():
        for b in deps:
            if top(a) != top(b) and top(b) != "napari_ssl":
                pkg_edges.setdefault(top(a), set()).add(top(b))
    assert _cycles(pkg_edges) == [], "package import cycles"


def test_the_core_never_imports_napari_or_qt():
    bad = []
    for name, path in _modules().items():
        if name.startswith("napari_ssl._napari") or name == "napari_ssl.commands.demo":  # the demo command opens the viewer
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{name}: {n}" for n in names if n.split(".")[0] in ("napari", "qtpy", "PySide6", "PyQt5", "PyQt6", "magicgui", "vispy")]
    assert bad == []


def test_reading_a_scan_does_not_import_torch(dcmqi_dir):
    code = ("import sys; from napari_ssl import api; import napari_ssl.io; "
            f"v = api.load_volume({str(dcmqi_dir / 'ct-3slice')!r}); assert v.shape[0] == 3; "
            "print(sorted(m for m in ('torch', 'napari', 'qtpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
EXCEPTIONS: dict[str, str] = {  # "path:function" -> why it is longer
}


def test_files_and_functions_stay_small():
    """Every module under 400 lines, every function (methods and nested functions too) under 60."""
    too_long = []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(PKG.parent)
        if text.count("\n") >= MAX_FILE_LINES:
            too_long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and f"{rel}:{node.name}" not in EXCEPTIONS:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)

"""The import rules of docs/architecture.md, read from the source with `ast` (imports inside
functions count: an import moved into a function to dodge a loop is the loop still)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent / "clipjax"

# modules below every room: they import nothing of clipjax but each other
BASE = {"clipjax.sharding", "clipjax.variables", "clipjax.checkpoint_format", "clipjax.tokenizer",
        "clipjax.preprocess", "clipjax.errors", "clipjax.checksums", "clipjax.storage"}

# room -> the rooms (and base modules) it may import; a room may always import itself
ALLOWED = {
    "base": set(),
    "models": set(),
    "losses": {"models"},
    "convert": {"models"},
    "data": set(),
    "evaluation": {"data", "models"},
    "inference": {"convert", "models"},
    "train": set(),
    "tasks": {"models", "losses", "data", "evaluation", "inference", "convert", "train"},
    # plan.py's room: compiles a task's real step for a TPU topology (above tasks/)
    "planning": {"tasks", "train", "models"},
    # search.py's room: an embedding index, queries and the web page over a loaded CLIP
    "search": {"inference", "evaluation", "data", "models"},
    # CLIP's applications (moderation, localisation, VQA, video, corruption robustness, WiSE-FT):
    # one module each over loaded models, evaluators and datasets (moderate.py, locate.py, ...)
    "apps": {"inference", "evaluation", "data", "models", "convert"},
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# dataset builders: evaluation learns their class names, prompts and held-out lists from the
# dataset's own metadata (builder.info), never by importing them
BUILDERS = {"clipjax.data.shapes_dataset", "clipjax.data.fashion_mnist"}


def room(module: str) -> str:
    if module in BASE or module == "clipjax":
        return "base" if module != "clipjax" else "clipjax"
    return module.split(".")[1]


def imports_of(path: pathlib.Path) -> set[str]:
    """Every clipjax module `path` imports (`from a.b import c` counts a.b.c when that is a
    module, else a.b)."""
    mod = module_name(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("clipjax")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("clipjax"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (ROOT.parent / sub.replace(".", "/")).is_dir() else target)
    out.discard(mod)
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def test_every_import_goes_the_allowed_way():
    bad = []
    for mod, deps in graph().items():
        r = room(mod)
        if r == "clipjax":  # the package's public names
            continue
        for dep in deps:
            d = room(dep)
            if r == "evaluation" and dep in BUILDERS:
                bad.append(f"{mod} (evaluation) -> {dep} (a dataset builder: read builder.info instead)")
                continue
            if d == r or (d == "base" and r != "base") or d in ALLOWED[r]:
                if r == "base" and dep not in BASE:
                    bad.append(f"{mod} -> {dep}")
                continue
            bad.append(f"{mod} ({r}) -> {dep} ({d})")
    assert not bad, "imports against the rules of docs/architecture.md:\n" + "\n".join(sorted(bad))


def test_no_import_loops():
    g = graph()
    index, low, stack, on, loops = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
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
                loops.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not loops, f"import loops: {loops}"


def test_the_inference_api_imports_no_input_pipeline():
    """`import clipjax` (load, LoadedCLIP / CLIPSeg / Tag2Text) stays light: TensorFlow and the
    data room are the training input's, not inference's."""
    import subprocess
    import sys

    code = "import sys, clipjax; print(sorted(m for m in ('tensorflow', 'clipjax.data') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

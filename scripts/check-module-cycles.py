#!/usr/bin/env python3
"""Fail on an import cycle between sibling modules of the crate in src/.

    scripts/check-module-cycles.py [--self-test] [SRC_DIR]   # SRC_DIR: src by default

Exit 0: no cycle. Exit 1: one line per cycle, `a -> b -> a`, each followed by one reference
per edge (file:line and the path named there). Exit 2: --self-test failed (the checker itself
is wrong), or SRC_DIR has no lib.rs. --self-test first runs the checker on small fixture trees
(one with cycles, which must fail with exactly the expected cycles; one without, which must
pass), then checks SRC_DIR. Python 3.11 standard library only.

What counts as a module edge:
- Nodes are file modules (src/a.rs, src/a/mod.rs, src/a/b.rs); an inline module (`mod tests
  { … }`, `mod with_gcp { … }`) belongs to the file it is written in. src/main.rs is another
  crate (it names `phasegate::`) and is not read.
- A reference is a path starting with `crate::`, `super::` or `self::` in code: in a `use`
  declaration (every path of its tree) or anywhere else (`crate::demo::run(…)`). Comments,
  doc comments (intra-doc links included: they build no dependency) and string literals are
  not read. `#[cfg(test)]` code is read: a test reaching into a sibling is a dependency too.
  Paths not starting with those keywords (extern crates, a module's own children) are not
  edges between siblings.
- `super::` and `self::` are resolved from the module they are written in, inline modules
  included (`super::*` in `mod tests` is the file's own module). A path resolves to the
  deepest file module it names; a name a module imports or re-exports (`pub use x::Y` in
  gate/mod.rs, or a plain `use` its children reach through `super::Y`) is followed to where
  it comes from. Glob imports are not followed.
- Graphs are per parent: a reference from module S to module T is an edge between the two
  children of their deepest common ancestor that contain S and T (crate root: the top-level
  modules, `demo -> startup`; src/cli/: `cli/backfill -> cli/commands`). A module naming its
  own ancestor (a child using its parent's items via `super::`) or its own descendant (a
  parent using its children) is no edge between siblings: the parent file is not a node of
  its children's graph.
- A cycle is a cycle in one of those graphs. For every edge inside a strongly connected set,
  the shortest cycle through it is printed (once, whatever edge found it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

Module = tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Lexing: comments and literals out, positions kept (line numbers stay right).


def strip_code(text: str) -> str:
    """`text` with comments, string and char literals blanked (newlines kept)."""
    out: list[str] = []
    i, n = 0, len(text)

    def blank(s: str) -> str:
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif m := re.compile(r'(?:br|r|cr)(#*)"').match(text, i):
            if i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
                out.append(c)
                i += 1
                continue
            end = text.find('"' + m.group(1), m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(blank(text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(blank(text[i : j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}', b'x') or a lifetime ('a, 'static).
            if i + 1 < n and text[i + 1] == "\\":
                j = text.find("'", i + 3)
                j = n if j < 0 else j + 1
            elif i + 2 < n and text[i + 2] == "'":
                j = i + 3
            else:
                out.append(c)
                i += 1
                continue
            out.append(blank(text[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Use trees and paths.


def expand_use_tree(tree: str) -> list[tuple[list[str], str | None]]:
    """`a::{b, c::{d as e, self}, f::*}` -> [(path segments, name bound or None for a glob)]."""
    tree = re.sub(r"\s+", "", tree).lstrip(":")
    results: list[tuple[list[str], str | None]] = []

    def split_top(s: str) -> list[str]:
        parts, depth, start = [], 0, 0
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        return [p for p in parts if p]

    def walk(prefix: list[str], s: str) -> None:
        brace = s.find("{")
        if brace >= 0 and s.endswith("}"):
            head = [seg for seg in s[:brace].split("::") if seg]
            for part in split_top(s[brace + 1 : -1]):
                walk(prefix + head, part)
            return
        segs = [seg for seg in s.split("::") if seg]
        if segs and segs[-1] == "*":
            results.append((prefix + segs[:-1], None))
            return
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        path = prefix + segs
        results.append((path, path[-1] if path else None))

    walk([], tree)
    return results


def expand_use(decl: str) -> list[tuple[list[str], str | None]]:
    """Like expand_use_tree, on the text between `use` and `;`, `as` renames honoured."""
    aliases: dict[str, str] = {}

    def rename(m: re.Match[str]) -> str:
        key = f"__alias{len(aliases)}__"
        aliases[key] = m.group(2)
        return f"{m.group(1)}{key}"

    decl = re.sub(r"(\w+)\s+as\s+(\w+)", rename, decl)
    expanded = []
    for path, name in expand_use_tree(decl):
        if path and path[-1].endswith("__") and "__alias" in path[-1]:
            original, key = path[-1].split("__alias", 1)
            alias = aliases["__alias" + key]
            path = path[:-1] + [original]
            name = alias if alias != "_" else None
        expanded.append((path, name))
    return expanded


# ---------------------------------------------------------------------------------------------
# The crate's file modules and the references in them.


@dataclass
class Reference:
    module: Module  # the module the path is written in (inline modules included)
    path: list[str]  # as written, from crate/super/self
    line: int
    text: str


@dataclass
class FileModule:
    path: Path
    module: Module
    imports: dict[str, tuple[Module, list[str]]] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)


def file_modules(src: Path) -> dict[Module, FileModule]:
    modules: dict[Module, FileModule] = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("").parts
        if rel in (("lib",),):
            module: Module = ()
        elif rel == ("main",) or (rel and rel[0] == "bin"):
            continue  # other crates
        elif rel[-1] == "mod":
            module = tuple(rel[:-1])
        else:
            module = tuple(rel)
        modules[module] = FileModule(f, module)
    return modules


USE = re.compile(r"\buse\s+([^;]+);")
INLINE_PATH = re.compile(r"(?<![\w$])\$?(crate|super|self)((?:\s*::\s*(?:[A-Za-z_]\w*))+)")
MOD_OPEN = re.compile(r"\bmod\s+([A-Za-z_]\w*)\s*\{")


def read_references(fm: FileModule) -> None:
    raw = fm.path.read_text(encoding="utf-8")
    code = strip_code(raw)
    line_starts = [0] + [m.end() for m in re.finditer("\n", code)]

    def line_of(pos: int) -> int:
        lo, hi = 0, len(line_starts)
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if line_starts[mid] <= pos else (lo, mid)
        return lo + 1

    # Inline module spans: (start, end, name), from brace matching.
    spans: list[tuple[int, int, str]] = []
    for m in MOD_OPEN.finditer(code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        spans.append((m.start(), j, m.group(1)))

    def module_at(pos: int) -> Module:
        inner = [name for (s, e, name) in spans if s <= pos < e]
        return fm.module + tuple(inner)

    use_spans = []
    for m in USE.finditer(code):
        use_spans.append((m.start(), m.end()))
        where = module_at(m.start())
        for path, name in expand_use(m.group(1)):
            if not path:
                continue
            text = "::".join(path)
            if path[0] in ("crate", "super", "self"):
                fm.references.append(Reference(where, path, line_of(m.start()), text))
            if name and where == fm.module:
                fm.imports[name] = (where, path)
    for m in INLINE_PATH.finditer(code):
        if any(s <= m.start() < e for s, e in use_spans):
            continue
        path = [m.group(1)] + [s for s in re.split(r"\s*::\s*", m.group(2)) if s]
        fm.references.append(
            Reference(module_at(m.start()), path, line_of(m.start()), "::".join(path))
        )


# ---------------------------------------------------------------------------------------------
# Resolution: a path to the deepest file module it names.


def absolute(where: Module, path: list[str]) -> list[str] | None:
    """`path` written in module `where`, from the crate root (None: not a crate path)."""
    base = list(where)
    segs = list(path)
    if segs[0] == "crate":
        return segs[1:]
    if segs[0] == "self":
        return base + segs[1:]
    while segs and segs[0] == "super":
        if not base:
            return None
        base.pop()
        segs.pop(0)
    return base + segs


def resolve(modules: dict[Module, FileModule], segs: list[str], depth: int = 0) -> Module:
    current: Module = ()
    k = 0
    while k < len(segs) and current + (segs[k],) in modules:
        current += (segs[k],)
        k += 1
    if k < len(segs) and depth < 8:
        imported = modules[current].imports.get(segs[k]) if current in modules else None
        if imported:
            where, path = imported
            target = absolute(where, path)
            if target is not None:
                return resolve(modules, target + segs[k + 1 :], depth + 1)
    return current


# ---------------------------------------------------------------------------------------------
# Graphs per parent and their cycles.


def sibling_edges(modules: dict[Module, FileModule]):
    """{parent: {(a, b): first reference}}: a and b children of parent, a naming b."""
    graphs: dict[Module, dict[tuple[Module, Module], tuple[FileModule, Reference]]] = (
        defaultdict(dict)
    )
    for fm in modules.values():
        for ref in fm.references:
            target_path = absolute(ref.module, ref.path)
            if target_path is None:
                continue
            target = resolve(modules, target_path)
            source = fm.module
            common = 0
            while (
                common < min(len(source), len(target)) and source[common] == target[common]
            ):
                common += 1
            if common == len(source) or common == len(target):
                continue  # the same module, an ancestor or a descendant
            parent = source[:common]
            edge = (source[: common + 1], target[: common + 1])
            graphs[parent].setdefault(edge, (fm, ref))
    return graphs


def strongly_connected(nodes: set[Module], adj: dict[Module, set[Module]]) -> list[set[Module]]:
    index: dict[Module, int] = {}
    low: dict[Module, int] = {}
    stack: list[Module] = []
    on_stack: set[Module] = set()
    result: list[set[Module]] = []

    def visit(v: Module) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(adj[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            result.append(component)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return result


def shortest_path(adj, component, start, goal) -> list[Module] | None:
    previous = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if v == goal:
            path = []
            while v is not None:
                path.append(v)
                v = previous[v]
            return path[::-1]
        for w in sorted(adj[v]):
            if w in component and w not in previous:
                previous[w] = v
                queue.append(w)
    return None


def find_cycles(src: Path):
    """[(cycle as a list of modules, first == last), [(edge, file module, reference)]]."""
    modules = file_modules(src)
    if () not in modules:
        raise SystemExit(f"{src}: no lib.rs")
    for fm in modules.values():
        read_references(fm)
    cycles = []
    for _parent, edges in sorted(sibling_edges(modules).items()):
        adj: dict[Module, set[Module]] = defaultdict(set)
        for a, b in edges:
            adj[a].add(b)
        nodes = set(adj) | {b for bs in adj.values() for b in bs}
        seen = set()
        for component in strongly_connected(nodes, adj):
            if len(component) < 2:
                continue
            for a, b in sorted(edges):
                if a not in component or b not in component:
                    continue
                back = shortest_path(adj, component, b, a)
                cycle = [a] + back  # a -> b -> … -> a
                ring = cycle[:-1]
                k = ring.index(min(ring))
                key = tuple(ring[k:] + ring[:k])
                if key in seen:
                    continue
                seen.add(key)
                loop = list(key) + [key[0]]
                evidence = [((x, y), *edges[(x, y)]) for x, y in zip(loop, loop[1:])]
                cycles.append((loop, evidence))
    return sorted(cycles, key=lambda c: [m for m in c[0]])


def name(module: Module) -> str:
    return "/".join(module) or "crate"


def shown(path: Path) -> Path:
    """`path` relative to the working directory where it is below it."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def report(src: Path, out=sys.stdout) -> int:
    cycles = find_cycles(src)
    for loop, evidence in cycles:
        print(" -> ".join(name(m) for m in loop), file=out)
        for (a, b), fm, ref in evidence:
            where = shown(fm.path)
            print(f"    {name(a)} -> {name(b)}: {where}:{ref.line} {ref.text}", file=out)
    if cycles:
        print(f"{len(cycles)} module import cycle(s) in {shown(src)}/", file=out)
        return 1
    print(f"no module import cycle in {shown(src)}/", file=out)
    return 0


# ---------------------------------------------------------------------------------------------
# Self-test: fixtures the checker must judge right.

FIXTURE_CYCLES = {
    "lib.rs": "pub mod a; pub mod b; pub mod c; pub mod p; pub mod q;\n",
    # a <-> b through a use tree and an inline path
    "a.rs": "use crate::{b::B, c};\npub struct A;\n",
    "b.rs": "pub struct B;\nfn f() { let _ = crate::a::A; }\n",
    # c names a only in comments, docs and strings: no edge
    "c.rs": '//! [`crate::a`]\n// crate::a::A\n/* crate::a */ const S: &str = "crate::a::A";\n'
    "pub fn f<'a>(x: &'a str) -> char { let _ = x; 'x' }\n",
    # p/x -> p/y via super::, p/y -> p/x via the parent's re-export: a cycle in p
    "p/mod.rs": "mod x; mod y; pub use x::X; use crate::a::A;\npub struct P;\n",
    "p/x.rs": "use super::y::Y;\nuse super::P; // the parent's item: no sibling edge\npub struct X;\n",
    "p/y.rs": "pub struct Y;\nfn g() -> super::X { todo!() }\n"
    "#[cfg(test)]\nmod tests {\n    use super::*; // y itself\n    use super::super::A; // p's import of crate::a\n}\n",
    # q -> p -> a -> b ... but nothing back to q: no cycle through q
    "q.rs": "use crate::p::P;\n",
}
FIXTURE_CYCLES_EXPECTED = ["a -> b -> a", "p/x -> p/y -> p/x"]
FIXTURE_CLEAN = {
    "lib.rs": "pub mod a; pub mod b;\n",
    "a.rs": "use crate::b::B;\npub struct A;\n#[cfg(test)]\nmod tests { use super::*; }\n",
    "b/mod.rs": "mod inner;\npub use inner::B;\n",
    "b/inner.rs": "pub struct B;\nfn f() -> super::B { super::B }\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    src = root / "src"
    for rel, text in files.items():
        f = src / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text, encoding="utf-8")
    return src


def self_test() -> bool:
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        cycles_src = write_tree(Path(tmp) / "cycles", FIXTURE_CYCLES)
        clean_src = write_tree(Path(tmp) / "clean", FIXTURE_CLEAN)
        expected = FIXTURE_CYCLES_EXPECTED
        found = [" -> ".join(name(m) for m in loop) for loop, _ in find_cycles(cycles_src)]
        if found != expected:
            print(f"self-test: cycles fixture: expected {expected}, found {found}")
            ok = False
        # The command itself: the fixture with cycles fails (exit 1), the clean one passes.
        for src, want in ((cycles_src, 1), (clean_src, 0)):
            run = subprocess.run(
                [sys.executable, __file__, str(src)], capture_output=True, text=True
            )
            if run.returncode != want:
                print(f"self-test: {src.parent.name}: exit {run.returncode}, expected {want}")
                print(run.stdout + run.stderr)
                ok = False
    print("self-test: " + ("ok" if ok else "FAILED"))
    return ok


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--self-test"]
    if "--self-test" in argv and not self_test():
        return 2
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    src = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "src"
    return report(src)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

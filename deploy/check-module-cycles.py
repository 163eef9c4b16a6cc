#!/usr/bin/env python3
"""Fails when modules of one crate import each other in a circle.

For every crate under crates/*/src, each file is a module (src/lib.rs the root, src/a.rs or
src/a/mod.rs `a`, src/a/b.rs `a::b`). A module uses another when its code (comments left out)
names it: `crate::a::...` (in `use` trees too), `super::...`, `self::b::...` or a child `b::...`.
A name re-exported by the crate root (`pub use a::Item;` in lib.rs) counts as a use of `a`, and
the root itself is left out: it only declares and re-exports. A module's use of its own
ancestors (`super::` from `state::usage` to `state`) is not counted: a submodule is a part of its
parent, which may call into it. Test modules inside a file count as the file.

Prints every circle found, as `crate: a -> b -> a`, and exits 1; prints a one-line summary and
exits 0 when there are none.

Usage: deploy/check-module-cycles.py [REPO_ROOT]
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments(text):
    """The code without `//` and `/* */` comments, string literals blanked."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and i + 2 < n and (text[i + 2] == "'" or text[i + 1] == "\\"):
            # A char literal ('x', '\n'), not a lifetime.
            j = text.find("'", i + 2)
            out.append("' '")
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (whitespace removed)."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:k])
            start = k + 1
    parts.append(inner[start:])
    paths = []
    for part in parts:
        if part:
            paths.extend(prefix + p for p in expand_use_tree(part))
    return paths


def split_inline(code):
    """(the file's own code, the code of its inline `mod name { .. }` blocks)."""
    outer, inline, pos = [], [], 0
    for m in re.finditer(rf"\bmod\s+{IDENT}\s*\{{", code):
        if m.start() < pos:
            continue
        depth, k = 1, m.end()
        while k < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[k], 0)
            k += 1
        outer.append(code[pos : m.start()])
        inline.append(code[m.end() : k])
        pos = k
    outer.append(code[pos:])
    return "".join(outer), "\n".join(inline)


def module_of(src, path):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("lib", "main") and len(parts) == 1:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def paths_named(code, module, children):
    """Every module path the code names, as tuples of segments, resolved to absolute ones."""
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        for p in expand_use_tree(m.group(1)):
            found.append(p.split("::"))
    for m in re.finditer(rf"(?<![\w:])((?:{IDENT}::)+{IDENT})", code):
        found.append(m.group(1).split("::"))
    resolved = []
    for segs in found:
        segs = [s for s in segs if s not in ("*", "")]
        if not segs:
            continue
        head = segs[0]
        if head == "crate":
            resolved.append(tuple(segs[1:]))
        elif head == "super":
            base = list(module)
            while segs and segs[0] == "super":
                # `super` from a file's inline module (tests) is the file itself; from the
                # file's own level it is the parent.
                segs = segs[1:]
                base = base[:-1] if base else base
            resolved.append(tuple(base) + tuple(segs))
        elif head == "self":
            resolved.append(tuple(module) + tuple(segs[1:]))
        elif head in children:
            resolved.append(tuple(module) + tuple(segs))
    return resolved


def crate_graph(src):
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f): f for f in files}
    root_file = modules.get(())
    reexports = {}
    if root_file is not None:
        code = strip_comments(root_file.read_text())
        for m in re.finditer(r"\bpub\s+use\s+([^;]+);", code):
            for p in expand_use_tree(m.group(1)):
                segs = p.split("::")
                if segs[0] in ("crate", "self"):
                    segs = segs[1:]
                name = segs[-1].split("as")[-1]
                owner = tuple(segs[:-1])
                if owner in modules:
                    reexports[name] = owner
    edges = {m: set() for m in modules if m}
    for module, path in modules.items():
        if not module:
            continue
        code = strip_comments(path.read_text())
        children = {m[-1] for m in modules if len(m) == len(module) + 1 and m[:-1] == module}
        # Code in an inline module (`mod tests { .. }`) sees the file as `super`: it is
        # resolved from one level down.
        outer, inline = split_inline(code)
        named = paths_named(outer, module, children)
        named += paths_named(inline, module + ("<inline>",), children)
        for segs in named:
            segs = tuple(s for s in segs if s != "<inline>")
            target = None
            for k in range(len(segs), 0, -1):
                if segs[:k] in modules:
                    target = segs[:k]
                    break
            if target is None and len(segs) >= 1 and segs[0] in reexports:
                target = reexports[segs[0]]
            if target and target != module and module[: len(target)] != target:
                edges[module].add(target)
    return edges


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan), each as a
    circle through them."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def circle_through(edges, comp):
    """One circle inside a strongly connected component, for the message."""
    members = set(comp)
    start = comp[0]
    path, seen = [start], {start}
    while True:
        nxt = next((w for w in sorted(edges[path[-1]]) if w in members), None)
        if nxt in seen:
            return path[path.index(nxt) :] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    failed = False
    crates = sorted(p for p in (root / "crates").glob("*/src") if p.is_dir())
    n_modules = 0
    for src in crates:
        edges = crate_graph(src)
        n_modules += len(edges)
        for comp in cycles(edges):
            failed = True
            circle = circle_through(edges, comp)
            names = " -> ".join("::".join(m) for m in circle)
            print(f"{src.parent.name}: import circle {names} (all of: "
                  f"{', '.join('::'.join(m) for m in comp)})")
    if failed:
        print("module import circles found: move what both sides need into a lower module")
        return 1
    print(f"no module import circles in {len(crates)} crates ({n_modules} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

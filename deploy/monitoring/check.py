#!/usr/bin/env python3
"""Checks the monitoring assets in deploy/monitoring (run in CI):

- alerts.yaml passes `promtool check rules` (when promtool is installed; CI installs it);
- dashboard.json is a Grafana dashboard: a title and uid, panels with unique ids, a type, a
  title, a grid position inside the 24-column grid and at least one Prometheus target each;
- every metric the rules and the dashboard query is one that gatewayd exports (its name appears
  in the Rust sources under crates/) or a rule recorded in alerts.yaml, so that a renamed
  metric cannot leave a silent panel or an alert that never fires.
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
problems = []


def exported_metrics():
    names = set()
    for path in (ROOT / "crates").rglob("*.rs"):
        names.update(re.findall(r"\b(gateway_[a-z0-9_]+)", path.read_text(errors="replace")))
    return names


def recorded_rules(text):
    return set(re.findall(r"record:\s*(\S+)", text))


def referenced(expr):
    found = set(re.findall(r"\b(gateway:[a-z0-9_:]+|gateway_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", m) if m.startswith("gateway_") else m for m in found}


def check_exprs(where, exprs, known):
    for expr in exprs:
        for metric in referenced(expr):
            if metric not in known:
                problems.append(f"{where}: '{metric}' is neither exported by gatewayd nor recorded: {expr.strip()}")


rules_text = (HERE / "alerts.yaml").read_text()
known = exported_metrics() | recorded_rules(rules_text)
rule_exprs = re.findall(r"expr:\s*\|\n((?:\s{10,}.*\n)+)|expr:\s*(.+)", rules_text)
check_exprs("alerts.yaml", [a or b for a, b in rule_exprs], known)
if not rule_exprs:
    problems.append("alerts.yaml: no rules found")

promtool = shutil.which("promtool")
if promtool:
    r = subprocess.run([promtool, "check", "rules", str(HERE / "alerts.yaml")], capture_output=True, text=True)
    if r.returncode != 0:
        problems.append(f"promtool check rules failed:\n{r.stdout}{r.stderr}")
elif "CI" in __import__("os").environ:
    problems.append("promtool is not installed (Debian's prometheus package) but CI is set")
else:
    print("note: promtool not installed, alert rules checked for metric names only")

dash = json.loads((HERE / "dashboard.json").read_text())
for key in ("title", "uid", "panels", "schemaVersion"):
    if key not in dash:
        problems.append(f"dashboard.json: no '{key}'")
ids = set()
for p in dash.get("panels", []):
    where = f"dashboard.json panel {p.get('id')} ({p.get('title')!r})"
    if p.get("id") in ids:
        problems.append(f"{where}: duplicate id")
    ids.add(p.get("id"))
    for key in ("type", "title", "gridPos", "targets"):
        if not p.get(key):
            problems.append(f"{where}: no '{key}'")
    g = p.get("gridPos", {})
    if not (0 <= g.get("x", -1) and g.get("x", 0) + g.get("w", 0) <= 24 and g.get("h", 0) > 0):
        problems.append(f"{where}: gridPos {g} is outside the 24-column grid")
    check_exprs(where, [t.get("expr", "") for t in p.get("targets", [])], known)
    if any(not t.get("expr") for t in p.get("targets", [])):
        problems.append(f"{where}: a target without expr")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"monitoring assets OK: {len(rule_exprs)} rule expressions, {len(ids)} dashboard panels")

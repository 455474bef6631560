#!/usr/bin/env bash
# Validates the deployment kit in deploy/ without network access and without running cargo:
#
#   - every YAML file parses (Helm templates excepted: they are not YAML before rendering);
#   - every flagguard configuration and rule set passes `flagguard check` — the daemon's own
#     validation, so the script never holds a copy of the configuration schema that could fall
#     behind it (a regex copy once refused valid Unleash, LaunchDarkly and Flagsmith configs);
#   - the configurations listen where each deployment expects and take their secrets from the
#     environment;
#   - the Kubernetes manifests agree with each other (one replica, selectors, ports, probes,
#     security context, grace period vs --grace, volumes, ConfigMaps, Secret);
#   - the Helm templates only use values that exist in values.yaml, only include defined
#     templates, and their blocks balance;
#   - `kubectl kustomize deploy/kubernetes` (offline) when kubectl is installed;
#   - the Dockerfile's stages, user, ports, entrypoint, and COPY sources vs its ignore file;
#     plus hadolint when it is on PATH;
#   - the systemd unit's directives, plus `systemd-analyze verify` (when installed) on a copy
#     whose ExecStart points at /bin/true;
#   - the Collector configuration's pipelines, and the commented filter example (uncommented,
#     parsed, its OTTL checked for shape);
#
# `flagguard check` needs a built binary: FLAGGUARD_BIN, else target/release/flagguard,
# target/debug/flagguard or `flagguard` on PATH (build one with `cargo build --release`). Every
# `${VAR}` a configuration names is set to a placeholder for the check.
#
# Exit status: 0 when everything checked is valid, 1 when something is wrong, 2 when a required
# tool is missing (python3, PyYAML that cannot be installed, or the flagguard binary).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

command -v python3 >/dev/null || { echo "check-deploy: python3 is required" >&2; exit 2; }
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
  { echo "check-deploy: python3 >= 3.11 is required (tomllib)" >&2; exit 2; }

# PyYAML: use the system's, else a throw-away virtualenv (needs PyPI once).
py=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "check-deploy: PyYAML not installed; installing it into a temporary virtualenv" >&2
  if python3 -m venv "$work/venv" >/dev/null 2>&1 &&
     "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check pyyaml >/dev/null 2>&1; then
    py="$work/venv/bin/python"
  else
    echo "check-deploy: cannot import or install PyYAML (python3 -m pip install pyyaml)" >&2
    exit 2
  fi
fi

# The flagguard binary for `flagguard check` (never built here: no cargo runs by design).
bin=${FLAGGUARD_BIN:-}
if [[ -z "$bin" ]]; then
  for candidate in target/release/flagguard target/debug/flagguard "$(command -v flagguard || true)"; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then bin=$candidate; break; fi
  done
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "check-deploy: no flagguard binary${bin:+ at $bin} (set FLAGGUARD_BIN, or run cargo build --release)" >&2
  exit 2
fi

analyze=$(command -v systemd-analyze || true)
kubectl=$(command -v kubectl || true)
hadolint=$(command -v hadolint || true)

"$py" - "$root" "$work" "$bin" "$analyze" "$kubectl" "$hadolint" <<'PY'
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

import yaml

root, work, flagguard_bin, systemd_analyze, kubectl, hadolint = sys.argv[1:7]
deploy = os.path.join(root, "deploy")
passed = failed = skipped = 0


def rel(path):
    return os.path.relpath(path, root)


def ok(msg):
    global passed
    passed += 1
    print(f"ok    {msg}")


def fail(msg):
    global failed
    failed += 1
    print(f"FAIL  {msg}")


def skip(msg):
    global skipped
    skipped += 1
    print(f"skip  {msg}")


def check(cond, msg, detail=""):
    if cond:
        ok(msg)
    else:
        fail(msg + (f": {detail}" if detail else ""))
    return cond


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def duration_seconds(text):
    """humantime-style durations as flagguard accepts them ("20s", "1h 30m", "500ms")."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([a-z]+)", str(text))
    if not parts or re.sub(r"(\d+)\s*([a-z]+)|\s", "", str(text)):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


# ---------------------------------------------------------------------------------------------
print("== YAML")
yaml_docs = {}
for dirpath, dirnames, filenames in os.walk(deploy):
    if os.path.join("helm", "flagguard", "templates") in dirpath:
        continue
    for name in sorted(filenames):
        if not name.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(dirpath, name)
        try:
            docs = [d for d in yaml.safe_load_all(read(path)) if d is not None]
            yaml_docs[rel(path)] = docs
            ok(f"{rel(path)} parses ({len(docs)} document(s))")
        except yaml.YAMLError as e:
            fail(f"{rel(path)} does not parse: {e}")


# ---------------------------------------------------------------------------------------------
print("== flagguard configuration (TOML)")


def toml_errors(text):
    """Whether it is TOML at all; what the fields mean is `flagguard check`'s business (below)."""
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as e:
        return None, [f"TOML: {e}"]


def configmap(docs, name):
    for d in docs:
        if d.get("kind") == "ConfigMap" and d.get("metadata", {}).get("name") == name:
            return d
    return None


k8s_cm = yaml_docs.get("deploy/kubernetes/configmap.yaml", [])
helm_values = (yaml_docs.get("deploy/helm/flagguard/values.yaml") or [{}])[0]
configs = {  # label -> (text, expectations)
    "deploy/systemd/flagguard.toml.example": (read(os.path.join(deploy, "systemd", "flagguard.toml.example")),
                                              {"api": "127.0.0.1", "otlp": "0.0.0.0"}),
    "deploy/docker/flagguard.toml": (read(os.path.join(deploy, "docker", "flagguard.toml")),
                                     {"api": "0.0.0.0", "otlp": "0.0.0.0", "data_dir": "/var/lib/flagguard"}),
    "ConfigMap flagguard-config (kubernetes)": (((configmap(k8s_cm, "flagguard-config") or {}).get("data") or {}).get("flagguard.toml"),
                                                {"api": "0.0.0.0", "otlp": "0.0.0.0"}),
    "values.yaml config (helm)": (helm_values.get("config"), {"api": "0.0.0.0", "otlp": "0.0.0.0"}),
}
parsed_configs = {}
for label, (text, expect) in configs.items():
    if not isinstance(text, str):
        fail(f"{label}: no TOML text found")
        continue
    data, errors = toml_errors(text)
    if not check(not errors, f"{label}: TOML parses", "; ".join(errors)):
        continue
    parsed_configs[label] = (text, data)
    api = data.get("api", {}).get("listen", "127.0.0.1:8080")
    otlp = [data.get("otlp", {}).get(f, "127.0.0.1:431x") for f in ("grpc_listen", "http_listen")]
    check(api.startswith(expect["api"] + ":"), f"{label}: API listens on {expect['api']}", api)
    check(all(a.startswith(expect["otlp"] + ":") for a in otlp), f"{label}: OTLP listens on {expect['otlp']}", str(otlp))
    check(data.get("rules_dir") == "/etc/flagguard/rules", f"{label}: rules_dir is /etc/flagguard/rules",
          str(data.get("rules_dir")))
    if "data_dir" in expect:
        check(data.get("data_dir") == expect["data_dir"], f"{label}: data_dir is {expect['data_dir']}")
    refs = set(re.findall(r"\$\{(\w+)\}", text))
    if label != "deploy/docker/flagguard.toml":
        check("FLAG_API_TOKEN" in refs and any(t.get("type") == "webhook" for t in data.get("actuators", {}).values()),
              f"{label}: webhook actuator takes its token from ${{FLAG_API_TOKEN}}")


# ---------------------------------------------------------------------------------------------
print("== rule files")


def check_rules(label, text):
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        fail(f"{label}: does not parse: {e}")
        return
    # The fields are checked by `flagguard check` (below); here only that the file holds rules.
    rules = (doc or {}).get("rules", []) if isinstance(doc, dict) else []
    check(bool(rules), f"{label}: parses, {len(rules)} rule(s)")


rule_sets = {}
k8s_rules = ((configmap(k8s_cm, "flagguard-rules") or {}).get("data") or {})
check(bool(k8s_rules), "ConfigMap flagguard-rules has rule files")
rule_sets["kubernetes"] = k8s_rules
rule_sets["helm"] = helm_values.get("rules") or {}
for where, files in rule_sets.items():
    for name, text in files.items():
        check(name.endswith((".yaml", ".yml")), f"{where} rules: {name} ends in .yaml/.yml (others are not loaded)")
        check_rules(f"{where} rules: {name}", text)


# ---------------------------------------------------------------------------------------------
print("== Kubernetes manifests")
k8s = {}
for path in ("deploy/kubernetes/configmap.yaml", "deploy/kubernetes/service.yaml",
             "deploy/kubernetes/statefulset.yaml", "deploy/kubernetes/secret.example.yaml"):
    for d in yaml_docs.get(path, []):
        k8s[(d.get("kind"), d.get("metadata", {}).get("name"))] = d
        check(all(k in d for k in ("apiVersion", "kind", "metadata")) and d["metadata"].get("name"),
              f"{path}: {d.get('kind')} {d.get('metadata', {}).get('name')} has apiVersion, kind, metadata.name")
        check("namespace" not in d.get("metadata", {}), f"{path}: {d.get('kind')} is namespace-agnostic")

sts = k8s.get(("StatefulSet", "flagguard"))
svc = k8s.get(("Service", "flagguard"))
headless = k8s.get(("Service", "flagguard-headless"))
secret = k8s.get(("Secret", "flagguard-secrets"))
if not (sts and svc and headless and secret):
    fail("StatefulSet flagguard, Services flagguard and flagguard-headless, Secret flagguard-secrets all defined")
else:
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    c = pod["containers"][0]
    check(spec.get("replicas") == 1, "StatefulSet: replicas is 1")
    check(spec.get("updateStrategy", {}).get("type") == "RollingUpdate", "StatefulSet: RollingUpdate")
    check(spec.get("serviceName") == "flagguard-headless" and headless["spec"].get("clusterIP") == "None",
          "StatefulSet: serviceName is the headless Service")
    sel = spec["selector"]["matchLabels"]
    check(all(labels.get(k) == v for k, v in sel.items()), "StatefulSet: selector matches the pod labels")
    for s in (svc, headless):
        check(all(labels.get(k) == v for k, v in s["spec"]["selector"].items()),
              f"Service {s['metadata']['name']}: selector matches the pod labels")
    check(svc["spec"].get("type", "ClusterIP") == "ClusterIP", "Service flagguard: ClusterIP (the API stays inside the cluster)")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(ports == {"grpc": 4317, "http": 4318, "api": 8080}, "container ports grpc 4317, http 4318, api 8080", str(ports))
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    check(svc_ports == {"grpc": (4317, "grpc"), "http": (4318, "http"), "api": (8080, "api")},
          "Service flagguard: 4317 grpc, 4318 http, 8080 api", str(svc_ports))
    check(all(p["targetPort"] in ports for p in headless["spec"]["ports"]), "Service flagguard-headless: target ports exist")
    probes = {k: c.get(k, {}).get("httpGet", {}) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    check(probes["livenessProbe"].get("path") == "/healthz" and probes["readinessProbe"].get("path") == "/readyz",
          "probes: liveness /healthz, readiness /readyz")
    check(all(p.get("port") in ("api", 8080) for p in probes.values() if p), "probes use the api port")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True
          and sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities", {}).get("drop") == ["ALL"],
          "securityContext: runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL")
    check(psc.get("runAsUser") == 10001 and psc.get("fsGroup") == 10001, "securityContext: uid and fsGroup 10001 (the image's user)")
    res = c.get("resources", {})
    check(res.get("requests") and res.get("limits"), "resources: requests and limits")
    args = c.get("args", [])
    grace = duration_seconds(args[args.index("--grace") + 1]) if "--grace" in args else 10
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    check(tgps > grace, f"terminationGracePeriodSeconds ({tgps}) > --grace ({grace:g}s)")
    check(args[:3] == ["serve", "--config", "/etc/flagguard/flagguard.toml"], "args: serve --config /etc/flagguard/flagguard.toml")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    check(all(m["name"] in volumes or m["name"] in claims for m in mounts.values()), "every volumeMount has a volume or claim")
    data_mount = mounts.get("/var/lib/flagguard", {})
    check(data_mount.get("name") in claims, "/var/lib/flagguard is on the volumeClaimTemplate")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(env.get("FLAGGUARD_DATA_DIR") == "/var/lib/flagguard", "FLAGGUARD_DATA_DIR is the data mount path")
    cfg_mount = mounts.get("/etc/flagguard/flagguard.toml", {})
    cfg_vol = volumes.get(cfg_mount.get("name"), {}).get("configMap", {}).get("name")
    check(cfg_vol == "flagguard-config" and cfg_mount.get("subPath") == "flagguard.toml",
          "the --config file is flagguard-config's flagguard.toml")
    rules_mount = mounts.get("/etc/flagguard/rules", {})
    rules_vol = volumes.get(rules_mount.get("name"), {}).get("configMap", {}).get("name")
    check(rules_vol == "flagguard-rules" and "subPath" not in rules_mount,
          "rules_dir is flagguard-rules mounted as a directory (hot reload)")
    for v in volumes.values():
        if "configMap" in v:
            check(("ConfigMap", v["configMap"]["name"]) in k8s, f"volume {v['name']}: ConfigMap {v['configMap']['name']} defined")
    refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
    check(refs == ["flagguard-secrets"], "envFrom: the flagguard-secrets Secret (secret.example.yaml)", str(refs))
    check(all(str(v).startswith("REPLACE_ME") or str(v).startswith("https://hooks.slack.com/services/REPLACE")
              for v in secret.get("stringData", {}).values()), "secret.example.yaml holds placeholders only")
kust = (yaml_docs.get("deploy/kubernetes/kustomization.yaml") or [{}])[0]
res = kust.get("resources", [])
check(res and all(os.path.exists(os.path.join(deploy, "kubernetes", r)) for r in res),
      "kustomization.yaml: every resource exists", str(res))
check("secret.example.yaml" not in res, "kustomization.yaml: does not apply the example Secret")
if kubectl:
    r = subprocess.run([kubectl, "kustomize", os.path.join(deploy, "kubernetes")], capture_output=True, text=True)
    built = [d for d in yaml.safe_load_all(r.stdout) if d] if r.returncode == 0 else []
    check(r.returncode == 0 and len(built) == 5, f"kubectl kustomize deploy/kubernetes: {len(built)} objects",
          r.stderr.strip())
else:
    skip("kubectl kustomize: kubectl not installed")


# ---------------------------------------------------------------------------------------------
print("== Helm chart (not rendered: no helm here)")
chart_dir = os.path.join(deploy, "helm", "flagguard")
chart = (yaml_docs.get("deploy/helm/flagguard/Chart.yaml") or [{}])[0]
check(chart.get("apiVersion") == "v2" and chart.get("name") == "flagguard" and chart.get("version"),
      "Chart.yaml: apiVersion v2, name, version")
tdir = os.path.join(chart_dir, "templates")
templates = {n: read(os.path.join(tdir, n)) for n in sorted(os.listdir(tdir))}
defined = set()
for text in templates.values():
    defined |= set(re.findall(r'\{\{-?\s*define\s+"([^"]+)"', text))


def values_has(path):
    node = helm_values
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


for name, text in templates.items():
    actions = re.findall(r"\{\{-?(.*?)-?\}\}", text, re.S)
    # Strip comments, then look at what each action uses.
    actions = [a for a in actions if not a.strip().startswith("/*")]
    used = set()
    for a in actions:
        for m in re.finditer(r"(?<![\w$])\$?\.Values((?:\.\w+)+)", a):
            used.add(tuple(m.group(1).strip(".").split(".")))
    unknown = sorted(".".join(p) for p in used if not values_has(p))
    check(not unknown, f"templates/{name}: every .Values path exists in values.yaml ({len(used)} used)", ", ".join(unknown))
    includes = set(re.findall(r'(?:include|template)\s+"([^"]+)"', text))
    check(includes <= defined, f"templates/{name}: every include is defined", ", ".join(sorted(includes - defined)))
    opens = sum(1 for a in actions if re.match(r"\s*(if|with|range|define|block)\b", a))
    ends = sum(1 for a in actions if re.match(r"\s*end\b", a))
    check(opens == ends, f"templates/{name}: {opens} block(s) opened, {ends} closed")
    check(text.count("{{") == text.count("}}"), f"templates/{name}: braces balance")
try:
    g, t = duration_seconds(helm_values.get("grace")), helm_values.get("terminationGracePeriodSeconds")
    check(isinstance(t, int) and t > g, f"values: terminationGracePeriodSeconds ({t}) > grace ({g:g}s)")
except (ValueError, KeyError, TypeError) as e:
    fail(f"values: grace is not a duration ({e})")
sts_t = templates.get("statefulset.yaml", "")
# One replica unless cluster mode is on (replicas share PostgreSQL and one fenced leader).
check("replicas: {{ if .Values.cluster.enabled }}{{ .Values.cluster.replicas }}{{ else }}1{{ end }}" in sts_t
      and "Values.replicas" not in sts_t,
      "templates/statefulset.yaml: replicas 1, or cluster.replicas in cluster mode")
check(helm_values.get("cluster", {}).get("enabled") is False,
      "values: cluster mode is off by default (one process, SQLite)")
vct = sts_t.split("volumeClaimTemplates:", 1)[-1]
check("flagguard.labels" not in vct, "templates/statefulset.yaml: no chart-version labels in volumeClaimTemplates (immutable)")


# ---------------------------------------------------------------------------------------------
print("== Dockerfile")
docker_dir = os.path.join(deploy, "docker")
dockerfile = read(os.path.join(docker_dir, "Dockerfile"))
lines, buf = [], ""
for line in dockerfile.splitlines():
    if line.lstrip().startswith("#") and not buf:
        continue
    buf += line.rstrip("\\") + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
froms = [a for i, a in instr if i == "FROM"]
check(len(froms) == 2 and re.match(r"rust:\$\{RUST_VERSION\}-bookworm|rust:1\.\d+(\.\d+)?-bookworm", froms[0].split()[0])
      and froms[1].split()[0] == "debian:bookworm-slim", "two stages: rust:1.x-bookworm builder, debian:bookworm-slim runtime", str(froms))
arg = re.search(r"^ARG RUST_VERSION=(\S+)", dockerfile, re.M)
msrv = re.search(r'^rust-version\s*=\s*"([^"]+)"', read(os.path.join(root, "Cargo.toml")), re.M)
if arg and msrv:
    check(tuple(map(int, arg.group(1).split("."))) >= tuple(map(int, msrv.group(1).split("."))),
          f"RUST_VERSION {arg.group(1)} >= Cargo.toml rust-version {msrv.group(1)}")
check("cargo build --release --locked" in dockerfile, "builder runs cargo build --release --locked")
runtime = dockerfile.split("FROM debian:bookworm-slim", 1)[-1]
check(re.search(r"apt-get install -y --no-install-recommends ca-certificates\s*\\?\s*\n", runtime) is not None,
      "runtime installs ca-certificates only")
users = [a for i, a in instr if i == "USER"]
check(users and users[-1].split(":")[0] == "10001", "runs as uid 10001 (numeric, for runAsNonRoot)", str(users))
check(any(i == "WORKDIR" and a == "/var/lib/flagguard" for i, a in instr[-12:]), "runtime WORKDIR /var/lib/flagguard")
exposed = set(" ".join(a for i, a in instr if i == "EXPOSE").split())
check(exposed == {"4317", "4318", "8080"}, "EXPOSE 4317 4318 8080", str(exposed))
check(not any(i == "HEALTHCHECK" for i, _ in instr), "no HEALTHCHECK (probes)")
for which, want in (("ENTRYPOINT", ["flagguard"]), ("CMD", ["serve", "--config", "/etc/flagguard/flagguard.toml"])):
    got = [a for i, a in instr if i == which]
    try:
        value = json.loads(got[-1]) if got else None
    except ValueError:
        value = None
    check(value == want, f"{which} {json.dumps(want)} (exec form)", str(got))

ignore_path = os.path.join(docker_dir, "Dockerfile.dockerignore")
patterns = []
for line in read(ignore_path).splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
        patterns.append((line.startswith("!"), line.lstrip("!").strip("/")))


def glob_re(p):
    out, i = "", 0
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path):
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, p in patterns:
        if any(glob_re(p).match(x) for x in prefixes):
            result = not negate
    return result


for path in ("Cargo.toml", "Cargo.lock", "src/main.rs", "src/api/dashboard/app.js", "benches", "deploy/docker/flagguard.toml"):
    if os.path.exists(os.path.join(root, path)):
        check(not ignored(path), f"build context keeps {path}")
for path in ("target", ".git", "tests/clients/node/node_modules", "data/flagguard.db"):
    check(ignored(path), f"build context drops {path}")
for i, a in instr:
    if i == "COPY" and "--from=" not in a:
        words = [w for w in a.split() if not w.startswith("--")]
        for src in words[:-1]:
            if src == ".":
                continue
            check(os.path.exists(os.path.join(root, src)) and not ignored(src), f"COPY source {src} exists and is in the context")
check(not os.path.exists(os.path.join(docker_dir, ".dockerignore")),
      "no deploy/docker/.dockerignore (it would never be read; Dockerfile.dockerignore is)")
if hadolint:
    r = subprocess.run([hadolint, "--no-color", os.path.join(docker_dir, "Dockerfile")], capture_output=True, text=True)
    check(r.returncode == 0, "hadolint deploy/docker/Dockerfile", (r.stdout + r.stderr).strip())
else:
    skip("hadolint: not installed (optional)")


# ---------------------------------------------------------------------------------------------
print("== systemd unit")
unit_path = os.path.join(deploy, "systemd", "flagguard.service")
unit_text = read(unit_path)
unit = {}
for line in unit_text.splitlines():
    line = line.strip()
    if line and not line.startswith(("#", ";", "[")) and "=" in line:
        k, v = line.split("=", 1)
        unit.setdefault(k.strip(), []).append(v.strip())
want = {
    "DynamicUser": "yes", "StateDirectory": "flagguard", "ConfigurationDirectory": "flagguard",
    "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
    "Restart": "on-failure", "Environment": "FLAGGUARD_DATA_DIR=/var/lib/flagguard",
}
for k, v in want.items():
    check(v in unit.get(k, []), f"{k}={v}", str(unit.get(k)))
check("@system-service" in unit.get("SystemCallFilter", []), "SystemCallFilter=@system-service")
check(any(e.lstrip("-") == "/etc/flagguard/flagguard.env" for e in unit.get("EnvironmentFile", [])),
      "EnvironmentFile=/etc/flagguard/flagguard.env (FLAG_API_TOKEN)")
exec_start = shlex.split(unit.get("ExecStart", [""])[0])
check(exec_start[:4] == ["/usr/local/bin/flagguard", "serve", "--config", "/etc/flagguard/flagguard.toml"],
      "ExecStart=/usr/local/bin/flagguard serve --config /etc/flagguard/flagguard.toml", " ".join(exec_start))
grace = duration_seconds(exec_start[exec_start.index("--grace") + 1]) if "--grace" in exec_start else 10
stop = duration_seconds(unit.get("TimeoutStopSec", ["90s"])[0])
check(stop > grace, f"TimeoutStopSec ({stop:g}s) > --grace ({grace:g}s)")
if systemd_analyze:
    unit_dir = os.path.join(work, "systemd")
    os.makedirs(unit_dir, exist_ok=True)
    copy = os.path.join(unit_dir, "flagguard.service")
    with open(copy, "w") as f:
        f.write(re.sub(r"^ExecStart=/usr/local/bin/flagguard", "ExecStart=/bin/true", unit_text, flags=re.M))
    r = subprocess.run([systemd_analyze, "verify", "--man=no", copy], capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip().replace(copy, rel(unit_path))
    # Lines about the host, not the unit (no systemd as PID 1 in containers, etc.).
    noise = re.compile(r"Failed to (connect to|open) (bus|/dev/kmsg)|System has not been booted with systemd|"
                       r"cannot be run in a chroot|Running in chroot|Operation not permitted")
    relevant = [l for l in out.splitlines() if l.strip() and not noise.search(l)]
    check(r.returncode == 0 and not relevant,
          "systemd-analyze verify (copy with ExecStart=/bin/true)", "\n      " + "\n      ".join(relevant or [f"exit {r.returncode}"]))
    r = subprocess.run([systemd_analyze, "security", "--offline=true", "--no-pager", copy], capture_output=True, text=True)
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+) (\S+)", r.stdout + r.stderr)
    if overall:
        check(float(overall.group(1)) <= 2.0, f"systemd-analyze security --offline: exposure {overall.group(1)} {overall.group(2)} (<= 2.0)")
    else:
        skip("systemd-analyze security --offline: not supported here")
else:
    skip("systemd-analyze verify: systemd-analyze not installed")


# ---------------------------------------------------------------------------------------------
print("== OpenTelemetry Collector configuration")
col_path = os.path.join(deploy, "collector", "otel-collector.yaml")
col_text = read(col_path)
col = (yaml_docs.get("deploy/collector/otel-collector.yaml") or [{}])[0]
m = re.search(r"^(\s*)# BEGIN flagguard-filter-example\n(.*?)^\s*# END flagguard-filter-example", col_text, re.S | re.M)
example = {}
if check(m is not None, "filter example block present (BEGIN/END markers)"):
    indent = m.group(1)
    body = "\n".join(re.sub(r"^" + indent + r"# ?", "", l) if l.strip() else "" for l in m.group(2).splitlines())
    try:
        example = yaml.safe_load(body) or {}
        check(set(example) == {"transform/flagguard_mark", "filter/flagguard"},
              "filter example parses once uncommented", str(sorted(example)))
    except yaml.YAMLError as e:
        fail(f"filter example does not parse once uncommented: {e}")
kinds = {"receivers": set(col.get("receivers", {})), "processors": set(col.get("processors", {})),
         "exporters": set(col.get("exporters", {}))}
pipelines = col.get("service", {}).get("pipelines", {})
for name, p in pipelines.items():
    for kind in ("receivers", "processors", "exporters"):
        unknown = [c for c in p.get(kind, []) if c not in kinds[kind]]
        check(not unknown, f"pipeline {name}: {kind} defined", str(unknown))
check(set(col.get("service", {}).get("extensions", [])) <= set(col.get("extensions", {})), "service extensions defined")
fg = {n: p for n, p in pipelines.items() if "otlp/flagguard" in p.get("exporters", [])}
check({n.split("/")[0] for n in fg} == {"traces", "logs"}, "traces and logs pipelines export to flagguard", str(sorted(fg)))
check(all("tail_sampling" not in p.get("processors", []) for p in fg.values()), "no flagguard pipeline tail-samples")
check(all(set(p.get("exporters", [])) == {"otlp/flagguard"} for p in fg.values()), "flagguard pipelines export to flagguard only")
backend = {n: p for n, p in pipelines.items() if "otlp/backend" in p.get("exporters", [])}
check({n.split("/")[0] for n in backend} == {"traces", "logs"}, "traces and logs pipelines export to the backend")
check(any("tail_sampling" in p.get("processors", []) for n, p in backend.items() if n.startswith("traces")),
      "the backend traces pipeline tail-samples")
fgx = col.get("exporters", {}).get("otlp/flagguard", {})
check(str(fgx.get("endpoint", "")).endswith(":4317") and fgx.get("tls", {}).get("insecure") is True,
      "otlp/flagguard: port 4317, plaintext")
for line in re.findall(r"^\s*# processors: (\[.*\])\s*$", col_text, re.M):
    listed = yaml.safe_load(line)
    unknown = [c for c in listed if c not in kinds["processors"] and c not in example]
    check(not unknown, f"commented pipeline processors {line} are all defined", str(unknown))

sharded_path = "deploy/collector/otel-collector-sharded.yaml"
sharded = (yaml_docs.get(sharded_path) or [{}])[0]
if check(bool(sharded), f"{sharded_path} parses"):
    lb = sharded.get("exporters", {}).get("loadbalancing/flagguard", {})
    check(lb.get("routing_key") == "traceID", "sharded: the loadbalancing exporter routes by traceID")
    check(str(lb.get("resolver", {}).get("dns", {}).get("port")) == "4317", "sharded: to the shards' OTLP gRPC port")
    sp = sharded.get("service", {}).get("pipelines", {})
    routed = {n.split("/")[0] for n, p in sp.items() if p.get("exporters") == ["loadbalancing/flagguard"]}
    check(routed == {"traces", "logs"}, "sharded: traces and logs both routed by trace ID", str(sorted(routed)))
    check(all("tail_sampling" not in p.get("processors", []) for p in sp.values()), "sharded: no tail sampling")
    for name, p in sp.items():
        for kind in ("receivers", "processors", "exporters"):
            unknown = [c for c in p.get(kind, []) if c not in sharded.get(kind, {})]
            check(not unknown, f"sharded pipeline {name}: {kind} defined", str(unknown))


OTTL_PATHS = {
    "span": {"name", "kind", "attributes", "parent_span_id", "span_id", "trace_id", "status", "resource",
             "instrumentation_scope", "start_time_unix_nano", "end_time_unix_nano", "trace_state"},
    "spanevent": {"name", "attributes", "time_unix_nano", "span", "resource", "instrumentation_scope"},
    "log": {"event_name", "attributes", "body", "severity_text", "severity_number", "trace_id", "span_id",
            "resource", "instrumentation_scope", "time_unix_nano", "flags"},
}
ENUMS = {"SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
         "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER", "STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"}
FUNCS = {"set", "SpanID", "TraceID", "IsMatch", "Len"}
KEYWORDS = {"and", "or", "not", "where", "nil", "true", "false"}


def ottl_problems(expr, context):
    problems = []
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if no_strings.count('"') % 2:
        problems.append("unbalanced quotes")
    depth = 0
    for ch in no_strings:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0 or no_strings.count("[") != no_strings.count("]"):
        problems.append("unbalanced brackets")
    for word in re.findall(r"(?<![\w.\"])([A-Za-z_][\w.]*)", re.sub(r'"[^"]*"', '""', no_strings)):
        head = word.split(".")[0]
        if word in ENUMS or word in KEYWORDS or word in FUNCS or re.fullmatch(r"0x[0-9a-fA-F]+", word):
            continue
        if head == "span" and context == "spanevent":
            if word.split(".")[1] not in OTTL_PATHS["span"]:
                problems.append(f"unknown path {word}")
        elif head not in OTTL_PATHS[context]:
            problems.append(f"unknown path or symbol {word}")
    if re.search(r"\b(and|or)\s*$|^\s*(and|or)\b", no_strings):
        problems.append("dangling and/or")
    return problems


if example:
    for stmt_group in example.get("transform/flagguard_mark", {}).get("trace_statements", []):
        for stmt in stmt_group.get("statements", []):
            probs = ottl_problems(stmt, stmt_group.get("context"))
            check(not probs, f"OTTL transform ({stmt_group.get('context')}): {stmt[:60]}…", "; ".join(probs))
    flt = example.get("filter/flagguard", {})
    check(flt.get("error_mode") == "ignore", "filter example: error_mode ignore (fails open)")
    for signal, ctx_map in (("traces", {"span": "span", "spanevent": "spanevent"}), ("logs", {"log_record": "log"})):
        for key, ctx in ctx_map.items():
            for cond in flt.get(signal, {}).get(key, []):
                probs = ottl_problems(cond, ctx)
                check(not probs, f"OTTL filter {signal}.{key}: {' '.join(cond.split())[:60]}…", "; ".join(probs))
    span_conds = " ".join(flt.get("traces", {}).get("span", []))
    for must in ("SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER", '"feature_flag.evaluation"', "flagguard.flag_event"):
        check(must in span_conds, f"span filter keeps what attribution needs: {must}")


# ---------------------------------------------------------------------------------------------
print("== flagguard check (the daemon's own validation)")
# The shell part above made sure there is a binary.
print(f"      using {flagguard_bin} (built {__import__('time').ctime(os.path.getmtime(flagguard_bin))};"
      " a binary older than src/ may disagree with it)")
env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FLAG_API_TOKEN": "check-deploy-placeholder",
       "FLAGGUARD_OPERATOR_TOKEN": "check-deploy-operator-placeholder",
       "FLAGGUARD_ADMIN_TOKEN": "check-deploy-admin-placeholder",
       "FLAGGUARD_OTLP_TOKEN": "check-deploy-otlp-placeholder", "RUST_LOG": "error"}
empty = os.path.join(work, "no-rules")
os.makedirs(empty, exist_ok=True)
pairs = {
    "deploy/systemd/flagguard.toml.example": None,
    "deploy/docker/flagguard.toml": None,
    "ConfigMap flagguard-config (kubernetes)": "kubernetes",
    "values.yaml config (helm)": "helm",
}
for n, (label, rules_key) in enumerate(pairs.items()):
    if label not in parsed_configs:
        continue
    cfg = os.path.join(work, f"config-{n}.toml")
    with open(cfg, "w") as f:
        f.write(parsed_configs[label][0])
    # Every ${VAR} the configuration names gets a placeholder (at least 16 characters, as
    # tokens must be): the check is about the file, not about this machine's secrets.
    run_env = dict(env)
    for var in re.findall(r"\$\{(\w+)\}", parsed_configs[label][0]):
        run_env.setdefault(var, f"check-deploy-placeholder-{var.lower()}")
    rules_dir = empty
    if rules_key:
        rules_dir = os.path.join(work, f"rules-{n}")
        os.makedirs(rules_dir, exist_ok=True)
        for name, text in rule_sets[rules_key].items():
            with open(os.path.join(rules_dir, name), "w") as f:
                f.write(text)
    try:
        r = subprocess.run([flagguard_bin, "check", "--config", cfg, rules_dir], env=run_env,
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        fail(f"flagguard check {label}: cannot run the binary ({e})")
        continue
    out = (r.stdout + r.stderr).strip().replace(work, "$TMP")
    check(r.returncode == 0, f"flagguard check {label}" + (f" + {rules_key} rules" if rules_key else ""),
          f"exit {r.returncode}\n      " + out.replace("\n", "\n      "))

print()
print(f"check-deploy: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
PY

"""Offline checks for deploy/ (run through deploy/validate.sh, which sets up the tools).

What the checks compare against comes from the code, not from lists kept here: the binary's own
view of each rendered configuration (`event-manager config check`), the shipped topic rules
(topics/), the metric definitions and label values in src/, the routes in src/api/.

Subcommands:
  sync-rules [--write]        PrometheusRule embeds deploy/prometheus/rules.yml (or regenerate it)
  k8s VERSION OUT FILE..      validate built-in kinds with kubernetes-validate (strict); write the
                              custom resources to OUT (JSON) for crds.mjs
  dashboard-rules OUT         write the dashboard's queries as recording rules to OUT (for promtool)
  topics                      the base's topic-rule copies are topics/, all of them listed
  metrics                     metric names and label values of alerts and dashboard exist in src/
  alerts                      every alert has a runbook section and a promtool test that fires it
  rendering BIN NAME FILE     one rendered kustomization against the binary's view of its config
  planted BIN RENDERED NODE   plant one defect per check in copies and see each check reject it
"""

import base64
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
SRC = REPO / "src"
TOPICS = REPO / "topics"
BASE = DEPLOY / "kustomize" / "base"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rules.test.yml"
PROMETHEUS_RULE = BASE / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "event-manager-dashboard.json"
README = DEPLOY / "README.md"

# Kinds validated by crds.mjs against the @kubernetes-models JSON schemas.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# Configuration keys naming files the pod mounts from Secrets (file_source checks where they come
# from); `config check` reads them, so it runs with stand-ins of the same kind: a password, and a
# certificate and key made by the openssl CLI.
FILE_KEYS = {
    "EM_KAFKA__SASL__PASSWORD_FILE": "password",
    "EM_KAFKA__TLS__CA_FILE": "cert.pem",
    "EM_KAFKA__TLS__CERT_FILE": "cert.pem",
    "EM_KAFKA__TLS__KEY_FILE": "key.pem",
}

# The Secret `event-manager` is created outside the repository in real environments; its keys
# (deploy/README.md, "Configure") are stood in for when a rendering does not contain it.
EXTERNAL_SECRET_KEYS = ("EM_DATABASE__URL", "EM_AUTH__HS256_SECRET")

# One replica's connections beyond its pools' sizes: a terminator run takes its session out of
# the ingestion pool (deadpool `Object::take`, src/terminator/mod.rs), which may then open another.
TERMINATOR_SESSIONS = 1
# Seconds left after preStop + shutdown grace for the process to exit before SIGKILL.
SHUTDOWN_MARGIN = 5
# librdkafka's SASL mechanism → KEDA's kafka scaler `sasl` value.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
# Labels Prometheus adds to every scraped series (ServiceMonitor targets).
TARGET_LABELS = {"job", "namespace", "pod", "instance", "service", "endpoint", "container"}

PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by `deploy/validate.sh --write`: edit that file,
# not this one (deploy/validate.sh fails when they differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: event-manager
  labels:
    app.kubernetes.io/name: event-manager
    app.kubernetes.io/component: consumer
spec:
"""


class Failures:
    """Collects check outcomes; prints them unless quiet (the planted-defect runs)."""

    def __init__(self, quiet=False):
        self.items = []
        self.quiet = quiet

    def check(self, ok, what):
        if not self.quiet:
            print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.items.append(what)
        return ok

    def note(self, what):
        if not self.quiet:
            print(f"  note {what}")

    def exit(self):
        sys.exit(1 if self.items else 0)


# --- PrometheusRule ------------------------------------------------------------------------------


def expected_prometheus_rule():
    text = RULES.read_text()
    start = re.search(r"^groups:", text, re.M)
    if start is None:
        raise SystemExit(f"{RULES}: no top-level `groups:`")
    body = text[start.start():]
    indented = "".join(("  " + line) if line.strip() else line for line in body.splitlines(True))
    return PROMETHEUS_RULE_HEADER + indented


def sync_rules(args):
    expected = expected_prometheus_rule()
    if "--write" in args:
        PROMETHEUS_RULE.write_text(expected)
        print(f"  wrote {PROMETHEUS_RULE.relative_to(REPO)}")
        return
    f = Failures()
    actual = PROMETHEUS_RULE.read_text() if PROMETHEUS_RULE.exists() else ""
    f.check(actual == expected,
            f"{PROMETHEUS_RULE.relative_to(REPO)} is rules.yml verbatim under spec: "
            "(fix: deploy/validate.sh --write)")
    f.exit()


# --- Kubernetes schemas --------------------------------------------------------------------------


def k8s_check(version, out, files, f):
    import kubernetes_validate

    custom = []
    for name in files:
        for doc in yaml.safe_load_all(Path(name).read_text()):
            if not doc:
                continue
            kind, api = doc.get("kind"), doc.get("apiVersion")
            label = f"{name}: {kind} {doc.get('metadata', {}).get('name')}"
            if (api, kind) in CUSTOM_KINDS:
                custom.append({"source": label, "object": doc})
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                f.check(True, f"{label} (Kubernetes {version}, strict)")
            except kubernetes_validate.SchemaNotFoundError:
                f.check(False, f"{label}: no schema for {api} {kind} in Kubernetes {version}")
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                f.check(False, f"{label} (Kubernetes {version}): {path}: {e.message}")
    if out is not None:
        Path(out).write_text(json.dumps(custom))


def k8s(args):
    f = Failures()
    k8s_check(args[0], args[1], args[2:], f)
    f.exit()


# --- topic rules ---------------------------------------------------------------------------------


def shipped_topics():
    """The rule files the image ships (deploy/Dockerfile copies topics/ to /app/topics)."""
    return {p.name: p.read_text() for p in sorted(TOPICS.glob("*.toml"))}


def topics(_args):
    f = Failures()
    shipped = shipped_topics()
    copies = {p.name: p.read_text() for p in sorted((BASE / "topics").glob("*.toml"))}
    for name in sorted(shipped.keys() | copies.keys()):
        f.check(shipped.get(name) == copies.get(name),
                f"deploy/kustomize/base/topics/{name} equals topics/{name} "
                "(fix: cp topics/*.toml deploy/kustomize/base/topics/)")
    generator = yaml.safe_load((BASE / "kustomization.yaml").read_text())["configMapGenerator"]
    listed = {Path(p).name for g in generator if g["name"] == "event-manager-topics"
              for p in g.get("files", [])}
    f.check(listed == set(shipped),
            f"the event-manager-topics generator lists every topics/*.toml {sorted(listed ^ set(shipped)) or ''}")
    f.exit()


# --- metrics -------------------------------------------------------------------------------------

NAME_ARG = re.compile(r"\b(Opts|HistogramOpts|IntGauge|Gauge|IntCounter|Counter)::new\(\s*")


def helper_calls(before, text, param, named):
    """[(name, label names)] of the calls of the helper whose parameter `param` names the metric:
    the closure or function defined last before the constructor, called with a string matching
    `named` first (or after leading arguments), then the help and the labels."""
    defined = list(re.finditer(r"(?:let\s+(\w+)\s*=\s*\|[^|]*?|fn\s+(\w+)\s*(?:<[^>]*>)?\([^)]*?)\b"
                               + param + r"\s*:", before))
    if not defined:
        return []
    helper = defined[-1].group(1) or defined[-1].group(2)
    calls = re.finditer(r"\b" + helper + r'\((?:[^;"]*?,)?\s*"(' + named + r')",\s*"[^"]*"(?:,\s*&\[([^\]]*)\])?', text)
    return [(c.group(1), set(re.findall(r'"([a-z_]+)"', c.group(2) or ""))) for c in calls]


def metrics_in_code():
    """{metric name: label names} from every constructor in src/. A constructor whose name this
    cannot read fails loudly, so that a new way of naming metrics cannot hide one."""
    metrics, unreadable = {}, []
    for path in sorted(SRC.rglob("*.rs")):
        text = path.read_text()
        for m in NAME_ARG.finditer(text):
            rest = text[m.end():]
            line = text.count("\n", 0, m.start()) + 1
            literal = re.match(r'"(event_manager_[a-z0-9_]+)"', rest)
            # A helper, `let NAME = |param: &str, …|` or `fn NAME(param: &str, …)`, that builds
            # `format!("event_manager_{param}")` (its call sites give the rest of the name,
            # `NAME("x", "help", &["label", …])`) or passes `param` through to `Opts::new(param,
            # …)` (its call sites give the whole name, `NAME("event_manager_x", …)`).
            formatted = re.match(r'format!\(\s*"event_manager_\{(\w+)\}"\s*\)', rest)
            passed = re.match(r'(\w+)\s*[,)]', rest)
            if literal:
                end = rest.find("registry.register")
                labels = re.search(r"&\[([^\]]*)\]", rest[:end if end >= 0 else 600])
                metrics[literal.group(1)] = set(re.findall(r'"([a-z_]+)"', labels.group(1))) if labels else set()
            elif formatted or passed:
                param, prefix, named = ((formatted.group(1), "event_manager_", r"[a-z0-9_]+") if formatted
                                        else (passed.group(1), "", r"event_manager_[a-z0-9_]+"))
                found = helper_calls(text[:m.start()], text, param, named)
                if not found:
                    unreadable.append(f"{path.relative_to(REPO)}:{line}")
                for name, labels in found:
                    metrics[prefix + name] = labels
            else:
                unreadable.append(f"{path.relative_to(REPO)}:{line}")
    return metrics, unreadable


def string_literals_in_code():
    literals = set()
    for path in SRC.rglob("*.rs"):
        literals |= set(re.findall(r'"([^"\\\n]{1,80})"', path.read_text()))
    return literals


def selectors(text):
    """(metric, [(label, op, value)]) for every event_manager_ series selector in PromQL text."""
    for m in re.finditer(r"(event_manager_[a-z0-9_]+)(\{[^}]*\})?", text):
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m.group(2) or "")
        yield m.group(1), matchers


def metrics_check(rules_text, dashboard_text, f):
    known, unreadable = metrics_in_code()
    f.check(not unreadable, f"every metric constructor in src/ has a readable name {unreadable or ''}")
    f.check(len(known) >= 10, f"{len(known)} metrics found in src/")
    literals = string_literals_in_code()
    queries = [("rules.yml", rules_text)]
    try:
        dashboard = json.loads(dashboard_text)
        queries += [(f"dashboard panel {p.get('id')}", t["expr"]) for p in dashboard["panels"]
                    for t in p.get("targets", [])]
    except (json.JSONDecodeError, KeyError) as e:
        f.check(False, f"dashboard readable: {e}")
    problems = set()
    for where, text in queries:
        for series, matchers in selectors(text):
            name, suffix = series, ""
            for s in ("_bucket", "_sum", "_count"):
                if series.endswith(s) and series[: -len(s)] in known:
                    name, suffix = series[: -len(s)], s
            if name not in known:
                problems.add(f"{where}: {series} is not defined in src/")
                continue
            allowed = known[name] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
            for label, op, value in matchers:
                if label not in allowed:
                    problems.add(f"{where}: {name} has no label `{label}`")
                elif label in known[name] and op in ("=", "=~", "!~", "!="):
                    words = value.split("|") if op in ("=~", "!~") else [value]
                    for word in words:
                        # Plain words only; regular expressions (e.g. `5..`) are not values.
                        if re.fullmatch(r"[A-Za-z0-9_/-]+", word) and word not in literals:
                            problems.add(f"{where}: {name}{{{label}=\"{word}\"}}: no such value in src/")
    for p in sorted(problems):
        f.check(False, p)
    f.check(not problems, "metric names, labels and label values of alerts and dashboard are the code's")


def metrics(_args):
    f = Failures()
    metrics_check(RULES.read_text(), DASHBOARD.read_text(), f)
    f.exit()


# --- alerts --------------------------------------------------------------------------------------


def github_anchor(heading):
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def alerts_check(rules, tests, readme, f):
    anchors = {github_anchor(h) for h in re.findall(r"^#+\s+(.*)$", readme, re.M)}
    fired = {t["alertname"] for case in tests.get("tests", []) for t in case.get("alert_rule_test", [])
             if t.get("exp_alerts")}
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            names.append(name)
            runbook = rule.get("annotations", {}).get("runbook", "")
            f.check(runbook.startswith("deploy/README.md#") and runbook.split("#", 1)[1] in anchors,
                    f"{name}: runbook {runbook or '(none)'} is a section of deploy/README.md")
            f.check(name in fired, f"{name}: a promtool test in rules.test.yml makes it fire")
    f.check(len(names) == len(set(names)), "alert names are unique")


def alerts(_args):
    f = Failures()
    alerts_check(yaml.safe_load(RULES.read_text()), yaml.safe_load(RULE_TESTS.read_text()),
                 README.read_text(), f)
    f.exit()


# --- a rendered kustomization --------------------------------------------------------------------


class Rendering:
    def __init__(self, docs):
        self.docs = [d for d in docs if d]

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind, name):
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)

    def secret_data(self, name):
        secret = self.named("Secret", name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        return data


def stand_in(name):
    if name.endswith("DATABASE__URL") or name == "DATABASE_URL":
        return "postgres://validate@localhost:5432/validate"
    return "validate-stand-in-value-of-at-least-32-bytes"


def container_env(rendering, container, f):
    """The container's environment as the kubelet builds it: envFrom in order, then env."""
    env, sources = {}, {}
    for src in container.get("envFrom", []):
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            cm = rendering.named("ConfigMap", src["configMapRef"]["name"])
            data = (cm or {}).get("data", {})
            if cm is None and not src["configMapRef"].get("optional"):
                f.check(False, f"ConfigMap {src['configMapRef']['name']} is rendered")
        else:
            name = src["secretRef"]["name"]
            data = rendering.secret_data(name)
            if data is None:
                data = {key: stand_in(key) for key in EXTERNAL_SECRET_KEYS}
                f.note(f"Secret {name} is supplied outside this rendering: stand-ins for {', '.join(EXTERNAL_SECRET_KEYS)}")
        env.update({prefix + k: v for k, v in data.items()})
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e.get("valueFrom", {})
        if "secretKeyRef" in ref:
            data = rendering.secret_data(ref["secretKeyRef"]["name"]) or {}
            env[e["name"]] = data.get(ref["secretKeyRef"]["key"], stand_in(e["name"]))
            sources[e["name"]] = (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        elif "configMapKeyRef" in ref:
            cm = rendering.named("ConfigMap", ref["configMapKeyRef"]["name"]) or {}
            env[e["name"]] = cm.get("data", {}).get(ref["configMapKeyRef"]["key"], "")
        else:
            env[e["name"]] = "validate-" + re.sub(r"\W", "-", json.dumps(ref))[:40]
    return env, sources


def env_key(name):
    """EM_KAFKA__SASL__MECHANISM → kafka.sasl.mechanism (DATABASE_URL → database.url)."""
    if name == "DATABASE_URL":
        return "database.url"
    return ".".join(part.lower() for part in name[3:].split("__")) if name.startswith("EM_") else None


def file_source(pod, container, path):
    """(Secret name, key) that provides the file at `path` in the container, or None."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume, rel = volumes.get(mount["name"], {}), path[len(prefix):]
        sources = volume.get("projected", {}).get("sources", [])
        if "secret" in volume:
            sources = [{"secret": {"name": volume["secret"]["secretName"],
                                   "items": volume["secret"].get("items")}}]
        for src in sources:
            secret = src.get("secret")
            if not secret:
                continue
            items = secret.get("items")
            if items is None:
                return (secret["name"], rel)
            for item in items:
                if item["path"] == rel:
                    return (secret["name"], item["key"])
    return None


def mounted_configmap(rendering, pod, container, path):
    """(ConfigMap data, subPath) of the mount at `path` in the container, or (None, None)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"].rstrip("/") == path.rstrip("/"):
            cm_name = volumes.get(mount["name"], {}).get("configMap", {}).get("name")
            cm = rendering.named("ConfigMap", cm_name) if cm_name else None
            return (cm or {}).get("data"), mount.get("subPath")
    return None, None


def stand_in_files(tmp, env):
    """`env` with each file of FILE_KEYS replaced by a stand-in in `tmp`."""
    files = {k: v for k, v in env.items() if k in FILE_KEYS and v}
    if not files:
        return env
    stand_ins = Path(tmp) / "stand-ins"
    stand_ins.mkdir()
    (stand_ins / "password").write_text("validate-stand-in-password\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=validate stand-in",
                    "-keyout", str(stand_ins / "key.pem"), "-out", str(stand_ins / "cert.pem")],
                   check=True, capture_output=True)
    return env | {k: str(stand_ins / FILE_KEYS[k]) for k in files}


def run_config_check(binary, config_text, topics, env):
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(config_text)
        (Path(tmp) / "topics").mkdir()
        for name, text in topics.items():
            (Path(tmp) / "topics" / name).write_text(text)
        # The file and the rules where the pod has them mounted, mapped to this directory.
        run_env = {"PATH": os.environ.get("PATH", "")} | stand_in_files(tmp, env) | {
            "EM_CONFIG": str(config), "EM_PIPELINE__TOPICS_DIR": str(Path(tmp) / "topics")}
        out = subprocess.run([binary, "config", "check"], env=run_env, capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr.strip()


def check_config(binary, config_text, topics, env, f):
    """`config check` on the pod's configuration; the report, or None when it fails."""
    code, out, err = run_config_check(binary, config_text, topics, env)
    if not f.check(code == 0, f"`event-manager config check` accepts the configuration {err and '(' + err + ')'}"):
        return None
    return json.loads(out)


def rendering_check(binary, name, rendering, f):
    secrets = rendering.of_kind("Secret")
    if name == "dev":
        f.check(all("event-manager/placeholder" in (s["metadata"].get("annotations") or {}) for s in secrets),
                "every Secret of the dev overlay is marked as a placeholder")
    else:
        f.check(not secrets, f"renders no Secret (real ones come from the secret store) {[s['metadata']['name'] for s in secrets] or ''}")

    deployments = rendering.of_kind("Deployment")
    if not f.check(len(deployments) == 1, "one Deployment"):
        return
    deployment = deployments[0]
    pod = deployment["spec"]["template"]["spec"]
    main = next((c for c in pod["containers"] if c["name"] == "event-manager"), None)
    if not f.check(main is not None, "container `event-manager`"):
        return
    env, secret_refs = container_env(rendering, main, f)

    # The configuration as the pod sees it: EM_CONFIG's file, the rules at pipeline.topics_dir.
    config_path = env.get("EM_CONFIG", "")
    config_data, sub_path = mounted_configmap(rendering, pod, main, config_path)
    config_text = (config_data or {}).get(sub_path or "", None)
    if not f.check(config_text is not None, f"EM_CONFIG ({config_path}) is a mounted ConfigMap file"):
        return
    topics_dir = env.get("EM_PIPELINE__TOPICS_DIR") or tomllib.loads(config_text).get(
        "pipeline", {}).get("topics_dir", "topics")
    topics_data, _ = mounted_configmap(rendering, pod, main, topics_dir)
    f.check(topics_data is not None, f"pipeline.topics_dir ({topics_dir}) is where the topics ConfigMap is mounted")
    topics = {k: v for k, v in (topics_data or {}).items()}
    f.check(topics == shipped_topics(),
            f"the mounted topic rules are the shipped topics/ {sorted(set(topics) ^ set(shipped_topics())) or ''}")
    for init in pod.get("initContainers", []):
        init_env, _ = container_env(rendering, init, Failures(quiet=True))
        differ = sorted(k for k in (set(env) | set(init_env)) - {"EM_KAFKA__CLIENT_ID"}
                        if env_key(k) and env.get(k) != init_env.get(k))
        f.check(not differ, f"init container {init['name']} has the main container's configuration {differ or ''}")

    report = check_config(binary, config_text, topics, env, f)
    if report is None:
        return

    # Ports and probes.
    port = report["http_port"]
    http = [p for p in main.get("ports", []) if p["containerPort"] == port]
    f.check(len(http) == 1 and len(main["ports"]) == 1,
            f"the container's one port is the binary's http.bind port {port}")
    port_name = http[0].get("name") if http else None
    routes = set(re.findall(r'\.route\(\s*"([^"]+)"', "".join(p.read_text() for p in (SRC / "api").rglob("*.rs"))))
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = main.get(probe, {}).get("httpGet", {})
        f.check(get.get("port") in (port, port_name) and get.get("path") == path and path in routes,
                f"{probe} is GET {path} on port {port_name or port} (a route of src/api/)")
    for service in rendering.of_kind("Service"):
        for p in service["spec"]["ports"]:
            f.check(p.get("targetPort") in (port, port_name), f"Service {service['metadata']['name']} port {p['name']} targets the http port")
    service_ports = {p["name"] for s in rendering.of_kind("Service") for p in s["spec"]["ports"]}
    for monitor in rendering.of_kind("ServiceMonitor"):
        for e in monitor["spec"]["endpoints"]:
            f.check(e.get("port") in service_ports and e.get("path") in routes,
                    f"ServiceMonitor scrapes {e.get('path')} on Service port {e.get('port')}")
    policies = rendering.of_kind("NetworkPolicy")
    f.check(bool(policies), "a NetworkPolicy limits ingress")
    for policy in policies:
        spec = policy["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selects = all(labels.get(k) == v for k, v in spec["podSelector"].get("matchLabels", {}).items())
        ports = [p.get("port") for rule in spec.get("ingress", []) for p in rule.get("ports") or [None]]
        f.check(selects and "Ingress" in spec.get("policyTypes", []) and bool(ports)
                and all(p in (port, port_name) for p in ports),
                f"NetworkPolicy {policy['metadata']['name']} admits ingress to the http port only {ports}")

    # Shutdown: preStop, then the one shutdown grace, within terminationGracePeriodSeconds.
    grace = report["shutdown_grace_seconds"]
    pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    termination = pod.get("terminationGracePeriodSeconds", 30)
    f.check(termination >= pre_stop + grace + SHUTDOWN_MARGIN,
            f"terminationGracePeriodSeconds {termination} >= preStop {pre_stop} + shutdown_grace {grace:g} + {SHUTDOWN_MARGIN}")
    f.check("replicas" not in deployment["spec"], "the Deployment leaves replicas to the ScaledObject")
    f.check(deployment["spec"].get("progressDeadlineSeconds", 600) >= 1800,
            f"progressDeadlineSeconds {deployment['spec'].get('progressDeadlineSeconds', 600)} covers the slowest migration (>= 1800, see deployment.yaml)")

    # KEDA.
    scaled = [s for s in rendering.of_kind("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]]
    if not f.check(len(scaled) == 1, "one ScaledObject scales the Deployment"):
        return
    spec = scaled[0]["spec"]
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    f.check(spec["scaleTargetRef"].get("envSourceContainerName") == main["name"],
            "KEDA reads the `event-manager` container's environment")
    f.check(not (low > 0 and "cooldownPeriod" in spec),
            "no cooldownPeriod: with minReplicaCount > 0 it does nothing (HPA behavior.scaleDown paces scale-in)")
    f.check("scaleDown" in spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {}),
            "scale-in is paced by advanced.horizontalPodAutoscalerConfig.behavior.scaleDown")
    fallback = spec.get("fallback")
    f.check(fallback is None or low <= fallback["replicas"] <= high,
            f"fallback replicas within [{low}, {high}]")

    rules = report["topic_rules"]
    named = {r["name"] for r in rules if r["name"]}
    triggers = spec.get("triggers", [])
    trigger_topics = [t.get("metadata", {}).get("topic") for t in triggers]
    kafka = tomllib.loads(config_text).get("kafka", {})
    protocol = env.get("EM_KAFKA__SECURITY_PROTOCOL") or kafka.get("security_protocol", "plaintext")
    mechanism = env.get("EM_KAFKA__SASL__MECHANISM") or kafka.get("sasl", {}).get("mechanism")
    # What each trigger must carry to connect as the pods do.
    want_sasl = KEDA_SASL.get(mechanism, f"(no KEDA name for {mechanism})") if protocol.startswith("sasl_") else "none"
    want_tls = "enable" if protocol.endswith("ssl") else "disable"
    want_auth = {}
    if protocol.startswith("sasl_"):
        want_auth["username"] = secret_refs.get("EM_KAFKA__SASL__USERNAME")
        want_auth["password"] = secret_refs.get("EM_KAFKA__SASL__PASSWORD") or file_source(
            pod, main, env.get("EM_KAFKA__SASL__PASSWORD_FILE", ""))
    for param, key in (("ca", "CA_FILE"), ("cert", "CERT_FILE"), ("key", "KEY_FILE")):
        if env.get(f"EM_KAFKA__TLS__{key}"):
            want_auth[param] = file_source(pod, main, env[f"EM_KAFKA__TLS__{key}"])
    problems = {}

    def problem(what, topic):
        problems.setdefault(what, []).append(topic)

    for trigger, topic in zip(triggers, trigger_topics):
        meta = trigger.get("metadata", {})
        if trigger.get("type") != "kafka":
            problem("is a kafka trigger", topic)
            continue
        if (env.get(meta.get("bootstrapServersFromEnv")) != report["kafka_bootstrap_servers"]
                or env.get(meta.get("consumerGroupFromEnv")) != report["kafka_group_id"]):
            problem("reads the brokers and group id the binary uses from the pod's environment", topic)
        if meta.get("limitToPartitionsWithLag") != "true" or meta.get("allowIdleConsumers", "false") == "true":
            problem("asks for no more pods than partitions with lag (limitToPartitionsWithLag)", topic)
        if not (topic in named or any(r["pattern"] and re.fullmatch(r["pattern"].strip("^$"), topic or "")
                                      for r in rules)):
            problem("names a topic that a mounted rule reads", topic)
        if meta.get("sasl", "none") != want_sasl or meta.get("tls", "disable") != want_tls:
            problem(f"has sasl {want_sasl} and tls {want_tls}, as security_protocol {protocol} and mechanism {mechanism}", topic)
        auth = trigger.get("authenticationRef", {}).get("name")
        if want_auth or auth:
            ta = rendering.named("TriggerAuthentication", auth or "")
            refs = {r["parameter"]: (r["name"], r["key"]) for r in (ta or {}).get("spec", {}).get("secretTargetRef", [])}
            if refs != want_auth:
                problem(f"authenticates with the pods' credentials {want_auth} (TriggerAuthentication {auth}: {refs})", topic)
    checked = ("is a kafka trigger", "reads the brokers and group id the binary uses from the pod's environment",
               "asks for no more pods than partitions with lag (limitToPartitionsWithLag)",
               "names a topic that a mounted rule reads",
               f"has sasl {want_sasl} and tls {want_tls}, as security_protocol {protocol} and mechanism {mechanism}")
    for what in checked:
        f.check(what not in problems, f"every lag trigger {what} {problems.get(what) or ''}")
    for what, topics_failing in problems.items():
        if what not in checked:
            f.check(False, f"every lag trigger {what} {topics_failing}")
    if want_auth and not any(w.startswith("authenticates") for w in problems):
        f.check(True, f"every lag trigger authenticates with the pods' credentials ({', '.join(sorted(want_auth))})")
    f.check(set(trigger_topics) >= named and len(trigger_topics) == len(set(trigger_topics)),
            f"one lag trigger per topic a mounted rule names {sorted(named - set(trigger_topics)) or ''}")
    for r in rules:
        if r["pattern"]:
            f.note(f"rule {r['pattern']} ({r['file']}) subscribes by pattern: add a trigger per concrete topic in an overlay")

    # EventDB connections at the largest replica count, during a rolling update.
    strategy = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
    surge, unavailable = strategy.get("maxSurge", 0), strategy.get("maxUnavailable", 1)
    if f.check(isinstance(surge, int) and isinstance(unavailable, int), "rolling update sizes are pod counts"):
        per_pod = report["database_connections"] + (TERMINATOR_SESSIONS if report["terminator_enabled"] else 0)
        pods = high + surge + unavailable
        budget = int((deployment["metadata"].get("annotations") or {}).get("event-manager/eventdb-connections", 0))
        f.check(pods * per_pod <= budget,
                f"EventDB connections: ({high} + {surge + unavailable}) pods x {per_pod} (the binary's pools "
                f"{report['database_connections']} + {TERMINATOR_SESSIONS} terminator) = {pods * per_pod} <= "
                f"event-manager/eventdb-connections {budget}")

    for bridge in report["webhook_topics"]:
        f.check(bridge["read_by_rule"], f"webhook bridge {bridge['bridge']} produces to {bridge['topic']}, which a mounted rule reads")


def rendering_cmd(args):
    binary, name, path = args
    f = Failures()
    rendering_check(binary, name, Rendering(yaml.safe_load_all(Path(path).read_text())), f)
    f.exit()


# --- planted defects -----------------------------------------------------------------------------


def planted(args):
    """Each check must reject a copy with one defect planted, and say what it is."""
    binary, rendered_dir, node = args[0], Path(args[1]), args[2]
    tools = Path(args[3])
    base = list(yaml.safe_load_all((rendered_dir / "production.yaml").read_text()))

    def doc(docs, kind):
        return next(d for d in docs if d and d["kind"] == kind)

    def crd(docs):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as out:
            json.dump([{"source": "planted", "object": d} for d in docs if d and
                       (d["apiVersion"], d["kind"]) in CUSTOM_KINDS], out)
        res = subprocess.run([node, str(tools / "npm" / "crds.mjs"), out.name], capture_output=True, text=True)
        os.unlink(out.name)
        return res.returncode == 0, res.stdout

    def k8s_strict(docs):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
            yaml.safe_dump_all([d for d in docs if d], out)
        f = Failures(quiet=True)
        k8s_check("1.30.0", None, [out.name], f)
        os.unlink(out.name)
        return not f.items, "\n".join(f.items)

    def rendered(docs):
        f = Failures(quiet=True)
        rendering_check(binary, "production", Rendering(docs), f)
        return not f.items, "\n".join(f.items)

    def monitoring(rules_text):
        f = Failures(quiet=True)
        metrics_check(rules_text, DASHBOARD.read_text(), f)
        alerts_check(yaml.safe_load(rules_text), yaml.safe_load(RULE_TESTS.read_text()), README.read_text(), f)
        return not f.items, "\n".join(f.items)

    def plant(mutate):
        docs = copy.deepcopy(base)
        mutate(docs)
        return docs

    def rename(mapping, old, new):
        mapping[new] = mapping.pop(old)

    def config_map(docs, prefix):
        return next(d for d in docs if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix))

    def set_config(docs, old, new):
        cm = config_map(docs, "event-manager-config")
        cm["data"]["config.toml"] = cm["data"]["config.toml"].replace(old, new)

    rules_text = RULES.read_text()
    cases = [
        ("ScaledObject field typo maxReplicaCont", "maxReplicaCont",
         lambda: crd(plant(lambda d: rename(doc(d, "ScaledObject")["spec"], "maxReplicaCount", "maxReplicaCont")))),
        ("TriggerAuthentication field typo secretTargetRefs", "secretTargetRefs",
         lambda: crd(plant(lambda d: rename(doc(d, "TriggerAuthentication")["spec"], "secretTargetRef", "secretTargetRefs")))),
        ("Deployment field typo terminationGracePeriodSecond", "terminationGracePeriodSecond",
         lambda: k8s_strict(plant(lambda d: rename(doc(d, "Deployment")["spec"]["template"]["spec"],
                                                   "terminationGracePeriodSeconds", "terminationGracePeriodSecond")))),
        ("config key typo pool_sise", "pool_sise",
         lambda: rendered(plant(lambda d: set_config(d, "pool_size =", "pool_sise =")))),
        ("a topic rule left out of the mounted rules", "sfs.toml",
         lambda: rendered(plant(lambda d: config_map(d, "event-manager-topics")["data"].pop("sfs.toml")))),
        ("shutdown grace longer than the pod's termination grace", "terminationGracePeriodSeconds",
         lambda: rendered(plant(lambda d: set_config(d, 'shutdown_grace = "30s"', 'shutdown_grace = "60s"')))),
        ("a larger pool than the EventDB connection budget allows", "EventDB connections",
         lambda: rendered(plant(lambda d: config_map(d, "event-manager-env")["data"].update(EM_DATABASE__POOL_SIZE="40")))),
        ("a port the binary does not listen on", "http.bind port",
         lambda: rendered(plant(lambda d: set_config(d, '"0.0.0.0:8080"', '"0.0.0.0:8081"')))),
        ("a lag trigger without the pods' SASL mechanism", "sasl",
         lambda: rendered(plant(lambda d: doc(d, "ScaledObject")["spec"]["triggers"][0]["metadata"].update(sasl="plaintext")))),
        ("a cooldownPeriod that does nothing", "cooldownPeriod",
         lambda: rendered(plant(lambda d: doc(d, "ScaledObject")["spec"].update(cooldownPeriod=300)))),
        ("a Secret in a non-dev rendering", "renders no Secret",
         lambda: rendered(plant(lambda d: d.append({"apiVersion": "v1", "kind": "Secret",
                                                    "metadata": {"name": "event-manager"},
                                                    "stringData": {"EM_AUTH__HS256_SECRET": "x" * 40}})))),
        ("an alert on a metric the code does not define", "event_manager_batchs_total",
         lambda: monitoring(rules_text.replace("event_manager_batches_total", "event_manager_batchs_total", 1))),
        ("an alert on a label value the code never sets", "fenched",
         lambda: monitoring(rules_text.replace('result=~"fenced|retried"', 'result=~"fenched|retried"', 1))),
        ("an alert without a runbook section", "runbook",
         lambda: monitoring(rules_text.replace("deploy/README.md#eventmanageroomkilled", "deploy/README.md#nowhere", 1))),
    ]
    f = Failures()
    for what, expected, run in cases:
        ok, output = run()
        f.check(not ok and expected in output, f"rejected: {what}" + ("" if not ok else " (it PASSED)")
                + ("" if ok or expected in output else f" (but the output does not name `{expected}`: {output[:300]})"))
    f.exit()


# --- dashboard -----------------------------------------------------------------------------------


def dashboard_rules(args):
    """Grafana variables replaced by plain values, so that promtool can parse every query."""
    try:
        dashboard = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"  FAIL {DASHBOARD.relative_to(REPO)}: {e}")
    substitutions = {"$__rate_interval": "5m", "$__range": "1h", "$namespace": ".*", "$pod": ".*"}
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr})
    Path(args[0]).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    print(f"  {len(rules)} dashboard queries extracted")


if __name__ == "__main__":
    commands = {"sync-rules": sync_rules, "k8s": k8s, "dashboard-rules": dashboard_rules,
                "topics": topics, "metrics": metrics, "alerts": alerts, "rendering": rendering_cmd,
                "planted": planted}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])

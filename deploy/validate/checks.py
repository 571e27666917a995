"""Offline checks for deploy/ (run through deploy/validate.sh, which sets up the tools).

Subcommands:
  sync-rules [--write]   PrometheusRule embeds deploy/prometheus/rules.yml (or regenerate it)
  k8s VERSION OUT FILE.. validate built-in kinds with kubernetes-validate (strict); write the
                         custom resources to OUT (JSON) for crds.mjs
  consistency            names and numbers that must agree between code, config and manifests
  dashboard-rules OUT    write the dashboard's queries as recording rules to OUT (for promtool)
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
BASE = DEPLOY / "kustomize" / "base"
RULES = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_RULE = BASE / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "event-manager-dashboard.json"

# Kinds validated by crds.mjs against the @kubernetes-models JSON schemas.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# Metrics other branches are adding (not yet in src/metrics.rs); allowed in rules and dashboard.
PENDING_METRICS = {
    "event_manager_http_request_duration_seconds",
    "event_manager_terminator_deleted_total",
    "event_manager_terminator_duration_seconds",
    "event_manager_terminator_last_success_timestamp_seconds",
    "event_manager_terminator_last_failure_timestamp_seconds",
    "event_manager_db_pool_connections",
}

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
    def __init__(self):
        self.items = []

    def check(self, ok, what):
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.items.append(what)

    def exit(self):
        sys.exit(1 if self.items else 0)


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
    if actual:
        same = yaml.safe_load(actual)["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
        f.check(same, "PrometheusRule spec.groups equal rules.yml groups (parsed)")
    f.exit()


def k8s(args):
    import kubernetes_validate

    version, out, files = args[0], Path(args[1]), args[2:]
    f = Failures()
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
    out.write_text(json.dumps(custom))
    f.exit()


def metric_names_in_code():
    text = (REPO / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'"(event_manager_[a-z0-9_]+)"', text))
    # PipelineMetrics' `counter` helper prefixes its names itself.
    names |= {"event_manager_" + n for n in re.findall(r'counter\(\s*"([a-z0-9_]+)"', text)}
    return names


def consistency(_args):
    f = Failures()

    # Topic rules: the ConfigMap copy must be the repository's topics/.
    repo_topics = {p.name: p.read_text() for p in (REPO / "topics").glob("*.toml")}
    base_topics = {p.name: p.read_text() for p in (BASE / "topics").glob("*.toml")}
    f.check(repo_topics == base_topics,
            "deploy/kustomize/base/topics/ equals topics/ (copy them over when they differ)")
    generator = yaml.safe_load((BASE / "kustomization.yaml").read_text())["configMapGenerator"]
    listed = {Path(p).name for g in generator if g["name"] == "event-manager-topics"
              for p in g.get("files", [])}
    f.check(listed == set(repo_topics), "every topics/*.toml is listed in the topics ConfigMap generator")

    # Environment overrides: the binary rejects any EM_ name that is not EM_<SECTION>__<KEY>.
    env_names = [line.split("=", 1)[0] for line in (BASE / "config.env").read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    secret = yaml.safe_load((BASE / "secret.yaml").read_text())
    env_names += list(secret.get("stringData", {}))
    pattern = re.compile(r"^(EM_[A-Z0-9_]+__[A-Z0-9_]+(__[A-Z0-9_.]+)*|DATABASE_URL)$")
    bad = [n for n in env_names if not pattern.match(n)]
    f.check(not bad, f"ConfigMap/Secret variables are EM_<SECTION>__<KEY> or DATABASE_URL {bad or ''}")

    # Config file parses; sections are the ones src/config/mod.rs knows.
    config = tomllib.loads((BASE / "config.toml").read_text())
    known_sections = {"kafka", "database", "pipeline", "http", "log"}
    f.check(set(config) <= known_sections, f"config.toml sections {sorted(config)} are known ones")
    f.check(config["http"]["bind"].endswith(":8080"), "config.toml http.bind uses port 8080")

    deployment = yaml.safe_load((BASE / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    main = next(c for c in pod["containers"] if c["name"] == "event-manager")
    f.check(any(p["name"] == "http" and p["containerPort"] == 8080 for p in main["ports"]),
            "container port `http` is 8080")
    f.check(main["readinessProbe"]["httpGet"]["path"] == "/readyz"
            and main["livenessProbe"]["httpGet"]["path"] == "/healthz",
            "readiness probe /readyz, liveness probe /healthz")
    env = {e["name"]: e.get("value") for e in main["env"]}
    f.check(env.get("EM_CONFIG") == "/etc/event-manager/config.toml"
            and any(m["mountPath"] == "/etc/event-manager/config.toml" for m in main["volumeMounts"]),
            "EM_CONFIG names the mounted config file")
    f.check(any(m["mountPath"] == config["pipeline"]["topics_dir"] for m in main["volumeMounts"]),
            "pipeline.topics_dir is where the topics ConfigMap is mounted")
    grace = int(config["pipeline"]["shutdown_grace"].rstrip("s"))
    pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    f.check(pod["terminationGracePeriodSeconds"] >= grace + pre_stop + 5,
            f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} >= "
            f"preStop {pre_stop} + shutdown_grace {grace} + 5")
    f.check("replicas" not in deployment["spec"], "Deployment leaves replicas to the ScaledObject")

    scaled = yaml.safe_load((BASE / "scaledobject.yaml").read_text())
    partitions = sum(t.get("partitions", 1) for p in (REPO / "topics").glob("*.toml")
                     for t in tomllib.loads(p.read_text()).get("topic", []))
    f.check(scaled["spec"]["maxReplicaCount"] <= partitions,
            f"ScaledObject maxReplicaCount {scaled['spec']['maxReplicaCount']} <= partitions in topics/ ({partitions})")
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    env_file = dict(line.split("=", 1) for line in (BASE / "config.env").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    f.check(trigger.get("consumerGroupFromEnv") in env_file
            and trigger.get("bootstrapServersFromEnv") in env_file,
            "KEDA reads bootstrap servers and group id from the pods' own environment")
    f.check(trigger.get("allowIdleConsumers") == "false", "KEDA allowIdleConsumers is false")

    # Metric names used by alerts and dashboard exist (or are being added on other branches).
    known = metric_names_in_code()
    used = set()
    for source in (RULES, DASHBOARD):
        used |= set(re.findall(r"event_manager_[a-z0-9_]+", source.read_text()))
    used = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n)
            in known | PENDING_METRICS else n for n in used}
    unknown = sorted(used - known - PENDING_METRICS)
    pending = sorted(used & PENDING_METRICS - known)
    f.check(not unknown, f"metric names in rules.yml and the dashboard exist in src/metrics.rs {unknown or ''}")
    if pending:
        print(f"  note not yet in src/metrics.rs (announced by other branches): {', '.join(pending)}")
    f.exit()


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
    commands = {"sync-rules": sync_rules, "k8s": k8s, "consistency": consistency,
                "dashboard-rules": dashboard_rules}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])

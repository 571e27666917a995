#!/usr/bin/env bash
# Offline validation of deploy/: manifests against Kubernetes and CRD schemas, alert rules with
# promtool (syntax and unit tests), the dashboard's JSON and queries, and the names that must
# agree between code and manifests. Not part of CI (it needs tools CI does not promise).
#
#   deploy/validate.sh           check everything; exit 1 if anything fails
#   deploy/validate.sh --write   first regenerate base/prometheusrule.yaml from prometheus/rules.yml
#
# Needs: python3 (>= 3.11), node + npm, promtool (Debian: apt-get install prometheus), and for
# rendering the kustomizations `kubectl` (built-in kustomize) or `kustomize`; without either the
# base manifest files are validated one by one. Python and npm tools are installed, at the
# versions pinned in deploy/validate/, into deploy/.tools (or $EM_VALIDATE_TOOLS).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
VALIDATE=deploy/validate
TOOLS=${EM_VALIDATE_TOOLS:-deploy/.tools}
# Oldest supported (preStop sleep needs 1.30) and newest known to kubernetes-validate.
K8S_VERSIONS=${EM_VALIDATE_K8S_VERSIONS:-"1.30.0 1.37.0"}
failed=()
passed=()

section() { printf '\n== %s\n' "$*"; }
# record NAME COMMAND...: run a check, remember its outcome.
record() {
    local name=$1
    shift
    if "$@"; then passed+=("$name"); else failed+=("$name"); fi
}
need() {
    command -v "$1" >/dev/null 2>&1 || { echo "  missing tool: $1 ($2)"; return 1; }
}

section "tools"
mkdir -p "$TOOLS"
setup_python() {
    need python3 "Python >= 3.11" || return 1
    if ! cmp -s "$VALIDATE/requirements.txt" "$TOOLS/venv/requirements.txt"; then
        python3 -m venv "$TOOLS/venv" &&
            "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
                -r "$VALIDATE/requirements.txt" &&
            cp "$VALIDATE/requirements.txt" "$TOOLS/venv/requirements.txt" || return 1
    fi
    echo "  kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version)"
}
setup_node() {
    need node "Node.js" && need npm "npm" || return 1
    mkdir -p "$TOOLS/npm"
    if ! cmp -s "$VALIDATE/package-lock.json" "$TOOLS/npm/package-lock.json"; then
        cp "$VALIDATE/package.json" "$VALIDATE/package-lock.json" "$TOOLS/npm/" &&
            (cd "$TOOLS/npm" && npm ci --silent --no-audit --no-fund) || return 1
    fi
    # ESM resolves packages next to the script, so it runs from the tools directory.
    cp "$VALIDATE/crds.mjs" "$TOOLS/npm/crds.mjs"
    (cd "$TOOLS/npm" && npm ls --depth=0 2>/dev/null | sed -n 's/^[├└]── /  /p')
}
record "python tools" setup_python
record "node tools" setup_node
record "promtool" need promtool "apt-get install prometheus"
command -v promtool >/dev/null && echo "  $(promtool --version 2>&1 | head -1)"
PY="$TOOLS/venv/bin/python"
[[ -x $PY ]] || PY=python3

if [[ ${1:-} == --write ]]; then
    section "regenerate PrometheusRule from rules.yml"
    "$PY" "$VALIDATE/checks.py" sync-rules --write
fi

section "PrometheusRule embeds deploy/prometheus/rules.yml"
record "rules sync" "$PY" "$VALIDATE/checks.py" sync-rules

section "promtool check rules / test rules"
record "promtool check rules" promtool check rules deploy/prometheus/rules.yml
record "promtool test rules" promtool test rules deploy/prometheus/rules.test.yml

section "Grafana dashboard"
dashboard=deploy/grafana/event-manager-dashboard.json
record "dashboard JSON" python3 -m json.tool "$dashboard" /dev/null && echo "  ok   $dashboard is valid JSON"
check_dashboard_queries() {
    "$PY" "$VALIDATE/checks.py" dashboard-rules "$TOOLS/dashboard-queries.yml" &&
        promtool check rules "$TOOLS/dashboard-queries.yml"
}
record "dashboard queries" check_dashboard_queries

section "render kustomizations"
render() {
    local out="$TOOLS/rendered/$(basename "$1").yaml"
    mkdir -p "$TOOLS/rendered"
    if command -v kubectl >/dev/null; then
        kubectl kustomize "$1" >"$out"
    else
        kustomize build "$1" >"$out"
    fi && echo "  ok   $1 -> $out ($(grep -c '^kind:' "$out") objects)"
}
manifests=()
if [[ ${EM_VALIDATE_RENDER:-1} != 0 ]] && { command -v kubectl || command -v kustomize; } >/dev/null; then
    for dir in deploy/kustomize/base deploy/kustomize/overlays/*/; do
        dir=${dir%/}
        if record "render $dir" render "$dir"; then
            manifests+=("$TOOLS/rendered/$(basename "$dir").yaml")
        fi
    done
else
    echo "  no kubectl/kustomize (or EM_VALIDATE_RENDER=0): validating the base files as they are"
    echo "  (generated ConfigMaps and overlays are not checked)"
    for f in deploy/kustomize/base/*.yaml; do
        [[ $(basename "$f") == kustomization.yaml ]] || manifests+=("$f")
    done
fi

section "Kubernetes schemas (kubernetes-validate, strict)"
for version in $K8S_VERSIONS; do
    record "kubernetes $version" "$PY" "$VALIDATE/checks.py" k8s "$version" \
        "$TOOLS/custom-resources.json" "${manifests[@]}"
done

section "custom resources (KEDA, prometheus-operator schemas)"
record "CRD schemas" node "$TOOLS/npm/crds.mjs" "$TOOLS/custom-resources.json"

section "consistency with code and config"
record "consistency" "$PY" "$VALIDATE/checks.py" consistency

section "summary"
echo "  passed: ${#passed[@]}   failed: ${#failed[@]}"
for name in "${failed[@]}"; do echo "  FAILED: $name"; done
[[ ${#failed[@]} -eq 0 ]]

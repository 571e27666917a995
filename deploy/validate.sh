#!/usr/bin/env bash
# Offline validation of deploy/, run by .ci/run: every kustomization rendered and checked against
# the Kubernetes and CRD schemas (strict: unknown fields fail), the alert rules with promtool
# (syntax and unit tests), the dashboard's queries, and everything that must agree between the
# code and the manifests, taken from the code: the binary checks each rendered configuration
# (`event-manager config check`) and reports its port, pools, grace and topic rules; topic rules
# come from topics/, metric names and label values from src/. Finally a defect is planted in a
# copy for each check, which must reject it.
#
#   deploy/validate.sh           check everything; exit 1 if anything fails
#   deploy/validate.sh --write   first regenerate base/prometheusrule.yaml from prometheus/rules.yml
#
# Needs: cargo (builds the binary), python3 (>= 3.11, with venv), node + npm, promtool (Debian:
# apt-get install prometheus), and `kubectl` (built-in kustomize) or `kustomize`; without either,
# kustomize is built with Go from the Go module proxy. Python and npm tools are installed at the
# versions pinned in deploy/validate/ into deploy/.tools (or $EM_VALIDATE_TOOLS), and reused.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
VALIDATE=deploy/validate
TOOLS=${EM_VALIDATE_TOOLS:-deploy/.tools}
# Oldest supported (preStop sleep needs 1.30) and newest known to kubernetes-validate.
K8S_VERSIONS=${EM_VALIDATE_K8S_VERSIONS:-"1.30.0 1.37.0"}
# Used only where neither kubectl nor kustomize is installed.
KUSTOMIZE_MODULE=sigs.k8s.io/kustomize/kustomize/v5@v5.8.0
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
KUSTOMIZE=()
setup_kustomize() {
    if command -v kubectl >/dev/null 2>&1; then
        KUSTOMIZE=(kubectl kustomize)
    elif command -v kustomize >/dev/null 2>&1; then
        KUSTOMIZE=(kustomize build)
    else
        if [[ ! -x $TOOLS/bin/kustomize ]]; then
            need go "Go, to build kustomize" || return 1
            echo "  building $KUSTOMIZE_MODULE"
            GOBIN="$(pwd)/$TOOLS/bin" go install "$KUSTOMIZE_MODULE" || return 1
        fi
        KUSTOMIZE=("$TOOLS/bin/kustomize" build)
    fi
    echo "  rendering with: ${KUSTOMIZE[*]} ($("${KUSTOMIZE[0]}" version 2>/dev/null | grep -i kustomize | head -1 || true))"
}
BIN=${EM_VALIDATE_BIN:-}
setup_binary() {
    if [[ -z $BIN ]]; then
        need cargo "Rust" && cargo build --quiet --bin event-manager || return 1
        local target=${CARGO_TARGET_DIR:-target}
        [[ $target == /* ]] || target="$(pwd)/$target"
        BIN="$target/debug/event-manager"
    fi
    echo "  $("$BIN" --version)"
}
record "python tools" setup_python
record "node tools" setup_node
record "promtool" need promtool "apt-get install prometheus"
command -v promtool >/dev/null && echo "  $(promtool --version 2>&1 | head -1)"
record "kustomize" setup_kustomize
record "event-manager binary" setup_binary
PY="$TOOLS/venv/bin/python"
[[ -x $PY ]] || PY=python3
checks() { "$PY" "$VALIDATE/checks.py" "$@"; }

if [[ ${1:-} == --write ]]; then
    section "regenerate PrometheusRule from rules.yml"
    checks sync-rules --write
fi

section "PrometheusRule embeds deploy/prometheus/rules.yml"
record "rules sync" checks sync-rules

section "alerts: promtool check rules / test rules, runbooks"
record "promtool check rules" promtool check rules deploy/prometheus/rules.yml
record "promtool test rules" promtool test rules deploy/prometheus/rules.test.yml
record "alert runbooks and tests" checks alerts

section "Grafana dashboard"
dashboard=deploy/grafana/event-manager-dashboard.json
record "dashboard JSON" python3 -m json.tool "$dashboard" /dev/null && echo "  ok   $dashboard is valid JSON"
check_dashboard_queries() {
    checks dashboard-rules "$TOOLS/dashboard-queries.yml" &&
        promtool check rules "$TOOLS/dashboard-queries.yml"
}
record "dashboard queries" check_dashboard_queries

section "metrics of alerts and dashboard (src/)"
record "metric names and labels" checks metrics

section "topic rules (topics/)"
record "topic rules" checks topics

section "render kustomizations"
RENDERED="$TOOLS/rendered"
rm -rf "$RENDERED" && mkdir -p "$RENDERED"
render() {
    local out="$RENDERED/$2.yaml"
    "${KUSTOMIZE[@]}" "$1" >"$out" && echo "  ok   $1 -> $out ($(grep -c '^kind:' "$out") objects)"
}
renderings=()
for dir in deploy/kustomize/base deploy/kustomize/overlays/*/; do
    dir=${dir%/}
    name=$(basename "$dir")
    if [[ ${#KUSTOMIZE[@]} -gt 0 ]] && record "render $dir" render "$dir" "$name"; then
        renderings+=("$name")
    fi
done

section "Kubernetes schemas (kubernetes-validate, strict)"
files=("${renderings[@]/#/$RENDERED/}")
files=("${files[@]/%/.yaml}")
for version in $K8S_VERSIONS; do
    record "kubernetes $version" checks k8s "$version" "$TOOLS/custom-resources.json" "${files[@]}"
done

section "custom resources (KEDA, prometheus-operator schemas, strict)"
record "CRD schemas" node "$TOOLS/npm/crds.mjs" "$TOOLS/custom-resources.json"

for name in "${renderings[@]}"; do
    section "$name: configuration, ports, shutdown, KEDA, connections (event-manager config check)"
    record "$name agrees with the code" checks rendering "$BIN" "$name" "$RENDERED/$name.yaml"
done

section "planted defects: each check rejects one"
record "planted defects" checks planted "$BIN" "$RENDERED" node "$TOOLS"

section "summary"
for name in "${failed[@]}"; do echo "  FAILED: $name"; done
echo "validate: ${#passed[@]} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]

#!/usr/bin/env bash
# Static checks of the Helm chart, its alert rules and the example manifests, with
# the real tools (installed by scripts/tools/packaging.sh and apt-packages.sh):
#   helm lint and `helm template | kubeconform -strict` for every values file the
#   project ships (Kubernetes schemas of the release the tests run, ticklab's own CRD
#   schemas, the prometheus-operator CRDs); the committed rendering of the chart is
#   current; promtool checks the rules and runs their unit tests; the examples in
#   manifests/ validate against ticklab's CRD schemas; kind-config.yaml loads and
#   validates with kind's own code and maps the ports the quickstart uses.
# The chart installed into a real control plane, the dashboards' structure, and
# every PromQL expression run against a real Prometheus, are Rust tests
# (operator/tests/helm.rs, cli/tests/observability.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh

tools="$(scripts/tools/packaging.sh | tail -n 1)"
helm="$tools/bin/helm"
kubeconform="$tools/bin/kubeconform"
chart=charts/ticklab
need_cmd promtool
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# JSON schemas of the CRDs, named as kubeconform's schema-location template below
# expects; strict below the root: unknown fields are errors, as the API server's are
# (the root is left open because the generated schemas do not list apiVersion, kind
# and metadata).
mkdir -p "$work/crd-schemas"
(cd "$work/crd-schemas" && FILENAME_FORMAT='{kind}-{fullgroup}-{version}' \
  python3 "$tools/openapi2jsonschema.py" "$OLDPWD"/crds/*.yaml "$tools"/crds/monitoring/*.yaml >/dev/null)

kubeconform_strict() {
  "$kubeconform" -strict -summary -output text \
    -kubernetes-version 1.34.0 \
    -schema-location "$tools/schemas/kubernetes/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$work/crd-schemas/{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json" \
    "$@"
}

# Every values file a user or CI installs with: the defaults, the test sets in
# charts/ticklab/ci/, and the kind quickstart's.
values_sets=("" "$chart"/ci/*-values.yaml manifests/kind/ticklab-values.yaml)

log "helm lint"
for values in "${values_sets[@]}"; do
  "$helm" lint --strict "$chart" ${values:+--values "$values"} >"$work/lint.log" 2>&1 ||
    { cat "$work/lint.log" >&2; die "helm lint failed${values:+ with $values}"; }
done

log "helm template | kubeconform -strict"
for values in "${values_sets[@]}"; do
  out="$work/rendered-$(basename "${values:-default}").yaml"
  "$helm" template ticklab "$chart" --namespace ticklab-system --include-crds \
    ${values:+--values "$values"} >"$out"
  # A kind without a schema is an error (kubeconform skips only when told to).
  kubeconform_strict "$out" >&2 || die "invalid objects rendered${values:+ with $values}"
done

log "the committed rendering is current (manifests/rendered/)"
scripts/render-chart.sh "$work/rendered-now" >/dev/null
if ! diff -ru manifests/rendered "$work/rendered-now" >"$work/render.diff"; then
  head -n 40 "$work/render.diff" >&2
  die "manifests/rendered/ is out of date: run scripts/render-chart.sh and commit"
fi

log "promtool: alert rules"
promtool check rules "$chart/rules/ticklab-alerts.yaml" >&2
(cd "$chart/rules" && promtool test rules tests/*.yaml) >&2

log "example manifests against ticklab's CRD schemas"
kubeconform_strict manifests/examples/*.yaml >&2 || die "invalid example manifests"

log "kind-config.yaml with kind's own loader and validation"
kind_cluster="$("$tools/bin/kind-config-check" kind-config.yaml)" || die "kind-config.yaml is not a valid kind configuration"
# What the README's kind quickstart relies on: two workers for cross-node
# experiments, Grafana and Prometheus NodePorts reachable on localhost:3000 and :9090.
python3 - "$kind_cluster" manifests/kind/monitoring-values.yaml <<'PY' || die "kind-config.yaml does not fit the quickstart"
import json, sys, yaml
cluster = json.loads(sys.argv[1])
values = yaml.safe_load(open(sys.argv[2]))
roles = [n["role"] for n in cluster["nodes"]]
problems = []
if roles.count("control-plane") != 1 or roles.count("worker") != 2:
    problems.append(f"nodes {roles}: the quickstart cluster is one control plane and two workers")
mapped = {p["containerPort"]: p for n in cluster["nodes"] if n["role"] == "control-plane" for p in n["ports"]}
for name, host_port in (("grafana", 3000), ("prometheus", 9090)):
    node_port = values[name]["service"]["nodePort"]
    mapping = mapped.get(node_port)
    if mapping is None:
        problems.append(f"{name}'s NodePort {node_port} ({sys.argv[2]}) is not mapped to the host")
    elif (mapping["hostPort"], mapping["listenAddress"]) != (host_port, "127.0.0.1"):
        problems.append(f"{name}'s NodePort {node_port} is mapped to {mapping['listenAddress']}:{mapping['hostPort']}, not 127.0.0.1:{host_port}")
for problem in problems:
    print(f"kind-config.yaml: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

log "all chart checks passed"

#!/usr/bin/env bash
# Installs what the packaging checks use, once, into the tool cache: Helm and
# kubeconform built from pinned Go modules, the Kubernetes JSON schemas kubeconform
# validates against (from the pinned PyPI package kubernetes-validate, which ships
# them), and the prometheus-operator CRDs (ServiceMonitor, PodMonitor,
# PrometheusRule) from that project's pinned Go module, and kind-config-check (kind's
# own config loader and validation, from kind's pinned module). Prints the directory.
#
#   DIR/bin/helm, DIR/bin/kubeconform, DIR/bin/kind-config-check
#   DIR/schemas/kubernetes/vX.Y.Z-local-strict/*.json   core kinds, strict
#   DIR/crds/monitoring/*.yaml                           prometheus-operator CRDs
#   DIR/openapi2jsonschema.py                            kubeconform's CRD converter
set -euo pipefail
# shellcheck source=scripts/tools/lib.sh
. "$(dirname "$0")/lib.sh"
here="$(cd "$(dirname "$0")" && pwd)"

helm_version="v4.3.1"
kubeconform_version="v0.8.0"
kubernetes_validate_version="1.37.0"
schema_kube_version="v1.34.0"     # the Kubernetes minor the test control plane runs
prometheus_operator_version="v0.85.0"
kind_version="v0.33.0"
dir="$TICKLAB_TOOLS/packaging-helm-$helm_version-kubeconform-$kubeconform_version-schemas-$schema_kube_version-promop-$prometheus_operator_version-kind-$kind_version"

complete() {
  [ -x "$dir/bin/helm" ] && [ -x "$dir/bin/kubeconform" ] && [ -x "$dir/bin/kind-config-check" ] &&
    [ -f "$dir/schemas/kubernetes/$schema_kube_version-local-strict/_definitions.json" ] &&
    [ -f "$dir/crds/monitoring/monitoring.coreos.com_prometheusrules.yaml" ] &&
    [ -f "$dir/openapi2jsonschema.py" ] && python3 -c 'import yaml' 2>/dev/null
}
if complete; then
  echo "$dir"
  exit 0
fi
need_cmd go
need_cmd python3
need_cmd unzip
log "installing Helm $helm_version, kubeconform $kubeconform_version, kind $kind_version config check, Kubernetes $schema_kube_version schemas and prometheus-operator $prometheus_operator_version CRDs (once; cached in $dir)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$dir/bin"

log "  go install helm"
GOBIN="$dir/bin" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version" \
  "helm.sh/helm/v4/cmd/helm@$helm_version"
log "  go install kubeconform"
GOBIN="$dir/bin" go install -trimpath -ldflags "-s -w -X main.version=$kubeconform_version" \
  "github.com/yannh/kubeconform/cmd/kubeconform@$kubeconform_version"

# kubeconform's own converter from CRD schemas to the JSON schemas it reads; it is
# part of the module kubeconform was just built from.
module_dir() {
  (cd "$work" && go mod download -json "$1@$2") |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}
cp "$(module_dir github.com/yannh/kubeconform "$kubeconform_version")/scripts/openapi2jsonschema.py" "$dir/"
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet "pyyaml==6.0.3"

# kind's config packages are internal to its module: our check is compiled inside
# a copy of it (the source is scripts/tools/kind-config-check/main.go).
log "  kind-config-check (kind $kind_version)"
cp -r "$(module_dir sigs.k8s.io/kind "$kind_version")" "$work/kind"
chmod -R u+w "$work/kind"
mkdir -p "$work/kind/pkg/ticklab-kind-config-check"
cp "$here/kind-config-check/main.go" "$work/kind/pkg/ticklab-kind-config-check/"
(cd "$work/kind" && go build -trimpath -ldflags "-s -w" -o "$dir/bin/kind-config-check" ./pkg/ticklab-kind-config-check)

log "  prometheus-operator CRDs"
mkdir -p "$dir/crds/monitoring"
promop="$(module_dir github.com/prometheus-operator/prometheus-operator "$prometheus_operator_version")"
for kind in servicemonitors podmonitors prometheusrules; do
  cp "$promop/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$dir/crds/monitoring/"
done
chmod -R u+w "$dir/crds"

log "  Kubernetes JSON schemas (kubernetes-validate $kubernetes_validate_version)"
python3 -m pip download --quiet --no-deps --dest "$work" "kubernetes-validate==$kubernetes_validate_version"
unzip -q "$work"/kubernetes_validate-*.whl "kubernetes_validate/kubernetes-json-schema/$schema_kube_version-local-strict/*" -d "$work/kv"
schemas="$dir/schemas/kubernetes/$schema_kube_version-local-strict"
rm -rf "$schemas"
mkdir -p "$(dirname "$schemas")"
mv "$work/kv/kubernetes_validate/kubernetes-json-schema/$schema_kube_version-local-strict" "$schemas"
# The schemas refer to their shared definitions as "/api/_definitions.json", which
# kubernetes-validate maps itself; kubeconform resolves references as URLs, so
# point them at the file.
sed -i "s#\"/api/_definitions.json#\"file://$schemas/_definitions.json#g" "$schemas"/*.json

"$dir/bin/helm" version --short >/dev/null || die "built helm does not run"
"$dir/bin/kubeconform" -v >/dev/null || die "built kubeconform does not run"
complete || die "packaging tools incomplete in $dir"
echo "$dir"

#!/usr/bin/env bash
# Validates Cadre's Kubernetes manifests offline, without a cluster:
#   1. every YAML file in deploy/k8s against the API schemas of a pinned Kubernetes version,
#      in strict mode (an unknown field is an error), with kubernetes-validate;
#   2. kustomization.yaml lists every manifest there (bar the example Secret) and nothing else;
#   3. if kubectl is installed, the kustomize-rendered output validates too;
#   4. if nats-server is installed, it accepts the NATS config held in the ConfigMap.
# Exits non-zero on the first failing step; prints every resource it validated.
#
# Environment: K8S_VERSION (default 1.30.0, the oldest Kubernetes Cadre supports),
# NATS_SERVER (path to a nats-server binary, default: the one on PATH).
set -euo pipefail

k8s_version="${K8S_VERSION:-1.30.0}"
validator_version="1.37.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifests_dir="$root/deploy/k8s"
venv="$root/.cadre/venv"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    echo "installing kubernetes-validate $validator_version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "kubernetes-validate==$validator_version"
fi
validate=("$venv/bin/kubernetes-validate" --strict --kubernetes-version "$k8s_version")

manifests=()
while IFS= read -r file; do
    manifests+=("$file")
done < <(find "$manifests_dir" -name '*.yaml' ! -name kustomization.yaml | sort)
if [[ ${#manifests[@]} -eq 0 ]]; then
    echo "no manifests found in $manifests_dir" >&2
    exit 1
fi

echo "== schema validation (Kubernetes $k8s_version, strict): ${#manifests[@]} files"
(cd "$root" && "${validate[@]}" "${manifests[@]#"$root"/}")

echo "== kustomization resources"
"$venv/bin/python" - "$manifests_dir" <<'PY'
import pathlib
import sys

import yaml

directory = pathlib.Path(sys.argv[1])
# Kept out on purpose: applying it would overwrite the real Secret with placeholders.
not_applied = {"secret.example.yaml"}
listed = yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]
present = {p.relative_to(directory).as_posix() for p in directory.rglob("*.yaml")}
present -= {"kustomization.yaml"} | not_applied

missing = [r for r in listed if r not in present]
unlisted = sorted(present - set(listed))
for resource in listed:
    print(f"listed: {resource}")
if missing:
    sys.exit(f"kustomization.yaml lists files that do not exist: {missing}")
if unlisted:
    sys.exit(f"manifests not listed in kustomization.yaml: {unlisted}")
PY

if command -v kubectl >/dev/null 2>&1; then
    echo "== kustomize build (kubectl kustomize), validated as rendered"
    kubectl kustomize "$manifests_dir" >"$work/rendered.yaml"
    (cd "$work" && "${validate[@]}" rendered.yaml)
else
    echo "== kubectl not found: skipping the rendered kustomization check"
fi

nats_server="${NATS_SERVER:-$(command -v nats-server || true)}"
if [[ -n "$nats_server" ]]; then
    echo "== NATS config (nats-server -t)"
    "$venv/bin/python" - "$manifests_dir/nats.yaml" "$work/nats.conf" <<'PY'
import pathlib
import sys

import yaml

for document in yaml.safe_load_all(pathlib.Path(sys.argv[1]).read_text()):
    if document and document["kind"] == "ConfigMap":
        pathlib.Path(sys.argv[2]).write_text(document["data"]["nats.conf"])
        break
else:
    sys.exit("no ConfigMap with nats.conf in nats.yaml")
PY
    # The StatefulSet supplies POD_NAME from the pod's name.
    POD_NAME=cadre-nats-0 "$nats_server" -t -c "$work/nats.conf"
else
    echo "== nats-server not found: skipping the NATS config check"
fi

echo "all Kubernetes manifests are valid"

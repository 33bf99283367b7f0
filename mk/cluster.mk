# Local control plane: tools built from Go modules (cached in ~/.cache/mlperf-operator) and a kwok cluster
# with fake GPU nodes. Included by the top-level Makefile, whose `venv` target provides $(PY) and kubectl.
PY ?= .venv/bin/python
CLUSTER_NAME ?= dev

.PHONY: tools dev-cluster dev-env dev-cluster-down dev-cluster-status

## tools: build kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok, kwokctl, helm (cached)
tools: venv
	tools/build-tools.sh

## dev-cluster: start (or reuse) the local cluster with what the examples need there: the pod executor for the
## step pods of namespace default (kwok runs no containers) and the PVC mlperf-cache. Then, in your shell:
##   source <(make -s dev-env)    KUBECONFIG, and the repository's kubectl, helm and mlperf-operator first on PATH
dev-cluster: tools
	$(PY) tools/cluster.py up --name $(CLUSTER_NAME) --executor default --claim mlperf-cache

dev-env: venv
	@$(PY) tools/cluster.py env --name $(CLUSTER_NAME)

## dev-cluster-down: stop the local cluster and delete its state
dev-cluster-down: venv
	$(PY) tools/cluster.py down --name $(CLUSTER_NAME)

dev-cluster-status: venv
	$(PY) tools/cluster.py status --name $(CLUSTER_NAME)

# Local control plane: tools built from Go modules (cached in ~/.cache/mlperf-operator) and a kwok cluster
# with fake GPU nodes. Included by the top-level Makefile, whose `venv` target provides $(PY) and kubectl.
PY ?= .venv/bin/python
CLUSTER_NAME ?= dev

.PHONY: tools dev-cluster dev-cluster-down dev-cluster-status

## tools: build kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kwok, kwokctl, helm (cached)
tools: venv
	tools/build-tools.sh

## dev-cluster: start (or reuse) the local cluster; KUBECONFIG=$$($(PY) tools/cluster.py kubeconfig)
dev-cluster: tools
	$(PY) tools/cluster.py up --name $(CLUSTER_NAME)

## dev-cluster-down: stop the local cluster and delete its state
dev-cluster-down: venv
	$(PY) tools/cluster.py down --name $(CLUSTER_NAME)

dev-cluster-status: venv
	$(PY) tools/cluster.py status --name $(CLUSTER_NAME)

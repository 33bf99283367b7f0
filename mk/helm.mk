# The Helm chart, the container images and their static checks. Included by the top-level Makefile.
#
#   make helm-crds      copy the generated CRDs (make crds) into the chart; a test fails when they drift
#   make helm-lint      helm lint the chart, hadolint every Dockerfile
#   make helm-package   package the chart into dist/
#   make images-lock    re-pin the images' Python dependencies (images/*/requirements.txt)
#   make images         build the three images (needs a container engine and a registry)
#   make images-local   build the operator and CPU harness images with podman on a base made by debootstrap
#   make checkov        install checkov (own venv: helm/install-lint-tools.sh), gate on docs/security.md's accepted findings, report
HELM ?= $(HOME)/.cache/mlperf-operator/bin/helm
DOCKER ?= docker
REGISTRY ?= ghcr.io/mlperf-operator
CHART_DIR := helm/mlperf-operator
APP_VERSION = $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' $(CHART_DIR)/Chart.yaml)
IMAGES := operator harness-cpu harness-gpu

.PHONY: helm-crds helm-lint helm-package images-lock images image-tools images-local checkov

helm-crds: crds
	cp crds/*.yaml $(CHART_DIR)/crds/

helm-lint: tools venv
	$(HELM) lint --strict $(CHART_DIR) --kube-version 1.37.2
	for f in images/*/Dockerfile; do $(BIN)/hadolint $$f || exit 1; done

helm-package: tools helm-crds
	$(HELM) package $(CHART_DIR) -d dist/

images-lock: venv
	images/lock.sh

images:
	for i in $(IMAGES); do \
		$(DOCKER) build -f images/$$i/Dockerfile -t $(REGISTRY)/$$i:$(APP_VERSION) . || exit 1; \
	done

# What tests/test_images.py builds with where no registry is reachable: podman (chroot isolation) and
# debootstrap for the base (images/base.sh). Installed from Debian's packages when missing and we are root.
image-tools:
	@if command -v podman >/dev/null && command -v debootstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap >/dev/null; \
	else echo "podman or debootstrap missing (not root, or no apt-get): tests/test_images.py will skip"; fi

# The operator and CPU harness images from a Debian-made base: make images-local (no registry needed).
images-local: image-tools
	base=$$(images/base.sh) && for i in operator harness-cpu; do \
		podman build --isolation=chroot --build-arg PYTHON_IMAGE=$$base -f images/$$i/Dockerfile \
			--ignorefile images/$$i/Dockerfile.dockerignore -t $(REGISTRY)/$$i:$(APP_VERSION) . || exit 1; \
	done

# The gate (no finding beyond those accepted in docs/security.md), then checkov's full report of the chart.
checkov: tools venv
	$(PY) -m pytest -q tests/test_security.py -k checkov
	@mkdir -p build/checkov
	$(HELM) template mlperf-operator $(CHART_DIR) -n mlperf-operator --kube-version 1.37.2 --include-crds \
		--set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
		--set grafanaDashboard.enabled=true > build/checkov/chart.yaml
	-$$(helm/install-lint-tools.sh)/checkov -d build/checkov --framework kubernetes --quiet --skip-download --compact

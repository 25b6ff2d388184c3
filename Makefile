# Everything a developer or CI runs, from one place.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: install demo test test-unit lint bench pg-up mongo-up s3-up k8s-build \
        ferretdb-build k8s-up coredns-build cluster-up cluster-down images deps e2e-kind e2e-node image chart-lint crd test-k8s operator-run serve test-server

install:  ## the library, the operator and the dev tools, pinned
	$(PYTHON) -m pip install -q -e '.[operator,dev]'

demo: install  ## the main job on the embedded default (SQLite): no servers needed
	$(PYTHON) -m eventstore.cli demo

deps:  ## build or reuse the cached test servers and images (FerretDB, versitygw, Kubernetes, CoreDNS, kube-router)
	bash scripts/ferretdb/build.sh
	bash scripts/versitygw/build.sh
	bash scripts/k8s/build.sh
	bash scripts/coredns/build.sh
	bash scripts/kube-router/build.sh
	@if [ "$$(id -u)" = 0 ] && command -v debootstrap >/dev/null; then \
	  $(PYTHON) -m tests.harness.images build; \
	else echo "images: not built (needs root and debootstrap; the e2e_node suite says why it skips)"; fi

test: install deps  ## every suite; starts PostgreSQL, FerretDB, the control plane and the one-node cluster itself
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

lint:  ## ruff, mypy (strict), and the generated CRD copies up to date
	$(PYTHON) -m ruff check eventstore operator tests bench
	$(PYTHON) -m mypy
	$(PYTHON) -m eventstore_operator.crd --check

crd:  ## regenerate the CRD in manifests/, the chart's crds/ and values.schema.json
	$(PYTHON) -m eventstore_operator.crd --write

test-k8s: k8s-build  ## only the tests against the local control plane
	$(PYTHON) -m pytest tests/k8s $(PYTEST_ARGS)

operator-run:  ## the operator from this checkout, current kubeconfig; NS=ns (default: every namespace)
	$(PYTHON) -m eventstore_operator $(if $(NS),--namespace $(NS),--all-namespaces) --verbose

bench: install  ## prints a table and writes bench-results/results.json
	$(PYTHON) -m bench.run

serve:  ## the store server on the embedded default (SQLite under ./.eventstore-data)
	EVENTSTORE_DATA_DIR=$${EVENTSTORE_DATA_DIR:-.eventstore-data} $(PYTHON) -m eventstore.cli serve --host 127.0.0.1

test-server:  ## only the tests against running server processes
	$(PYTHON) -m pytest tests/server $(PYTEST_ARGS)

pg-up:  ## a throwaway PostgreSQL in the foreground
	$(PYTHON) -m tests.harness.postgres

mongo-up:  ## a throwaway MongoDB wire server (FerretDB) in the foreground
	$(PYTHON) -m tests.harness.ferretdb

s3-up:  ## a throwaway S3-compatible server (versitygw) in the foreground; prints the AWS_* variables
	bash scripts/versitygw/build.sh >/dev/null
	$(PYTHON) -m tests.harness.s3

ferretdb-build:
	bash scripts/ferretdb/build.sh

k8s-build:
	bash scripts/k8s/build.sh

k8s-up: k8s-build  ## kube-apiserver + etcd + kube-controller-manager in the foreground
	$(PYTHON) -m tests.harness.controlplane up

coredns-build:
	bash scripts/coredns/build.sh

cluster-up:  ## one-node cluster with a real kubelet (root); eval "$$(make -s cluster-up)" sets KUBECONFIG
	bash scripts/k8s/build.sh >/dev/null
	bash scripts/coredns/build.sh >/dev/null
	$(PYTHON) -m tests.harness.node up

cluster-down:  ## stop the one-node cluster and undo its host changes (images and logs kept)
	$(PYTHON) -m tests.harness.node down

images:  ## build (cached by content) and import the one-node cluster's images, no registry (root)
	$(PYTHON) -m tests.harness.images import --skip-without-node

IMAGE ?= ghcr.io/eventstore-py/eventstore:0.1.0

image:  ## the store server + operator image (needs a Docker engine with BuildKit)
	docker build -t $(IMAGE) .

e2e-kind: install  ## kind cluster + image + chart + workload; skipped with the reason without Docker/kind
	$(PYTHON) -m pytest tests/e2e_kind -rs $(PYTEST_ARGS)

e2e-node: install  ## the product on real pods of the one-node cluster (root): up, images, chart, scenarios, down
	$(PYTHON) -m pytest tests/e2e_node -rs $(PYTEST_ARGS)

chart-lint:  ## helm lint --strict of the chart with every test values file
	HELM=$$(bash scripts/k8s/build.sh | tail -n1)/helm; \
	$$HELM lint --strict charts/eventstore && \
	for f in tests/k8s/chart_values/*.yaml; do $$HELM lint --strict charts/eventstore -f $$f || exit 1; done

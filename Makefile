# The two commands a newcomer needs: `make run` starts a cluster, `make test` proves it works.

CARGO ?= cargo

.PHONY: build run test lint bench bench-pods bench-scheduler bench-deployment bench-service clean

build:
	$(CARGO) build --release

# A cluster on the embedded defaults (data in ~/.rk, or /var/lib/rk as root).
run:
	$(CARGO) run --release -- server

# Unit tests and integration tests against the real binary with kubectl, the
# kube crate and the Python client.
test:
	$(CARGO) test --locked

lint:
	$(CARGO) clippy --all-targets --locked -- -D warnings

bench:
	$(CARGO) run --release -- bench

# Pod start latency on the node agent (needs Docker, root and the test images).
bench-pods:
	bash tools/test-images.sh
	$(CARGO) run --release -- bench pods

# HTTP requests/s and latency through a ClusterIP and a NodePort next to a pod
# IP, with wrk (needs root, Docker, the test images and Debian's wrk).
bench-service:
	bash tools/test-images.sh
	command -v wrk >/dev/null || apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(CARGO) run --release -- bench service

# Pods scheduled per second on 1000 fake nodes.
bench-scheduler:
	$(CARGO) run --release -- bench scheduler --nodes 1000 --pods 10000

# A 1000-replica Deployment on 1000 fake nodes: time to all Running, rolling update.
bench-deployment:
	$(CARGO) run --release -- bench deployment --nodes 1000 --replicas 1000

clean:
	$(CARGO) clean

"""What the end-to-end suites on running pods share: the deployment scenarios and their
assertions (scenarios.py), the in-cluster client workload (workload.py) and the ways a
host reaches a Service or a pod (access.py).

Two suites call them: tests/e2e_node (a one-node cluster with a real kubelet on this
machine) and tests/e2e_kind (a kind cluster, where Docker exists). The object-level checks
they build on live in tests/k8s/assertions.py, which the control-plane tests use too.
"""

"""The official Python client against rk: list, watch, and recovery from a
compacted resourceVersion (410 Gone) by relisting. Run by tests/clients.rs with
KUBECONFIG pointing at a running server started with a tiny watch history."""
import os
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(os.environ["KUBECONFIG"])
v1 = client.CoreV1Api()
ns = "default"

for i in range(3):
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"py-{i}", labels={"src": "py"}), data={"i": str(i)}))

listed = v1.list_namespaced_config_map(ns, label_selector="src=py")
assert [c.metadata.name for c in listed.items] == ["py-0", "py-1", "py-2"], listed.items
assert listed.metadata.resource_version
empty = v1.list_namespaced_config_map(ns, label_selector="src=none")
assert empty.items == [], "items is an empty list, never null"

# A watch from the list's revision sees later changes, in order.
seen = []
w = watch.Watch()
def later_changes():
    v1.patch_namespaced_config_map("py-1", ns, {"data": {"i": "changed"}})
    v1.delete_namespaced_config_map("py-2", ns)
threading.Timer(0.5, later_changes).start()
for event in w.stream(v1.list_namespaced_config_map, ns, label_selector="src=py", resource_version=listed.metadata.resource_version, timeout_seconds=5):
    seen.append((event["type"], event["object"].metadata.name))
    if len(seen) == 2:
        w.stop()
assert seen == [("MODIFIED", "py-1"), ("DELETED", "py-2")], seen

# Churn other objects so the log is compacted past the list's revision, then restart the server (the caller does).
stale = listed.metadata.resource_version
for i in range(20):
    v1.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name=f"churn-{i}")))
print("STALE", stale, flush=True)
sys.stdin.readline()  # the caller restarts the server with compaction and answers

# Watching from the compacted revision fails with 410; the client relists and continues.
try:
    for event in watch.Watch().stream(v1.list_namespaced_config_map, ns, resource_version=stale, timeout_seconds=5):
        raise AssertionError(f"expected 410 Gone, got {event['type']}")
    raise AssertionError("expected 410 Gone, got an empty stream")
except ApiException as e:
    assert e.status == 410, e
relisted = v1.list_namespaced_config_map(ns, label_selector="src=py")
assert [c.metadata.name for c in relisted.items] == ["py-0", "py-1"]
assert relisted.items[1].data == {"i": "changed"}
print("OK", flush=True)

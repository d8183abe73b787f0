"""The controllers in-process against the real API emulator, over the official client.

Objects go in through the emulator's store (as any API client would write them; the controllers see them
only through list+watch), a :class:`FakeKubelet` plays the node runtimes, and every wait is bounded.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from lab.kube.controllers.manager import ControllerManager
from lab.wait import poll_until
from tests.lab.kube_controllers.cluster import (
    FakeKubelet,
    RestartableApi,
    daemonset,
    deployment,
    node,
    pod_template,
    pods_of,
    service,
)

Obj = dict[str, Any]
WITHIN = 30.0


def nodes_for_selector_test(api: RestartableApi) -> None:
    store = api.store
    store.create(node("n0", {"zone": "a"}))
    store.create(node("n1", {"zone": "a"}))
    store.create(node("n2", {"zone": "b"}))
    store.create(node("n3", {"zone": "a"}, ready=False))
    store.create(node("n4", {"zone": "a"}, unschedulable=True))


def rs_of(api: RestartableApi, deploy: str) -> list[Obj]:
    items, _ = api.store.list("replicasets", "default")
    return [r for r in items if any(ref.get("name") == deploy for ref in r["metadata"].get("ownerReferences") or [])]


def available(api: RestartableApi, name: str, replicas: int) -> bool:
    """What ``kubectl rollout status`` waits for: the spec observed, all replicas updated and available."""
    d = api.store.get("deployments", name)
    st = d.get("status") or {}
    return (st.get("observedGeneration") == d["metadata"]["generation"] and st.get("availableReplicas") == replicas
            and st.get("updatedReplicas") == replicas and st.get("replicas") == replicas)


async def test_deployment_pods_bound_honouring_node_selector(api: RestartableApi, controllers: ControllerManager,
                                                            kubelet: FakeKubelet) -> None:
    nodes_for_selector_test(api)
    api.store.create(deployment("web", 3, pod_template({"app": "web"}, node_selector={"zone": "a"})))
    assert await poll_until(lambda: len([p for p in pods_of(api.store, "web-") if p["spec"].get("nodeName")]) == 3,
                            within=WITHIN), pods_of(api.store, "web-")
    pods = pods_of(api.store, "web-")
    (rs,) = rs_of(api, "web")
    pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{pod_hash}"
    for p in pods:
        assert p["metadata"]["name"].startswith(f"web-{pod_hash}-") and len(p["metadata"]["name"]) == len(
            f"web-{pod_hash}-") + 5
        assert p["metadata"]["labels"] == {"app": "web", "pod-template-hash": pod_hash}
        (ref,) = p["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ReplicaSet", rs["metadata"]["name"], rs["metadata"]["uid"], True)
    # only the Ready, schedulable zone-a nodes; spread evenly (fewest pods first)
    assert sorted(Counter(p["spec"]["nodeName"] for p in pods).values()) == [1, 2]
    assert {p["spec"]["nodeName"] for p in pods} == {"n0", "n1"}
    assert await poll_until(lambda: available(api, "web", 3), within=WITHIN), api.store.get("deployments", "web")
    d = api.store.get("deployments", "web")
    conds = {c["type"]: c for c in d["status"]["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert await poll_until(lambda: {c["type"]: c for c in api.store.get("deployments", "web")["status"][
        "conditions"]}["Progressing"]["reason"] == "NewReplicaSetAvailable", within=WITHIN)
    assert d["status"]["observedGeneration"] == d["metadata"]["generation"]
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"


async def test_unschedulable_pod_reports_why_then_binds_when_a_node_fits(
        api: RestartableApi, controllers: ControllerManager) -> None:
    nodes_for_selector_test(api)
    api.store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lonely", "namespace": "default"},
                      "spec": {"nodeSelector": {"zone": "c"}, "containers": [{"name": "c", "image": "i"}]}})

    def condition() -> Obj:
        pod = api.store.get("pods", "lonely")
        return next((c for c in pod.get("status", {}).get("conditions") or [] if c["type"] == "PodScheduled"), {})

    assert await poll_until(lambda: condition().get("reason") == "Unschedulable", within=WITHIN)
    assert condition()["status"] == "False"
    assert condition()["message"] == (
        "0/5 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, "
        "1 node(s) were unschedulable, 3 node(s) didn't match Pod's node affinity/selector.")
    api.store.create(node("n5", {"zone": "c"}))
    assert await poll_until(lambda: api.store.get("pods", "lonely")["spec"].get("nodeName") == "n5", within=WITHIN)
    assert condition()["status"] == "True"  # the binding sets it


async def test_deleted_pod_is_replaced_and_template_change_rolls(
        api: RestartableApi, controllers: ControllerManager, kubelet: FakeKubelet) -> None:
    for i in range(3):
        api.store.create(node(f"n{i}"))
    api.store.create(deployment("web", 3, pod_template({"app": "web"}, image="echo:1")))
    assert await poll_until(lambda: available(api, "web", 3), within=WITHIN)
    victim = pods_of(api.store, "web-")[0]
    api.delete_pod(victim["metadata"]["name"])  # graceful; the kubelet finishes it
    assert await poll_until(lambda: len(pods_of(api.store, "web-")) == 3 and victim["metadata"]["name"] not in {
        p["metadata"]["name"] for p in pods_of(api.store, "web-")}, within=WITHIN)
    assert await poll_until(lambda: available(api, "web", 3), within=WITHIN)
    (old_rs,) = rs_of(api, "web")

    api.store.patch("deployments", "web", {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "echo:2"}]}}}}, namespace="default")

    def rolled() -> bool:
        rss = {r["metadata"]["name"]: r for r in rs_of(api, "web")}
        new = [r for n, r in rss.items() if n != old_rs["metadata"]["name"]]
        pods = pods_of(api.store, "web-", active=False)
        return (len(new) == 1 and new[0]["spec"]["replicas"] == 3
                and rss[old_rs["metadata"]["name"]]["spec"]["replicas"] == 0 and len(pods) == 3
                and all(p["metadata"]["name"].startswith(new[0]["metadata"]["name"]) for p in pods)
                and available(api, "web", 3))

    assert await poll_until(rolled, within=WITHIN), (rs_of(api, "web"), pods_of(api.store, "web-"))
    new_rs = next(r for r in rs_of(api, "web") if r["metadata"]["uid"] != old_rs["metadata"]["uid"])
    assert new_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert all(p["spec"]["containers"][0]["image"] == "echo:2" for p in pods_of(api.store, "web-"))


async def test_scale_down_deletes_the_not_ready_pod(api: RestartableApi, controllers: ControllerManager) -> None:
    for i in range(2):
        api.store.create(node(f"n{i}"))
    sick: set[str] = set()
    kubelet = FakeKubelet(api.store, ready=lambda pod: pod["metadata"]["name"] not in sick)
    api.store.create(deployment("web", 3, pod_template({"app": "web"})))

    def running_pods() -> int:
        kubelet.step()
        return len([p for p in pods_of(api.store, "web-") if p["status"].get("phase") == "Running"])

    def all_pods() -> int:
        kubelet.step()
        return len(pods_of(api.store, "web-", active=False))

    assert await poll_until(lambda: running_pods() == 3, within=WITHIN)
    sick.add(pods_of(api.store, "web-")[1]["metadata"]["name"])
    kubelet.step()
    # the ReplicaSet controller has seen it once its status counts 2 ready
    assert await poll_until(lambda: (rs_of(api, "web")[0].get("status") or {}).get("readyReplicas") == 2,
                            within=WITHIN)
    api.store.patch("deployments", "web", {"spec": {"replicas": 2}}, namespace="default")
    assert await poll_until(lambda: all_pods() == 2, within=WITHIN)
    assert not sick & {p["metadata"]["name"] for p in pods_of(api.store, "web-", active=False)}


async def test_daemonset_follows_nodes_and_rolls(api: RestartableApi, controllers: ControllerManager,
                                                 kubelet: FakeKubelet) -> None:
    api.store.create(node("n0", {"role": "worker"}))
    api.store.create(node("n1", {"role": "worker"}))
    api.store.create(node("n2", {"role": "db"}))
    api.store.create(daemonset("agent", pod_template({"app": "agent"}, node_selector={"role": "worker"})))

    def placement() -> list[str]:
        return sorted(p["spec"]["nodeName"] for p in pods_of(api.store, "agent-"))

    def status() -> Obj:
        return api.store.get("daemonsets", "agent").get("status") or {}

    assert await poll_until(lambda: placement() == ["n0", "n1"] and status().get("numberAvailable") == 2,
                            within=WITHIN), (placement(), status())
    st = status()
    assert (st["desiredNumberScheduled"], st["currentNumberScheduled"], st["numberReady"],
            st["updatedNumberScheduled"]) == (2, 2, 2, 2)
    assert st["observedGeneration"] == api.store.get("daemonsets", "agent")["metadata"]["generation"]
    api.store.create(node("n3", {"role": "worker"}))
    assert await poll_until(lambda: placement() == ["n0", "n1", "n3"], within=WITHIN), placement()
    api.store.delete("nodes", "n1")
    assert await poll_until(lambda: placement() == ["n0", "n3"] and status().get("desiredNumberScheduled") == 2,
                            within=WITHIN), placement()
    api.store.patch("nodes", "n2", {"metadata": {"labels": {"role": "worker"}}})
    assert await poll_until(lambda: placement() == ["n0", "n2", "n3"], within=WITHIN), placement()

    before = {p["metadata"]["uid"] for p in pods_of(api.store, "agent-")}
    api.store.patch("daemonsets", "agent", {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "agent:2"}]}}}}, namespace="default")
    generation = api.store.get("daemonsets", "agent")["metadata"]["generation"]
    assert await poll_until(lambda: status().get("observedGeneration") == generation and status().get(
        "updatedNumberScheduled") == 3 and status().get("numberAvailable") == 3 and placement() == [
        "n0", "n2", "n3"], within=WITHIN), (placement(), status())
    after = pods_of(api.store, "agent-")
    assert not before & {p["metadata"]["uid"] for p in after}
    assert all(p["spec"]["containers"][0]["image"] == "agent:2" for p in after)


async def test_endpointslices_follow_readiness_ips_and_ports(api: RestartableApi, controllers: ControllerManager
                                                             ) -> None:
    for i in range(2):
        api.store.create(node(f"n{i}"))
    unready: set[str] = set()
    kubelet = FakeKubelet(api.store, ready=lambda pod: pod["metadata"]["name"] not in unready)
    api.store.create(deployment("web", 2, pod_template({"app": "web"}, ports=[
        {"name": "http", "containerPort": 8080}])))
    api.store.create(service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "http"},
                                                     {"name": "admin", "port": 9000}]))

    def slices() -> list[Obj]:
        items, _ = api.store.list("endpointslices", "default", label_selector="kubernetes.io/service-name=web")
        return items

    def endpoints() -> dict[str, Obj]:
        return {e["targetRef"]["name"]: e for s in slices() for e in s.get("endpoints") or []}

    def settled(ready: int, total: int) -> bool:
        kubelet.step()
        eps = endpoints()
        return len(eps) == total and sum(e["conditions"]["ready"] for e in eps.values()) == ready

    assert await poll_until(lambda: settled(2, 2), within=WITHIN), slices()
    (sl,) = slices()
    svc = api.store.get("services", "web")
    assert sl["metadata"]["name"].startswith("web-")
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert sl["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert sl["addressType"] == "IPv4"
    assert sl["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"},
                           {"name": "admin", "port": 9000, "protocol": "TCP"}]
    pods = {p["metadata"]["name"]: p for p in pods_of(api.store, "web-")}
    for name, ep in endpoints().items():
        assert ep["addresses"] == [pods[name]["status"]["podIP"]]
        assert ep["nodeName"] == pods[name]["spec"]["nodeName"]
        assert ep["targetRef"] == {"kind": "Pod", "namespace": "default", "name": name,
                                   "uid": pods[name]["metadata"]["uid"]}

    # no churn: with nothing changing the slice is not rewritten (two resync periods)
    rv = sl["metadata"]["resourceVersion"]
    assert not await poll_until(lambda: slices()[0]["metadata"]["resourceVersion"] != rv, within=5)

    sick = sorted(pods)[0]
    unready.add(sick)
    assert await poll_until(lambda: settled(1, 2), within=WITHIN)
    assert endpoints()[sick]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert slices()[0]["metadata"]["name"] == sl["metadata"]["name"]  # updated in place

    # a terminating pod stays listed as terminating until it is gone
    unready.clear()
    assert await poll_until(lambda: settled(2, 2), within=WITHIN)
    leaving = sorted(pods)[1]
    assert api.delete_pod(leaving)["metadata"]["deletionTimestamp"]
    assert await poll_until(lambda: endpoints().get(leaving, {}).get("conditions") == {
        "ready": False, "serving": True, "terminating": True}, within=WITHIN), endpoints()
    assert await poll_until(lambda: settled(2, 2) and leaving not in endpoints(), within=WITHIN), endpoints()

    api.store.patch("services", "web", {"spec": {"selector": None}}, namespace="default")
    assert await poll_until(lambda: slices() == [], within=WITHIN)


async def test_deleting_a_deployment_collects_its_replicasets_and_pods(
        api: RestartableApi, controllers: ControllerManager, kubelet: FakeKubelet) -> None:
    api.store.create(node("n0"))
    api.store.create(deployment("web", 2, pod_template({"app": "web"})))
    api.store.create(deployment("keep", 1, pod_template({"app": "keep"})))
    assert await poll_until(lambda: available(api, "web", 2) and available(api, "keep", 1), within=WITHIN)
    api.store.delete("deployments", "web", "default")
    assert await poll_until(lambda: rs_of(api, "web") == [] and pods_of(api.store, "web-", active=False) == [],
                            within=WITHIN), (rs_of(api, "web"), pods_of(api.store, "web-", active=False))
    assert len(rs_of(api, "keep")) == 1 and len(pods_of(api.store, "keep-")) == 1
    api.store.create(service("svc", {"app": "keep"}, [{"port": 80}]))
    assert await poll_until(lambda: len(api.store.list("endpointslices", "default")[0]) == 1, within=WITHIN)
    api.store.delete("services", "svc", "default")
    assert await poll_until(lambda: api.store.list("endpointslices", "default")[0] == [], within=WITHIN)


async def test_controllers_survive_an_api_restart(api: RestartableApi, controllers: ControllerManager,
                                                  kubelet: FakeKubelet) -> None:
    api.store.create(node("n0"))
    api.store.create(node("n1"))
    api.store.create(deployment("web", 2, pod_template({"app": "web"})))
    assert await poll_until(lambda: available(api, "web", 2), within=WITHIN)

    api.stop()
    # while the API is down: scale up, lose a pod, and compact the history (watches must re-list: 410)
    api.store.patch("deployments", "web", {"spec": {"replicas": 4}}, namespace="default")
    api.store.delete("pods", pods_of(api.store, "web-")[0]["metadata"]["name"], "default", grace_period_seconds=0)
    api.store.create(deployment("late", 1, pod_template({"app": "late"})))
    api.store.compact()
    assert not await poll_until(lambda: len(pods_of(api.store, "web-")) > 1, within=2.0)  # nobody acts meanwhile

    api.start()
    assert await poll_until(lambda: available(api, "web", 4) and available(api, "late", 1), within=WITHIN), (
        api.store.get("deployments", "web").get("status"), pods_of(api.store, "web-"))
    # and the controllers keep working afterwards
    api.store.patch("deployments", "web", {"spec": {"replicas": 1}}, namespace="default")
    assert await poll_until(lambda: available(api, "web", 1) and len(pods_of(api.store, "web-", active=False)) == 1,
                            within=WITHIN)
    assert await poll_until(lambda: all(not inf.error for inf in controllers.informers.values()), within=10)


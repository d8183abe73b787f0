"""The install's manifests (clustermesh_cli.install): consistency, least privilege, options, YAML.

The objects are checked against the real consumers where one exists: container arguments are parsed
by the real ``clustermesh-apiserver`` and ``clustermesh-agent`` click commands, every object goes
through the official Kubernetes client's models (a misspelt field would be dropped), and the YAML
is read back.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from kubernetes import client as kclient

from agent.cli import main as agent_main
from clustermesh_apiserver.cli import main as apiserver_main
from clustermesh_cli.install import InstallOptions, InstallOptionsError, names, render_manifests, to_yaml
from clustermesh_cli.install.manifests import BPFFS_MOUNT, CGROUP_MOUNT, agent_kvstore_config, etcd_init_script
from clustermesh_cli.install.options import default_image, project_version
from clustermesh_cli.install.rbac import WRITE_VERBS
from clustermesh_cli.install.render import deploy_yaml, equivalent_command, render_command
from clustermesh_cli.install.yamlout import load_documents
from lab.node.podspec import expand

Obj = dict[str, Any]


def opts(**kw: Any) -> InstallOptions:
    return InstallOptions(cluster_name=kw.pop("cluster_name", "c1"), cluster_id=kw.pop("cluster_id", 1), **kw)


def by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objs: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objs:
        if o["kind"] in ("Deployment", "DaemonSet"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def all_containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(objs: list[Obj], workload: str, name: str) -> Obj:
    spec = dict(pod_specs(objs))[workload]
    return next(c for c in all_containers(spec) if c["name"] == name)


VARIANTS = [
    opts(),
    opts(cluster_name="east-1", cluster_id=42, namespace="mesh", service_type="LoadBalancer",
         service_annotations=(("service.beta.kubernetes.io/aws-load-balancer-scheme", "internal"),)),
    opts(source="kubernetes", routing_mode="native", max_connected_clusters=511, cluster_id=300),
    opts(enable_mcs_api=True, enable_cilium_endpoint_slice=True, etcd_data_medium="Memory", mount_kernel_headers=False),
    opts(cgroup_root="/sys/fs/cgroup/unified", agent_cgroup="/sys/fs/cgroup/unified/lab/$(NODE_NAME)",
         bpffs_root="/sys/fs/bpf", pin_root="/sys/fs/bpf/lab-x", agent_state_root="/run/lab/agents",
         kube_api_server="https://172.16.1.1:443", agent_kvstore_host_ips=("10.1.0.5",), underlay_device="Lul",
         agent_extra_args=("--clustermesh-sync-timeout", "20"), apiserver_extra_args=("--kvstore-lease-ttl", "60")),
]
IDS = ["defaults", "loadbalancer-namespace", "kubernetes-native-511", "mcs-ces-memory", "lab-like"]


@pytest.fixture(params=VARIANTS, ids=IDS)
def variant(request: pytest.FixtureRequest) -> tuple[InstallOptions, list[Obj]]:
    options: InstallOptions = request.param
    return options, render_manifests(options)


# ---- structure ----

def test_objects_names_and_order() -> None:
    objs = render_manifests(opts())
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", names.CONFIG_MAP),
        ("ConfigMap", names.AGENT_CONFIG_MAP),
        ("ServiceAccount", names.APISERVER),
        ("ServiceAccount", names.AGENT),
        ("ClusterRole", names.APISERVER),
        ("ClusterRoleBinding", names.APISERVER),
        ("ClusterRole", names.AGENT),
        ("ClusterRoleBinding", names.AGENT),
        ("Service", names.APISERVER),
        ("Deployment", names.APISERVER),
        ("DaemonSet", names.AGENT),
    ]
    assert not by_kind(objs, "Secret"), "the pure renderer must not emit key material"


def test_namespaces_and_labels(variant: tuple[InstallOptions, list[Obj]]) -> None:
    options, objs = variant
    for o in objs:
        md = o["metadata"]
        assert md["labels"][names.PART_OF_LABEL] == names.PART_OF, md["name"]
        if o["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in md
        else:
            assert md["namespace"] == options.namespace, (o["kind"], md["name"])


def test_selectors_match_templates(variant: tuple[InstallOptions, list[Obj]]) -> None:
    _, objs = variant
    for o in by_kind(objs, "Deployment") + by_kind(objs, "DaemonSet"):
        selector = o["spec"]["selector"]["matchLabels"]
        labels = o["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), o["metadata"]["name"]
    svc = one(objs, "Service", names.APISERVER)
    deployment = one(objs, "Deployment", names.APISERVER)
    agents = one(objs, "DaemonSet", names.AGENT)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert not svc["spec"]["selector"].items() <= agents["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"] == {"k8s-app": "clustermesh-apiserver"}  # cilium-cli's selector


def test_every_mount_has_a_volume_and_every_volume_is_used(variant: tuple[InstallOptions, list[Obj]]) -> None:
    _, objs = variant
    for workload, spec in pod_specs(objs):
        volumes = [v["name"] for v in spec["volumes"]]
        assert len(volumes) == len(set(volumes)), f"{workload}: duplicate volume names"
        used = set()
        for c in all_containers(spec):
            targets = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert len(targets) == len(set(targets)), f"{workload}/{c['name']}: two mounts on one path"
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{workload}/{c['name']} mounts unknown volume {m['name']}"
                used.add(m["name"])
        assert used == set(volumes), f"{workload}: unused volumes {set(volumes) - used}"


def _referenced(spec: Obj) -> set[tuple[str, str]]:
    refs: set[tuple[str, str]] = set()
    for v in spec["volumes"]:
        if "secret" in v:
            refs.add(("Secret", v["secret"]["secretName"]))
        if "configMap" in v:
            refs.add(("ConfigMap", v["configMap"]["name"]))
        for src in v.get("projected", {}).get("sources", []):
            for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                if key in src:
                    refs.add((kind, src[key]["name"]))
    for c in all_containers(spec):
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in vf:
                    refs.add((kind, vf[key]["name"]))
    return refs


def test_referenced_objects_are_rendered_or_runtime_secrets(variant: tuple[InstallOptions, list[Obj]]) -> None:
    _, objs = variant
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objs}
    runtime = {("Secret", s) for s in names.RUNTIME_SECRETS}
    for workload, spec in pod_specs(objs):
        missing = _referenced(spec) - rendered - runtime
        assert not missing, f"{workload} references objects nobody creates: {missing}"
        sa = spec["serviceAccountName"]
        assert ("ServiceAccount", sa) in rendered


def test_projected_clustermesh_volume_provides_the_agent_kvstore_files(variant: tuple[InstallOptions, list[Obj]]
                                                                       ) -> None:
    options, objs = variant
    spec = dict(pod_specs(objs))[names.AGENT]
    volume = next(v for v in spec["volumes"] if v["name"] == "clustermesh-secrets")
    sources = volume["projected"]["sources"]
    assert {"secret": {"name": names.CLUSTERMESH_SECRET, "optional": True}} in sources  # agents start w/o peers
    remote = next(s["secret"] for s in sources if s["secret"]["name"] == names.REMOTE_CERT_SECRET)
    provided = {f"{names.CLUSTERMESH_CONFIG_DIR}/{item['path']}" for item in remote["items"]}
    kvstore = yaml.safe_load(agent_kvstore_config(options))
    assert {kvstore["trusted-ca-file"], kvstore["cert-file"], kvstore["key-file"]} == provided
    assert kvstore["endpoints"] == [options.resolved_agent_kvstore_endpoint]
    mount = next(m for m in container(objs, names.AGENT, "agent")["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": "clustermesh-secrets", "mountPath": names.CLUSTERMESH_CONFIG_DIR, "readOnly": True}


def test_agent_config_map_files_are_what_the_agent_is_given(variant: tuple[InstallOptions, list[Obj]]) -> None:
    _, objs = variant
    cm = one(objs, "ConfigMap", names.AGENT_CONFIG_MAP)
    args = container(objs, names.AGENT, "agent")["args"]
    for flag, key in (("--kvstore-config", names.AGENT_KVSTORE_FILE), ("--kubeconfig", names.AGENT_KUBECONFIG_FILE)):
        assert args[args.index(flag) + 1] == f"{names.AGENT_CONFIG_DIR}/{key}"
        assert key in cm["data"]
    kubeconfig = yaml.safe_load(cm["data"][names.AGENT_KUBECONFIG_FILE])
    assert kubeconfig["users"][0]["user"] == {"tokenFile": f"{names.SERVICE_ACCOUNT_DIR}/token"}
    assert kubeconfig["clusters"][0]["cluster"]["certificate-authority"] == f"{names.SERVICE_ACCOUNT_DIR}/ca.crt"


def test_cluster_config_map() -> None:
    cm = one(render_manifests(opts(cluster_name="east", cluster_id=7, routing_mode="native")), "ConfigMap",
             names.CONFIG_MAP)
    assert cm["data"] == {"cluster-name": "east", "cluster-id": "7", "max-connected-clusters": "255",
                          "routing-mode": "native", "apiserver-source": "cilium"}
    assert one(render_manifests(opts()), "ConfigMap", names.CONFIG_MAP)["data"]["tunnel-protocol"] == "vxlan"


# ---- the workloads ----

def test_every_container_names_its_command(variant: tuple[InstallOptions, list[Obj]]) -> None:
    options, objs = variant
    for workload, spec in pod_specs(objs):
        for c in all_containers(spec):
            assert c["command"], f"{workload}/{c['name']}: no command (the lab never runs an image's entrypoint)"
            assert c["image"] in (options.image, options.resolved_etcd_image)
            assert c["imagePullPolicy"] == options.image_pull_policy


def _parse(command: click.Command, args: list[str], root: Path | None = None) -> dict[str, Any]:
    """Parse ``args`` with the real click command (no callback runs); returns the params. With
    ``root``, absolute file arguments are moved below it (and created there), for options whose
    files must exist; the params then name the original paths again."""
    args = list(args)
    if root is not None:
        for i, a in enumerate(args):
            if a.startswith("/var/lib/") and "." in a.rsplit("/", 1)[-1]:
                moved = root / a.lstrip("/")
                moved.parent.mkdir(parents=True, exist_ok=True)
                moved.touch()
                args[i] = str(moved)
    if isinstance(command, click.Group):
        parent = click.Context(command, info_name=command.name)
        sub = command.get_command(parent, args[0])
        assert sub is not None, args[0]
        params = sub.make_context(args[0], args[1:], parent=parent).params
    else:
        params = command.make_context(command.name or "cmd", args).params
    if root is not None:
        prefix = str(root)
        params = {k: (type(v)(str(v)[len(prefix):]) if isinstance(v, Path) and str(v).startswith(prefix) else v)
                  for k, v in params.items()}
    return params


def test_apiserver_arguments_parse_with_the_real_command(variant: tuple[InstallOptions, list[Obj]],
                                                         tmp_path: Path) -> None:
    options, objs = variant
    c = container(objs, names.APISERVER, names.APISERVER_CONTAINER)
    assert c["command"] == ["clustermesh-apiserver"]
    params = _parse(apiserver_main, c["args"], tmp_path)
    assert (params["cluster_name"], params["cluster_id"]) == (options.cluster_name, options.cluster_id)
    assert params["max_connected_clusters"] == options.max_connected_clusters
    assert params["source"] == options.source
    assert params["health_port"] == names.APISERVER_HEALTH_PORT and params["health_address"] == "0.0.0.0"
    assert params["etcd_endpoints"] == f"https://127.0.0.1:{names.ETCD_PORT}"
    assert str(params["etcd_cert"]).startswith(names.ETCD_ADMIN_SECRETS_DIR + "/")
    assert params["enable_mcs_api"] is options.enable_mcs_api
    assert params["enable_cilium_endpoint_slice"] is options.enable_cilium_endpoint_slice
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert names.ETCD_ADMIN_SECRETS_DIR in mounts
    probe = c["readinessProbe"]["httpGet"]
    assert probe["path"] == "/readyz"
    port = next(p for p in c["ports"] if p["name"] == probe["port"])
    assert port["containerPort"] == params["health_port"]


def test_etcd_init_script_runs_etcdinit_with_the_real_flags(variant: tuple[InstallOptions, list[Obj]],
                                                           tmp_path: Path) -> None:
    options, objs = variant
    c = container(objs, names.APISERVER, names.ETCD_INIT_CONTAINER)
    assert c["command"] == ["/bin/sh", "-c"] and c["args"] == [etcd_init_script(options)]
    script = c["args"][0]
    assert "$$" not in script and expand(script, {"X": "y"}) == script, "Kubernetes would rewrite the script"
    words = shlex.split(script.replace("\\\n", " "), comments=True)
    start = words.index("etcdinit") - 1
    end = next(i for i in range(start, len(words)) if words[i].endswith(";"))
    argv = [*words[start + 1:end], words[end].rstrip(";")]
    params = _parse(apiserver_main, argv, tmp_path)
    assert params["cluster_name"] == options.cluster_name
    assert params["etcd_endpoints"] == f"https://127.0.0.1:{names.ETCD_PORT}"
    etcd_flags = container(objs, names.APISERVER, names.ETCD_CONTAINER)["args"]
    for flag in etcd_flags:  # the same member and files; only the listen addresses differ
        if not flag.startswith(("--listen-client-urls", "--advertise-client-urls")):
            assert flag in words, flag


def test_etcd_container(variant: tuple[InstallOptions, list[Obj]]) -> None:
    options, objs = variant
    c = container(objs, names.APISERVER, names.ETCD_CONTAINER)
    assert c["command"] == ["etcd"] and c["image"] == options.resolved_etcd_image
    args = c["args"]
    assert "--client-cert-auth" in args
    assert f"--listen-client-urls=https://0.0.0.0:{names.ETCD_PORT}" in args
    assert f"--data-dir={names.ETCD_DATA_DIR}" in args
    for f in ("--trusted-ca-file", "--cert-file", "--key-file"):
        value = next(a for a in args if a.startswith(f + "="))
        assert value.split("=", 1)[1].startswith(names.ETCD_SERVER_SECRETS_DIR + "/")
    spec = dict(pod_specs(objs))[names.APISERVER]
    data = next(v for v in spec["volumes"] if v["name"] == "etcd-data-dir")
    assert data["emptyDir"] == ({"medium": "Memory"} if options.etcd_data_medium else {})
    server = next(v for v in spec["volumes"] if v["name"] == "etcd-server-secrets")
    assert server["secret"]["secretName"] == names.SERVER_CERT_SECRET


def test_agent_daemonset(variant: tuple[InstallOptions, list[Obj]]) -> None:
    options, objs = variant
    ds = one(objs, "DaemonSet", names.AGENT)
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["serviceAccountName"] == names.AGENT
    c = container(objs, names.AGENT, "agent")
    assert c["command"] == ["clustermesh-agent"] and c["securityContext"] == {"privileged": True}
    assert c["env"] == [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                          "fieldPath": "spec.nodeName"}}}]
    args = [expand(a, {"NODE_NAME": "c1-n0"}) for a in c["args"]]  # as the kubelet expands them
    params = _parse(agent_main, args)
    assert (params["cluster_name"], params["cluster_id"]) == (options.cluster_name, options.cluster_id)
    assert params["node_name"] == "c1-n0"
    assert params["datapath"] == "bpf" and params["routing_mode"] == options.routing_mode
    assert str(params["clustermesh_config"]) == names.CLUSTERMESH_CONFIG_DIR
    assert str(params["state_dir"]) == "/var/run/clustermesh/c1-n0"
    assert params["underlay_device"] == options.underlay_device
    hostpaths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    # pin root and cgroup are given as the container sees them; their host paths are the options'
    assert mounts["bpf-maps"] == BPFFS_MOUNT and hostpaths["bpf-maps"] == options.bpffs_root
    assert str(params["pin_root"]).startswith(BPFFS_MOUNT + "/")
    host_pin = options.bpffs_root.rstrip("/") + str(params["pin_root"])[len(BPFFS_MOUNT):]
    assert host_pin == options.pin_root
    assert mounts["cgroup"] == CGROUP_MOUNT and hostpaths["cgroup"] == options.cgroup_root
    host_cgroup = options.cgroup_root + str(params["cgroup"])[len(CGROUP_MOUNT):]
    assert host_cgroup == expand(options.resolved_agent_cgroup, {"NODE_NAME": "c1-n0"})
    assert hostpaths["agent-state"] == options.agent_state_root
    assert ("lib-modules" in hostpaths) is options.mount_kernel_headers
    assert tuple(c["args"][-len(options.agent_extra_args):]) == options.agent_extra_args or not options.agent_extra_args
    assert not any("readinessProbe" in x or "livenessProbe" in x for x in all_containers(spec))


def test_service(variant: tuple[InstallOptions, list[Obj]]) -> None:
    options, objs = variant
    svc = one(objs, "Service", names.APISERVER)
    assert svc["spec"]["type"] == options.service_type
    (port,) = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["protocol"]) == (2379, 2379, "TCP")
    if options.service_type == "NodePort":
        assert port["nodePort"] == 32379
    else:
        assert "nodePort" not in port
    assert svc["metadata"].get("annotations", {}) == dict(options.service_annotations)
    etcd = container(objs, names.APISERVER, names.ETCD_CONTAINER)
    assert port["targetPort"] in {p["containerPort"] for p in etcd["ports"]}


# ---- RBAC ----

def _rules(objs: list[Obj], name: str) -> set[tuple[str, str]]:
    role = one(objs, "ClusterRole", name)
    out = set()
    for rule in role["rules"]:
        assert not set(rule["verbs"]) & WRITE_VERBS, f"{name}: write verbs {rule['verbs']}"
        assert rule["verbs"] == ["get", "list", "watch"]
        for group in rule["apiGroups"]:
            out |= {(group, r) for r in rule["resources"]}
    return out


def test_rbac_is_read_only_and_per_source() -> None:
    cilium = _rules(render_manifests(opts()), names.APISERVER)
    assert cilium == {("", "namespaces"), ("", "services"), ("discovery.k8s.io", "endpointslices"),
                      ("cilium.io", "ciliumnodes"), ("cilium.io", "ciliumidentities"), ("cilium.io", "ciliumendpoints")}
    kube = _rules(render_manifests(opts(source="kubernetes")), names.APISERVER)
    assert kube == {("", "namespaces"), ("", "services"), ("", "nodes"), ("", "pods"),
                    ("discovery.k8s.io", "endpointslices")}
    mcs = _rules(render_manifests(opts(enable_mcs_api=True, enable_cilium_endpoint_slice=True)), names.APISERVER)
    assert ("cilium.io", "ciliumendpointslices") in mcs and ("cilium.io", "ciliumendpoints") not in mcs
    assert {("apiextensions.k8s.io", "customresourcedefinitions"), ("multicluster.x-k8s.io", "serviceexports")} <= mcs
    for objs in (render_manifests(opts()), render_manifests(opts(source="kubernetes"))):
        assert _rules(objs, names.AGENT) == {
            ("", "services"), ("networking.k8s.io", "networkpolicies"), ("cilium.io", "ciliumnetworkpolicies"),
            ("cilium.io", "ciliumclusterwidenetworkpolicies")}


def test_rbac_bindings_tie_roles_to_the_pods_service_accounts(variant: tuple[InstallOptions, list[Obj]]) -> None:
    options, objs = variant
    for workload, spec in pod_specs(objs):
        binding = one(objs, "ClusterRoleBinding", workload)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": workload}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                                        "namespace": options.namespace}]


# ---- against the official client's models ----

def _model_name(obj: Obj) -> str:
    version = obj["apiVersion"].split("/")[-1]
    return f"{version.capitalize()}{obj['kind']}"


def test_objects_survive_the_official_clients_models(variant: tuple[InstallOptions, list[Obj]]) -> None:
    """Deserialising into the kubernetes client's models and back drops unknown (misspelt) fields."""
    import json

    _, objs = variant
    api = kclient.ApiClient()
    for obj in objs:
        model = api.deserialize(json.dumps(obj), _model_name(obj), "application/json")
        back = api.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
        assert back == obj, f"{obj['kind']} {obj['metadata']['name']}"


# ---- determinism and YAML ----

def test_rendering_is_deterministic(variant: tuple[InstallOptions, list[Obj]]) -> None:
    options, objs = variant
    again = render_manifests(InstallOptions(**{f: getattr(options, f) for f in options.__dataclass_fields__}))
    assert again == objs
    assert to_yaml(again) == to_yaml(objs)


def test_yaml_round_trip_and_layout(variant: tuple[InstallOptions, list[Obj]]) -> None:
    _, objs = variant
    text = to_yaml(objs, header="line one\nline two")
    assert text.startswith("# line one\n# line two\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n")
    assert text.splitlines().count("---") == len(objs)
    assert load_documents(text) == objs
    assert "&id" not in text and "*id" not in text  # no YAML aliases
    assert "  - |\n" in text or "        - |\n" in text  # the etcd-init script is a literal block
    assert to_yaml(objs).startswith(f"# Generated by clustermesh-py {project_version()}: ")


def test_default_image_names_this_version() -> None:
    import tomllib
    from pathlib import Path

    version = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    assert project_version() == version, "the installed metadata is stale: reinstall the project (scripts/setup.sh)"
    assert default_image() == f"ghcr.io/clustermesh-py/clustermesh:{version}"
    assert opts().image == default_image()


# ---- options ----

@pytest.mark.parametrize(("changes", "message"), [
    ({"cluster_id": 0}, "--cluster-id 0: cluster ID 0 is reserved"),
    ({"cluster_id": 256}, "--cluster-id 256: cluster ID 256 is out of range 1..255"),
    ({"cluster_id": 512, "max_connected_clusters": 511}, "out of range 1..511"),
    ({"cluster_id": True}, "--cluster-id True: must be an integer"),
    ({"cluster_name": "Bad_Name"}, "--cluster-name 'Bad_Name': cluster name 'Bad_Name' must consist of lowercase"),
    ({"cluster_name": "default"}, "'default' is not allowed"),
    ({"cluster_name": "x" * 33}, "longer than 32"),
    ({"max_connected_clusters": 300}, "--max-connected-clusters 300: must be 255 or 511"),
    ({"namespace": "Kube_System"}, "--namespace 'Kube_System': must be a DNS label"),
    ({"service_type": "ClusterIP"}, "--service-type 'ClusterIP': must be one of NodePort, LoadBalancer"),
    ({"source": "crd"}, "--source 'crd': must be one of cilium, kubernetes"),
    ({"routing_mode": "vxlan"}, "--routing-mode 'vxlan': must be one of tunnel, native"),
    ({"node_port": 70000}, "--node-port 70000: must be a port"),
    ({"image": "has space:1"}, "--image 'has space:1': must be an image reference"),
    ({"image_pull_policy": "Sometimes"}, "--image-pull-policy 'Sometimes'"),
    ({"etcd_data_medium": "Disk"}, "--etcd-data-medium 'Disk': must be one of '', Memory"),
    ({"pin_root": "/var/pins"}, "--pin-root '/var/pins': must be below --bpffs-root /sys/fs/bpf"),
    ({"pin_root": "/sys/fs/bpf"}, "must be below --bpffs-root"),
    ({"bpffs_root": "sys/fs/bpf"}, "--bpffs-root 'sys/fs/bpf': must be an absolute path"),
    ({"agent_cgroup": "/sys/fs/cgroup/../etc"}, "must be an absolute path without '..'"),
    ({"agent_cgroup": "/cgroup/x"}, "--agent-cgroup '/cgroup/x': must be at or below --cgroup-root /sys/fs/cgroup"),
    ({"kube_api_server": "http://kubernetes:80"}, "--kube-api-server 'http://kubernetes:80': must be an https:// URL"),
    ({"agent_kvstore_endpoint": "https://host:99999"}, "is not a URL"),
    ({"agent_kvstore_host_ips": ("10.0.0.300",)}, "--agent-kvstore-host-ips '10.0.0.300': is not an IP address"),
    ({"agent_kvstore_endpoint": "https://10.0.0.1:2379", "agent_kvstore_host_ips": ("10.0.0.2",)},
     "needs an endpoint with a host name"),
    ({"enable_cilium_endpoint_slice": True, "source": "kubernetes"}, "needs --source cilium"),
    ({"underlay_device": "a-very-long-device-name"}, "--underlay-device"),
    ({"service_annotations": (("bad key", "x"),)}, "is not a valid annotation key"),
])
def test_invalid_options_say_which_flag_and_why(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InstallOptionsError) as err:
        opts(**changes)
    assert message in str(err.value)


def test_valid_edges() -> None:
    assert opts(cluster_id=255).cluster_id == 255
    assert opts(cluster_id=511, max_connected_clusters=511).cluster_id == 511
    assert opts(agent_cgroup="/sys/fs/cgroup").resolved_agent_cgroup == "/sys/fs/cgroup"
    assert opts(service_annotations={"a.b/c": "d"}).service_annotations == (("a.b/c", "d"),)
    assert opts(node_port=None, service_type="NodePort") is not None


# ---- the render command ----

def test_render_command_without_flags_prints_the_deploy_file() -> None:
    result = CliRunner().invoke(render_command, [])
    assert result.exit_code == 0, result.output
    assert result.output == deploy_yaml()


def test_render_command_with_flags() -> None:
    result = CliRunner().invoke(render_command, ["--cluster-name", "c2", "--cluster-id", "2", "--service-type",
                                                 "LoadBalancer", "--source", "kubernetes",
                                                 "--max-connected-clusters", "511", "--clustermesh-enable-mcs-api"])
    assert result.exit_code == 0, result.output
    objs = load_documents(result.output)
    assert objs == render_manifests(opts(cluster_name="c2", cluster_id=2, service_type="LoadBalancer",
                                         source="kubernetes", max_connected_clusters=511, enable_mcs_api=True))
    first = result.output.splitlines()[0]
    assert first == ("# Generated by clustermesh-py " + project_version() + ": python -m "
                     "clustermesh_cli.install.render --cluster-name c2 --cluster-id 2 --service-type LoadBalancer "
                     "--source kubernetes --max-connected-clusters 511 --clustermesh-enable-mcs-api")


def test_render_command_rejects_bad_options_with_a_usage_error() -> None:
    result = CliRunner().invoke(render_command, ["--cluster-id", "0"])
    assert result.exit_code == 2
    assert "--cluster-id 0: cluster ID 0 is reserved" in result.output


def test_equivalent_command_names_python_only_fields() -> None:
    text = equivalent_command(opts(pin_root="/sys/fs/bpf/lab"), prog="clustermesh enable --dry-run -o yaml")
    assert text == ("clustermesh enable --dry-run -o yaml --cluster-name c1 --cluster-id 1 "
                    "(and InstallOptions fields set in Python: pin_root)")

"""One pod on this node, from its arrival to its removal: the pod worker.

A worker loops until the pod is being deleted: set up the sandbox (cgroup, network, volumes), run
the init containers in order to completion, then the containers; collect exits, restart per
``restartPolicy`` with a doubling backoff (``CrashLoopBackOff`` while waiting), probe, and write
the pod's status when it changed. While the pod runs, its Secret, ConfigMap, projected and
downwardAPI volumes follow their sources (:mod:`lab.node.objectwatch` tells when a Secret or
ConfigMap changed; each volume is rewritten atomically, :mod:`lab.node.atomicwriter`). Once the pod
has a ``deletionTimestamp`` or is gone it SIGTERMs every process of the pod cgroup, SIGKILLs what is
left after the grace period, releases the sandbox, DELETEs the pod (``gracePeriodSeconds: 0``, uid
precondition: finalizers then keep the object only until they are removed) and removes the pod
directory. A pod that reaches Succeeded or Failed releases its sandbox at once and keeps its logs
until it is deleted.

``pod.json`` in the pod directory is the worker's record (rewritten on change)::

    {"uid", "namespace", "name", "node", "host_network": bool, "netns": name|null, "ip": str|null,
     "cgroup": path, "phase": str, "released": bool,
     "containers": {"<name>": {"init": bool, "restart_count": n, "state": "waiting|running|terminated",
                               "pid": int|null, "shim_pid": int|null, "start_time": ticks|null,
                               "log": path}}}

Runs are adopted from their files after a node runtime restart (:mod:`lab.node.containers`), so
containers keep running, and keep their restart counts, across restarts of the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from lab.kube.controllers.actions import PODS, Delete
from lab.kube.controllers.client import KubeClient, RequestError
from lab.node import mountpoints, podspec, probes
from lab.node.atomicwriter import write_volume
from lab.node.cgroups import PodCgroup
from lab.node.config import NodeConfig
from lab.node.containers import ContainerRun, ExitInfo
from lab.node.launch import LaunchSpec, MountSpec
from lab.node.layout import PodDir, labs_root, read_json, write_json
from lab.node.objectwatch import ObjectWatches, RefData
from lab.node.podstatus import TERMINAL, ContainerView, Running, Terminated, Waiting, phase, pod_status, status_patch
from lab.node.volumes import (
    EmptyDir,
    Files,
    HostPath,
    VolumeError,
    prepare_host_path,
    service_account_files,
    volume_content,
)
from meshcore.backoff import Backoff
from meshcore.log import get_logger

Obj = dict[str, Any]
T = TypeVar("T")

#: Upper bound of any grace period the runtime waits for (a pod may ask for more; the lab is for tests).
MAX_GRACE = 120
#: Extra wait for processes to go after SIGKILL.
KILL_WAIT = 5.0
#: Retry period for a container that cannot be configured (missing Secret, bad spec...).
CONFIG_RETRY = 3.0
#: How long a pass waits for the first list of the Secrets and ConfigMaps the pod reads.
REFS_WAIT = 5.0
_TICK = 0.5
_FAST_TICK = 0.1


class Network(Protocol):
    """The pod network of the node (:class:`lab.node.podnet.PodNetwork`)."""

    def attach(self, pod_uid: str, netns_name: str) -> ipaddress.IPv4Address: ...

    def detach(self, pod_uid: str, netns_name: str) -> None: ...

    def attached(self) -> dict[str, tuple[str, ipaddress.IPv4Address]]: ...


NetnsNamer = Callable[[str, str, int, str, str], str]


class NetnsClaims:
    """Which pod uid uses which pod namespace name: a pod re-created under the same name waits for
    the old one to release it (both get the same namespace name)."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def owner(self, name: str) -> str | None:
        return self._owners.get(name)

    async def acquire(self, name: str, uid: str, *, within: float) -> bool:
        """Claim ``name`` for ``uid``, waiting up to ``within`` seconds for another owner to release it."""
        deadline = time.monotonic() + within
        while self._owners.setdefault(name, uid) != uid:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    def release(self, name: str, uid: str) -> None:
        if self._owners.get(name) == uid:
            del self._owners[name]


@dataclass
class NodeContext:
    """What every pod worker of one node shares."""

    cfg: NodeConfig
    client: KubeClient
    network: Network
    netns_name: NetnsNamer
    run_net: Callable[..., Awaitable[Any]]
    claims: NetnsClaims
    http: aiohttp.ClientSession
    env_marker: dict[str, str]
    node_memory: int
    objects: ObjectWatches
    changed: Callable[[], None] = lambda: None
    ca: bytes = b""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(timestamp: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 ``...Z`` timestamp (None if it does not parse)."""
    try:
        parsed = datetime.datetime.strptime(str(timestamp), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _terminated(info: ExitInfo, container_id: str = "") -> Terminated:
    return Terminated(exit_code=info.exit_code, reason=info.reason, started_at=info.started_at,
                      finished_at=info.finished_at, message=info.message, signal=info.signal,
                      container_id=container_id)


def should_restart(policy: str, *, init: bool, exit_code: int) -> bool:
    """Whether a container that ended with ``exit_code`` runs again under ``policy``."""
    if init:
        return policy != "Never" and exit_code != 0
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


@dataclass
class Slot:
    """One container (or init container) of the pod and its runs."""

    spec: Obj
    init: bool
    run: ContainerRun | None = None
    prev: Terminated | None = None
    waiting: Waiting = field(default_factory=lambda: Waiting("ContainerCreating"))
    next_start: float = 0.0
    crashes: int = 0
    backoff_delay: float = 0.0
    restart_pending: bool = False
    seen_running: bool = False
    exit_seen: bool = False
    running_since: float | None = None
    readiness: probes.ProbeState | None = None
    liveness: probes.ProbeState | None = None
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    kill_at: float | None = None
    was_ready: bool = False  # an adopted run's readiness as the API last showed it

    @property
    def name(self) -> str:
        return str(self.spec.get("name"))

    @property
    def image(self) -> str:
        return str(self.spec.get("image") or "")

    @property
    def restart_count(self) -> int:
        return self.run.n if self.run is not None else 0

    @property
    def succeeded(self) -> bool:
        return self.run is not None and self.run.exit is not None and self.run.exit.exit_code == 0

    def container_id(self, uid: str) -> str:
        return f"lab://{uid}/{self.name}/{self.restart_count}" if self.run is not None else ""

    def view(self, uid: str) -> ContainerView:
        run, cid = self.run, self.container_id(uid)
        if run is None:
            return ContainerView(self.name, self.image, self.waiting, 0, self.prev)
        if run.starting:
            return ContainerView(self.name, self.image, Waiting("ContainerCreating"), run.n, self.prev,
                                 container_id=cid)
        if run.running:
            ready = not self.init and (self.readiness.ok if self.readiness is not None else True)
            return ContainerView(self.name, self.image, Running(run.started_at or now_rfc3339()), run.n, self.prev,
                                 ready=ready, started=True, container_id=cid)
        assert run.exit is not None
        ended = _terminated(run.exit, cid)
        if self.restart_pending:
            return ContainerView(self.name, self.image, Waiting("CrashLoopBackOff", self.waiting.message), run.n,
                                 ended, container_id=cid)
        return ContainerView(self.name, self.image, ended, run.n, self.prev, ready=self.init and ended.exit_code == 0,
                             container_id=cid)


class PodWorker:
    """The lifecycle of one pod (see the module docstring); :meth:`run` it as a task."""

    def __init__(self, ctx: NodeContext, uid: str, namespace: str, name: str, pod: Obj | None = None) -> None:
        self.ctx = ctx
        self.uid = uid
        self.namespace = namespace
        self.name = name
        self.pod = pod
        self.dir = PodDir.of(ctx.cfg.state_path, namespace, name, uid)
        self.cgroup = PodCgroup(ctx.cfg.cgroup_path, uid)
        self.gone = False
        self.netns: str | None = None
        self.ip: str | None = None
        self.phase = "Pending"
        self.released = False
        self.slots: dict[str, Slot] = {}
        self._net_ready = False
        self._volumes_ready = False
        self._sources: dict[str, str] = {}
        self._written: dict[str, dict[str, tuple[bytes, int]]] = {}  # file volumes as last written
        self._refresh_errors: dict[str, str] = {}
        self._setup_error: VolumeError | None = None
        self._start_time: str | None = None
        self._foreign_terminal = False
        self._wake = asyncio.Event()
        self._last_record: Obj | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._log = get_logger(__name__, pod=f"{namespace}/{name}", uid=uid)

    # ----- inputs -----

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def update(self, pod: Obj) -> None:
        """A newer version of the pod from the watch."""
        if self.pod is None or _rv(pod) >= _rv(self.pod):
            self.pod = pod
        self._wake.set()

    def mark_gone(self) -> None:
        """The pod object no longer exists."""
        self.gone = True
        self._wake.set()

    @property
    def deleting(self) -> bool:
        return self.gone or bool(self.pod is not None and (self.pod.get("metadata") or {}).get("deletionTimestamp"))

    # ----- the loop -----

    async def run(self) -> None:
        """Run the pod until it is deleted and cleaned up (or the task is cancelled: then everything
        is left running, for the next node runtime to adopt)."""
        try:
            async with asyncio.TaskGroup() as tg:  # the probes run in it
                self._tg = tg
                await self._lifecycle()
                self._stop_all_probes()
        finally:
            self._stop_all_probes()
            self.ctx.objects.unsubscribe(self.uid)
            self.ctx.changed()

    async def _lifecycle(self) -> None:
        while self.pod is None and not self.gone:  # adopted from disk: wait for the API's word
            await self._sleep(5.0)
        if self.pod is not None:
            self._init_slots()
        self._adopt()
        failures = publish_failures = 0
        while not self.deleting:
            delay = _TICK
            try:
                delay = await self._sync()
                failures = 0
            except Exception as err:  # one bad pass must not end the pod
                failures += 1
                delay = min(10.0, 0.2 * 2 ** min(failures, 6))
                if failures <= 3 or failures % 20 == 0:
                    log = self._log.warning if isinstance(err, RequestError) else self._log.exception
                    log("pod sync failed", error=str(err), attempt=failures)
            try:
                await self._publish()
                publish_failures = 0
            except RequestError as err:  # the API is down: containers are looked after all the same
                publish_failures += 1
                if publish_failures <= 1 or publish_failures % 50 == 0:
                    self._log.warning("cannot write the pod status", error=str(err), attempt=publish_failures)
                delay = min(delay, 2.0)
            self._write_record()
            await self._sleep(delay)
        await self._shutdown()

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if something happened meanwhile (a pod update, a probe verdict)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    def _init_slots(self) -> None:
        assert self.pod is not None
        if self.slots:
            return
        for c in podspec.containers(self.pod, init=True):
            self.slots[str(c["name"])] = Slot(c, True)
        for c in podspec.containers(self.pod):
            self.slots[str(c["name"])] = Slot(c, False, waiting=Waiting("ContainerCreating"))
        status = self.pod.get("status") or {}
        self._start_time = status.get("startTime")
        if status.get("phase") in TERMINAL and not self.dir.root.exists():
            self._foreign_terminal = True  # finished before this node runtime knew it: nothing to run

    def _adopt(self) -> None:
        """Pick up runs an earlier node runtime left (their files in the pod directory)."""
        record = read_json(self.dir.record)
        containers = record.get("containers") if isinstance(record, dict) else None
        if isinstance(record, dict):
            self.released = bool(record.get("released"))
            self.netns = record.get("netns")
            self.ip = record.get("ip")
        for name, slot in self.slots.items():
            runs = self.dir.runs(name)
            if not runs:
                continue
            n = runs[-1]
            entry = containers.get(name) if isinstance(containers, dict) else None
            shim_pid = entry.get("shim_pid") if isinstance(entry, dict) and entry.get("restart_count") == n else None
            slot.run = ContainerRun.adopt(self.dir, name, n, shim_pid=shim_pid if isinstance(shim_pid, int) else None)
            if n > 0:
                prev = read_json(self.dir.exit_file(name, n - 1))
                if isinstance(prev, dict):
                    slot.prev = _terminated(ExitInfo.from_doc(prev), f"lab://{self.uid}/{name}/{n - 1}")
            if slot.run.running:
                slot.running_since = time.monotonic()
                shown = self._shown_status(name)
                slot.was_ready = bool(shown.get("ready")) and shown.get("restartCount") == n
            self._log.info("adopted container run", container=name, restart=n, pid=slot.run.pid,
                           running=slot.run.running)

    def _shown_status(self, name: str) -> Obj:
        """The container's entry in the pod status the API shows."""
        status = (self.pod or {}).get("status") or {}
        for entry in [*(status.get("containerStatuses") or []), *(status.get("initContainerStatuses") or [])]:
            if isinstance(entry, dict) and entry.get("name") == name:
                return entry
        return {}

    async def _sync(self) -> float:
        """One pass; returns how long to wait before the next one."""
        assert self.pod is not None
        if self._foreign_terminal:
            return 30.0
        if not self.released:
            if not await self._setup():
                return CONFIG_RETRY
            await self._refresh_volumes()
        now = time.monotonic()
        for slot in self.slots.values():
            self._observe(slot, now)
        policy = podspec.restart_policy(self.pod)
        inits = [s for s in self.slots.values() if s.init]
        regular = [s for s in self.slots.values() if not s.init]
        init_failed = False
        for slot in inits:
            if slot.succeeded:
                continue
            if slot.run is not None and slot.run.exit is not None and not slot.restart_pending:
                init_failed = True  # failed, and the policy says no more runs
            elif not self.released and (slot.run is None or slot.restart_pending) and now >= slot.next_start:
                await self._start(slot)
            break
        if all(s.succeeded for s in inits):
            for slot in regular:
                if not self.released and (slot.run is None or slot.restart_pending) and now >= slot.next_start:
                    await self._start(slot)
        else:
            for slot in regular:
                if slot.run is None:
                    slot.waiting = Waiting("PodInitializing")
        self._enforce_liveness(now)
        inits_v, regular_v = self.views()
        self.phase = phase(policy, inits_v, regular_v, init_failed=init_failed)
        if self.phase in TERMINAL:
            if not self.released:
                self._log.info("pod finished", phase=self.phase)
                await self._release()
            return 30.0
        return self._next_delay(now)

    def _next_delay(self, now: float) -> float:
        delay = _TICK
        for slot in self.slots.values():
            if (slot.run is not None and slot.run.starting) or slot.kill_at is not None:
                delay = _FAST_TICK
            if (slot.restart_pending or slot.run is None) and slot.next_start > now:
                delay = min(delay, max(_FAST_TICK, slot.next_start - now))
        return delay

    def _observe(self, slot: Slot, now: float) -> None:
        """Follow the current run of ``slot``: start probes once it runs, decide on a restart once it ended."""
        run = slot.run
        if run is None or slot.exit_seen:
            return
        run.poll()
        if run.running and not slot.seen_running:
            slot.seen_running = True
            slot.running_since = now
            self._start_probes(slot, run)
            self.ctx.changed()
        if run.exit is None:
            return
        slot.exit_seen = True
        self._log.info("container exited", container=slot.name, restart=run.n, exit_code=run.exit.exit_code,
                       reason=run.exit.reason)
        self._stop_probes(slot)
        if slot.seen_running:
            run.kill_leftovers(signal.SIGKILL)  # what the main process left behind dies with it
        slot.kill_at = None
        assert self.pod is not None
        policy = podspec.restart_policy(self.pod)
        if should_restart(policy, init=slot.init, exit_code=run.exit.exit_code) and not self.deleting:
            cfg = self.ctx.cfg
            ran = now - slot.running_since if slot.running_since is not None else 0.0
            if ran >= 2 * cfg.restart_backoff_max:
                slot.crashes = 0
            slot.crashes += 1
            slot.backoff_delay = min(cfg.restart_backoff_max, cfg.restart_backoff * 2 ** (slot.crashes - 1))
            slot.next_start = now + slot.backoff_delay
            slot.restart_pending = True
            slot.waiting = Waiting("CrashLoopBackOff",
                                   f"back-off {slot.backoff_delay:g}s restarting failed container={slot.name} "
                                   f"pod={self.name}_{self.namespace}({self.uid})")
        slot.running_since = None
        self.ctx.changed()

    def _enforce_liveness(self, now: float) -> None:
        assert self.pod is not None
        for slot in self.slots.values():
            run = slot.run
            if run is None or not run.running or slot.liveness is None:
                continue
            if slot.kill_at is None and not slot.liveness.ok:
                grace = podspec.grace_seconds(self.pod, cap=MAX_GRACE)
                self._log.info("liveness probe failed, restarting container", container=slot.name,
                               message=slot.liveness.message)
                run.signal(signal.SIGTERM)
                slot.kill_at = now + grace
            elif slot.kill_at is not None and now >= slot.kill_at:
                run.signal(signal.SIGKILL)

    # ----- probes -----

    def _start_probes(self, slot: Slot, run: ContainerRun) -> None:
        try:
            readiness = probes.parse_probe(slot.spec.get("readinessProbe"), slot.spec)
            liveness = probes.parse_probe(slot.spec.get("livenessProbe"), slot.spec, liveness=True)
        except podspec.ContainerConfigError as err:
            self._log.warning("probe ignored", container=slot.name, error=str(err))
            return
        if slot.init or run.pid is None or self._tg is None:
            return
        # an adopted container keeps the readiness it had: a node runtime restart must not flap endpoints
        for probe, initially, attr in ((readiness, slot.was_ready, "readiness"), (liveness, True, "liveness")):
            if probe is None:
                continue
            state = probes.ProbeState(probe, initially=initially)
            setattr(slot, attr, state)
            slot.probe_tasks.append(self._tg.create_task(
                probes.probe_loop(state, pod_ip=self.ip or self.ctx.cfg.internal_ip, pid=run.pid,
                                  session=self.ctx.http, changed=self._wake.set),
                name=f"probe-{self.key}-{slot.name}-{attr}"))

    def _stop_probes(self, slot: Slot) -> None:
        for task in slot.probe_tasks:
            task.cancel()
        slot.probe_tasks.clear()
        slot.readiness = slot.liveness = None

    def _stop_all_probes(self) -> None:
        for slot in self.slots.values():
            self._stop_probes(slot)

    # ----- sandbox -----

    async def _setup(self) -> bool:
        """Cgroup, network and volumes (each once); False while something is missing."""
        assert self.pod is not None
        cfg = self.ctx.cfg
        self.dir.root.mkdir(parents=True, exist_ok=True)
        self.cgroup.create()
        if self._start_time is None:
            self._start_time = now_rfc3339()
        if not self._net_ready:
            if podspec.host_network(self.pod):
                self.netns, self.ip = None, cfg.internal_ip
            else:
                netns = self.ctx.netns_name(cfg.lab, cfg.cluster, cfg.node_index, self.namespace, self.name)
                if not await self.ctx.claims.acquire(netns, self.uid, within=1.0):
                    self._set_waiting(Waiting("ContainerCreating", f"waiting for network namespace {netns} "
                                              "to be released by a previous pod of the same name"))
                    return False
                self.netns = netns
                self.ip = str(await self.ctx.run_net(self.ctx.network.attach, self.uid, netns))
                self._log.info("pod network attached", netns=netns, ip=self.ip)
            self._net_ready = True
            self._write_record()
        if not self._volumes_ready:
            try:
                await self._materialise_volumes()
            except VolumeError as err:
                if str(err) != str(self._setup_error):
                    self._log.warning("volume setup failed", error=str(err))
                self._setup_error = err
                self._set_waiting(Waiting("ContainerCreating", str(err)))
                return False
            self._setup_error = None
            self._volumes_ready = True
        return True

    def _set_waiting(self, waiting: Waiting) -> None:
        for slot in self.slots.values():
            if slot.run is None:
                slot.waiting = waiting

    async def _read_refs(self) -> RefData:
        """The Secrets and ConfigMaps the pod reads (watched from now on; waits for their first list)."""
        assert self.pod is not None
        wanted = podspec.referenced_objects(self.pod)
        self.ctx.objects.subscribe(self.uid, self.namespace, wanted, self._wake.set)
        return await self.ctx.objects.wait(self.namespace, wanted, within=REFS_WAIT)

    def _token_issued(self) -> float | None:
        """When the pod's service-account tokens are issued: its start time, so that they stay the
        same across passes and node runtime restarts."""
        return _epoch(self._start_time)

    async def _materialise_volumes(self) -> None:
        assert self.pod is not None
        refs = await self._read_refs()
        cfg = self.ctx.cfg
        sources: dict[str, str] = {}
        payloads: dict[str, dict[str, tuple[bytes, int]]] = {}
        for vol in podspec.spec(self.pod).get("volumes") or []:
            if not isinstance(vol, dict) or not vol.get("name"):
                continue
            name = str(vol["name"])
            content = volume_content(vol, self.pod, refs, pod_ip=self.ip or "", host_ip=cfg.internal_ip,
                                     token_issued=self._token_issued())
            if isinstance(content, HostPath):
                prepare_host_path(content)
                sources[name] = content.path
            elif isinstance(content, EmptyDir):
                self.dir.volume(name).mkdir(parents=True, exist_ok=True)
                sources[name] = str(self.dir.volume(name))
            else:
                payloads[name] = dict(content.files)
                sources[name] = str(self.dir.volume(name))
        for name, files in payloads.items():
            await asyncio.to_thread(write_volume, self.dir.volume(name), files)
        self._written = payloads
        if podspec.wants_service_account(self.pod):
            sa = service_account_files(self.pod, self.ctx.ca, issued=self._token_issued())
            await asyncio.to_thread(write_volume, self.dir.volume(podspec.SA_VOLUME), sa.files)
            sources[podspec.SA_VOLUME] = str(self.dir.volume(podspec.SA_VOLUME))
        self._sources = sources

    async def _refresh_volumes(self) -> None:
        """Write again each file volume whose content changed since it was written (the kubelet's
        periodic remount of Secret, ConfigMap, projected and downwardAPI volumes). A volume that
        cannot be made now (a required Secret deleted, a key gone) keeps its files, as the kubelet's do."""
        assert self.pod is not None
        refs = self.ctx.objects.current(self.namespace, podspec.referenced_objects(self.pod))
        if refs is None:
            return
        cfg = self.ctx.cfg
        for vol in podspec.spec(self.pod).get("volumes") or []:
            name = str(vol.get("name", "")) if isinstance(vol, dict) else ""
            if name not in self._written:
                continue
            try:
                content = volume_content(vol, self.pod, refs, pod_ip=self.ip or "", host_ip=cfg.internal_ip,
                                         token_issued=self._token_issued())
                if not isinstance(content, Files) or content.files == self._written[name]:
                    self._refresh_errors.pop(name, None)
                    continue
                await asyncio.to_thread(write_volume, self.dir.volume(name), content.files)
            except (VolumeError, OSError) as err:
                if self._refresh_errors.get(name) != str(err):
                    self._log.warning("cannot update volume, keeping its files", volume=name, error=str(err))
                self._refresh_errors[name] = str(err)
                continue
            self._refresh_errors.pop(name, None)
            self._written[name] = dict(content.files)
            self._log.info("volume updated", volume=name, files=sorted(content.files))

    async def _release(self) -> None:
        """Give back the sandbox: processes, cgroup, network, mount points, volumes (logs stay)."""
        if self.released:
            return
        self._stop_all_probes()
        await asyncio.to_thread(self.cgroup.remove)
        if self.netns is not None:
            await self.ctx.run_net(self.ctx.network.detach, self.uid, self.netns)
            self.ctx.claims.release(self.netns, self.uid)
            self._log.info("pod network detached", netns=self.netns)
        self.ctx.objects.unsubscribe(self.uid)
        removed = await asyncio.to_thread(mountpoints.release, self.dir.created_paths,
                                          labs_root(self.ctx.cfg.state_path))
        if removed:
            self._log.info("removed mount points", paths=[str(p) for p in removed])
        await asyncio.to_thread(shutil.rmtree, self.dir.volumes, True)
        self.released = True
        self._net_ready = self._volumes_ready = False
        self._written = {}
        self._write_record()
        self.ctx.changed()

    # ----- containers -----

    def _base_env(self) -> dict[str, str]:
        assert self.pod is not None
        cfg = self.ctx.cfg
        host, port = cfg.api_service_host, cfg.api_service_port
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": f"{venv_bin}:{podspec.DEFAULT_PATH}", "HOME": "/root",
            "HOSTNAME": podspec.pod_hostname(self.pod, cfg.node_name), "CLUSTER_NAME": cfg.cluster,
            "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}", f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": str(port), f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
            **self.ctx.env_marker,
        }  # fmt: skip

    def _mounts(self, container: Obj) -> list[podspec.Mount]:
        assert self.pod is not None
        sources = dict(self._sources)
        mounts = podspec.container_mounts(container, sources, is_file=os.path.isfile)
        if podspec.SA_VOLUME in sources and not podspec.mounts_service_account(container):
            mounts.append(podspec.Mount(sources[podspec.SA_VOLUME], podspec.SA_MOUNT_PATH, True, False))
        return sorted(mounts, key=lambda m: m.target.count("/"))

    async def _start(self, slot: Slot) -> None:
        """Start the next run of ``slot`` (or record why it cannot start)."""
        assert self.pod is not None
        cfg = self.ctx.cfg
        try:
            refs = await self._read_refs()
            env = podspec.container_env(self.pod, slot.spec, base=self._base_env(), refs=refs, pod_ip=self.ip or "",
                                        host_ip=cfg.internal_ip, node_memory=self.ctx.node_memory)
            argv = podspec.container_argv(slot.spec, env)
            mounts = self._mounts(slot.spec)
            host_targets = [(Path(m.target), m.is_file) for m in mounts if not podspec.nested_in_other(m, mounts)]
            await asyncio.to_thread(mountpoints.prepare, self.dir.created_paths, host_targets,
                                    labs_root(cfg.state_path))
        except podspec.ContainerConfigError as err:
            if slot.waiting.message != str(err):
                self._log.warning("container cannot start", container=slot.name, reason=err.reason, error=str(err))
            slot.waiting = Waiting(err.reason, str(err))
            slot.next_start = time.monotonic() + CONFIG_RETRY
            return
        except OSError as err:
            slot.waiting = Waiting("CreateContainerError", f"cannot create mount points: {err}")
            slot.next_start = time.monotonic() + CONFIG_RETRY
            return
        n = slot.run.n + 1 if slot.run is not None else 0
        spec = LaunchSpec(
            argv=argv, env=env, cwd=str(slot.spec.get("workingDir") or "") or None,
            cgroup=str(self.cgroup.path), netns=f"/run/netns/{self.netns}" if self.netns else None,
            hostname=podspec.pod_hostname(self.pod, cfg.node_name),
            mounts=[MountSpec(m.source, m.target, m.read_only, m.is_file) for m in mounts],
            pid_file=str(self.dir.pid_file(slot.name, n)), exit_file=str(self.dir.exit_file(slot.name, n)),
        )  # fmt: skip
        if slot.run is not None and slot.run.exit is not None:
            slot.prev = _terminated(slot.run.exit, slot.container_id(self.uid))
        slot.run = await asyncio.to_thread(ContainerRun.start, self.dir, slot.name, n, spec,
                                           env_marker=self.ctx.env_marker)
        slot.restart_pending = slot.seen_running = slot.exit_seen = slot.was_ready = False
        slot.waiting = Waiting("ContainerCreating")
        self._log.info("container started", container=slot.name, restart=n, argv=argv[:4])
        self.ctx.changed()

    # ----- status -----

    def views(self) -> tuple[list[ContainerView], list[ContainerView]]:
        inits = [s.view(self.uid) for s in self.slots.values() if s.init]
        regular = [s.view(self.uid) for s in self.slots.values() if not s.init]
        return inits, regular

    async def _publish(self) -> None:
        """Write the pod's status if it differs from what the API shows."""
        if self.pod is None or self.gone or self._foreign_terminal:
            return
        inits, regular = self.views()
        current = self.pod.get("status") or {}
        desired = pod_status(pod_phase=self.phase, inits=inits, regular=regular, now=now_rfc3339(), previous=current,
                             pod_ip=self.ip, host_ip=self.ctx.cfg.internal_ip, start_time=self._start_time)
        patch = status_patch(current, desired)
        if patch is None:
            return
        try:
            updated = await self.ctx.client.request(
                "PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", patch,
                content_type="application/merge-patch+json")
        except RequestError as err:
            if err.status == 404:
                return  # gone meanwhile: the watch will say so
            raise
        if (updated.get("metadata") or {}).get("uid") == self.uid:
            self.update(updated)

    def record(self) -> Obj:
        """The worker's record (``pod.json``; also the pod's entry in ``node.json``)."""
        containers = {}
        for name, slot in self.slots.items():
            run = slot.run
            state = "waiting" if run is None or run.starting or slot.restart_pending else \
                "running" if run.running else "terminated"
            containers[name] = {
                "init": slot.init, "restart_count": slot.restart_count, "state": state,
                "pid": run.pid if run is not None and run.running else None,
                "shim_pid": run.shim_pid if run is not None else None,
                "start_time": run.start_time if run is not None and run.running else None,
                "log": str(self.dir.log(name, slot.restart_count)),
            }  # fmt: skip
        return {
            "uid": self.uid, "namespace": self.namespace, "name": self.name, "node": self.ctx.cfg.node_name,
            "host_network": bool(self.pod is not None and podspec.host_network(self.pod)), "netns": self.netns,
            "ip": self.ip, "cgroup": str(self.cgroup.path), "phase": self.phase, "released": self.released,
            "dir": str(self.dir.root), "containers": containers,
        }  # fmt: skip

    def _write_record(self) -> None:
        if not self.dir.root.exists() or self._foreign_terminal:
            return
        doc = self.record()
        if doc != self._last_record:
            write_json(self.dir.record, doc)
            self._last_record = doc
            self.ctx.changed()

    # ----- deletion -----

    async def _shutdown(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after the grace period), release the sandbox,
        delete the pod object, remove the pod directory."""
        grace = podspec.grace_seconds(self.pod or {}, cap=MAX_GRACE)
        self._stop_all_probes()
        if self.cgroup.pids():
            self._log.info("stopping pod", grace=grace)
            self.cgroup.signal(signal.SIGTERM)
            if not await self._cgroup_empties(grace):
                self._log.info("killing what is left after the grace period")
                self.cgroup.kill()
                await self._cgroup_empties(KILL_WAIT)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for slot in self.slots.values():
                if slot.run is not None:
                    slot.run.poll()
            if all(s.run is None or s.run.exit is not None for s in self.slots.values()):
                break
            await asyncio.sleep(0.05)
        for slot in self.slots.values():
            slot.restart_pending = False
        if not self.gone and self.pod is not None and not self.released:
            inits, regular = self.views()
            self.phase = phase("Never", inits, regular) if regular else "Failed"
            with contextlib.suppress(RequestError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._publish()
        await self._release()
        backoff = Backoff(initial=0.2, maximum=5.0)
        while not self.gone and not await self._delete_object():
            await self._sleep(backoff.next_delay())
        while not self.gone:  # finalizers hold the object (deleting it with grace 0 now): logs stay until it goes
            await self._sleep(30.0)
        await asyncio.to_thread(shutil.rmtree, self.dir.root, True)
        self._log.info("pod removed")

    async def _cgroup_empties(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the pod cgroup to have no processes left."""
        deadline = time.monotonic() + within
        for _ in range(int(within / 0.05) + 1):
            if not self.cgroup.pids():
                return True
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        return not self.cgroup.pids()

    async def _delete_object(self) -> bool:
        """DELETE the pod (grace 0, uid precondition); False if the API did not take it."""
        try:
            gone = await self.ctx.client.apply(Delete(PODS, self.namespace, self.name, uid=self.uid, grace_seconds=0,
                                                      why="containers stopped"))
        except RequestError as err:
            if err.status in (404, 409):  # gone, or the name now belongs to another pod
                self.mark_gone()
                return True
            self._log.warning("cannot delete the pod yet", error=str(err))
            return False
        if gone is None:
            self.mark_gone()
        return True

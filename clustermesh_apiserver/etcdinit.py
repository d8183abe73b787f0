"""``clustermesh-apiserver etcdinit``: the users and roles of a cluster's clustermesh etcd.

Cilium's ``pkg/kvstore/etcdinit``: on a blank etcd, create ``root`` and ``admin-<cluster>`` (role
root), ``local-<cluster>`` (role ``local``: reads KVStoreMesh's cache), ``remote`` and one
``remote-<peer>`` per peer (role ``remote``: reads this cluster's exported state only), then enable
auth. Users have no password: etcd takes the user from the client certificate's CN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshcore.kvstore.auth import Permission, PermissionName
from meshcore.wire import keys as wk


@dataclass(frozen=True, slots=True)
class Grant:
    """Read access to ``key``, or to every key under it when ``prefix``."""

    key: str
    prefix: bool


@dataclass(frozen=True, slots=True)
class AuthPlan:
    """The users, their roles, and each role's read-only grants."""

    users: Mapping[str, str]
    roles: Mapping[str, tuple[Grant, ...]]


def auth_plan(cluster: str, peers: Iterable[str] = ()) -> AuthPlan:
    """The users and roles Cilium's etcdinit (plus per-peer users) creates for ``cluster``."""
    users = {"root": "root", f"admin-{cluster}": "root", f"local-{cluster}": "local", "remote": "remote"}
    users.update({f"remote-{peer}": "remote" for peer in peers})
    roles = {
        "local": (
            Grant(wk.HEARTBEAT, True),  # agents list-watch it as a prefix (a range read)
            Grant(wk.CACHE + "/", True),
            Grant(wk.CLUSTER_CONFIG + "/", True),
            Grant(wk.SYNCED + "/", True),
        ),
        "remote": (
            Grant(wk.HEARTBEAT, True),  # agents list-watch it as a prefix (a range read)
            Grant(wk.STATE + "/", True),
            Grant(wk.cluster_config_key(cluster), False),
            Grant(wk.synced_key(cluster, "") + "/", True),
        ),
    }
    return AuthPlan(users=users, roles=roles)


class AuthAdmin(Protocol):
    """The etcd auth operations etcdinit needs (implemented by ``EtcdClient``)."""

    async def user_list(self) -> list[str]: ...

    async def user_add(self, name: str) -> None: ...

    async def user_grant_role(self, user: str, role: str) -> None: ...

    async def role_list(self) -> list[str]: ...

    async def role_add(self, role: str) -> None: ...

    async def role_grant_permission(
        self,
        role: str,
        key: str,
        range_end: str | None = None,
        *,
        prefix: bool = False,
        permission: Permission | PermissionName = Permission.READ,
    ) -> None: ...

    async def auth_enable(self) -> None: ...


async def etcd_init(client: AuthAdmin, cluster: str, *, peers: Sequence[str] = ()) -> AuthPlan:
    """Create the plan's roles and users on ``client``'s etcd and enable auth. Idempotent while
    auth is still disabled (existing users and roles are kept and granted again)."""
    plan = auth_plan(cluster, peers)
    existing_roles = set(await client.role_list())
    for role, grants in plan.roles.items():
        if role not in existing_roles:
            await client.role_add(role)
        for grant in grants:
            await client.role_grant_permission(role, grant.key, prefix=grant.prefix, permission=Permission.READ)
    existing_users = set(await client.user_list())
    for user, role in plan.users.items():
        if user not in existing_users:
            await client.user_add(user)
        await client.user_grant_role(user, role)
    await client.auth_enable()
    return plan

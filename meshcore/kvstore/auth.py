"""etcd users, roles and auth switches: what ``etcdinit`` and per-peer user management need.

Users are created without a password, as Cilium's ``etcdinit`` does: with ``--client-cert-auth``
etcd takes the user from the client certificate's CN, so a certificate is the credential.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from meshcore.kvstore.codec import prefix_range
from meshcore.kvstore.connection import EtcdConnection
from meshcore.kvstore.etcdpb import auth_pb2, rpc_pb2


class Permission(enum.IntEnum):
    """What a role may do on a key range (values are etcd's ``authpb.Permission.Type``)."""

    READ = 0
    WRITE = 1
    READWRITE = 2


PermissionName = Literal["read", "write", "readwrite"]


@dataclass(frozen=True, slots=True)
class RolePermission:
    """One grant of a role: ``range_end`` empty means the single key, ``"\\0"`` means all keys
    from ``key`` on."""

    permission: Permission
    key: bytes
    range_end: bytes


class AuthAPI:
    """Auth methods of :class:`~meshcore.kvstore.client.EtcdClient`."""

    _conn: EtcdConnection

    async def _auth(self, method: str, request: object, op: str) -> None:
        await self._conn.unary("auth", method, request, op=op)

    async def user_add(self, name: str) -> None:
        """Create user ``name`` without a password (it authenticates by certificate CN)."""
        req = rpc_pb2.AuthUserAddRequest(name=name, options=auth_pb2.UserAddOptions(no_password=True))
        await self._auth("UserAdd", req, f"add user {name!r}")

    async def user_delete(self, name: str) -> None:
        """Delete user ``name``."""
        await self._auth("UserDelete", rpc_pb2.AuthUserDeleteRequest(name=name), f"delete user {name!r}")

    async def user_list(self) -> list[str]:
        """Names of all users."""
        resp = await self._conn.unary("auth", "UserList", rpc_pb2.AuthUserListRequest(), op="list users")
        return list(resp.users)

    async def user_get(self, name: str) -> list[str]:
        """Roles granted to user ``name``."""
        resp = await self._conn.unary(
            "auth", "UserGet", rpc_pb2.AuthUserGetRequest(name=name), op=f"get user {name!r}"
        )
        return list(resp.roles)

    async def user_grant_role(self, user: str, role: str) -> None:
        """Grant ``role`` to ``user``."""
        req = rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role)
        await self._auth("UserGrantRole", req, f"grant role {role!r} to user {user!r}")

    async def user_revoke_role(self, user: str, role: str) -> None:
        """Revoke ``role`` from ``user``."""
        req = rpc_pb2.AuthUserRevokeRoleRequest(name=user, role=role)
        await self._auth("UserRevokeRole", req, f"revoke role {role!r} from user {user!r}")

    async def role_add(self, role: str) -> None:
        """Create role ``role`` (with no permissions)."""
        await self._auth("RoleAdd", rpc_pb2.AuthRoleAddRequest(name=role), f"add role {role!r}")

    async def role_delete(self, role: str) -> None:
        """Delete role ``role``."""
        await self._auth("RoleDelete", rpc_pb2.AuthRoleDeleteRequest(role=role), f"delete role {role!r}")

    async def role_list(self) -> list[str]:
        """Names of all roles."""
        resp = await self._conn.unary("auth", "RoleList", rpc_pb2.AuthRoleListRequest(), op="list roles")
        return list(resp.roles)

    async def role_get(self, role: str) -> list[RolePermission]:
        """The permissions granted to ``role``."""
        resp = await self._conn.unary(
            "auth", "RoleGet", rpc_pb2.AuthRoleGetRequest(role=role), op=f"get role {role!r}"
        )
        return [RolePermission(Permission(p.permType), p.key, p.range_end) for p in resp.perm]

    async def role_grant_permission(
        self,
        role: str,
        key: str,
        range_end: str | None = None,
        *,
        prefix: bool = False,
        permission: Permission | PermissionName = Permission.READ,
    ) -> None:
        """Let ``role`` read and/or write ``key``: the single key, ``[key, range_end)``, or with
        ``prefix=True`` every key starting with ``key``."""
        if prefix and range_end is not None:
            raise ValueError("give either range_end or prefix=True, not both")
        perm = Permission[permission.upper()] if isinstance(permission, str) else permission
        if prefix:
            k, end = prefix_range(key)
        else:
            k, end = key.encode(), (range_end.encode() if range_end is not None else b"")
        req = rpc_pb2.AuthRoleGrantPermissionRequest(
            name=role, perm=auth_pb2.Permission(permType=perm.name, key=k, range_end=end)
        )
        what = f"{key!r}" + (" (prefix)" if prefix else "")
        await self._auth("RoleGrantPermission", req, f"grant {perm.name} on {what} to role {role!r}")

    async def auth_enable(self) -> None:
        """Turn authentication on; etcd requires user ``root`` with role ``root`` to exist."""
        await self._auth("AuthEnable", rpc_pb2.AuthEnableRequest(), "enable auth")

    async def auth_disable(self) -> None:
        """Turn authentication off (needs the root user once auth is on)."""
        await self._auth("AuthDisable", rpc_pb2.AuthDisableRequest(), "disable auth")

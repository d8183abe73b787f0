"""Where kubernetes mode keeps its identity allocations between runs.

Two sources, merged at start: the identity keys already in etcd (``cilium/state/identities/v1/id/``,
what remote clusters see, so they win a conflict) and, when a state directory is configured, the
file ``identities.json`` there, which also survives an etcd that was wiped. Allocations are
written back to the file whenever they change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from meshcore.errors import WireError
from meshcore.kvstore.types import KVStore
from meshcore.log import get_logger
from meshcore.pki import write_private_file
from meshcore.wire import keys as wk
from meshcore.wire.clusterinfo import identity_in_cluster_range
from meshcore.wire.identity import CLUSTER_LABEL, LabelSet

STATE_FILE = "identities.json"
_log = get_logger(__name__)


def _accept(
    found: dict[LabelSet, int], labels: LabelSet, ident: int, *, cluster: str, cluster_id: int, max_clusters: int
) -> bool:
    if not identity_in_cluster_range(ident, cluster_id, max_clusters):
        return False
    label = labels.get(CLUSTER_LABEL)
    if label is None or label.value != cluster:
        return False
    if labels in found or ident in found.values():
        return False
    found[labels] = ident
    return True


async def load_from_etcd(kv: KVStore, *, cluster: str, cluster_id: int, max_clusters: int) -> dict[LabelSet, int]:
    """The allocations held by this cluster's identity keys in etcd (invalid entries skipped)."""
    found: dict[LabelSet, int] = {}
    prefix = wk.IDENTITIES_ID + "/"
    for item in (await kv.list_prefix(prefix)).items:
        suffix = item.key[len(prefix) :]
        try:
            labels = LabelSet.decode(item.value, key=item.key)
        except WireError as err:
            _log.warning("skipping unreadable identity key", key=item.key, error=str(err))
            continue
        if not suffix.isdigit() or not _accept(
            found, labels, int(suffix), cluster=cluster, cluster_id=cluster_id, max_clusters=max_clusters
        ):
            _log.warning("skipping identity key outside this cluster's allocations", key=item.key)
    return found


def load_from_file(
    path: Path, base: Mapping[LabelSet, int], *, cluster: str, cluster_id: int, max_clusters: int
) -> dict[LabelSet, int]:
    """``base`` plus the file's allocations that do not conflict with it."""
    found = dict(base)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return found
    except (OSError, ValueError) as err:
        _log.warning("ignoring unreadable identity state file", path=str(path), error=str(err))
        return found
    entries = doc.get("identities") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        _log.warning("ignoring identity state file without an 'identities' map", path=str(path))
        return found
    for ident, text in entries.items():
        try:
            labels = LabelSet.parse(str(text))
        except WireError:
            continue
        if str(ident).isdigit():
            _accept(found, labels, int(ident), cluster=cluster, cluster_id=cluster_id, max_clusters=max_clusters)
    return found


def save_to_file(path: Path, allocations: Mapping[LabelSet, int]) -> None:
    """Write the allocations (mode 0600, atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"identities": {str(ident): labels.format() for labels, ident in sorted(allocations.items(), key=_by_id)}}
    write_private_file(path, (json.dumps(doc, indent=1) + "\n").encode())


def _by_id(item: tuple[LabelSet, int]) -> int:
    return item[1]

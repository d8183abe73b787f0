"""Round-trip every expected kvstore value of the Cilium conformance corpus, byte for byte.

For each ``*.expected`` section of every ``*.txtar`` file: split it into ``# <key>`` entries,
decode each value with the record type its key prefix selects, re-encode it, re-indent it with
``go_indent`` when the matching ``kvstore/list`` used ``-o json``, and compare with the file.

* ``cilium/synced/...`` canaries hold RFC 3339 timestamps; they are parsed and kept verbatim.
* ``cilium/state/endpointslices/v1/...`` values are the [dev-only] *display* form of a
  zstd-compressed protobuf (see SOURCES.md); there is no typed record for them, so they
  round-trip through the generic order-preserving JSON path instead.
* Version-skewed files are compared with the one skewed detail normalised and reported in the
  test output; nothing is skipped.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from lab.shared import CONFORMANCE_DIR
from meshcore import txtar
from meshcore.wire import check_key, codec_for, decode_generic, encode_generic, go_indent
from meshcore.wire.clusterinfo import identity_in_cluster_range
from meshcore.wire.identity import LabelSet
from meshcore.wire.keys import parse_key

CORPUS = CONFORMANCE_DIR

# file (relative to CORPUS) -> (what is normalised, regex removed from the expected text).
# globalnamespace.txtar is the only stored version and predates Mask becoming omitempty.
VERSION_SKEWED: dict[str, tuple[str, str]] = {
    "clustermesh-apiserver/clustermesh/testdata/globalnamespace.txtar": (
        'ipcache "Mask": null (older writer; the newest Cilium omits a nil Mask)',
        r'\n *"Mask": null,',
    ),
}


@dataclass
class Entry:
    source: str
    section: str
    form: str  # "json" or "plain"
    key: str
    value: str
    flags: dict[str, str]


def _script_forms(script: str) -> dict[str, str]:
    """Map each ``*.expected`` name to the ``-o`` form of the ``kvstore/list`` it is compared
    with (``cmp X.actual Y.expected`` after ``kvstore/list -o FORM PREFIX X.actual``)."""
    actual_form: dict[str, str] = {}
    forms: dict[str, str] = {}
    for raw in script.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line.lstrip("*! "))
        if not words:
            continue
        if words[0] == "kvstore/list":
            form, positional, i = "plain", [], 1
            while i < len(words):
                if words[i] == "-o":
                    form, i = words[i + 1], i + 2
                    continue
                if words[i].startswith("-o="):
                    form = words[i][3:]
                elif not words[i].startswith("-"):
                    positional.append(words[i])
                i += 1
            if len(positional) == 2:
                actual_form[positional[1]] = form
        elif words[0] == "cmp" and len(words) == 3 and words[1] in actual_form:
            forms[words[2]] = actual_form[words[1]]
    return forms


def _flags(script: str) -> dict[str, str]:
    first = script.splitlines()[0] if script else ""
    flags = {}
    if first.startswith("#!"):
        for word in first[2:].split():
            name, _, value = word.lstrip("-").partition("=")
            flags[name] = value or "true"
    return flags


def _split_entries(content: str) -> list[tuple[str, str]]:
    entries: list[tuple[str, list[str]]] = []
    for line in content.splitlines():
        if line.startswith("# "):
            entries.append((line[2:], []))
        else:
            assert entries, f"value line before any key: {line!r}"
            entries[-1][1].append(line)
    result = [(key, "\n".join(lines)) for key, lines in entries]
    assert "".join(f"# {k}\n{v}\n" for k, v in result) == content, "listing did not split cleanly"
    return result


def load_entries() -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    notes: list[str] = []
    for path in sorted(CORPUS.rglob("*.txtar")):
        rel = path.relative_to(CORPUS).as_posix()
        archive = txtar.parse_file(path)
        forms = _script_forms(archive.script)
        flags = _flags(archive.script)
        for name, data in archive.files:
            if not name.endswith(".expected"):
                continue
            content = data.decode("utf-8")
            for key, value in _split_entries(content):
                form = forms.get(name)
                if form is None:
                    form = "json" if value.startswith("{\n") else "plain"
                    notes.append(f"{rel}:{name}: no cmp/kvstore/list pair, form detected as {form}")
                entries.append(Entry(rel, name, form, key, value, flags))
    return entries, notes


def _check_identity_scope(entry: Entry, labels: LabelSet) -> None:
    cluster_id = int(entry.flags.get("cluster-id", "0"))
    ident = int(parse_key(entry.key).suffix)
    if cluster_id:
        assert identity_in_cluster_range(ident, cluster_id), (entry.key, cluster_id)
    name = entry.flags.get("cluster-name")
    if name:
        assert labels.cluster() == name


def round_trip(entry: Entry) -> tuple[str, str]:
    """Return (kind, re-encoded text in the listing's form)."""
    info = parse_key(entry.key)
    if info.kind == "synced":
        datetime.fromisoformat(entry.value.replace("Z", "+00:00"))
        return "synced", entry.value
    if info.kind == "endpointslice":
        generic: Any = decode_generic(entry.value.encode(), key=entry.key)
        encoded = encode_generic(generic)
        kind = "endpointslice (generic JSON path)"
    else:
        codec = codec_for(info.kind)
        record = codec.decode(entry.value.encode(), key=entry.key)
        check_key(entry.key, record)
        if info.kind == "node":
            assert record.cluster == entry.flags.get("cluster-name", record.cluster)
        if info.kind == "identity":
            _check_identity_scope(entry, record)
        encoded = codec.encode(record)
        kind = info.kind
    if entry.form == "json":
        encoded = go_indent(encoded)
    return kind, encoded.decode("utf-8")


def test_every_expected_value_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    entries, notes = load_entries()
    assert entries, f"no expected values found under {CORPUS}"
    counts: Counter[str] = Counter()
    skew_hits: Counter[str] = Counter()
    failures: list[str] = []
    for entry in entries:
        expected = entry.value
        skew = VERSION_SKEWED.get(entry.source)
        if skew is not None:
            normalised = re.sub(skew[1], "", expected)
            if normalised != expected:
                skew_hits[entry.source] += 1
            expected = normalised
        try:
            kind, actual = round_trip(entry)
        except Exception as exc:  # collect every failure, then report them together
            failures.append(f"{entry.source}:{entry.section}: {entry.key}: {type(exc).__name__}: {exc}")
            continue
        counts[kind] += 1
        if actual != expected:
            failures.append(
                f"{entry.source}:{entry.section}: {entry.key}: re-encoded value differs\n"
                f"--- expected\n{expected}\n--- actual\n{actual}"
            )
    with capsys.disabled():
        total = sum(counts.values())
        print(f"\n[cilium corpus] {total} expected values round-tripped byte for byte: {dict(counts)}")
        for source, (what, _) in VERSION_SKEWED.items():
            print(
                f"[cilium corpus] version-skewed, compared with {what} normalised: "
                f"{source} ({skew_hits[source]} values)"
            )
        for note in notes:
            print(f"[cilium corpus] note: {note}")
    assert not failures, "\n\n".join(failures)
    for source in VERSION_SKEWED:
        assert skew_hits[source], f"{source} is marked version-skewed but nothing was normalised"
    for kind in ("node", "service", "ip", "identity", "clusterconfig", "serviceexport"):
        assert counts[kind], f"no {kind} values found in the corpus"


def test_every_kvstore_update_input_decodes_and_matches_its_key() -> None:
    """The agent-side fixtures feed JSON into ``kvstore/update KEY FILE``; every such input must
    decode, match its key, and re-encode stably."""
    checked = 0
    for path in sorted(CORPUS.rglob("*.txtar")):
        archive = txtar.parse_file(path)
        for line in archive.script.splitlines():
            words = line.strip().lstrip("*! ").split()
            if len(words) != 3 or words[0] != "kvstore/update":
                continue
            key, name = words[1], words[2]
            data = archive.get(name)
            if data is None:
                continue  # the file is produced by the script itself (e.g. config.modified)
            info = parse_key(key)
            if info.kind == "endpointslice":
                value = decode_generic(data.strip(), key=key)
                assert decode_generic(encode_generic(value)) == value
            else:
                codec = codec_for(info.kind)
                record = codec.decode(data.strip(), key=key)
                check_key(key, record)
                encoded = codec.encode(record)
                assert codec.encode(codec.decode(encoded, key=key)) == encoded
            checked += 1
    assert checked, "no kvstore/update inputs found"

"""Parsing ``wg show <dev> dump`` (literal outputs)."""

from __future__ import annotations

import pytest

from encryption.wireguard.dump import DeviceDump, PeerDump, parse_dump
from encryption.wireguard.errors import DumpFormatError

PRIV = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUB = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
P1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
P2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="

DUMP = (
    f"{PRIV}\t{PUB}\t51871\t0xe00\n"
    f"{P1}\t(none)\t10.231.0.2:51871\t10.231.0.2/32,10.250.0.2/32\t1733230000\t92\t180\toff\n"
    f"{P2}\t(none)\t[fd00::2]:51871\tfd00::2/128\t0\t0\t0\t25\n"
)


def test_parse_full_dump() -> None:
    dump = parse_dump(DUMP)
    assert dump == DeviceDump(
        public_key=PUB,
        listen_port=51871,
        fwmark=0xE00,
        peers={
            P1: PeerDump(P1, "10.231.0.2:51871", frozenset({"10.231.0.2/32", "10.250.0.2/32"}), 1733230000, 92, 180, 0),
            P2: PeerDump(P2, "[fd00::2]:51871", frozenset({"fd00::2/128"}), 0, 0, 0, 25),
        },
    )


def test_private_key_is_not_kept() -> None:
    dump = parse_dump(DUMP)
    assert PRIV not in repr(dump)
    assert not hasattr(dump, "private_key")


def test_fresh_device_and_peer_without_anything() -> None:
    dump = parse_dump(f"(none)\t(none)\t0\toff\n{P1}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    assert dump.public_key == "" and dump.listen_port == 0 and dump.fwmark == 0
    assert dump.peers[P1] == PeerDump(P1, "", frozenset(), 0, 0, 0, 0)


@pytest.mark.parametrize(
    "text",
    ["", f"{PRIV}\t{PUB}\t51871\n", f"{PRIV}\t{PUB}\tport\toff\n", f"{PRIV}\t{PUB}\t1\toff\n{P1}\t(none)\n"],
)
def test_malformed_never_echoes_private_key(text: str) -> None:
    with pytest.raises(DumpFormatError) as info:
        parse_dump(text)
    assert PRIV not in str(info.value)

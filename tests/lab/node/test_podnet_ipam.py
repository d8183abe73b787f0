"""The pod IP allocator: reserved addresses, next-fit, persistence, exhaustion (unit and properties)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.node.ipam import Ipam, IpamError, PoolExhausted

CIDR = ipaddress.IPv4Network("10.1.0.0/24")


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def test_first_addresses_skip_network_and_node() -> None:
    ipam = Ipam(CIDR)
    assert ipam.capacity == 253
    assert [ipam.allocate(f"p{i}") for i in range(3)] == [ip("10.1.0.2"), ip("10.1.0.3"), ip("10.1.0.4")]
    assert ipam.allocate("p1") == ip("10.1.0.3"), "an owner keeps its address"


def test_replacement_gets_a_new_address_until_the_range_wraps() -> None:
    ipam = Ipam("10.1.0.0/29")  # usable: .2 .. .6
    assert [ipam.allocate(o) for o in "abcde"] == [ip(f"10.1.0.{i}") for i in range(2, 7)]
    assert ipam.release("b") == ip("10.1.0.3")
    assert ipam.release("b") is None
    assert ipam.allocate("f") == ip("10.1.0.3"), "full otherwise: the wrap finds the freed address"
    ipam.release("a")
    ipam.release("c")
    assert ipam.allocate("g") == ip("10.1.0.4"), "next-fit continues after .3, not at the lowest free .2"
    assert ipam.allocate("h") == ip("10.1.0.2")


def test_freed_address_is_not_reused_while_others_are_free() -> None:
    ipam = Ipam(CIDR)
    first = ipam.allocate("old")
    ipam.release("old")
    assert ipam.allocate("new") != first


def test_exhaustion_raises_a_clear_error() -> None:
    ipam = Ipam("10.1.0.0/30")  # one usable address: .2
    assert ipam.allocate("a") == ip("10.1.0.2")
    with pytest.raises(PoolExhausted, match=r"10\.1\.0\.0/30 is exhausted: all 1 pod addresses"):
        ipam.allocate("b")
    assert ipam.allocate("a") == ip("10.1.0.2"), "an existing owner still gets its address"


@pytest.mark.parametrize("cidr", ["10.1.0.0/31", "10.1.0.1/32"])
def test_too_small_cidr_is_refused(cidr: str) -> None:
    with pytest.raises(IpamError, match="too small"):
        Ipam(ipaddress.IPv4Network(cidr))


def test_persistence_round_trip_through_json_text() -> None:
    ipam = Ipam(CIDR)
    for owner in ("a", "b", "c"):
        ipam.allocate(owner)
    ipam.release("b")
    doc = json.loads(json.dumps(ipam.to_json()))
    assert doc == {"cidr": "10.1.0.0/24", "last": "10.1.0.4", "allocations": {"a": "10.1.0.2", "c": "10.1.0.4"}}
    again = Ipam.from_json(doc, CIDR)
    assert again.allocations() == ipam.allocations() and again.last == ipam.last
    assert again.allocate("d") == ipam.allocate("d") == ip("10.1.0.5")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"cidr": "10.1.0.0/24", "allocations": {"a": "10.1.0.1"}}, "not a usable pod address"),
        ({"cidr": "10.1.0.0/24", "allocations": {"a": "10.1.1.2"}}, "not a usable pod address"),
        ({"cidr": "10.1.0.0/24", "allocations": {"a": "10.1.0.255"}}, "not a usable pod address"),
        ({"cidr": "10.1.0.0/24", "allocations": {"a": "10.1.0.2", "b": "10.1.0.2"}}, "allocated twice"),
        ({"cidr": "10.1.1.0/24", "allocations": {}}, "is for podCIDR 10.1.1.0/24, not 10.1.0.0/24"),
        ({"allocations": {}}, "malformed"),
        ({"cidr": "10.1.0.0/24", "allocations": ["10.1.0.2"]}, "malformed"),
        ({"cidr": "10.1.0.0/24", "last": "nonsense"}, "malformed"),
    ],
)
def test_corrupt_state_is_refused(doc: dict[str, object], message: str) -> None:
    with pytest.raises(IpamError, match=message):
        Ipam.from_json(doc, CIDR)


# --- properties ----------------------------------------------------------------------------------

OWNERS = [f"pod{i}" for i in range(12)]
ops = st.lists(st.tuples(st.sampled_from(["alloc", "release", "reload"]), st.sampled_from(OWNERS)), max_size=60)


def model_next(
    usable: list[ipaddress.IPv4Address], used: set[ipaddress.IPv4Address], last: ipaddress.IPv4Address | None
) -> ipaddress.IPv4Address | None:
    """The next-fit choice, computed independently: the first free address after ``last``, cyclically."""
    start = 0 if last is None else usable.index(last) + 1
    for k in range(len(usable)):
        candidate = usable[(start + k) % len(usable)]
        if candidate not in used:
            return candidate
    return None


@settings(max_examples=300, deadline=None)
@given(prefixlen=st.integers(min_value=27, max_value=30), third=st.integers(0, 255), steps=ops)
def test_allocator_matches_the_next_fit_model(prefixlen: int, third: int, steps: list[tuple[str, str]]) -> None:
    cidr = ipaddress.IPv4Network(f"10.7.{third}.0/{prefixlen}")
    usable = list(cidr.hosts())[1:]  # hosts() skips network and broadcast; .1 is the node's
    ipam = Ipam(cidr)
    owned: dict[str, ipaddress.IPv4Address] = {}
    last: ipaddress.IPv4Address | None = None
    for op, owner in steps:
        if op == "alloc":
            expected = owned.get(owner) or model_next(usable, set(owned.values()), last)
            if expected is None:
                with pytest.raises(PoolExhausted):
                    ipam.allocate(owner)
                continue
            got = ipam.allocate(owner)
            assert got == expected
            assert got in usable and got not in (cidr.network_address, cidr.network_address + 1)
            assert got != cidr.broadcast_address
            if owner not in owned:
                last = got
            owned[owner] = got
        elif op == "release":
            assert ipam.release(owner) == owned.pop(owner, None)
        else:
            ipam = Ipam.from_json(json.loads(json.dumps(ipam.to_json())), cidr)
        allocations = ipam.allocations()
        assert allocations == owned
        assert len(set(allocations.values())) == len(allocations), "an address handed out twice"
        assert ipam.last == last


@settings(max_examples=100, deadline=None)
@given(steps=ops)
def test_a_released_address_returns_only_after_every_other_free_one(steps: list[tuple[str, str]]) -> None:
    ipam = Ipam("10.7.0.0/28")  # 13 usable addresses, more than the 12 owners
    for op, owner in steps:
        if op == "alloc":
            ipam.allocate(owner)
        elif op == "release":
            ipam.release(owner)
    ipam.allocate("victim")
    freed = ipam.release("victim")
    free_others = ipam.capacity - len(ipam.allocations()) - 1
    handed = [ipam.allocate(f"new{i}") for i in range(free_others)]
    assert freed not in handed
    assert ipam.allocate("last") == freed

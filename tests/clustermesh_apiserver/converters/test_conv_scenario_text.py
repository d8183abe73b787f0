"""The script-text helpers (quoting, Go string/regexp semantics, kvstore/list, retries)."""

from __future__ import annotations

import re

import pytest

from lab.scenario_text import (
    ListArgs,
    ScriptError,
    Workspace,
    format_listing,
    go_expand_template,
    go_unquote,
    parse_kvstore_list_args,
    parse_script,
    run_script,
    split_words,
)


def _args(line: str, env: dict[str, str] | None = None) -> list[str]:
    script = parse_script(f"{line}\n")
    return script.sections[0].commands[0].args(env or {})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('sed http "" service.yaml', ["sed", "http", '""', "service.yaml"]),
        ("sed http '' f", ["sed", "http", "", "f"]),
        ("replace 'ipv6:' '# ipv6:' f", ["replace", "ipv6:", "# ipv6:", "f"]),
        ("echo 'don''t' x", ["echo", "don't", "x"]),
        ("sed '\"Port\": 8080' '\"Port\": 9090' f", ["sed", '"Port": 8080', '"Port": 9090', "f"]),
        ("cmd a#b c", ["cmd", "a"]),
        ("cmd $HOME '$HOME' ${HOME}x", ["cmd", "/h", "$HOME", "/hx"]),
        ("cmd a'b c'd", ["cmd", "ab cd"]),
    ],
)
def test_split_and_expand(line: str, expected: list[str]) -> None:
    assert _args(line, {"HOME": "/h"}) == expected


def test_prefixes_sections_and_flags() -> None:
    script = parse_script(
        "#! --cluster-id=3 --clustermesh-enable-mcs-api\n\nhive/start\n# s2\n* cmp a b\n! grep -q x f\n"
    )
    assert script.flags == {"cluster-id": "3", "clustermesh-enable-mcs-api": "true"}
    assert [len(s.commands) for s in script.sections] == [1, 2]
    assert [c.prefix for c in script.sections[1].commands] == ["*", "!"]
    assert script.sections[1].commands[1].name == "grep"
    with pytest.raises(ScriptError):
        split_words("cmd 'open")


def test_go_unquote() -> None:
    assert go_unquote(r"a\nb\t\x41\u00e9\101\\") == "a\nb\tAéA\\"
    for bad in ('a"b', "a\\", r"\q", r"\x4"):
        with pytest.raises(ScriptError):
            go_unquote(bad)


def test_go_expand_template() -> None:
    m = re.search(r"(?P<word>a)(b)", "ab")
    assert m is not None
    assert go_expand_template("${1}-$2-$word-$$-$1x-${9}", m) == "a-b-a-$--"


def test_kvstore_list_args_and_format() -> None:
    assert parse_kvstore_list_args(["cilium/x", "-o", "json", "out"]) == ListArgs("cilium/x", "out", "json")
    assert parse_kvstore_list_args(["-o=plain", "--values-only", "p"]) == ListArgs("p", None, "plain", False, True)
    with pytest.raises(ScriptError):
        parse_kvstore_list_args(["--keys-only", "--values-only", "p"])
    with pytest.raises(ScriptError):
        parse_kvstore_list_args(["-o", "yaml", "p"])
    kv = {"a/2": b'{"x":[1,{}]}', "a/1": b"v", "b/1": b"no"}
    assert format_listing(kv, ListArgs("a/", output="plain")) == b'# a/1\nv\n# a/2\n{"x":[1,{}]}\n'
    assert format_listing({"a/2": kv["a/2"]}, ListArgs("a", output="json")) == (
        b'# a/2\n{\n  "x": [\n    1,\n    {}\n  ]\n}\n'
    )
    assert format_listing(kv, ListArgs("a", keys_only=True)) == b"# a/1\n# a/2\n"
    assert format_listing(kv, ListArgs("b", values_only=True)) == b"no\n"
    assert format_listing(kv, ListArgs("zzz")) == b""


def test_file_commands() -> None:
    ws = Workspace(files={"f": b"name: http\nport: 8080\n", "e": b""})
    script = parse_script(
        "cp f g\nreplace '8080' '9090' 'name' 'n\\x41me' g\nsed '(\\w+): http' '${1}=\"\"' g\n"
        "env A=1\ngrep -count=1 '^port: 9090$' g\nempty e\n! empty g\n! cmp f g\n"
    )
    run_script(script, ws, _no_backend)
    assert ws.files["g"] == b'nAme=""\nport: 9090\n'
    assert ws.env == {"A": "1"}


def _no_backend(name: str, args: list[str], ws: Workspace) -> None:
    raise ScriptError(f"unexpected {name}")


def test_retry_reruns_the_section() -> None:
    calls: list[str] = []

    def backend(name: str, args: list[str], ws: Workspace) -> None:
        calls.append(name)
        if name == "probe" and calls.count("probe") < 3:
            raise ScriptError("not yet")

    script = parse_script("# a\nfirst\n# b\nsetup\n* probe\nafter\n")
    run_script(script, Workspace(), backend, attempts=5)
    assert calls == ["first", "setup", "probe", "setup", "probe", "setup", "probe", "after"]
    calls.clear()
    with pytest.raises(ScriptError, match="line 5"):
        run_script(script, Workspace(), backend, attempts=1)


def test_cmp_failure_shows_a_diff() -> None:
    ws = Workspace(files={"a": b"x\ny\n", "b": b"x\nz\n"})
    with pytest.raises(ScriptError, match=r"(?s)-y.*\+z"):
        run_script(parse_script("cmp a b\n"), ws, _no_backend)

"""Script side of Cilium's txtar script tests, independent of what runs the component.

Implements what ``shared/conformance/cilium/SOURCES.md`` documents for the
``cilium/hive`` script engine: the ``#!`` flag line, sections (a ``#`` line starts one), the
``*`` (retry) and ``!`` (must fail) prefixes, word splitting where only single quotes group
(``''`` inside quotes is a literal ``'``) and ``$VAR``/``${VAR}`` expand outside them, and the
file utilities ``cp``, ``replace`` (Go string-literal unquoting), ``sed`` (Go regexp and
``${1}`` expansion), ``env``, ``sleep``, ``cmp``, ``empty`` and ``grep``. ``kvstore/list``
arguments and output formatting are here too, so the in-memory model and a runner against a
real etcd produce byte-identical listings.

Component commands (``hive/*``, ``k8s/*``, ``kvstore/*``, ``health*``, ``db/*``) are handed to
a caller-supplied :class:`Backend`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from meshcore.txtar import Archive
from meshcore.wire.gojson import go_indent

__all__ = [
    "ScriptError",
    "Command",
    "Section",
    "Script",
    "Backend",
    "Workspace",
    "ListArgs",
    "parse_flags",
    "split_words",
    "parse_script",
    "go_unquote",
    "go_expand_template",
    "go_regexp",
    "parse_kvstore_list_args",
    "format_listing",
    "run_script",
]

Prefix = Literal["", "*", "!", "?"]


class ScriptError(Exception):
    """A script command failed (``line`` is the 1-based line in the script)."""

    def __init__(self, message: str, *, line: int = 0, command: str = "") -> None:
        self.line = line
        self.command = command
        where = f"line {line}: {command}: " if line else ""
        super().__init__(f"{where}{message}")


# A word is a list of (text, quoted) fragments; quoted fragments are never expanded.
Word = tuple[tuple[str, bool], ...]


@dataclass(frozen=True)
class Command:
    """One script line: optional prefix, then words (expanded at run time)."""

    line: int
    text: str
    prefix: Prefix
    words: tuple[Word, ...]

    def args(self, env: Mapping[str, str]) -> list[str]:
        """The words with ``$VAR`` expanded from ``env`` (the first is the command name)."""
        return [_expand_word(word, env) for word in self.words]

    @property
    def name(self) -> str:
        """The command name (never contains ``$``-expansions in this corpus)."""
        return "".join(text for text, _ in self.words[0]) if self.words else ""


@dataclass(frozen=True)
class Section:
    """Commands after one ``#`` line (the unit a ``*`` failure retries)."""

    title: str
    commands: tuple[Command, ...]


@dataclass(frozen=True)
class Script:
    """A parsed script: the ``#!`` flags and the sections in order."""

    flags: dict[str, str]
    sections: tuple[Section, ...]


def parse_flags(script: str) -> dict[str, str]:
    """Flags of the ``#!`` line: ``--name=value`` -> ``{name: value}``, bare ``--name`` ->
    ``"true"``."""
    first = script.split("\n", 1)[0]
    if not first.startswith("#!"):
        return {}
    flags: dict[str, str] = {}
    for word in first[2:].split():
        if not word.startswith("-"):
            continue
        name, sep, value = word.lstrip("-").partition("=")
        flags[name] = value if sep else "true"
    return flags


def split_words(line: str) -> list[Word]:
    """Split one line as the script engine does: blanks separate words, single quotes group
    (``''`` inside quotes is a literal quote), ``#`` outside quotes starts a comment, double
    quotes are ordinary characters."""
    words: list[Word] = []
    fragments: list[tuple[str, bool]] = []
    buf: list[str] = []
    in_word = False
    quoted = False
    i = 0

    def flush_fragment(is_quoted: bool) -> None:
        if buf:
            fragments.append(("".join(buf), is_quoted))
            buf.clear()

    while i < len(line):
        c = line[i]
        if quoted:
            if c == "'":
                if i + 1 < len(line) and line[i + 1] == "'":
                    buf.append("'")
                    i += 2
                    continue
                flush_fragment(True)
                if not fragments or fragments[-1][1] is not True:
                    fragments.append(("", True))  # '' is an empty (but present) word
                quoted = False
                i += 1
                continue
            buf.append(c)
            i += 1
            continue
        if c in " \t\r" or c == "#":
            flush_fragment(False)
            if in_word:
                words.append(tuple(fragments))
                fragments = []
                in_word = False
            if c == "#":
                break
            i += 1
            continue
        if c == "'":
            flush_fragment(False)
            quoted = True
            in_word = True
            i += 1
            continue
        buf.append(c)
        in_word = True
        i += 1
    if quoted:
        raise ScriptError(f"unterminated quote in {line!r}")
    flush_fragment(False)
    if in_word:
        words.append(tuple(fragments))
    return words


_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _expand_word(word: Word, env: Mapping[str, str]) -> str:
    out = []
    for text, quoted in word:
        if quoted:
            out.append(text)
        else:
            out.append(_VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text))
    return "".join(out)


def parse_script(archive_or_text: Archive | str) -> Script:
    """Parse the script (an archive's comment, or its text) into flags and sections."""
    text = archive_or_text.script if isinstance(archive_or_text, Archive) else archive_or_text
    sections: list[Section] = []
    title = ""
    commands: list[Command] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if commands:
                sections.append(Section(title, tuple(commands)))
                commands = []
            title = line
            continue
        words = split_words(line)
        prefix: Prefix = ""
        while words and (marker := _plain(words[0])) in _PREFIXES:
            prefix = _PREFIXES[marker]
            words = words[1:]
        if words and _plain(words[-1]) == "&":
            words = words[:-1]
        if words:
            commands.append(Command(number, line, prefix, tuple(words)))
    if commands:
        sections.append(Section(title, tuple(commands)))
    return Script(parse_flags(text), tuple(sections))


_PREFIXES: dict[str, Prefix] = {"*": "*", "!": "!", "?": "?"}


def _plain(word: Word) -> str:
    return "".join(text for text, quoted in word if not quoted) if all(not q for _, q in word) else "\0"


# --- Go string and regexp helpers -------------------------------------------------------------

_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def go_unquote(text: str) -> str:
    """``strconv.Unquote("\\"" + text + "\\"")``: Go escapes are decoded; an unescaped ``"``
    or a bad escape raises :class:`ScriptError`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == '"' or c == "\n":
            raise ScriptError(f"invalid Go string literal content {text!r}")
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(text):
            raise ScriptError(f"trailing backslash in {text!r}")
        e = text[i + 1]
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = text[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ScriptError(f"invalid \\{e} escape in {text!r}")
            value = int(digits, 16)
            out.append(chr(value) if e != "x" else bytes([value]).decode("latin-1"))
            i += 2 + width
        elif e in "01234567":
            digits = text[i + 1 : i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ScriptError(f"invalid octal escape in {text!r}")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise ScriptError(f"invalid escape \\{e} in {text!r}")
    return "".join(out)


def go_regexp(pattern: str, *, multiline: bool = False) -> re.Pattern[str]:
    """Compile a Go (RE2) pattern with Python's ``re`` (``\\z`` becomes ``\\Z``; the syntax the
    corpus uses is common to both)."""
    translated = pattern.replace(r"\z", r"\Z")
    try:
        return re.compile(translated, re.MULTILINE if multiline else 0)
    except re.error as exc:
        raise ScriptError(f"invalid regexp {pattern!r}: {exc}") from None


_TEMPLATE = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def go_expand_template(template: str, match: re.Match[str]) -> str:
    """Go's ``Regexp.Expand`` for a replacement: ``$1``/``${1}``/``$name``/``${name}`` insert
    groups (names as long as possible, so ``$1x`` is the group ``1x``), unknown groups insert
    nothing, ``$$`` is a literal ``$``."""

    def group(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(2)
        try:
            value = match.group(int(name)) if name.isdigit() else match.group(name)
        except IndexError:  # no such group
            return ""
        return value or ""

    return _TEMPLATE.sub(group, template)


# --- kvstore/list -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListArgs:
    """Parsed ``kvstore/list [-o plain|json] [--keys-only] [--values-only] PREFIX [OUTFILE]``."""

    prefix: str
    outfile: str | None = None
    output: str = "plain"
    keys_only: bool = False
    values_only: bool = False


def parse_kvstore_list_args(args: Iterable[str]) -> ListArgs:
    """pflag-style parsing (flags may follow positional arguments)."""
    words = list(args)
    positional: list[str] = []
    output, keys_only, values_only = "plain", False, False
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-o", "--output"):
            if i + 1 >= len(words):
                raise ScriptError(f"flag {word} needs a value")
            output, i = words[i + 1], i + 2
            continue
        if word.startswith(("-o=", "--output=")):
            output = word.split("=", 1)[1]
        elif word == "--keys-only":
            keys_only = True
        elif word == "--values-only":
            values_only = True
        elif word.startswith("-") and word != "-":
            raise ScriptError(f"unknown flag {word}")
        else:
            positional.append(word)
        i += 1
    if output not in ("plain", "json"):
        raise ScriptError(f"unexpected output format {output!r}")
    if keys_only and values_only:
        raise ScriptError("--keys-only and --values-only are mutually exclusive")
    if len(positional) > 2:
        raise ScriptError(f"too many arguments: {positional}")
    prefix = positional[0] if positional else ""
    return ListArgs(prefix, positional[1] if len(positional) == 2 else None, output, keys_only, values_only)


def format_listing(kvs: Mapping[str, bytes], args: ListArgs) -> bytes:
    """What ``kvstore/list`` prints for the keys of ``kvs`` under ``args.prefix``, sorted:
    ``# <key>`` lines and values verbatim (plain) or re-indented with Go's ``json.Indent``."""
    out = bytearray()
    for key in sorted(k for k in kvs if k.startswith(args.prefix)):
        if not args.values_only:
            out += f"# {key}\n".encode()
        if args.keys_only:
            continue
        value = kvs[key]
        if args.output == "json":
            try:
                out += go_indent(value)
            except Exception as exc:  # Go prints the error instead of the value
                out += f"ERROR: {exc}".encode()
        else:
            out += value
        out += b"\n"
    return bytes(out)


# --- running ------------------------------------------------------------------------------------


class Backend(Protocol):
    """Executes component commands; raises :class:`ScriptError` on failure."""

    def __call__(self, name: str, args: list[str], ws: Workspace) -> None: ...


@dataclass
class Workspace:
    """The script's working directory (in memory) and environment."""

    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    stdout: bytes = b""

    @classmethod
    def from_archive(cls, archive: Archive) -> Workspace:
        """Files of the archive, as the engine writes them before the script runs."""
        return cls(files=dict(archive.files))

    def read(self, name: str) -> bytes:
        """A file's content (``stdout`` is the last command output)."""
        if name == "stdout":
            return self.stdout
        try:
            return self.files[name]
        except KeyError:
            raise ScriptError(f"no such file {name!r}") from None

    def write(self, name: str, data: bytes) -> None:
        """Create or overwrite a file."""
        self.files[name] = data


def _builtin(name: str, args: list[str], ws: Workspace) -> bool:
    """Run a built-in command; False when ``name`` is not one."""
    if name == "cp":
        if len(args) < 2:
            raise ScriptError("usage: cp SRC... DST")
        if len(args) > 2:
            raise ScriptError("cp with several sources needs a directory, which this workspace lacks")
        ws.write(args[1], ws.read(args[0]))
    elif name == "replace":
        if len(args) < 3 or len(args) % 2 == 0:
            raise ScriptError("usage: replace OLD NEW [OLD NEW]... FILE")
        text = ws.read(args[-1]).decode()
        for old, new in zip(args[:-1:2], args[1:-1:2], strict=True):
            text = text.replace(go_unquote(old), go_unquote(new))
        ws.write(args[-1], text.encode())
    elif name == "sed":
        if len(args) != 3:
            raise ScriptError("usage: sed REGEXP REPLACEMENT FILE")
        pattern = go_regexp(args[0])
        text = ws.read(args[2]).decode()
        ws.write(args[2], pattern.sub(lambda m: go_expand_template(args[1], m), text).encode())
    elif name == "env":
        for assignment in args:
            key, sep, value = assignment.partition("=")
            if sep:
                ws.env[key] = value
            else:
                ws.stdout = f"{key}={ws.env.get(key, '')}\n".encode()
    elif name == "sleep":
        pass  # the in-memory model is synchronous; a real runner overrides this
    elif name == "cmp":
        if len(args) != 2:
            raise ScriptError("usage: cmp FILE1 FILE2")
        actual, expected = ws.read(args[0]), ws.read(args[1])
        if actual != expected:
            diff = difflib.unified_diff(
                actual.decode(errors="replace").splitlines(keepends=True),
                expected.decode(errors="replace").splitlines(keepends=True),
                args[0],
                args[1],
            )
            raise ScriptError(f"{args[0]} and {args[1]} differ:\n{''.join(diff)}")
    elif name == "empty":
        if len(args) != 1:
            raise ScriptError("usage: empty FILE")
        if ws.read(args[0]):
            raise ScriptError(f"{args[0]} is not empty")
    elif name == "grep":
        _grep(args, ws)
    else:
        return False
    return True


def _grep(args: list[str], ws: Workspace) -> None:
    quiet, count = False, None
    rest = []
    for arg in args:
        if arg == "-q":
            quiet = True
        elif arg.startswith("-count="):
            count = int(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    if len(rest) != 2:
        raise ScriptError("usage: grep [-q] [-count=N] REGEXP FILE")
    matches = go_regexp(rest[0], multiline=True).findall(ws.read(rest[1]).decode())
    del quiet  # nothing is printed by this in-memory workspace either way
    if count is not None and len(matches) != count:
        raise ScriptError(f"found {len(matches)} matches of {rest[0]!r}, want {count}")
    if not matches:
        raise ScriptError(f"no match for {rest[0]!r} in {rest[1]}")


def run_script(
    script: Script,
    ws: Workspace,
    backend: Backend,
    *,
    attempts: int = 1,
    on_retry: Callable[[int], None] | None = None,
) -> None:
    """Run every section. A failing ``*`` command re-runs its section up to and including
    itself, at most ``attempts`` times in all (``on_retry(n)`` is called before re-run ``n``,
    e.g. to sleep 100 ms doubling up to 500 ms); ``!`` commands must fail. Raises
    :class:`ScriptError` naming the line on the first unrecovered failure."""
    for section in script.sections:
        i = 0
        tries = 1
        while i < len(section.commands):
            cmd = section.commands[i]
            try:
                _run_one(cmd, ws, backend)
            except ScriptError as exc:
                if cmd.prefix == "*" and tries < attempts:
                    if on_retry is not None:
                        on_retry(tries)
                    tries += 1
                    i = 0
                    continue
                raise ScriptError(str(exc), line=cmd.line, command=cmd.text) from None
            i += 1
            if cmd.prefix == "*":
                tries = 1


def _run_one(cmd: Command, ws: Workspace, backend: Backend) -> None:
    args = cmd.args(ws.env)
    name, rest = args[0], args[1:]
    try:
        if not _builtin(name, rest, ws):
            backend(name, rest, ws)
    except ScriptError:
        if cmd.prefix in ("!", "?"):
            return
        raise
    if cmd.prefix == "!":
        raise ScriptError("command succeeded unexpectedly")

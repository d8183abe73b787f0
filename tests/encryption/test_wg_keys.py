"""Node key generation and storage (Cilium's ``cilium_wg0.key``: 32 raw bytes, 0600)."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest

from encryption.wireguard import keys
from encryption.wireguard.errors import KeyFileError
from meshcore.errors import WireError


def test_generate_is_clamped_and_hides_private_bytes() -> None:
    key = keys.generate()
    assert len(key.raw) == 32
    assert key.raw[0] & 7 == 0 and key.raw[31] & 0x80 == 0 and key.raw[31] & 0x40
    assert key.private_b64() not in repr(key) and key.private_b64() not in str(key)
    assert key.raw.hex() not in repr(key)
    assert key.public_key in repr(key)
    assert len(base64.b64decode(key.public_key)) == 32


def test_load_or_generate_creates_then_reloads(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key, new = keys.load_or_generate(state)
    path = state / keys.KEY_FILENAME
    assert new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key.raw  # raw, not base64
    again, new_again = keys.load_or_generate(state)
    assert not new_again and again == key and again.public_key == key.public_key
    assert [p.name for p in state.iterdir()] == [keys.KEY_FILENAME]  # no temp file left


def test_refuses_group_readable_file(tmp_path: Path) -> None:
    path = tmp_path / keys.KEY_FILENAME
    path.write_bytes(keys.generate().raw)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"chmod 600 .*cilium_wg0\.key"):
        keys.load_or_generate(tmp_path)
    path.chmod(0o600)
    assert not keys.load_or_generate(tmp_path)[1]


@pytest.mark.parametrize("size", [0, 31, 33, 44])
def test_refuses_wrong_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / keys.KEY_FILENAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"A" * size)
    os.close(fd)
    with pytest.raises(KeyFileError, match=r"cilium_wg0\.key.*expected 32 raw bytes.*delete it"):
        keys.load_or_generate(tmp_path)
    assert path.read_bytes() == b"A" * size  # never overwritten


def test_refuses_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(bytes(32))
    target.chmod(0o600)
    (tmp_path / keys.KEY_FILENAME).symlink_to(target)
    with pytest.raises(KeyFileError):
        keys.load_or_generate(tmp_path)


def test_write_key_replaces_atomically(tmp_path: Path) -> None:
    first, _ = keys.load_or_generate(tmp_path)
    second = keys.generate()
    keys.write_key(tmp_path / keys.KEY_FILENAME, second)
    path = tmp_path / keys.KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_or_generate(tmp_path) == (second, False)
    assert second != first
    assert len(list(tmp_path.iterdir())) == 1


def test_public_key_matches_wg_pubkey() -> None:
    key = keys.generate()
    out = subprocess.run(
        ["wg", "pubkey"], input=key.private_b64() + "\n", capture_output=True, text=True, timeout=5, check=True
    )
    assert out.stdout.strip() == key.public_key == keys.public_key_of(key.raw)


def test_zero_key_constant() -> None:
    assert keys.ZERO_KEY == "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def test_validate_public_key() -> None:
    good = keys.generate().public_key
    assert keys.validate_public_key(f" {good}\n") == good
    with pytest.raises(WireError, match="not valid base64"):
        keys.validate_public_key("not base64!!")
    with pytest.raises(WireError, match="decodes to 16 bytes"):
        keys.validate_public_key(base64.b64encode(bytes(range(16))).decode())
    with pytest.raises(WireError, match="all-zero"):
        keys.validate_public_key(keys.ZERO_KEY)

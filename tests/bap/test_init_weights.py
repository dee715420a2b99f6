"""``--init PATH_OR_URL``: URLs are fetched once into a cache, hashes are checked, failures name the source."""

from __future__ import annotations

import pytest

from flowlet.data.io import sha256_file
from pipelines import init_weights
from pipelines.init_weights import is_url, resolve_init


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "src" / "sfcn weights.p"
    path.parent.mkdir()
    path.write_bytes(b"not really weights, bytes are enough here")
    return path


def test_urls_and_paths_are_told_apart():
    assert is_url("https://example.org/w.p") and is_url("file:///tmp/w.p") and is_url("HTTP://x/w.p")
    assert not is_url("runs/best.pt") and not is_url("/abs/best.pt") and not is_url("C:\\\\w\\\\best.pt")


def test_a_url_is_downloaded_once_into_the_cache_and_reused(weights, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    got = resolve_init(weights.as_uri(), cache_dir=cache, progress=False)
    assert got.name == "sfcn weights.p" and got.parent.parent == cache
    assert got.read_bytes() == weights.read_bytes()

    def no_network(*args, **kwargs):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr("torch.hub.download_url_to_file", no_network)
    assert resolve_init(weights.as_uri(), cache_dir=cache, sha256=sha256_file(weights)) == got
    monkeypatch.setenv("FLOWLET_CACHE", str(tmp_path / "env"))
    assert init_weights.cache_folder() == tmp_path / "env" / "weights"


def test_a_wrong_hash_is_refused_and_leaves_no_cached_copy(weights, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"SHA-256 .* differs"):
        resolve_init(weights.as_uri(), cache_dir=cache, sha256="0" * 64, progress=False)
    assert not list(cache.rglob("*.p"))
    with pytest.raises(ValueError, match=r"SHA-256 .* differs"):
        resolve_init(str(weights), sha256="f" * 64)  # local files are checked too
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        resolve_init(str(weights), sha256="abc")
    # A corrupt cached copy is replaced by a fresh download when the hash is pinned.
    good = resolve_init(weights.as_uri(), cache_dir=cache, progress=False)
    good.write_bytes(b"truncated")
    again = resolve_init(weights.as_uri(), cache_dir=cache, sha256=sha256_file(weights), progress=False)
    assert again.read_bytes() == weights.read_bytes()


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        resolve_init(str(tmp_path / "absent.pt"))
    missing = (tmp_path / "absent.pt").as_uri()
    with pytest.raises(ValueError, match=r"could not download .*absent\.pt"):
        resolve_init(missing, cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").rglob("absent.pt*"))
    assert not list((tmp_path / "cache").iterdir())  # and no empty folder
    with pytest.raises(ValueError, match="names no file"):
        resolve_init("https://example.org/", cache_dir=tmp_path / "cache")

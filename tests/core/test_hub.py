"""Released variant names and ``hf://`` references, resolved through a local fake of ``huggingface_hub``.

Nothing here touches the network. ``huggingface_hub`` is an optional dependency, so the always-run tests inject a
fake module that keeps files in a folder laid out like the Hugging Face cache
(``models--owner--repo/{refs/<rev>, snapshots/<commit>/<file>, .no_exist/<commit>/<file>}``) and serves
"published" files from an in-memory remote. The tests at the end use the real package on a cache built by hand and
are skipped where it is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlet.checkpoint import load_bundle
from flowlet.hub import (
    DEFAULT_REVISION,
    HUB_REPO,
    VARIANTS,
    HubError,
    parse_hf_url,
    resolve_reference,
)
from flowlet.official import SLIM_CONFIG_KEYS, CheckpointError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
VARIANT = "rfm-91-base"
VARIANT_FILES = {  # what the model card says a published variant folder holds; weights are the random fixture
    f"{VARIANT}/{VARIANTS[VARIANT]}": FIXTURES / "model.pth",
    f"{VARIANT}/config.json": FIXTURES / "config.json",
    f"{VARIANT}/condition_ranges.json": FIXTURES / "condition_ranges.json",
}


# ------------------------------------------------------------------------------------------------ fake hub
class HfHubHTTPError(Exception):
    pass


class EntryNotFoundError(HfHubHTTPError):
    pass


class LocalEntryNotFoundError(EntryNotFoundError, FileNotFoundError, ValueError):
    """As in huggingface_hub < 1.0: the offline error is a subclass of the not-found error."""


class RepositoryNotFoundError(HfHubHTTPError):
    pass


class GatedRepoError(RepositoryNotFoundError):
    pass


class RevisionNotFoundError(HfHubHTTPError):
    pass


NO_EXIST = object()  # huggingface_hub's _CACHED_NO_EXIST


def _repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def put_in_cache(cache: Path, repo_id: str, revision: str, commit: str, files: dict[str, Path]) -> None:
    """Write ``files`` (hub name -> source) into the cache as a download of ``revision`` (= ``commit``) would."""
    repo = _repo_folder(cache, repo_id)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, source in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


class FakeHub:
    """``hf_hub_download`` / ``try_to_load_from_cache`` over a folder cache; ``remote`` None = unreachable."""

    def __init__(self, remote: dict[str, dict[str, tuple[str, dict[str, Path]]]] | None):
        self.remote = remote  # repo_id -> revision -> (commit, {hub name: source file})
        self.calls: list[dict] = []

    @staticmethod
    def _cache(cache_dir) -> Path:
        if cache_dir is not None:
            return Path(cache_dir)
        if os.environ.get("HF_HUB_CACHE"):
            return Path(os.environ["HF_HUB_CACHE"])
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"

    def _cached(self, cache: Path, repo_id: str, filename: str, revision: str):
        repo = _repo_folder(cache, repo_id)
        ref = repo / "refs" / revision
        commit = ref.read_text() if ref.is_file() else revision
        if (repo / "snapshots" / commit / filename).is_file():
            return str(repo / "snapshots" / commit / filename)
        if (repo / ".no_exist" / commit / filename).is_file():
            return NO_EXIST
        return None

    def hf_hub_download(self, repo_id, filename, *, revision=None, cache_dir=None, local_files_only=False):
        revision = revision or "main"
        self.calls.append({"filename": filename, "revision": revision, "local_files_only": local_files_only})
        cache = self._cache(cache_dir)
        if local_files_only or self.remote is None:
            found = self._cached(cache, repo_id, filename, revision)
            if not isinstance(found, str):
                raise LocalEntryNotFoundError(f"{filename} not in the cache")
            return found
        if repo_id not in self.remote:
            raise RepositoryNotFoundError(repo_id)
        if revision not in self.remote[repo_id]:
            raise RevisionNotFoundError(revision)
        commit, files = self.remote[repo_id][revision]
        if filename not in files:
            marker = _repo_folder(cache, repo_id) / ".no_exist" / commit / filename
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise EntryNotFoundError(filename)
        put_in_cache(cache, repo_id, revision, commit, {filename: files[filename]})
        return str(_repo_folder(cache, repo_id) / "snapshots" / commit / filename)

    def try_to_load_from_cache(self, repo_id, filename, cache_dir=None, revision=None):
        return self._cached(self._cache(cache_dir), repo_id, filename, revision or "main")


@pytest.fixture
def install_hub(monkeypatch):
    """Install a fake ``huggingface_hub`` (and its ``errors`` module) serving ``remote``; returns the fake."""

    def install(remote=None) -> FakeHub:
        fake = FakeHub(remote)
        module = types.ModuleType("huggingface_hub")
        module.hf_hub_download = fake.hf_hub_download
        module.try_to_load_from_cache = fake.try_to_load_from_cache
        errors = types.ModuleType("huggingface_hub.errors")
        for cls in (
            HfHubHTTPError,
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            GatedRepoError,
            RevisionNotFoundError,
        ):
            setattr(errors, cls.__name__, cls)
        module.errors = errors
        monkeypatch.setitem(sys.modules, "huggingface_hub", module)
        monkeypatch.setitem(sys.modules, "huggingface_hub.errors", errors)
        return fake

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return install


def _velocity(bundle) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 16, 16, 16, generator=g)
    with torch.no_grad():
        return bundle.model(x, torch.tensor([0.4]), {"Age": torch.tensor([[0.5]])})


# ------------------------------------------------------------------------------------------------ tests
def test_variant_resolves_offline_from_the_cache_and_loads(install_hub, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    put_in_cache(cache, HUB_REPO, DEFAULT_REVISION, COMMIT, VARIANT_FILES)
    fake = install_hub(remote=None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = resolve_reference(VARIANT, cache_dir=cache)
    assert all(call["local_files_only"] for call in fake.calls)  # HF_HUB_OFFLINE: nothing is downloaded
    assert ref.checkpoint.name == VARIANTS[VARIANT] and COMMIT in ref.checkpoint.parts
    assert ref.provenance == {
        "hub_repo": HUB_REPO,
        "hub_file": f"{VARIANT}/{VARIANTS[VARIANT]}",
        "hub_revision": DEFAULT_REVISION,
        "hub_commit": COMMIT,
    }
    bundle = load_bundle(
        ref.checkpoint, config_path=ref.config_path, condition_ranges_path=ref.condition_ranges_path
    )
    assert bundle.condition_ranges == {"Age": (5.9, 95.46)}
    assert bundle.save_size == (27, 30, 27)
    assert torch.equal(_velocity(bundle), _velocity(load_bundle(FIXTURES / "model.pth")))


def test_first_use_downloads_the_sidecars_then_works_offline(install_hub, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    fake = install_hub(remote={HUB_REPO: {"main": (COMMIT, VARIANT_FILES)}})
    online = resolve_reference(VARIANT, cache_dir=cache)
    assert sorted(c["filename"] for c in fake.calls) == sorted(VARIANT_FILES)
    assert not any(c["local_files_only"] for c in fake.calls)
    assert online.config_path.name == "config.json" and online.condition_ranges_path is not None
    fake.remote = None  # the hub is gone: the cached copy still resolves
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert resolve_reference(VARIANT, cache_dir=cache) == online


def test_unpublished_variant_says_so_and_what_to_do(install_hub, tmp_path):
    install_hub(remote={HUB_REPO: {"main": (COMMIT, VARIANT_FILES)}})  # only rfm-91-base is up
    with pytest.raises(HubError) as info:
        resolve_reference("rfm-182-large", cache_dir=tmp_path / "cache")
    text = str(info.value)
    assert "rfm-182-large: announced as coming soon; not published at revision 'main'" in text
    assert "danesed/FlowLet/rfm-182-large/flowlet_rfm_182_large.pth" in text
    assert "download the files by hand and pass the folder" in text
    assert "offline" not in text and "cache" not in text


def test_offline_and_not_cached_is_not_reported_as_unpublished(install_hub, tmp_path, monkeypatch):
    install_hub(remote={HUB_REPO: {"main": (COMMIT, VARIANT_FILES)}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "empty-cache"
    with pytest.raises(HubError) as info:
        resolve_reference(VARIANT, cache_dir=cache)
    text = str(info.value)
    assert f"{VARIANT}: HF_HUB_OFFLINE is set and {HUB_REPO}/{VARIANT}/" in text
    assert f"is not in the cache {cache}" in text and "coming soon" not in text


def test_unreachable_hub_without_a_cache_says_so(install_hub, tmp_path):
    install_hub(remote=None)
    with pytest.raises(HubError, match=r"the hub could not be reached and .* is not in the cache"):
        resolve_reference(VARIANT, cache_dir=tmp_path)


def test_revision_and_hf_home_are_honoured(install_hub, tmp_path, monkeypatch):
    other = "fedcba9876543210fedcba9876543210fedcba98"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    install_hub(remote={HUB_REPO: {"main": (COMMIT, VARIANT_FILES), "v1": (other, VARIANT_FILES)}})
    ref = resolve_reference(VARIANT, revision="v1")
    assert ref.checkpoint.is_relative_to(tmp_path / "home" / "hub") and ref.provenance["hub_commit"] == other
    with pytest.raises(HubError, match="revision 'v9' does not exist in danesed/FlowLet"):
        resolve_reference(VARIANT, revision="v9")


def test_missing_config_json_uses_the_embedded_config(install_hub, tmp_path, monkeypatch):
    config = json.loads((FIXTURES / "config.json").read_text())
    slim = torch.load(FIXTURES / "model.pth", weights_only=True)
    slim["config"] = {k: config[k] for k in SLIM_CONFIG_KEYS if k in config}
    torch.save(slim, tmp_path / "slim.pth")
    files = {
        "runs/slim.pth": tmp_path / "slim.pth",
        "runs/condition_ranges.json": FIXTURES / "condition_ranges.json",
    }
    install_hub(remote={"team/flowlet-mri": {"main": (COMMIT, files)}})
    cache = tmp_path / "cache"
    url = "hf://team/flowlet-mri/runs/slim.pth"
    ref = resolve_reference(url, cache_dir=cache)
    assert ref.config_path is None and ref.condition_ranges_path is not None
    bundle = load_bundle(ref.checkpoint, condition_ranges_path=ref.condition_ranges_path)
    assert bundle.provenance["config_file"].endswith("slim.pth (embedded config)")
    assert bundle.save_size is None  # the slim config does not carry it
    assert torch.equal(_velocity(bundle), _velocity(load_bundle(FIXTURES / "model.pth")))
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # the cache remembers config.json is absent: offline still works
    assert resolve_reference(url, cache_dir=cache).config_path is None


def test_hf_urls_are_parsed_and_checked():
    assert parse_hf_url("hf://a/b/c.pth") == ("a/b", "c.pth", None)
    assert parse_hf_url("hf://a/b@v2/x/y/c.pth") == ("a/b", "x/y/c.pth", "v2")
    for bad in ("hf://a/b", "hf://a//c.pth", "hf://a/b@/c.pth"):
        with pytest.raises(HubError, match="expected hf://owner/repo"):
            parse_hf_url(bad)


def test_hf_url_to_a_missing_repository(install_hub, tmp_path):
    install_hub(remote={})
    with pytest.raises(HubError, match=r"not published at revision 'main': no such repository"):
        resolve_reference("hf://nobody/nothing/model.pth", cache_dir=tmp_path)


def test_gated_repository_says_how_to_get_access(install_hub, tmp_path, monkeypatch):
    install_hub(remote={})

    def gated(*args, **kwargs):
        raise GatedRepoError("401")

    monkeypatch.setattr(sys.modules["huggingface_hub"], "hf_hub_download", gated)
    with pytest.raises(HubError, match=r"rfm-91-base: danesed/FlowLet is gated: accept its conditions"):
        resolve_reference(VARIANT, cache_dir=tmp_path)


def test_missing_huggingface_hub_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError, match=r"pip install 'flowlet-toolkit\[hub\]'"):
        resolve_reference(VARIANT)


def test_local_files_and_folders_win_over_names(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # a local folder needs no hub
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / VARIANT  # downloaded by hand, as the not-published message suggests
    folder.mkdir()
    for source in VARIANT_FILES.values():
        shutil.copy(source, folder / source.name)
    ref = resolve_reference(VARIANT)
    assert ref.checkpoint == Path(VARIANT) / "model.pth" and ref.provenance == {}
    assert load_bundle(ref.checkpoint).save_size == (27, 30, 27)
    shutil.copy(FIXTURES / "model.pth", folder / "second.pt")
    with pytest.raises(
        CheckpointError, match=r"expected exactly one \.pth/\.pt file, found \['model.pth', 'second.pt'\]"
    ):
        resolve_reference(VARIANT)
    with pytest.raises(FileNotFoundError, match=r"checkpoint nowhere\.pth: file not found"):
        resolve_reference("nowhere.pth")


def test_generate_and_augment_accept_a_variant_name(install_hub, tmp_path, monkeypatch):
    from flowlet.data.nifti import save_volume
    from pipelines.augment import main as augment_main
    from pipelines.generate import main as generate_main

    cache = tmp_path / "cache"
    put_in_cache(cache, HUB_REPO, DEFAULT_REVISION, COMMIT, VARIANT_FILES)
    install_hub(remote=None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "gen"
    common = ["--device", "cpu", "--no-progress", "--affine", "identity"]
    assert generate_main(["--checkpoint_path", VARIANT, "--cache-dir", str(cache), "--output_dir", str(out),
                          "--generation_conditions", "Age=40", "--num_synthetic", "1", "--num_flow_steps", "1",
                          *common]) == 0  # fmt: skip
    meta = json.loads((out / "generation.json").read_text())
    assert (
        meta["checkpoint"] == VARIANT and (out / "Age_40.00" / "FlowLet_synthetic_brain_0.nii.gz").is_file()
    )
    assert meta["checkpoint_source"] == {
        "hub_repo": HUB_REPO,
        "hub_file": f"{VARIANT}/{VARIANTS[VARIANT]}",
        "hub_revision": DEFAULT_REVISION,
        "hub_commit": COMMIT,
    }
    cohort = tmp_path / "cohort"
    rows = ["participant_id\tage"]
    for i, age in enumerate(np.linspace(20, 40, 6)):
        save_volume(cohort / f"sub-{i}" / "anat" / f"sub-{i}_T1w.nii.gz", np.zeros((3, 3, 3)), np.eye(4))
        rows.append(f"sub-{i}\t{age}")
    (cohort / "participants.tsv").write_text("\n".join(rows) + "\n")
    synth = tmp_path / "synth"
    assert augment_main(["--real", str(cohort), "--checkpoint", VARIANT, "--cache-dir", str(cache),
                         "--revision", DEFAULT_REVISION, "--out", str(synth), "--max-synthetic", "1",
                         "--solver", "euler", "--steps", "1", *common]) == 0  # fmt: skip
    assert len(list(synth.rglob("*.nii.gz"))) == 1
    generated_by = json.loads((synth / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert generated_by["CheckpointSource"] == meta["checkpoint_source"]
    assert generated_by["CheckpointSHA256"] == meta["checkpoint_sha256"]


# ------------------------------------------------------------------------------------------------ real package
def test_real_package_reads_the_cache_layout_offline(tmp_path, monkeypatch):
    """The fake's cache layout is the real one: the real package resolves it offline."""
    pytest.importorskip("huggingface_hub", reason="huggingface_hub (the [hub] extra) is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "cache"
    put_in_cache(cache, HUB_REPO, DEFAULT_REVISION, COMMIT, VARIANT_FILES)
    ref = resolve_reference(VARIANT, cache_dir=cache)
    assert ref.provenance["hub_commit"] == COMMIT and ref.config_path is not None
    with pytest.raises(HubError, match=r"HF_HUB_OFFLINE is set and .* is not in the cache"):
        resolve_reference("rfm-91-large", cache_dir=cache)

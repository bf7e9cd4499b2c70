"""Ray: the same collection with and without --ray, resume after a killed driver, a worker killed mid-batch,
sharded search equal to unsharded (and to FAISS' IndexShards), shards saved, loaded and searched by Ray actors.

One local Ray (2 CPUs, no dashboard) is shared by the whole module: starting Ray on 2 cores takes seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT
from xsearch.cli import app
from xsearch.config import IndexSpec
from xsearch.engine import Collection, serve_shards_on_ray
from xsearch.engine.executors.ray_pool import FAIL_ONCE_ENV
from xsearch.engine.sharding import _ray_map
from xsearch.index import VectorIndex
from xsearch.errors import BadInput
from xsearch.index.shards import ShardedIndex, build_sharded, load_index, read_manifest, shard_paths

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.needs_data  # the photos fixture copies dev-photos
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray for this module; actors die once when the returned marker file is deleted."""
    marker = tmp_path_factory.mktemp("ray") / "crashed"
    marker.touch()
    env = {FAIL_ONCE_ENV: str(marker), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "XSEARCH_WORKERS": "0", "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield marker
    ray.shutdown()


@pytest.fixture
def folder(photos: Path) -> Path:
    """The 4 photos and a note, plus a corrupt image (reported, not indexed)."""
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return photos


def _by_path(col: Collection) -> dict[str, tuple[int, np.ndarray]]:
    rows = col.store.rows()
    vecs = col.vectors([r.id for r in rows])
    return {r.path: (r.id, v) for r, v in zip(rows, vecs)}


def _hits(col: Collection, text: str) -> list[str]:
    return [Path(h.path).name for h in col.search(text=text, k=5, modality="any")]


def test_ray_builds_the_same_collection_as_local(ray_local, folder, home, tiny_clip):
    with Collection.open(home, "local", encoder=tiny_clip, create=True) as col:
        local = col.add([folder], batch_size=2)
        want, want_hits = _by_path(col), _hits(col, "a cat")
    result = runner.invoke(app, ["index", str(folder), "--home", str(home), "-c", "ray", "--encoder", tiny_clip,
                                 "--batch-size", "2", "--ray", "auto", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == local.added == 5
    assert [s["reason"] for s in report["skipped"]] == [r for _, r in local.skipped]
    assert "broken.jpg" in report["skipped"][0]["reason"]
    with Collection.open(home, "ray", read_only=True) as col:
        got = _by_path(col)
        assert {p: i for p, (i, _) in got.items()} == {p: i for p, (i, _) in want.items()}  # same rows, same ids
        for path, (_, vec) in got.items():
            np.testing.assert_allclose(vec, want[path][1], atol=1e-5)
        assert _hits(col, "a cat") == want_hits


@pytest.mark.slow
def test_worker_killed_mid_batch_costs_only_that_batch(ray_local, folder, home, tiny_clip):
    ray_local.unlink()  # the next actor call dies (os._exit) once, as an OOM kill would
    with Collection.open(home, "c", encoder=tiny_clip, create=True) as col:
        report = col.add([folder], batch_size=1, executor="ray")
        assert ray_local.exists(), "no worker died"
        assert report.added == 5 and len(report.skipped) == 1
        paths = [r.path for r in col.store.rows()]
        assert len(paths) == len(set(paths)) == len(col) == 5


KILLED_DRIVER = """
import os, sys
from xsearch.engine import Collection
seen = []
def progress(advance, total):
    seen.append(advance)
    if sum(seen) >= 3:
        os._exit(9)  # the driver dies mid-run (after the bad file and two batches of one file)
col = Collection.open(sys.argv[1], "c", encoder=sys.argv[2], create=True)
col.add([sys.argv[3]], batch_size=1, executor="ray:" + sys.argv[4], progress=progress)
"""


@pytest.mark.slow
def test_driver_killed_mid_run_resumes_without_redoing_batches(ray_local, folder, home, tiny_clip, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(KILLED_DRIVER))
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(home), tiny_clip, str(folder), address], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 9, proc.stderr[-2000:]
    with Collection.open(home, "c") as col:
        committed = {r.path: r.id for r in col.store.rows()}
        assert 1 <= len(committed) < 5  # batches of one file each were committed before the kill
        report = col.add([folder], batch_size=1, executor="ray")
        assert (report.added, report.unchanged) == (5 - len(committed), len(committed))  # not re-embedded
        assert len(report.skipped) == 1
        rows = col.store.rows()
        assert len(rows) == len({r.path for r in rows}) == len(col) == 5  # no duplicates
        assert {r.path: r.id for r in rows if r.path in committed} == committed


def _assert_same_hits(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    """Same scores, and the same ids wherever the order is not decided by a float-rounding near-tie."""
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    for sa, ia, ib in zip(a[0], a[1], b[1]):
        clear = np.ones(len(sa), bool)
        close = np.abs(np.diff(sa)) < 1e-5
        clear[1:] &= ~close
        clear[:-1] &= ~close
        np.testing.assert_array_equal(ia[clear], ib[clear])


def _data(n: int = 3000, dim: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, dim))
    x = (centers[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
    q = (centers[rng.integers(0, 40, 64)] + 0.5 * rng.standard_normal((64, dim))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, rng.permutation(np.arange(10, 10 + 2 * n, 2)), q


@pytest.mark.parametrize("request_", ["flat", "IVF64,Flat", "IVF64,SQ8"])
def test_sharded_search_equals_unsharded_and_faiss_index_shards(ray_local, request_):
    x, ids, q = _data()
    sharded = build_sharded(x, ids, 4, request_, map_fn=_ray_map("auto"))  # shards filled as Ray tasks
    assert sorted(len(s.ids()) for s in sharded.shards) == [750] * 4
    ranges = [(s.ids().min(), s.ids().max()) for s in sharded.shards]
    assert all(hi < lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))  # disjoint id ranges, in order
    one = VectorIndex(x.shape[1], sharded.spec, faiss.clone_index(sharded.shards[0].index))
    one.index.reset()  # the same trained quantizer / codebooks, empty
    one.add(ids, x)
    one.apply_params(sharded.spec.params)
    _assert_same_hits(sharded.search(q, 10), one.search(q, 10))
    shards = faiss.IndexShards(x.shape[1], False, False)
    for s in sharded.shards:
        shards.add_shard(s.index)
    params = faiss.SearchParametersIVF(nprobe=sharded.nprobe) if sharded._ivf is not None else None
    _assert_same_hits(sharded.search(q, 10), shards.search(q, 10, params=params))
    allowed = ids[::3]
    filtered = sharded.search(q, 10, allowed)
    assert np.isin(filtered[1], allowed).all()  # always k hits, all allowed
    if request_ == "flat":  # exact either way (filtered IVF widens nprobe per shard: its own approximation)
        _assert_same_hits(filtered, one.search(q, 10, allowed))


def test_shards_save_load_and_route_adds(tmp_path):
    x, ids, q = _data(2000)
    sharded = build_sharded(x[:1500], ids[:1500], 3, "flat")
    sharded.add(ids[1500:], x[1500:])  # later ids go to the shard whose range holds them
    sharded.remove(ids[:10])
    sharded.save(tmp_path / "vectors.faiss")
    assert [p.exists() for p in shard_paths(tmp_path / "vectors.faiss", 3)] == [True] * 3
    spec = IndexSpec.from_dict(json.loads(json.dumps(sharded.spec.to_dict())))
    for mmap in (False, True):
        loaded = load_index(tmp_path / "vectors.faiss", x.shape[1], spec, mmap=mmap)
        assert isinstance(loaded, ShardedIndex) and loaded.ntotal == 1990
        np.testing.assert_array_equal(loaded.search(q, 10)[1], sharded.search(q, 10)[1])
    exact = np.argsort(-(q @ x[10:].T), axis=1)[:, :10]
    np.testing.assert_array_equal(sharded.search(q, 10)[1], ids[10:][exact])
    damaged = shard_paths(tmp_path / "vectors.faiss", 3)[1]
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="shard missing or damaged"):
        load_index(tmp_path / "vectors.faiss", x.shape[1], spec)


def test_changing_the_shard_count_leaves_only_the_files_in_use(folder, home, tiny_clip):
    with Collection.open(home, "c", encoder=tiny_clip, create=True) as col:
        col.add([folder])
        before = _hits(col, "a rocket")
    files = lambda: sorted(p.name for p in (home / "c").glob("vectors*"))  # noqa: E731
    for n in (3, 2):
        assert runner.invoke(app, ["reindex", "--home", str(home), "-c", "c", "--shards", str(n)]).exit_code == 0
        assert files() == sorted(["vectors.faiss", *(p.name for p in shard_paths(home / "c" / "vectors.faiss", n))])
    assert runner.invoke(app, ["reindex", "--home", str(home), "-c", "c", "--shards", "1"]).exit_code == 0
    assert files() == ["vectors.faiss"]
    with Collection.open(home, "c", read_only=True) as col:
        assert _hits(col, "a rocket") == before


def test_sharded_collection_reindex_query_and_ray_actors(ray_local, folder, home, tiny_clip):
    with Collection.open(home, "c", encoder=tiny_clip, create=True) as col:
        col.add([folder])
        before = _hits(col, "a rocket")
    result = runner.invoke(app, ["reindex", "--home", str(home), "-c", "c", "--shards", "2", "--ray", "auto"])
    assert result.exit_code == 0, result.output
    assert "in 2 shards" in result.output
    info = json.loads((home / "c" / "collection.json").read_text())
    assert info["shards"] == 2 and info["index"]["params"]["shards"] == 2
    assert len(read_manifest(home / "c" / "vectors.faiss")["shards"]) == 2  # vectors.faiss: the shards' manifest
    assert runner.invoke(app, ["verify", "--home", str(home), "-c", "c"]).exit_code == 0
    with Collection.open(home, "c", read_only=True) as col:  # no Ray: every shard searched here
        assert isinstance(col.index, ShardedIndex) and _hits(col, "a rocket") == before
        assert serve_shards_on_ray(col, "auto") == 2  # now one Ray actor per shard
        assert _hits(col, "a rocket") == before
    q = runner.invoke(app, ["query", "a rocket", "--home", str(home), "-c", "c", "--ray", "auto", "--json", "-k", "5",
                            "-m", "any"])
    assert q.exit_code == 0, q.output
    assert [Path(json.loads(line)["path"]).name for line in q.stdout.splitlines()] == before
    from fastapi.testclient import TestClient

    from xsearch.server import create_app

    with TestClient(create_app(home, ["c"], allowed_hosts=None, ray="auto")) as client:  # xsearch serve --ray
        r = client.get("/api/search", params={"q": "a rocket", "k": 5, "modality": "any"})
        assert r.status_code == 200, r.text
        assert [Path(h["path"]).name for h in r.json()["hits"]] == before
    with Collection.open(home, "c") as col:  # adding to a sharded collection keeps it sharded
        extra = folder / "more"
        extra.mkdir()
        (extra / "n.txt").write_text("a rocket launch at night")
        col.add([extra])
        assert isinstance(col.index, ShardedIndex) and len(col) == 6

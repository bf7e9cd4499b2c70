"""Tests for xsearch.index: every spec round-trips, deletes and filters correctly; auto meets its recall target."""
from __future__ import annotations

import json

import numpy as np
import pytest

import faiss

from xsearch.config import IndexSpec
from xsearch.errors import BadInput, DimensionMismatch, MissingDependency
from xsearch.index import SPEC_CHOICES, VectorIndex, build_index, outgrown, parse_memory
from xsearch.index import specs as specs_mod
from xsearch.index.exact import exact_search, recall_at

DIM = 32
N = 3000
SPECS = [s for s in SPEC_CHOICES if s != "auto"] + ["IVF16,SQfp16"]


def clustered(n: int, dim: int, seed: int, n_clusters: int = 60, spread: float = 0.6) -> np.ndarray:
    """L2-normalised points around random centres (queries drawn with another seed come from the same centres)."""
    centres = np.random.default_rng(1234).standard_normal((n_clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """CI machines are small and shared: OpenMP spinning on 2 busy cores is far slower than one thread."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    x = clustered(N, DIM, seed=0)
    ids = np.arange(N, dtype=np.int64) * 3 + 11  # non-contiguous ids, as SQLite row ids may be
    return x, ids


@pytest.fixture(scope="module")
def built(data):
    """One trained, filled and tuned index per spec, kept serialised; tests get fresh copies."""
    x, ids = data
    out = {}
    for spec in SPECS:
        index = build_index(x, ids, spec, target_recall=0.9)
        out[spec] = (faiss.serialize_index(index.index), index.spec)
    return out


def fresh(built, spec: str) -> VectorIndex:
    blob, index_spec = built[spec]
    return VectorIndex(DIM, index_spec, faiss.deserialize_index(blob))


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip(spec, built, data, tmp_path):
    x, ids = data
    index = fresh(built, spec)
    assert index.ntotal == N and set(index.ids()) == set(ids)
    before_s, before_i = index.search(x[:20], 10)
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", DIM, index.spec)
    after_s, after_i = loaded.search(x[:20], 10)
    assert loaded.ntotal == N and loaded.spec == index.spec
    assert (loaded.nprobe, loaded.ef_search) == (index.nprobe, index.ef_search)
    np.testing.assert_array_equal(before_i, after_i)
    np.testing.assert_allclose(before_s, after_s, rtol=1e-5, atol=1e-5)
    if index.spec.kind in ("ivf", "hnsw"):
        assert index.spec.params.get("nprobe" if index.spec.kind == "ivf" else "efSearch") == \
            (loaded.nprobe or loaded.ef_search)


@pytest.mark.parametrize("spec", SPECS)
def test_deletes_and_replace(spec, built, data, tmp_path):
    x, ids = data
    index = fresh(built, spec)
    gone = ids[:200]
    assert index.remove(gone) == 200
    assert index.remove(gone) == 0
    assert index.ntotal == N - 200 and not np.isin(gone, index.ids()).any()
    _, found = index.search(x[:200], 10)
    assert not np.isin(found, gone).any()
    assert ((found >= 0).sum(axis=1) == 10).all()
    # replace-on-add: an existing id gets a new vector (that of another item), count unchanged
    index.add(ids[500:501], x[900:901])
    assert index.ntotal == N - 200
    _, top = index.search(x[900:901], 10)
    assert ids[500] in top[0]
    # deletes persist through save/load (tombstones included)
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", DIM, index.spec)
    assert loaded.ntotal == N - 200 and not np.isin(gone, loaded.ids()).any()
    _, again = loaded.search(x[:50], 10)
    assert not np.isin(again, gone).any()


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("share", [0.004, 0.05, 0.6])
def test_filtered_search_returns_k_allowed(spec, share, built, data):
    x, ids = data
    index = fresh(built, spec)
    rng = np.random.default_rng(7)
    allowed = rng.choice(ids, max(12, int(share * N)), replace=False)
    scores, found = index.search(x[:40], 10, allowed=allowed)
    assert found.shape == (40, 10)
    assert np.isin(found, allowed).all(), "a hit outside the allowed set"
    assert all(len(set(row)) == 10 for row in found), "fewer than k distinct hits"
    assert (np.diff(scores, axis=1) <= 1e-5).all()
    keep = np.isin(ids, allowed)
    _, truth = exact_search(x[:40], x[keep], ids[keep], 10)
    if spec == "flat":  # exact: equals brute force over the allowed vectors
        assert recall_at(found, truth, 10) == 1.0
    elif "pq" not in spec.lower():  # PQ codes at this toy size are too coarse for a quality bar
        assert recall_at(found, truth, 10) >= 0.9


@pytest.mark.parametrize("spec", ["flat", "ivf", "hnsw"])
def test_filter_with_fewer_allowed_than_k_and_deleted(spec, built, data):
    x, ids = data
    index = fresh(built, spec)
    index.remove(ids[:3])
    allowed = np.concatenate([ids[:3], ids[100:104], [10**9]])  # 3 deleted, 4 live, 1 unknown
    _, found = index.search(x[:5], 10, allowed=allowed)
    assert sorted(found[0][found[0] >= 0]) == sorted(ids[100:104])
    assert (found[:, 4:] == -1).all()
    _, none = index.search(x[:2], 5, allowed=np.array([], np.int64))
    assert (none == -1).all()


def test_hnsw_compacts_tombstones(built, data):
    x, ids = data
    index = fresh(built, "hnsw")
    index.remove(ids[:1000])
    assert index.tombstones == 1000
    assert index.remove(ids[1000:1600]) == 600  # crosses half dead: compacts automatically
    assert index.tombstones == 0 and index.index.ntotal == N - 1600 == index.ntotal
    _, found = index.search(x[2000:2010], 1)
    assert (found[:, 0] == ids[2000:2010]).mean() >= 0.9


def test_auto_meets_target_recall(monkeypatch):
    monkeypatch.setattr(specs_mod, "FLAT_MAX", 1000)  # make 20k vectors "large" so auto has to approximate
    x = clustered(20_000, 64, seed=3, n_clusters=200, spread=0.8)
    ids = np.arange(len(x), dtype=np.int64)
    index = build_index(x, ids, "auto", target_recall=0.95)
    assert index.spec.kind == "ivf" and index.spec.params["nprobe"] < index.spec.params["nlist"]
    assert index.spec.recall >= 0.95 and index.spec.params["target_met"]
    assert IndexSpec.from_dict(json.loads(json.dumps(index.spec.to_dict()))) == index.spec  # goes into collection.json
    queries = clustered(300, 64, seed=99, n_clusters=200, spread=0.8)  # fresh queries, not in the index
    _, truth = exact_search(queries, x, ids, 10)
    _, found = index.search(queries, 10)
    assert recall_at(found, truth, 10) >= 0.94


def test_auto_choice_follows_size_and_memory():
    assert specs_mod.choose_kind(10_000, 384, 1 << 30) == "flat"
    assert specs_mod.choose_kind(1_000_000, 384, 8 << 30) == "ivf"
    assert specs_mod.choose_kind(1_000_000, 384, 1 << 30) == "ivf-fp16"
    assert specs_mod.choose_kind(1_000_000, 384, 600 << 20) == "ivf-sq8"
    assert specs_mod.choose_kind(1_000_000, 384, 200 << 20) == "opq-ivfpq"
    assert specs_mod.factory_for("opq-ivfpq", 1_000_000, 384, 200 << 20).startswith("OPQ")
    small = IndexSpec(kind="flat", params={"request": "auto"})
    assert not outgrown(small, 20_000, 384, 4 << 30)
    assert outgrown(small, 1_000_000, 384, 4 << 30)
    ivf = IndexSpec(kind="ivf", factory="IVF1024,Flat", params={"request": "auto", "nlist": 1024})
    assert not outgrown(ivf, 60_000, 384, 4 << 30) and outgrown(ivf, 2_000_000, 384, 16 << 30)
    assert outgrown(ivf, 60_000, 384, 10 << 20)  # no longer fits: auto would quantise


def test_rebuild_moves_to_new_spec(built, data):
    x, ids = data
    index = fresh(built, "hnsw")
    index.remove(ids[:10])
    again = specs_mod.rebuild(index, "ivf", target_recall=0.9)
    assert again.spec.kind == "ivf" and again.ntotal == N - 10 and again.tombstones == 0
    np.testing.assert_allclose(again.reconstruct(ids[10:15]), x[10:15], atol=1e-6)


def test_custom_factory_and_bad_request(data):
    x, ids = data
    index = build_index(x, ids, "IVF8,Flat", target_recall=0.9)
    assert index.spec.kind == "custom" and index.spec.params["nprobe"] >= 1
    with pytest.raises(BadInput):
        build_index(x, ids, "NoSuchIndex42")
    with pytest.raises(BadInput):
        build_index(x[:10], ids[:10], "ivf-sq8", target_recall=0.0)


def test_dimension_mismatch(built, data, tmp_path):
    x, ids = data
    index = fresh(built, "flat")
    with pytest.raises(DimensionMismatch):
        index.add(np.array([1]), np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(DimensionMismatch):
        index.search(np.zeros((1, DIM - 1), np.float32), 5)
    index.save(tmp_path / "v.faiss")
    with pytest.raises(DimensionMismatch):
        VectorIndex.load(tmp_path / "v.faiss", DIM * 2)


def test_parse_memory():
    assert parse_memory("4G") == 4 << 30
    assert parse_memory("512M") == 512 << 20
    assert parse_memory("1.5GB") == int(1.5 * (1 << 30))
    assert parse_memory("2gib") == 2 << 30
    assert parse_memory("1000") == 1000
    for junk in ("", "lots", "4X", "-1G", "G4", "0"):
        with pytest.raises(BadInput):
            parse_memory(junk)


def test_unreadable_index_file(tmp_path):
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"definitely not a faiss index" * 10)
    with pytest.raises(BadInput):
        VectorIndex.load(bad, DIM)
    with pytest.raises(BadInput):
        VectorIndex.load(tmp_path / "missing.faiss", DIM)


@pytest.mark.parametrize("spec", ["flat", "ivf", "hnsw", "flat-sq8"])
def test_mmap_load_is_read_only(spec, built, data, tmp_path):
    x, ids = data
    index = fresh(built, spec)
    index.save(tmp_path / "v.faiss")
    mapped = VectorIndex.load(tmp_path / "v.faiss", DIM, index.spec, mmap=True)
    np.testing.assert_array_equal(mapped.search(x[:10], 5)[1], index.search(x[:10], 5)[1])
    assert mapped.search(x[:3], 5, allowed=ids[:50])[1].min() >= 0
    with pytest.raises(BadInput):
        mapped.add(ids[:1], x[:1])
    with pytest.raises(BadInput):
        mapped.remove(ids[:1])


def test_empty_index_and_untrained_add():
    index = VectorIndex(DIM)
    scores, found = index.search(np.ones((2, DIM), np.float32), 5)
    assert (found == -1).all() and index.ntotal == 0
    ivf = VectorIndex(DIM, IndexSpec(kind="ivf", factory="IVF64,Flat"))
    with pytest.raises(BadInput):
        ivf.add(np.arange(10), clustered(10, DIM, seed=5))  # too few vectors to train 64 lists
    with pytest.raises(BadInput):
        index.add(np.array([1, 1]), np.zeros((2, DIM), np.float32))


@pytest.mark.skipif(specs_mod._gpu.gpu_count() > 0, reason="a GPU is present")
def test_use_gpu_without_gpu_is_clear(data):
    x, ids = data
    with pytest.raises(MissingDependency):
        build_index(x, ids, "ivf", use_gpu=True)


def test_gpu_path_wiring_with_stand_in(monkeypatch, data):
    """The GPU code path, run against CPU stand-ins for FAISS' GPU calls (clone instead of device copy)."""
    x, ids = data
    calls = []

    class Options:
        useFloat16 = False

    class ParamSpace:
        def set_index_parameter(self, index, name, value):
            calls.append((name, value))
            faiss.ParameterSpace().set_index_parameter(index, name, value)

    def to_gpu(res, device, index, co):
        calls.append(("to_gpu", co.useFloat16))
        return faiss.clone_index(index)

    for name, value in dict(get_num_gpus=lambda: 1, StandardGpuResources=object, GpuClonerOptions=Options,
                            GpuParameterSpace=ParamSpace, index_cpu_to_gpu=to_gpu,
                            index_gpu_to_cpu=faiss.clone_index).items():
        monkeypatch.setattr(faiss, name, value, raising=False)
    monkeypatch.delenv("XSEARCH_NO_GPU", raising=False)
    monkeypatch.setattr(specs_mod._gpu, "_RESOURCES", {})
    index = build_index(x, ids, "ivf", target_recall=0.9, use_gpu=None)
    assert index.spec.params["gpu"] is True and ("to_gpu", False) in calls  # built with float32 storage
    cpu_ids = index.search(x[:20], 10)[1]
    assert index.to_gpu()
    assert np.array_equal(index.search(x[:20], 10)[1], cpu_ids)
    assert ("to_gpu", True) in calls and ("nprobe", index.nprobe) in calls  # fp16 search copy, tuned nprobe
    index.remove(ids[:5])  # drops the GPU copy; the next search re-clones from the CPU index
    assert not np.isin(index.search(x[:5], 10)[1], ids[:5]).any()


@pytest.mark.parametrize("factory", ["IVF16,Flat", "Flat,RFlat"])
def test_foreign_idmap2_layouts_still_delete_and_filter(factory, data):
    """IDMap2 over indexes that cannot remove (e.g. files from older versions) fall back to tombstones."""
    x, ids = data
    inner = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    inner.train(x)
    raw = faiss.IndexIDMap2(inner)
    raw.add_with_ids(x, ids)
    index = VectorIndex(DIM, IndexSpec(kind="custom", factory=factory), raw)
    assert index.layout == "tomb" and index.remove(ids[:100]) == 100 and index.ntotal == N - 100
    _, found = index.search(x[:30], 10)
    assert not np.isin(found, ids[:100]).any() and (found >= 0).all()
    for allowed in (ids[::3], ids[90:120]):
        _, found = index.search(x[:30], 10, allowed=allowed)
        assert np.isin(found, allowed[~np.isin(allowed, ids[:100])]).all() and (found >= 0).all()

"""clipjax.search and search.py: index a folder / collection / tar shards / TFDS split with a
tiny random-weight CLIP, resume an interrupted build, append, query by text / image / both,
rank, near-duplicates, contact sheets, and a checkpoint other than the index's refused."""

import importlib.util
import io
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data as skd

import clipjax
from clipjax import search
from clipjax.convert.formats import save_clipjax
from clipjax.search import ann
from clipjax.search.store import IndexStore

ROOT = pathlib.Path(__file__).resolve().parent.parent
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field"]


def _cli():
    spec = importlib.util.spec_from_file_location("search_cli", ROOT / "search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("search_ckpt")
    cfg = clipjax.get_preset("tiny-vit")
    a = _init(cfg)
    save_clipjax(str(d / "a"), a, cfg)
    # same shapes, other weights; and another embedding width
    save_clipjax(str(d / "b"), jax.tree_util.tree_map(lambda x: x * 1.01, a), cfg)
    cfg16 = cfg.replace(embed_dim=16)
    save_clipjax(str(d / "c"), _init(cfg16), cfg16)
    return {k: str(d / k) for k in "abc"}


def _init(cfg, seed: int = 0):
    """Random weights of the right shapes without compiling an init (tracing only)."""
    import flax.linen as nn
    from clipjax.models.clip import CLIP, init_inputs

    shapes = nn.unbox(jax.eval_shape(CLIP(cfg).init, jax.random.PRNGKey(0), *init_inputs(cfg)))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if "scale" in name and "logit" not in name:
            return np.ones(s.shape, s.dtype)
        if np.issubdtype(s.dtype, np.integer):
            return np.zeros(s.shape, s.dtype)
        return (rng.normal(size=s.shape) * 0.05).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def embedder(ckpt):
    return search.Embedder(ckpt["a"], batch_size=8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    (d / "sub" / "deeper").mkdir(parents=True)
    for i, n in enumerate(PHOTOS):
        img = getattr(skd, n)()
        sub = ["", "sub/", "sub/deeper/"][i % 3]
        Image.fromarray(img).convert("RGB").save(d / f"{sub}{n}.{'png' if i % 2 else 'jpg'}")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    buf = io.BytesIO()
    Image.fromarray(skd.coffee()).save(buf, "JPEG")
    (d / "sub" / "truncated.jpg").write_bytes(buf.getvalue()[:2000])
    (d / "notes.txt").write_text("not an image, not listed")
    return d


def test_folder_index_query_and_skips(embedder, photos, tmp_path):
    out = search.build_index(embedder, str(photos), str(tmp_path / "idx"), progress=False)
    assert out["rows"] == len(PHOTOS) and out["added"] == len(PHOTOS)
    assert out["counts"]["skipped_corrupt"] + out["counts"]["skipped_truncated"] == 2
    assert out["counts"]["skipped"] == 2 and out["faiss"]["kind"] == "flat"
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["checkpoint"]["embed_dim"] == 32 and len(m["checkpoint"]["fingerprint"]) == 24
    idx = search.SearchIndex.open(str(tmp_path / "idx"), embedder)
    meta = idx.store.metadata()
    assert {r["key"] for r in meta} == {p.relative_to(photos).as_posix() for p in photos.rglob("*")
                                        if p.suffix in (".jpg", ".png") and "broken" not in p.name
                                        and "truncated" not in p.name}
    chelsea = next(r for r in meta if "chelsea" in r["key"])
    assert chelsea["size"] == [451, 300] and os.path.isfile(chelsea["path"])
    # reverse image search: the photo itself first, score 1
    res = idx.search(image=chelsea["path"], k=3)
    assert res[0].key == chelsea["key"] and res[0].score == pytest.approx(1.0, abs=1e-4)
    assert [r.rank for r in res] == [1, 2, 3] and res[0].score >= res[1].score >= res[2].score
    # text search = exact inner products with the model's own text embedding
    text = "a photo of a cat"
    res = idx.search(text=text, k=len(PHOTOS))
    t = embedder.clip.encode_text([text])[0]
    want = np.argsort(-(idx.store.embeddings() @ t))
    assert [r.id for r in res] == list(want)
    assert [r.score for r in res] == pytest.approx(list((idx.store.embeddings() @ t)[want]), abs=1e-5)
    # a mix lies between; weight 1 is the text alone, weight 0 the image alone
    assert [r.id for r in idx.search(text=text, image=chelsea["path"], weight=1.0, k=6)] == [r.id for r in res]
    assert idx.search(text=text, image=chelsea["path"], weight=0.0, k=1)[0].key == chelsea["key"]
    # a query longer than the context is cut as CLIP does, not refused
    assert len(idx.search(text="a very long query " * 100, k=2)) == 2


def test_resume_after_interruption_and_add(embedder, photos, tmp_path):
    d = str(tmp_path / "idx")
    first = search.build_index(embedder, str(photos), d, shard_rows=2, stop_after=2, progress=False)
    assert first["added"] == 2 and first["rows"] == 2
    store = IndexStore.open(d)
    assert store.manifest["sources"][0]["complete"] is False and len(store.manifest["shards"]) == 1
    again = search.build_index(embedder, str(photos), d, shard_rows=2, progress=False)
    assert again["added"] == len(PHOTOS) - 2 and again["rows"] == len(PHOTOS)
    assert again["counts"]["skipped"] == 2  # each bad file counted once over both runs
    keys = [m["key"] for m in IndexStore.open(d).metadata()]
    assert len(keys) == len(set(keys)) == len(PHOTOS)
    # the resumed index equals one built in one go
    whole = search.build_index(embedder, str(photos), str(tmp_path / "whole"), progress=False)
    assert whole["rows"] == len(PHOTOS)
    np.testing.assert_allclose(IndexStore.open(d).embeddings(), IndexStore.open(str(tmp_path / "whole")).embeddings(),
                               atol=1e-5)
    # a completed source is not re-read; `add` appends another
    assert search.build_index(embedder, str(photos), d, progress=False)["added"] == 0
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.fromarray(skd.immunohistochemistry()).save(extra / "ihc.png")
    out = search.add_images(d, str(extra), embedder, progress=False)
    assert out["added"] == 1 and out["rows"] == len(PHOTOS) + 1
    idx = search.SearchIndex.open(d, embedder)
    assert idx.search(image=str(extra / "ihc.png"), k=1)[0].key == "ihc.png"


def test_other_checkpoint_refused_naming_both(embedder, ckpt, photos, tmp_path):
    d = str(tmp_path / "idx")
    search.build_index(embedder, str(photos / "sub" / "deeper"), d, progress=False)
    for other, why in (("b", "weights differ"), ("c", "embedding width differs")):
        with pytest.raises(search.IndexMismatchError, match=why) as e:
            search.SearchIndex.open(d, ckpt[other])
        assert ckpt["a"] in str(e.value) and ckpt[other] in str(e.value)
        with pytest.raises(search.IndexMismatchError):
            search.add_images(d, str(photos), ckpt[other], progress=False)
    # the same weights under another path are the same model
    search.SearchIndex.open(d, search.Embedder(clipjax.load(ckpt["a"]), name="elsewhere"))


def test_collection_tar_and_tfds_sources(embedder, photos, tmp_path):
    from clipjax.data.collection import write_webdataset

    rows = [{"filepath": str(p), "title": p.stem} for p in sorted(photos.rglob("*.jpg"))]
    with open(tmp_path / "c.csv", "w") as f:
        f.write("filepath,title\n" + "".join(f"{r['filepath']},{r['title']}\n" for r in rows))
    out = search.build_index(embedder, str(tmp_path / "c.csv"), str(tmp_path / "i1"), progress=False)
    assert out["rows"] == len(rows) - 2 and out["counts"]["skipped"] == 2  # broken.jpg, truncated.jpg
    caps = {m["caption"] for m in IndexStore.open(str(tmp_path / "i1")).metadata()}
    assert caps == {r["title"] for r in rows} - {"broken", "truncated"}
    exs = [{"image": getattr(skd, n)() if getattr(skd, n)().ndim == 3 else np.stack([getattr(skd, n)()] * 3, -1),
            "caption": n} for n in PHOTOS[:4]]
    write_webdataset(exs, str(tmp_path / "s-000.tar"))
    out = search.build_index(embedder, str(tmp_path / "s-*.tar"), str(tmp_path / "i2"), progress=False)
    assert out["rows"] == 4
    src = "tfds:clipjax_shapes:test?image_size=32&num_train=8&num_validation=8&num_test=20"
    out = search.build_index(embedder, src, str(tmp_path / "i3"), progress=False, shard_rows=8)
    assert out["rows"] == 20
    meta = IndexStore.open(str(tmp_path / "i3")).metadata()
    assert meta[0]["key"] == "clipjax_shapes:test:0" and meta[0]["size"] == [32, 32] and meta[0]["caption"]


def test_approximate_index_recall_and_duplicates(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    x = centres[rng.integers(0, 50, 4000)] + 0.3 * rng.normal(size=(4000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    for kind in ("hnsw", "ivf"):
        index, info = ann.build(x, kind=kind)
        assert info["kind"] == kind and info["recall_at_10"] >= 0.9, info
    assert ann.build(x, threshold=3999)[1]["kind"] == "hnsw"
    assert ann.build(x, threshold=4000)[1]["kind"] == "flat"
    # duplicates: rows 0/1/2 near-identical, 3/4 a pair, the rest far apart
    e = np.eye(8, 32, dtype=np.float32)
    e[1] = e[0] + 0.01 * e[5]
    e[2] = e[0] + 0.02 * e[6]
    e[4] = e[3] + 0.05 * e[7]
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    store = IndexStore.create(str(tmp_path / "d"), {"checkpoint": "x", "fingerprint": "f", "embed_dim": 32,
                                                    "image_size": 8})
    thumbs = [store_thumb() for _ in range(8)]
    store.append_shard(e, [{"key": f"k{i}", "path": "", "caption": "", "size": [8, 8], "source": 0}
                           for i in range(8)], thumbs, [], {})
    groups = search.SearchIndex.open(str(tmp_path / "d")).duplicates(0.99)
    assert [[m["key"] for m in g] for g in groups] == [["k0", "k1", "k2"], ["k3", "k4"]]
    assert search.SearchIndex.open(str(tmp_path / "d")).duplicates(0.99999) == []


def store_thumb():
    from clipjax.search.store import thumbnail_jpeg

    return thumbnail_jpeg(np.zeros((8, 8, 3), np.uint8))


def test_cli_index_query_json_sheet_rank_duplicates(ckpt, photos, tmp_path, capsys):
    cli = _cli()
    d = str(tmp_path / "idx")
    assert cli.main(["index", "--checkpoint", ckpt["a"], "--images", str(photos), "--index", d, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{len(PHOTOS)} images added" in out and "skipped so far: 2" in out and "flat" in out
    sheet = tmp_path / "q.png"
    assert cli.main(["query", "--index", d, "--text", "a cat", "-k", "3", "--json", "--sheet", str(sheet)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in res] == [1, 2, 3] and {"score", "path", "key", "caption", "size"} <= set(res[0])
    assert Image.open(sheet).size[0] == 3 * 160
    assert cli.main(["query", "--index", d, "--image", str(photos / "astronaut.jpg"), "-k", "1"]) == 0
    assert "astronaut.jpg" in capsys.readouterr().out
    imgs = sorted(str(p) for p in photos.rglob("*.png"))
    assert cli.main(["rank", "--checkpoint", ckpt["a"], "--text", "a rocket", "--json", *imgs]) == 0
    ranked = json.loads(capsys.readouterr().out)
    clip = clipjax.load(ckpt["a"])
    s = clip.encode_image(imgs) @ clip.encode_text(["a rocket"])[0]
    assert [r["name"] for r in ranked] == [imgs[i] for i in np.argsort(-s)]
    assert cli.main(["duplicates", "--index", d, "--threshold", "0.99999", "--json"]) == 0
    json.loads(capsys.readouterr().out)
    # errors are one line, exit 2
    assert cli.main(["query", "--index", d, "--checkpoint", ckpt["c"], "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert "embedding width differs" in err and len(err.strip().splitlines()) == 1
    # the server refuses to start with another checkpoint, naming both
    assert cli.main(["serve", "--index", d, "--checkpoint", ckpt["b"], "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "weights differ" in err and ckpt["a"] in err and ckpt["b"] in err
    assert cli.main(["query", "--index", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert "not a search index" in capsys.readouterr().err


def test_folder_and_collection_on_gcs(embedder, photos, tmp_path):
    """gs:// sources through clipjax.storage, against the GCS emulator on 127.0.0.1."""
    pytest.importorskip("gcp_storage_emulator")
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from gcs_emulator import gcs_emulator

    from clipjax import storage

    with gcs_emulator("bkt"):
        for p in sorted(photos.rglob("*")):
            if p.is_file():
                storage.write_bytes(f"gs://bkt/photos/{p.relative_to(photos).as_posix()}", p.read_bytes())
        out = search.build_index(embedder, "gs://bkt/photos", str(tmp_path / "idx"), progress=False)
        assert out["rows"] == len(PHOTOS) and out["counts"]["skipped"] == 2
        meta = IndexStore.open(str(tmp_path / "idx")).metadata()
        assert {m["key"] for m in meta} >= {"astronaut.jpg", "sub/deeper/coffee.jpg"}
        assert all(m["path"].startswith("gs://bkt/photos/") for m in meta)

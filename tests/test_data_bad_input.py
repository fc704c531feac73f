"""A user's collection with every defect we know of: it must load the good examples, convert
or skip the bad ones with the right counts, never crash, and refuse a collection with nothing
usable with a clear message. Same for a CSV index and a webdataset tar shard."""

import csv
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipjax.data.collection import ImageTextCollection
from clipjax.data.images import (
    Counts,
    NoUsableExamplesError,
    clean_caption,
    decode_image,
)

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (40, 48, 3), dtype=np.uint8)


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _jpeg() -> bytes:
    smooth = np.kron(RNG.integers(0, 256, (10, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return _enc(Image.fromarray(smooth), "JPEG", quality=90)


def _palette() -> bytes:
    p = Image.new("P", (20, 20))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    p.paste(1, (0, 0, 10, 20))
    return _enc(p, "PNG")


def _rgba() -> bytes:
    a = np.zeros((20, 20, 4), np.uint8)
    a[:, :10] = (0, 0, 255, 255)  # opaque blue
    a[:, 10:] = (0, 0, 0, 0)  # transparent black -> white
    return _enc(Image.fromarray(a, "RGBA"), "PNG")


def _gray16() -> bytes:
    a = np.full((20, 20), 0x8080, np.uint16)
    a[0, 0] = 65535
    return _enc(Image.fromarray(a), "PNG")  # PIL writes a 16-bit grayscale PNG


# name -> (image bytes or None for a missing file, caption bytes, expected outcome)
GOOD_JPEG = _jpeg()
CASES = {
    "good_jpeg": (GOOD_JPEG, b"a good photo", "ok"),
    "good_png": (_enc(Image.fromarray(PHOTO), "PNG"), b"another good photo", "ok"),
    "corrupt": (b"\x89PNG\r\n\x1a\n" + bytes(RNG.integers(0, 256, 300, dtype=np.uint8)),
                b"corrupt bytes", "corrupt"),
    "garbage": (b"this is not an image at all", b"garbage bytes", "corrupt"),
    "truncated": (GOOD_JPEG[: len(GOOD_JPEG) // 2], b"half a jpeg", "truncated"),
    "missing": (None, b"no such file", "missing"),
    "empty_caption": (GOOD_JPEG, b"", "empty"),
    "blank_caption": (GOOD_JPEG, b"   \t  ", "empty"),
    "latin1_caption": (GOOD_JPEG, b"caf\xe9 cr\xe8me on a table", "ok_encoding"),
    "long_caption": (GOOD_JPEG, ("word " * 2000).encode(), "ok_truncated"),
    "gray": (_enc(Image.fromarray(np.full((20, 20), 77, np.uint8)), "PNG"), b"gray", "conv"),
    "cmyk": (_enc(Image.new("CMYK", (20, 20), (255, 0, 0, 0)), "JPEG", quality=95), b"cmyk",
             "conv"),
    "gray16": (_gray16(), b"sixteen bit", "conv"),
    "rgba": (_rgba(), b"with alpha", "conv"),
    "palette": (_palette(), b"palette", "conv"),
}
EXPECTED = {"decoded": 9, "converted": 5, "skipped_corrupt": 2, "skipped_truncated": 1,
            "skipped_missing": 1, "skipped_empty_caption": 2, "skipped_bad_record": 0, "skipped_not_a_file": 0,
            "skipped_too_large": 0, "skipped_outside_root": 0, "truncated_caption": 1, "caption_converted_encoding": 1}


def _ext(data):
    if data is None:
        return "jpg"
    return "png" if data.startswith(b"\x89PNG") else "jpg"


def _write_csv(root, cases):
    rows = []
    for name, (data, caption, _) in cases.items():
        fname = f"img/{name}.{_ext(data)}"
        if data is not None:
            (root / "img").mkdir(exist_ok=True)
            (root / fname).write_bytes(data)
        rows.append((fname, caption))
    # Written as bytes so that the non-UTF-8 caption really is non-UTF-8 on disk.
    lines = [b"filepath,title,tags"]
    for fname, caption in rows:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(
            [fname, caption.decode("utf-8", "surrogateescape"), "shape|photo"])
        lines.append(buf.getvalue().encode("utf-8", "surrogateescape"))
    path = root / "index.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _write_tar(path, cases):
    with tarfile.open(path, "w") as tar:
        for i, (name, (data, caption, _)) in enumerate(cases.items()):
            files = {"txt": caption, "json": json.dumps({"tags": ["a", name]}).encode()}
            if data is not None:
                files[_ext(data)] = data
            for ext, blob in files.items():
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return path


def _check_values(examples):
    by_caption = {ex["caption"]: ex for ex in examples}
    assert set(by_caption) >= {"a good photo", "another good photo", "gray", "cmyk",
                               "sixteen bit", "with alpha", "palette",
                               "café crème on a table"}
    for ex in examples:
        img = ex["image"]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3
    np.testing.assert_array_equal(by_caption["another good photo"]["image"], PHOTO)
    assert (by_caption["gray"]["image"] == 77).all()
    g16 = by_caption["sixteen bit"]["image"]
    assert g16[1, 1].tolist() == [128] * 3 and g16[0, 0].tolist() == [255] * 3  # rescaled
    rgba = by_caption["with alpha"]["image"]
    assert rgba[5, 2].tolist() == [0, 0, 255] and rgba[5, 15].tolist() == [255, 255, 255]
    pal = by_caption["palette"]["image"]
    assert pal[5, 2].tolist() == [200, 100, 50] and pal[5, 15].tolist() == [10, 20, 30]
    cyan = by_caption["cmyk"]["image"].reshape(-1, 3).mean(0)
    assert cyan[0] < 40 and cyan[1] > 215 and cyan[2] > 215, cyan
    long = [c for c in by_caption if c.startswith("word word")]
    assert len(long) == 1 and len(long[0]) <= 1000


def test_csv_collection_with_every_defect(tmp_path):
    coll = ImageTextCollection(_write_csv(tmp_path, CASES))
    examples = list(coll)
    assert coll.counts.as_dict() == {**EXPECTED, "skipped": 6}
    assert len(examples) == EXPECTED["decoded"]
    assert examples[0]["tags"] == ["shape", "photo"]
    _check_values(examples)
    # A second pass counts again (counts accumulate over epochs).
    list(coll)
    assert coll.counts.decoded == 2 * EXPECTED["decoded"]


def test_tar_shard_with_every_defect(tmp_path):
    shard = _write_tar(tmp_path / "shard-00000.tar", CASES)
    coll = ImageTextCollection(str(tmp_path / "shard-*.tar"))
    examples = list(coll)
    assert coll.counts.as_dict() == {**EXPECTED, "skipped": 6}
    _check_values(examples)
    assert examples[0]["tags"] == ["a", "good_jpeg"]
    # A shard cut off mid-file: what came before is kept, the rest counted, no crash.
    data = shard.read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "shard-00001.tar").write_bytes(data[: len(data) * 2 // 3])
    cut = ImageTextCollection(str(tmp_path / "cut" / "*.tar"))
    got = list(cut)
    assert 0 < len(got) < EXPECTED["decoded"] and cut.counts.skipped_bad_record == 1


def test_sharding_partitions_examples(tmp_path):
    path = _write_csv(tmp_path, CASES)
    keys = [{ex["key"] for ex in ImageTextCollection(path, shard_index=i, num_shards=3)}
            for i in range(3)]
    assert sum(map(len, keys)) == EXPECTED["decoded"]
    assert len(set().union(*keys)) == EXPECTED["decoded"]


def test_jsonl_collection_and_bad_lines(tmp_path):
    (tmp_path / "a.png").write_bytes(CASES["good_png"][0])
    lines = [json.dumps({"image": "a.png", "text": "ok", "labels": ["x", "y"]}),
             "{not json", json.dumps(["a", "list"]),
             json.dumps({"image": str(tmp_path / "a.png"), "text": "absolute path"})]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    coll = ImageTextCollection(tmp_path / "c.jsonl", image_key="image", caption_key="text",
                               tags_key="labels")
    got = list(coll)
    assert [g["caption"] for g in got] == ["ok", "absolute path"]
    assert got[0]["tags"] == ["x", "y"]
    assert coll.counts.skipped_bad_record == 2


def test_no_usable_example_fails_at_start(tmp_path):
    bad = {k: v for k, v in CASES.items() if v[2] in ("corrupt", "truncated", "missing", "empty")}
    (tmp_path / "csv").mkdir()
    with pytest.raises(NoUsableExamplesError, match="no usable image-text example") as e:
        ImageTextCollection(_write_csv(tmp_path / "csv", bad))
    msg = str(e.value)
    assert "index.csv" in msg and "skipped_corrupt=2" in msg and "skipped_missing=1" in msg
    with pytest.raises(NoUsableExamplesError, match="skipped_truncated=1"):
        ImageTextCollection(str(_write_tar(tmp_path / "bad.tar", bad)))
    (tmp_path / "empty.csv").write_text("filepath,title\n")
    with pytest.raises(NoUsableExamplesError):
        ImageTextCollection(tmp_path / "empty.csv")


def test_clear_errors_for_wrong_setup(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        ImageTextCollection(tmp_path / "nothing-here.csv")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        ImageTextCollection(str(tmp_path / "shards-*.tar"))
    (tmp_path / "x.tsv").write_text("path\tcaption\na.jpg\thello\n")
    with pytest.raises(ValueError, match=r"no column.*'filepath'.*columns are \['caption', 'path'\]"):
        ImageTextCollection(tmp_path / "x.tsv")


def test_decode_helpers_never_raise():
    c = Counts()
    for blob in (b"", b"\xff\xd8\xff", b"GIF89a" + b"\x00" * 10, bytes(range(256)) * 4):
        assert decode_image(blob, c) is None
    assert c.skipped_corrupt + c.skipped_truncated == 4
    assert clean_caption(None, c) is None and clean_caption("\x00\x01  ", c) is None
    assert clean_caption("a\nb\t c", c) == "a b c"
    assert clean_caption(b"\xef\xbb\xbfbom caption", c) == "bom caption"


def test_as_tf_dataset(tmp_path):
    tf = pytest.importorskip("tensorflow")
    coll = ImageTextCollection(_write_csv(tmp_path, CASES))
    ds = coll.as_tf_dataset()
    items = list(ds.as_numpy_iterator())
    assert len(items) == EXPECTED["decoded"]
    assert items[0]["image"].dtype == np.uint8 and items[0]["tags"].tolist() == [b"shape", b"photo"]
    assert coll.counts.skipped_missing == 1
    assert ds.element_spec["image"].shape.as_list() == [None, None, 3]
    del tf

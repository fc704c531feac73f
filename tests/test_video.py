"""video.py: shapes scenes written as MP4 with PyAV and their ground truth, the sampling reader
(timestamps, bounded batches, unreadable and damaged files), segment pooling, the half-maximum
span, search ranking, tags over time, and the CLI end to end with tiny random models."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("av")

from clipjax.apps import video as V  # noqa: E402
from clipjax.apps.shapes_video import (ALL_PAIRS, Scene, SceneObject, galleries, make_scene, render,  # noqa: E402
                                       write_scene)
from clipjax.apps.video_io import VideoError, VideoFrames  # noqa: E402


def test_scenes_hold_their_ground_truth():
    a, b = make_scene(3, 5), make_scene(3, 5)
    assert a.ground_truth() == b.ground_truth()
    for i in range(40):
        s = make_scene(0, i)
        main = s.main
        assert 0 < main.enter < main.exit < s.duration  # some empty time on both sides
        for d in s.objects[1:]:
            assert d.color != main.color and d.shape != main.shape
            assert d.exit - d.enter < main.exit - main.enter
        assert all(o.enter * s.fps == int(o.enter * s.fps) for o in s.objects)  # on the frame grid
    for gallery in galleries(0, 2, per_gallery=20):
        mains = {sc.label for sc in gallery}
        assert len(mains) == 20
        assert not any(d.name in mains for sc in gallery for d in sc.objects[1:])


def _scene_one_object(**kw):
    o = SceneObject("red", "circle", "large", "solid", enter=2.0, exit=5.0, start_xy=(16.0, 32.0),
                    end_xy=(48.0, 32.0), radius=9.0)
    return Scene(seed=0, index=0, size=64, fps=8, duration=8.0, background="flat", objects=[o], **kw)


def _red(frame) -> bool:
    f = frame.astype(int)
    return bool(((f[..., 0] > 170) & (f[..., 1] < 110) & (f[..., 2] < 110)).sum() > 40)


def test_frames_show_the_object_exactly_while_it_is_visible(tmp_path):
    scene = _scene_one_object()
    frames = list(render(scene))
    assert len(frames) == 64
    assert [_red(f) for t, f in frames] == [2.0 <= t < 5.0 for t, f in frames]
    path = write_scene(scene, str(tmp_path), "one")
    truth = json.load(open(tmp_path / "one.json"))
    assert truth["span"] == [2.0, 5.0] and truth["label"] == "red circle"
    reader = VideoFrames(path, rate=2.0, batch=5)
    batches = list(reader)
    assert max(len(t) for t, _ in batches) <= 5  # memory bounded by the batch
    times = np.concatenate([t for t, _ in batches])
    np.testing.assert_allclose(times, np.arange(16) / 2)
    decoded = np.concatenate([f for _, f in batches])
    assert decoded.shape == (16, 64, 64, 3) and decoded.dtype == np.uint8
    assert [_red(f) for f in decoded] == [2.0 <= t < 5.0 for t in times]  # through the H.264 codec
    assert reader.info.duration == pytest.approx(8.0) and reader.info.fps == pytest.approx(8.0)
    assert sum(len(t) for t, _ in VideoFrames(path, rate=None, batch=100)) == 64


def test_unreadable_and_damaged_videos(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(VideoError, match="bad.mp4"):
        list(VideoFrames(str(bad)))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4"):
        list(VideoFrames(str(empty)))
    with pytest.raises(VideoError, match="missing.mp4"):
        list(VideoFrames(str(tmp_path / "missing.mp4")))
    path = write_scene(_scene_one_object(), str(tmp_path), "whole")
    data = open(path, "rb").read()
    # the first half of the file (the moov index is written at the end: FFmpeg cannot read it)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="cut.mp4"):
        list(VideoFrames(str(cut)))
    # damaged in the middle: whatever decodes is read, never a crash or an endless loop
    hurt = bytearray(data)
    mid = len(hurt) // 2
    hurt[mid:mid + 400] = bytes(400)
    (tmp_path / "hurt.mp4").write_bytes(bytes(hurt))
    reader = VideoFrames(str(tmp_path / "hurt.mp4"), rate=None)
    try:
        n = sum(len(t) for t, _ in reader)
        assert 0 < n <= 64
    except VideoError as e:
        assert "hurt.mp4" in str(e)
    with pytest.raises(ValueError, match="positive"):
        VideoFrames(path, rate=0)
    import av

    sound = str(tmp_path / "sound.mkv")  # a file FFmpeg reads, holding audio only
    with av.open(sound, "w") as c:
        s = c.add_stream("mp2", rate=44100)
        s.layout = "mono"
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
        f.rate = 44100
        for packet in [*s.encode(f), *s.encode()]:
            c.mux(packet)
    with pytest.raises(VideoError, match="no video stream"):
        list(VideoFrames(sound))


def test_segments_localise_and_search():
    times = np.arange(16) / 2  # 2 fps, 8 s
    e = np.zeros((16, 3), np.float32)
    e[:, 0] = 1
    e[4:10] = [0, 1, 0]  # the thing: 2.0 s .. 5.0 s
    v = V.VideoEmbedding("a.mp4", times, e, 8.0)
    starts, ends, means = v.segments(1.0)
    np.testing.assert_allclose(starts, np.arange(8))
    np.testing.assert_allclose(ends, np.arange(1, 9))
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1, rtol=1e-6)
    best, s, t = V.localise(means @ np.array([0, 1, 0], np.float32), starts, ends)
    assert (s, t) == (2.0, 5.0) and 2 <= best < 5
    # half-maximum: a lower neighbour above half-way still joins; one below does not
    best, s, t = V.localise(np.array([0.0, 0.2, 0.6, 1.0, 0.4, 0.1]), np.arange(6.0), np.arange(1.0, 7.0))
    assert (best, s, t) == (3, 2.0, 4.0)
    other = V.VideoEmbedding("b.mp4", times, np.tile([[1, 0, 0]], (16, 1)).astype(np.float32), 8.0)
    hits = V.search([other, v], np.array([0, 1, 0], np.float32), 1.0)
    assert [h["video"] for h in hits] == ["a.mp4", "b.mp4"] and (hits[0]["start"], hits[0]["end"]) == (2.0, 5.0)
    assert len(V.search([other, v], np.array([0, 1, 0], np.float32), 1.0, top=1)) == 1
    out = V.classify(v, np.eye(3, dtype=np.float32), ["x", "y", "z"], 100.0, top=2, segment_seconds=1.0)
    assert out["label"] == "x" and len(out["top"]) == 2  # 10 of 16 frames are x
    assert [s["label"] for s in out["segments"]] == list("xxyyyxxx")
    # a background that sits near the text's score, and a distractor far below it: on the plain
    # cosine the span swallows the background; minus the null prompt's cosine it does not
    seg_embeds = np.array([[0.8, 0.6, 0]] * 2 + [[0, 1, 0]] * 3 + [[0, 0, 1]] + [[0.8, 0.6, 0]] * 2, np.float32)
    bg = V.VideoEmbedding("bg.mp4", np.arange(8.0), seg_embeds, 8.0)
    text, null = np.array([0, 1, 0], np.float32), np.array([1, 0, 0], np.float32)
    assert [(h["start"], h["end"]) for h in V.search([bg], text, 1.0)] == [(0.0, 5.0)]
    hit = V.search([bg], text, 1.0, null_embed=null)[0]
    assert (hit["start"], hit["end"]) == (2.0, 5.0) and hit["score"] == pytest.approx(1.0)  # ranked on the cosine
    frames = V.class_probs(v, np.eye(3, dtype=np.float32), 100.0, "frames")
    np.testing.assert_allclose(frames, [10 / 16, 6 / 16, 0], atol=1e-6)  # each frame votes
    best = V.class_probs(v, np.eye(3, dtype=np.float32), 100.0, "max", 1.0)
    assert np.isclose(best[0], best[1]) and best[2] < 1e-6  # x and y each fill a whole segment
    with pytest.raises(ValueError, match="pooling"):
        V.class_probs(v, np.eye(3, dtype=np.float32), 100.0, "median")
    with pytest.raises(ValueError, match="positive"):
        v.segments(0)


class _RedTagger:
    """Tags a frame "red | circle" when a red object shows, else nothing; captions echo the tags."""

    def preprocess(self, frames):
        return np.stack(frames)

    def tags(self, pixels):
        return ["red | circle" if _red(f) else "" for f in pixels]

    def caption(self, pixels, tags, num_beams=3):
        return [f"a picture of {t or 'nothing'}" for t in tags], tags


def test_tags_over_time(tmp_path):
    path = write_scene(_scene_one_object(), str(tmp_path), "one")
    out = V.caption_video(_RedTagger(), path, segment_seconds=1.0, rate=4.0, batch=3)
    assert out["key_frames"] == 8 and out["duration"] == pytest.approx(8.0)
    assert [s["time"] for s in out["segments"]] == [k + 0.5 for k in range(8)]  # the middle of each segment
    red = {d["tag"]: d for d in out["tags"]}["red"]
    assert red["spans"] == [[2.0, 5.0]] and red["fraction"] == pytest.approx(3 / 8)
    assert [c["caption"] for c in out["captions"]] == ["a picture of nothing", "a picture of red | circle",
                                                       "a picture of nothing"]
    assert [(c["start"], c["end"]) for c in out["captions"]] == [(0.0, 2.0), (2.0, 5.0), (5.0, 8.0)]


# ------------------------------------------------------------------------------- the CLI
def _tiny_clip(tmp_path) -> str:
    import flax.linen as nn
    import jax

    from clipjax.convert.formats import save_clipjax
    from clipjax.models.clip import CLIP
    from clipjax.models.presets import get_preset

    cfg = get_preset("tiny-vit")
    v = nn.unbox(CLIP(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 77), np.int32)))
    ckpt = str(tmp_path / "tiny_clip")
    save_clipjax(ckpt, v, cfg)
    return ckpt


def _tiny_tag2text(tmp_path) -> str:
    """A random-weight Tag2Text saved the way a run keeps it: the checkpoint, and the vocab and tag
    list in the run's tag2text/ beside it."""
    import flax.linen as nn
    import jax

    from clipjax.convert.formats import save_clipjax
    from clipjax.data.tagging import shapes_tag_names, shapes_vocabulary
    from clipjax.models.tag2text import init_inputs, Tag2Text
    from clipjax.tasks.tag2text import tag2text_config
    from clipjax.tokenizer import TagTextTokenizer
    from test_tag2text_train import _tiny

    run = tmp_path / "t2t_run"
    (run / "tag2text").mkdir(parents=True)
    vocab = shapes_vocabulary(str(run / "tag2text" / "vocab.txt"))
    tags = shapes_tag_names()
    (run / "tag2text" / "tag_list.txt").write_text("\n".join(tags) + "\n")
    config = _tiny(1)
    tok = TagTextTokenizer(vocab, "a picture of ", 16, 32)
    cfg = tag2text_config(config, tok, len(tags))
    v = nn.unbox(Tag2Text(cfg).init(jax.random.PRNGKey(0), *init_inputs(cfg, 2)))
    save_clipjax(str(run / "model"), v, cfg)
    return str(run / "model")


def test_video_cli(tmp_path, capsys):
    import video

    clip = _tiny_clip(tmp_path)
    clips = tmp_path / "clips"
    paths = [write_scene(make_scene(1, i, main_pair=ALL_PAIRS[i]), str(clips)) for i in range(2)]
    bad = clips / "bad.mp4"
    bad.write_text("no video here")

    def run(*args):
        rc = video.main([*args, "--no-progress"])
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    rc, out, err = run("classify", "--checkpoint", clip, "--labels", "red circle,blue star,green cross",
                       "--per-segment", "--segment", "2", *paths, str(bad))
    res = json.loads(out)
    assert rc == 0 and len(res["results"]) == 2 and res["skipped"][0]["video"] == str(bad)
    assert "1 of 3 videos skipped" in err and err.count("bad.mp4") == 1
    r = res["results"][0]
    assert r["label"] in ("red circle", "blue star", "green cross") and len(r["segments"]) == 4
    assert np.isclose(sum(t["prob"] for t in r["top"]), 1, atol=1e-5)

    out_file = tmp_path / "search.json"
    rc, out, err = run("search", "--checkpoint", clip, "--text", "a photo of a red circle.", "--output",
                       str(out_file), *paths)
    res = json.load(open(out_file))
    assert rc == 0 and out == "" and res["text"] == "a photo of a red circle."
    assert sorted(h["video"] for h in res["results"]) == sorted(paths)
    assert all(0 <= h["start"] < h["end"] <= 8.0 for h in res["results"])

    t2t = _tiny_tag2text(tmp_path)
    rc, out, err = run("caption", "--checkpoint", t2t, "--segment", "4", "--beams", "1", paths[0])
    res = json.loads(out)["results"][0]
    assert rc == 0, err
    assert res["key_frames"] == 2 and len(res["segments"]) == 2 and "captions" in res
    assert all(isinstance(s["caption"], str) for s in res["segments"])

    def err_of(*args):
        rc, out, err = run(*args)
        assert rc == 2 and err.startswith("video.py: error:") and "Traceback" not in err, err
        return err

    assert "cannot read video" in err_of("classify", "--checkpoint", clip, "--labels", "a,b", str(bad))
    rc, out, err = run("search", "--checkpoint", clip, "--text", "x", str(bad), str(bad))
    assert rc == 2 and "none of the 2 videos" in err.splitlines()[-1]
    assert "no such video" in err_of("search", "--checkpoint", clip, "--text", "x", str(tmp_path / "nope.mp4"))
    assert "--labels" in err_of("classify", "--checkpoint", clip, *paths)
    assert "at least two" in err_of("classify", "--checkpoint", clip, "--labels", "one", *paths)
    assert "{}" in err_of("classify", "--checkpoint", clip, "--labels", "a,b", "--templates", "a photo", *paths)
    assert "not a Tag2Text" in err_of("caption", "--checkpoint", clip, *paths)
    assert "not a CLIP" in err_of("search", "--checkpoint", t2t, "--text", "x", *paths)
    assert "positive" in err_of("search", "--checkpoint", clip, "--text", "x", "--segment", "0", *paths)
    assert os.path.exists(paths[0])  # inputs untouched

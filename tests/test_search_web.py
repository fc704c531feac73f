"""The search web page: the JSON API through FastAPI's TestClient (text / image / mixed search,
thumbnails, 400 on a non-image, 413 over the size limit, tags from a tagger, concurrent
requests), and the page itself in a real browser: Debian's chromium driven by Playwright
against uvicorn on 127.0.0.1 (type a query, see the grid, upload an image, see its
neighbours). The browser test is skipped, saying why, without /usr/bin/chromium or playwright."""

import concurrent.futures
import importlib.util
import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from skimage import data as skd

import clipjax
from clipjax import search

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from clipjax.search.web import make_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "coins", "retina"]


def _init(cfg):
    spec = importlib.util.spec_from_file_location("_search_tests", os.path.join(os.path.dirname(__file__),
                                                                                "test_search.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._init(cfg)


class FakeTagger:
    """LoadedTag2Text's interface as the page uses it (preprocess, tags, caption -> (captions, tags))."""

    class cfg:
        captioning = True

    def preprocess(self, images):
        return np.stack([np.asarray(Image.fromarray(np.asarray(i)).resize((8, 8)), np.float32) for i in images])

    def tags(self, x):
        return [f"tag{int(v.mean()) % 7} | photo" for v in x]

    def caption(self, x, tags=None):
        return ["a generated caption" for _ in x], list(tags)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    d = tmp_path_factory.mktemp("web")
    (d / "photos").mkdir()
    for n in PHOTOS:
        img = getattr(skd, n)()
        Image.fromarray(img if img.ndim == 3 else np.stack([img] * 3, -1)).convert("RGB").save(d / "photos" / f"{n}.jpg")
    cfg = clipjax.get_preset("tiny-vit")
    emb = search.Embedder(clipjax.LoadedCLIP(cfg, _init(cfg)), batch_size=8, name="tiny-random")
    search.build_index(emb, str(d / "photos"), str(d / "idx"), progress=False)
    return search.SearchIndex.open(str(d / "idx"), emb), d


@pytest.fixture(scope="module")
def client(index):
    return TestClient(make_app(index[0], tagger=FakeTagger(), max_upload_bytes=200_000))


def _jpeg(arr, quality=90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_page_and_text_api(client, index):
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and 'type="file"' in page.text
    r = client.get("/api/search", params={"q": "a photo of a rocket", "k": 5})
    assert r.status_code == 200
    res = r.json()["results"]
    want = index[0].search(text="a photo of a rocket", k=5)
    assert [x["id"] for x in res] == [w.id for w in want]
    assert [x["score"] for x in res] == pytest.approx([w.score for w in want], abs=1e-5)
    assert res[0]["tags"].endswith("| photo") and res[0]["generated_caption"] == "a generated caption"
    th = client.get(res[0]["thumb"])
    assert th.status_code == 200 and th.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(th.content)).size[0] <= 160
    assert client.get("/api/search", params={"q": "x", "k": 0}).status_code == 400
    assert client.get("/api/search").status_code == 422  # q is required
    assert client.get("/thumb/999").status_code == 404
    assert client.get("/api/info").json()["rows"] == len(PHOTOS)


def test_image_api_and_bad_uploads(client):
    r = client.post("/api/search/image", files={"file": ("q.jpg", _jpeg(skd.coffee()), "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["key"] == "coffee.jpg" and len(res) == 3
    mixed = client.post("/api/search/image", files={"file": ("q.jpg", _jpeg(skd.coffee()), "image/jpeg")},
                        data={"k": "3", "q": "a rocket", "weight": "0.3"})
    assert mixed.status_code == 200 and mixed.json()["query"] == "a rocket"
    bad = client.post("/api/search/image", files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert bad.status_code == 400 and "not an image" in bad.json()["detail"]
    assert client.post("/api/search/image", data={"k": "3"}).status_code == 400  # no file
    big = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    r = client.post("/api/search/image", files={"file": ("big.png", _png(big), "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_concurrent_requests(client):
    def one(i):
        if i % 3 == 0:
            return client.post("/api/search/image", files={"file": ("q.jpg", _jpeg(skd.rocket()), "image/jpeg")}).status_code
        return client.get("/api/search", params={"q": f"query number {i}", "k": 4}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(48)))
    assert codes == [200] * 48


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_page_in_chromium(index, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install playwright)")
    import uvicorn
    from playwright.sync_api import sync_playwright

    idx, d = index
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(idx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        shot = os.environ.get("SEARCH_SCREENSHOT") or str(tmp_path / "page.png")
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=CHROMIUM_ARGS,
                                                       viewport={"width": 1100, "height": 800})
            try:
                page = ctx.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.fill("#q", "a photo of a rocket")
                page.click("#search")
                page.wait_for_function("document.querySelectorAll('#grid .result').length > 0", timeout=30_000)
                cards = page.locator("#grid .result")
                assert cards.count() == len(PHOTOS)  # k=12 > the index: every image
                want = idx.search(text="a photo of a rocket", k=1)[0]
                assert want.key in cards.nth(0).inner_text()
                assert page.locator("#grid .result img").nth(0).evaluate("i => i.complete && i.naturalWidth > 0")
                page.screenshot(path=shot, full_page=True)
                page.set_input_files("#upload", str(d / "photos" / "chelsea.jpg"))
                page.wait_for_function("document.getElementById('status').textContent.includes('images like')",
                                       timeout=30_000)
                assert "chelsea.jpg" in cards.nth(0).inner_text()
                assert "1.000" in cards.nth(0).inner_text()  # the image itself, cosine 1
                bad = tmp_path / "bad.jpg"
                bad.write_bytes(b"not an image at all")
                page.set_input_files("#upload", str(bad))
                page.wait_for_function("document.getElementById('status').className === 'error'", timeout=30_000)
                assert "400" in page.inner_text("#status")
            finally:
                ctx.close()
        assert os.path.getsize(shot) > 10_000
    finally:
        server.should_exit = True
        thread.join(15)
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)

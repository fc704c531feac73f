"""A bounded concurrent load test of `search.py serve` on 127.0.0.1, and the page's screenshot.

Starts the real server (`search.py serve`, uvicorn) in a subprocess on a free port, waits for
it, sends --requests requests from --concurrency client threads (httpx; 3 text searches to 1
image upload), and reports p50 / p99 latency and the errors (there should be none). With
--screenshot, Debian's chromium (driven by Playwright) types a query on the page and saves
the result grid. The server is stopped at the end.

    python benchmarks/search_web_load.py --index runs/fmnist_test.index --requests 400 --concurrency 8 \
        --output runs/search_web_load.json --screenshot docs/images/search_page.png --query "a photo of a sneaker"
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def screenshot(url: str, query: str, path: str) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", headless=True,
                                                   args=CHROMIUM_ARGS, viewport={"width": 1100, "height": 720})
        try:
            page = ctx.new_page()
            page.goto(url)
            page.fill("#q", query)
            page.click("#search")
            page.wait_for_function("document.querySelectorAll('#grid .result').length > 0", timeout=60_000)
            page.wait_for_function("[...document.images].every(i => i.complete)", timeout=60_000)
            page.screenshot(path=path)
        finally:
            ctx.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--checkpoint")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--output")
    ap.add_argument("--screenshot")
    ap.add_argument("--query", default="a photo of a sneaker")
    args = ap.parse_args()
    import httpx
    from PIL import Image

    port = free_port()
    cmd = [sys.executable, os.path.join(ROOT, "search.py"), "serve", "--index", args.index, "--port", str(port)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    server = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(url + "/api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start (exit {server.poll()})")
            time.sleep(0.5)
        info = httpx.get(url + "/api/info").json()
        thumb = httpx.get(url + "/thumb/0").content
        buf = io.BytesIO()
        Image.open(io.BytesIO(thumb)).convert("RGB").save(buf, "PNG")
        upload = buf.getvalue()
        words = ["sneaker", "bag", "dress", "coat", "shirt", "trouser", "sandal", "ankle boot", "pullover", "t-shirt"]
        client = httpx.Client(timeout=60)

        def one(i):
            t = time.perf_counter()
            if i % 4 == 3:
                r = client.post(url + "/api/search/image", files={"file": ("q.png", upload, "image/png")}, data={"k": "10"})
            else:
                r = client.get(url + "/api/search", params={"q": f"a photo of a {words[i % len(words)]}", "k": 10})
            return r.status_code, time.perf_counter() - t, "image" if i % 4 == 3 else "text"

        for i in range(8):  # warm-up
            one(i)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            res = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        lat = np.asarray([r[1] for r in res]) * 1e3
        out = {"rows": info["rows"], "requests": args.requests, "concurrency": args.concurrency,
               "errors": sum(r[0] != 200 for r in res), "status_codes": sorted({r[0] for r in res}),
               "requests_per_s": round(args.requests / wall, 1),
               "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1)}
        for kind in ("text", "image"):
            k = np.asarray([r[1] for r in res if r[2] == kind]) * 1e3
            out[f"{kind}_p50_ms"] = round(float(np.percentile(k, 50)), 1)
            out[f"{kind}_p99_ms"] = round(float(np.percentile(k, 99)), 1)
        bad = client.post(url + "/api/search/image", files={"file": ("x.txt", b"not an image", "text/plain")})
        out["non_image_status"] = bad.status_code
        big = client.post(url + "/api/search/image", files={"file": ("big.bin", os.urandom(11 * 2**20), "image/png")})
        out["over_limit_status"] = big.status_code
        print(json.dumps(out, indent=1))
        if args.output:
            with open(args.output, "w") as f:
                json.dump(out, f, indent=1)
        if args.screenshot:
            screenshot(url, args.query, args.screenshot)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()

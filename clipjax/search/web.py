"""The search web page and its JSON API (FastAPI; `serve` runs it under uvicorn).

    GET  /                          the page: search box, image upload, results grid
    GET  /api/search?q=TEXT&k=K     text search -> {"query", "k", "results": [...]}
    POST /api/search/image          multipart `file` (+ optional `k`, `q`, `weight`): reverse
                                    image search, or a mix with the text q
    GET  /thumb/{id}                a result's JPEG thumbnail (kept in the index)
    GET  /api/info                  rows, checkpoint, FAISS kind

Each result: rank, score (cosine similarity), id, key, path, caption, size, thumb (URL) and,
when a Tag2Text / RAM tagger is given, `tags` and `generated_caption` of its image.
Bad input: an upload that is not an image -> 400 with the reason; over `max_upload_bytes` ->
413 (refused from its Content-Length before it is read when the client sends one).
Model calls are serialised by a lock (one XLA computation at a time on the host); FAISS
searches run concurrently.
"""

from __future__ import annotations

import functools
import threading
from typing import Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from clipjax.data.images import Counts, decode_image
from clipjax.search.index import SearchIndex

MAX_K = 100


def make_app(index: SearchIndex, *, tagger=None, max_upload_bytes: int = 10 * 2**20, title: str = "clipjax search"):
    """The FastAPI app over an opened index. `tagger`: a LoadedTag2Text (Tag2Text or RAM: its
    `preprocess`, `tags`, and `caption` when `cfg.captioning`), or None."""
    app = FastAPI(title=title)
    lock = threading.Lock()

    @functools.lru_cache(maxsize=4096)
    def tag_info(i: int) -> tuple[str, str]:
        x = tagger.preprocess([np.asarray(index.store.thumbnail_image(i))])
        with lock:
            tags = tagger.tags(x)[0]
            caption = tagger.caption(x, tags=[tags])[0][0] if tagger.cfg.captioning else ""
        return tags, caption

    def payload(results, **query) -> dict:
        out = []
        for r in results:
            d = r.as_dict() | {"thumb": f"/thumb/{r.id}"}
            if tagger is not None:
                d["tags"], d["generated_caption"] = tag_info(r.id)
            out.append(d)
        return query | {"results": out}

    def check_k(k: int) -> int:
        if not 1 <= k <= MAX_K:
            raise HTTPException(400, f"k must be between 1 and {MAX_K}")
        return k

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{{title}}", title).replace("{{rows}}", str(len(index)))

    @app.get("/api/info")
    def info():
        m = index.store.manifest
        return {"rows": len(index), "checkpoint": m["checkpoint"], "faiss": m.get("faiss"),
                "max_upload_bytes": max_upload_bytes, "tagger": tagger is not None}

    @app.get("/api/search")
    def search_text(q: str = Query(..., min_length=1, max_length=2000), k: int = 12):
        check_k(k)
        with lock:
            vec = index.query_vector(text=q)
        return payload(index.search_vectors(vec[None], k)[0], query=q, k=k)

    @app.post("/api/search/image")
    async def search_image(request: Request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_upload_bytes + 64 * 1024:
            return JSONResponse({"detail": f"upload of {int(length)} bytes is over the limit of {max_upload_bytes} bytes"},
                                status_code=413)
        try:
            form = await request.form()
        except Exception as e:  # noqa: BLE001 - a malformed multipart body is the client's
            raise HTTPException(400, f"expected a multipart form with a `file` field ({e})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "expected a multipart form with an image in the `file` field")
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            return JSONResponse({"detail": f"upload is over the limit of {max_upload_bytes} bytes"}, status_code=413)
        counts = Counts()
        image = decode_image(data, counts)
        if image is None:
            why = ", ".join(k.replace("skipped_", "") for k, v in counts.as_dict().items()
                            if k.startswith("skipped_") and v) or "unreadable"
            raise HTTPException(400, f"{upload.filename or 'the upload'} is not an image that can be read ({why})")
        try:
            k = check_k(int(form.get("k") or 12))
            weight = float(form.get("weight") or 0.5)
        except ValueError:
            raise HTTPException(400, "k must be an integer and weight a number") from None
        q = form.get("q") or None
        with lock:
            vec = index.query_vector(text=q, image=image, weight=weight)
        return payload(index.search_vectors(vec[None], k)[0], query=q, image=upload.filename, k=k)

    @app.get("/thumb/{i}")
    def thumb(i: int):
        if not 0 <= i < len(index):
            raise HTTPException(404, f"no row {i}")
        return Response(index.store.thumbnail(i), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    return app


def load_tagger(path: Optional[str]):
    if path is None:
        return None
    from clipjax.inference.load import load
    from clipjax.inference.tag2text import LoadedTag2Text

    tagger = load(path)
    if not isinstance(tagger, LoadedTag2Text):
        raise ValueError(f"--tagger {path} is not a Tag2Text / RAM checkpoint")
    return tagger


def serve(index_dir: str, checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, tagger: Optional[str] = None,
          max_upload_bytes: int = 10 * 2**20) -> None:
    """Open the index with `checkpoint` (another model is refused before the server starts)
    and serve the page until interrupted."""
    import uvicorn

    index = SearchIndex.open(index_dir, checkpoint)
    app = make_app(index, tagger=load_tagger(tagger), max_upload_bytes=max_upload_bytes)
    index.query_vector(text="warm up")  # compile before the first request
    uvicorn.run(app, host=host, port=port, log_level="warning")


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{title}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; margin: 1.2em; background: #fafafa; color: #222; }
 h1 { font-size: 1.3em; margin: 0 0 .6em; }
 form { display: inline-flex; gap: .4em; margin: 0 1.2em .6em 0; align-items: center; }
 input[type=text] { width: 26em; padding: .4em; font-size: 1em; }
 button { padding: .4em .9em; font-size: 1em; }
 #status { color: #555; margin: .4em 0 .8em; min-height: 1.2em; }
 #status.error { color: #b00; }
 #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
 .result { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 6px; }
 .result img { width: 100%; height: 150px; object-fit: contain; image-rendering: auto; background: #eee; }
 .score { font-weight: 600; } .meta { font-size: .8em; color: #555; word-break: break-all; }
 .tags { font-size: .8em; color: #064; }
</style></head>
<body>
<h1>{{title}} <small style="font-weight:normal;color:#666">({{rows}} images)</small></h1>
<form id="text-form"><input id="q" type="text" name="q" placeholder="describe what you look for" autofocus>
 <button id="search" type="submit">Search</button></form>
<form id="image-form"><label>or find images like <input id="upload" type="file" name="file" accept="image/*"></label></form>
<div id="status"></div>
<div id="grid"></div>
<script>
const grid = document.getElementById('grid'), status = document.getElementById('status');
function show(data, what) {
  grid.innerHTML = '';
  status.className = ''; status.textContent = data.results.length + ' results for ' + what;
  for (const r of data.results) {
    const d = document.createElement('div'); d.className = 'result';
    const img = document.createElement('img'); img.src = r.thumb; img.alt = r.key; d.appendChild(img);
    const s = document.createElement('div'); s.className = 'score'; s.textContent = '#' + r.rank + '  ' + r.score.toFixed(3); d.appendChild(s);
    const m = document.createElement('div'); m.className = 'meta'; m.textContent = (r.caption ? r.caption + ' · ' : '') + r.key; d.appendChild(m);
    if (r.tags !== undefined) {
      const t = document.createElement('div'); t.className = 'tags'; t.textContent = r.tags + (r.generated_caption ? ' — ' + r.generated_caption : ''); d.appendChild(t);
    }
    grid.appendChild(d);
  }
}
async function failed(resp) {
  let msg = resp.status + '';
  try { msg += ': ' + (await resp.json()).detail; } catch (e) {}
  status.className = 'error'; status.textContent = msg;
}
document.getElementById('text-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const q = document.getElementById('q').value.trim(); if (!q) return;
  status.textContent = 'searching…';
  const resp = await fetch('/api/search?k=12&q=' + encodeURIComponent(q));
  if (!resp.ok) return failed(resp);
  show(await resp.json(), '"' + q + '"');
});
document.getElementById('upload').addEventListener('change', async (ev) => {
  const f = ev.target.files[0]; if (!f) return;
  const body = new FormData(); body.append('file', f); body.append('k', '12');
  status.textContent = 'searching…';
  const resp = await fetch('/api/search/image', {method: 'POST', body});
  if (!resp.ok) return failed(resp);
  show(await resp.json(), 'images like ' + f.name);
});
</script>
</body></html>
"""

"""Search images with a CLIP checkpoint: build an index, query it by text or by example image,
rank images by a description, list near-duplicates, or serve a web page.

    python search.py index  --checkpoint CKPT --images SRC [SRC ...] --index DIR
    python search.py add    --checkpoint CKPT --images SRC --index DIR
    python search.py query  --index DIR --text "a red car at night" -k 10 [--json] [--sheet out.png]
    python search.py query  --index DIR --image photo.jpg                 # reverse image search
    python search.py query  --index DIR --text "..." --image q.jpg --weight 0.7   # a weighted mix
    python search.py rank   --checkpoint CKPT --text "a sneaker" a.png b.png ... [--sheet out.png]
    python search.py duplicates --index DIR --threshold 0.95 [--json]
    python search.py serve  --index DIR [--checkpoint CKPT] [--tagger TAG2TEXT_RUN] --port 8000

SRC: a folder (recursive), a CSV/TSV/JSONL collection, tar shards (a glob), or tfds:NAME:SPLIT
(clipjax_shapes, fashion_mnist, any prepared TFDS split). An interrupted `index` continues where
it stopped when run again; bad images are skipped and counted. `query`, `duplicates` and
`serve` use the checkpoint the index was built with unless --checkpoint names one (which must
be the same model: another is refused, both named). See docs/search.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def _common_build(p):
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, nargs="+", help="folder, collection, tar glob or tfds:NAME:SPLIT")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"],
                   help="FAISS index: exact up to --threshold rows, HNSW above (auto)")
    p.add_argument("--threshold", type=int, default=None, help="rows above which auto picks HNSW (200000)")
    p.add_argument("--caption-key", default="title")
    p.add_argument("--image-key", default="filepath")
    p.add_argument("--no-progress", action="store_true")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _common_build(sub.add_parser("index", help="build (or continue building) an index"))
    _common_build(sub.add_parser("add", help="append images to an index"))
    q = sub.add_parser("query", help="text / reverse image search")
    q.add_argument("--index", required=True)
    q.add_argument("--checkpoint", default=None, help="default: the one the index was built with")
    q.add_argument("--text")
    q.add_argument("--image")
    q.add_argument("--weight", type=float, default=0.5, help="text's weight when both are given")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--json", action="store_true")
    q.add_argument("--sheet", help="write a contact sheet PNG of the results")
    r = sub.add_parser("rank", help="order images by a description")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--text", required=True)
    r.add_argument("images", nargs="+")
    r.add_argument("--json", action="store_true")
    r.add_argument("--sheet")
    d = sub.add_parser("duplicates", help="near-duplicate groups of an index")
    d.add_argument("--index", required=True)
    d.add_argument("--threshold", type=float, default=0.95, help="cosine similarity")
    d.add_argument("--json", action="store_true")
    d.add_argument("--sheet", help="contact sheet of the first groups")
    s = sub.add_parser("serve", help="a web page and JSON API")
    s.add_argument("--index", required=True)
    s.add_argument("--checkpoint", default=None)
    s.add_argument("--tagger", default=None, help="a Tag2Text / RAM run: tags and a caption per result")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=10.0)
    return ap.parse_args(argv)


def _checkpoint_of(index_dir, given):
    from clipjax.search import IndexStore

    return given or IndexStore.open(index_dir).manifest["checkpoint"]["checkpoint"]


def _print_results(results, as_json, header=""):
    if as_json:
        print(json.dumps([r.as_dict() if hasattr(r, "as_dict") else r for r in results], indent=1))
        return
    if header:
        print(header)
    for r in results:
        r = r.as_dict() if hasattr(r, "as_dict") else r
        name = r.get("path") or r.get("key") or r.get("name")
        cap = f"  [{r['caption']}]" if r.get("caption") else ""
        print(f"{r['rank']:4d}  {r['score']:.4f}  {name}{cap}")


def run(args) -> int:
    from clipjax import search

    if args.command in ("index", "add"):
        kw = dict(batch_size=args.batch_size, kind=args.kind, progress=not args.no_progress,
                  caption_key=args.caption_key, image_key=args.image_key)
        if args.threshold is not None:
            kw["threshold"] = args.threshold
        emb = search.Embedder(args.checkpoint, args.batch_size)
        fn = search.build_index if args.command == "index" else (lambda c, s, d, **k: search.add_images(d, s, c, **k))
        for src in args.images:
            summary = fn(emb, src, args.index, **kw)
            c = summary["counts"]
            print(f"{src}: {summary['added']} images added; index {args.index} holds {summary['rows']} "
                  f"(skipped so far: {c.get('skipped', 0)}; {', '.join(f'{k} {v}' for k, v in c.items() if k.startswith('skipped_') and v)})")
        f = summary["faiss"]
        extra = f", recall@10 vs exact {f['recall_at_10']:.3f}" if "recall_at_10" in f else ""
        print(f"FAISS index: {f['kind']}, {f['n']} rows{extra}")
        return 0
    if args.command == "query":
        if args.text is None and args.image is None:
            raise ValueError("query needs --text, --image or both")
        idx = search.SearchIndex.open(args.index, _checkpoint_of(args.index, args.checkpoint))
        res = idx.search(text=args.text, image=args.image, weight=args.weight, k=args.k)
        _print_results(res, args.json)
        if args.sheet:
            title = " + ".join(x for x in (f'"{args.text}"' if args.text else "", args.image or "") if x)
            search.contact_sheet([idx.store.thumbnail_image(r.id) for r in res],
                                 [f"#{r.rank} | {r.score:.3f}\n{r.caption or r.key}" for r in res], args.sheet, title=title)
        return 0
    if args.command == "rank":
        from PIL import Image

        res = search.rank(args.checkpoint, args.text, args.images)
        _print_results(res, args.json)
        if args.sheet:
            search.contact_sheet([Image.open(args.images[r["index"]]) for r in res],
                                 [f"#{r['rank']} | {r['score']:.3f}" for r in res], args.sheet, title=f'"{args.text}"')
        return 0
    if args.command == "duplicates":
        idx = search.SearchIndex.open(args.index, None)
        groups = idx.duplicates(args.threshold)
        if args.json:
            print(json.dumps(groups, indent=1))
        else:
            print(f"{len(groups)} groups of near-duplicates (cosine >= {args.threshold}) in {len(idx)} images")
            for g in groups:
                print("  " + "  ".join(f"{m['path'] or m['key']} ({m['similarity_to_first']:.3f})" for m in g))
        if args.sheet:
            cells, labels = [], []
            for gi, g in enumerate(groups[:10]):
                for m in g[:5]:
                    cells.append(idx.store.thumbnail_image(m["id"]))
                    labels.append(f"group {gi + 1}: {m['similarity_to_first']:.3f}\n{m['key']}")
            search.contact_sheet(cells, labels, args.sheet, title=f"near-duplicates >= {args.threshold}")
        return 0
    if args.command == "serve":
        from clipjax.search.web import serve

        serve(args.index, _checkpoint_of(args.index, args.checkpoint), host=args.host, port=args.port,
              tagger=args.tagger, max_upload_bytes=int(args.max_upload_mb * 2**20))
        return 0
    raise AssertionError(args.command)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from clipjax.errors import CheckpointError, ConfigError

    try:
        return run(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        print(f"search.py {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

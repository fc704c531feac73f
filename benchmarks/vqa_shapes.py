"""Zero-shot VQA on clipjax_shapes: questions from templates, ground truth from the generator
(clipjax/apps/shapes_questions.py), answered by vqa.py's prompt scoring (clipjax/apps/vqa.py).

    python benchmarks/vqa_shapes.py --clip /tmp/loc_runs/clip_shapes --split test --output /tmp/loc_runs/vqa.json

Per question type: accuracy, chance (1 / number of candidates), the majority-answer baseline
(always give the type's most frequent true answer), and the share of each predicted answer (for
exists, how often CLIP says yes: the negation prompt's weakness shows there); also CLIP with
other wordings of the count and exists prompts (VARIANTS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# CLIP with other prompt wordings (clipjax.apps.vqa.TEMPLATES keys): the training captions say
# "three shapes on a ... background: ..." and "a photo of a red star and ..."
VARIANTS = {
    "clip[count: '{x} shape{s}.']": {"count": "{x} shape{s}."},
    "clip[exists: 'a photo of a {x}.' / 'a photo of no {x}.']": {"exists_yes": "a photo of a {x}.",
                                                                "exists_no": "a photo of no {x}."},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", required=True, help="a CLIP checkpoint")
    p.add_argument("--tag2text", help="a Tag2Text run with an ITM head: also score with it")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, help="first N images of the split")
    p.add_argument("--seed", type=int, default=0, help="draws the absent object of each 'is there' (no) question")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir")
    p.add_argument("--builder-kwargs", default="{}", help="JSON: clipjax_shapes parameters (tests: a small variant)")
    p.add_argument("--output", help="JSON file for the figures")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import clipjax
    from clipjax.apps.shapes_questions import questions_for, read_examples
    from clipjax.apps.vqa import clip_scores, itm_scores, parse
    from clipjax.data.shapes_dataset import COLOR_NAMES, SHAPES
    from clipjax.evaluation.progress import progress_bar

    t0 = time.time()
    examples = list(read_examples(args.split, args.limit, args.data_dir, **json.loads(args.builder_kwargs)))
    clip = clipjax.load(args.clip)
    t2t = clipjax.load(args.tag2text) if args.tag2text else None
    rng = np.random.default_rng(args.seed)
    scorers = ["clip"] + (["tag2text_itm"] if t2t else []) + list(VARIANTS)
    cache = {}  # prompt -> CLIP text embedding
    rows = defaultdict(list)  # (scorer, type) -> [(truth, predicted)]
    bs = args.batch_size
    with progress_bar(len(examples), f"vqa ({args.split})", not args.no_progress) as bar:
        for i in range(0, len(examples), bs):
            batch = examples[i:i + bs]
            embeds = clip.encode_image([e["image"] for e in batch])
            qs, owner, truth = [], [], []
            for j, e in enumerate(batch):
                for qtype, text, answer in questions_for(e["objects"], rng, COLOR_NAMES, SHAPES):
                    q = parse(text)
                    assert q.qtype == qtype, (text, q.qtype)
                    qs.append(q), owner.append(j), truth.append(answer)
            per = {"clip": clip_scores(clip, embeds[owner], qs, cache)}
            for name, templates in VARIANTS.items():  # other wordings, on the questions they change
                keep = [k for k, q in enumerate(qs) if any(key.startswith(q.qtype) for key in templates)]
                vq = [parse(qs[k].text, templates=templates) for k in keep]
                vs = clip_scores(clip, embeds[[owner[k] for k in keep]], vq, cache)
                for q, sc, k in zip(vq, vs, keep):
                    rows[(name, q.qtype)].append((truth[k], q.answers[int(np.argmax(sc))], len(q.answers)))
            if t2t:
                per["tag2text_itm"] = itm_scores(t2t, [batch[j]["image"] for j in owner], qs)
            for name, scores in per.items():
                for q, s, a in zip(qs, scores, truth):
                    rows[(name, q.qtype)].append((a, q.answers[int(np.argmax(s))], len(q.answers)))
            bar.update(len(batch))
    res = dict(split=args.split, images=len(examples), checkpoints=dict(clip=args.clip, tag2text=args.tag2text),
               seconds=None, by_scorer={})
    for name in scorers:
        table = {}
        for (sc, qtype), r in sorted(rows.items()):
            if sc != name:
                continue
            t = [a for a, _, _ in r]
            pred = [b for _, b, _ in r]
            majority, mcount = Counter(t).most_common(1)[0]
            table[qtype] = dict(questions=len(r), accuracy=float(np.mean([a == b for a, b, _ in r])),
                                chance=1.0 / r[0][2], majority_answer=majority, majority_baseline=mcount / len(r),
                                predicted_share={k: v / len(r) for k, v in sorted(Counter(pred).items())})
        res["by_scorer"][name] = table
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

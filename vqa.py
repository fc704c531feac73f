"""Answer a question about an image, zero-shot: each candidate answer becomes a prompt, and the
prompt that matches the image best gives the answer.

    python vqa.py --checkpoint runs/clip_shapes --image photo.png --question "what colour is the star?"
    python vqa.py --checkpoint runs/clip_shapes --image photo.png --question "how many objects are there?" \
        --answers 1,2,3,4
    python vqa.py --checkpoint runs/clip_shapes --tag2text runs/tag2text_shapes --image photo.png \
        --question "is there a red star?"

Question types: what colour is the X / what shape is the X / is there a X / how many objects
(--type names one when the wording is different). Default candidates: clipjax_shapes' colour and
shape names, yes/no, one to three; --answers replaces them. Prints JSON: the answer and each
candidate's prompt and score (CLIP: softmax over the candidates; with --tag2text, a second block
from Tag2Text's image-text matching head: the match probability of each prompt).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a CLIP checkpoint / workdir")
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--answers", help="comma-separated candidate answers (default: per question type)")
    p.add_argument("--type", help="question type when the wording does not tell: colour, shape, exists, count")
    p.add_argument("--tag2text", help="a Tag2Text run with an ITM head: also score with it")
    args = p.parse_args(argv)

    import clipjax
    from clipjax.apps.vqa import answer_json, clip_scores, itm_scores, parse
    from clipjax.errors import CheckpointError
    from clipjax.preprocess import to_rgb

    try:
        answers = None if args.answers is None else args.answers.split(",")
        q = parse(args.question, args.type, answers)
        image = to_rgb(args.image)
        clip = clipjax.load(args.checkpoint)
        if not hasattr(clip, "encode_text") or hasattr(clip, "segment"):
            raise ValueError(f"{args.checkpoint} is not a CLIP checkpoint")
        out = [answer_json(q, clip_scores(clip, clip.encode_image([image]), [q])[0], "clip")]
        if args.tag2text:
            t2t = clipjax.load(args.tag2text)
            if not hasattr(t2t, "match_probs"):
                raise ValueError(f"{args.tag2text} is not a Tag2Text run")
            out.append(answer_json(q, itm_scores(t2t, [image], [q])[0], "tag2text_itm"))
    except (CheckpointError, ValueError, OSError) as e:
        print(f"vqa.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

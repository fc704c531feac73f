"""Content moderation with a CLIP checkpoint: flag images by the categories of a policy.

    python moderate.py --checkpoint CKPT --policy policy.yaml IMAGES... [--json out.json]
    python moderate.py --checkpoint CKPT --policy policy.yaml --calibrate labelled.csv \\
        --target-precision 0.95 [--holdout 0.5] [--output-policy calibrated.yaml] [--plot pr.png]

IMAGES: files, folders (every .jpg .jpeg .png .webp .bmp .gif .tif .tiff under them,
recursively) and globs ('photos/**/*.jpg'). Unreadable images are skipped, one line each on
stderr, and counted. Prints a table of scores and flagged categories; --json writes every
image's scores ("-": to stdout, the table then goes to stderr).

Policy (YAML): categories, each with positive and negative prompts and a threshold in [0, 1]:

    templates: ["a photo of a {}."]        # optional (default "{}": prompts verbatim)
    categories:
      footwear: {positive: [sandal, sneaker], negative: [shirt, bag], threshold: 0.5}

A category's score is CLIP's softmax over its positive and negative prompts (logit_scale x
cosine similarity; each prompt a template ensemble), summed over the positives: the probability
of "one of the positives". An image is flagged when score >= threshold.

--calibrate CSV: a header row, an `image` column (paths relative to the CSV's folder, or
absolute; --image-column renames it) and one 0/1 column per policy category, named as the
category (other columns ignored):

    image,footwear,bag
    imgs/0001.png,1,0

Rows are split by a hash of the image path: --holdout of them (0.5) held out. On the rest each
category gets the lowest threshold whose precision reaches --target-precision (but none below
its lowest-scored positive: that would only add false positives); precision, recall and F1 on
the held-out rows are printed (at the calibrated and at the policy's thresholds),
and the policy with calibrated thresholds is written to --output-policy. See docs/moderation.md.
Bad input (a policy or CSV that cannot be used, no images, a glob matching nothing, an unusable
checkpoint) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a CLIP checkpoint or training run (anything clipjax.load reads)")
    ap.add_argument("--policy", required=True, help="policy YAML")
    ap.add_argument("images", nargs="*", help="image files, folders, globs")
    ap.add_argument("--json", default="", help="write the results (or the calibration report) as JSON here; - for stdout")
    ap.add_argument("--max-rows", type=int, default=50, help="images shown in the table (0: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-progress", action="store_true")
    c = ap.add_argument_group("calibration")
    c.add_argument("--calibrate", default="", metavar="LABELLED_CSV", help="pick thresholds on this labelled CSV")
    c.add_argument("--target-precision", type=float, default=0.95)
    c.add_argument("--holdout", type=float, default=0.5, help="share of the CSV's rows held out for measurement")
    c.add_argument("--image-column", default="image")
    c.add_argument("--output-policy", default="",
                   help="calibrated policy YAML (default: POLICY_STEM.calibrated.yaml in the current folder)")
    c.add_argument("--plot", default="", help="held-out precision-recall curves (PNG)")
    return ap.parse_args(argv)


def _check_args(args):
    from clipjax.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")
    if args.calibrate:
        if args.images:
            raise ConfigError("--calibrate reads its images from the CSV: give no IMAGES with it")
        if not 0.0 < args.target_precision <= 1.0:
            raise ConfigError(f"--target-precision {args.target_precision} must be in (0, 1]")
        if not 0.0 < args.holdout < 1.0:
            raise ConfigError(f"--holdout {args.holdout} must be in (0, 1)")
    elif not args.images:
        raise ConfigError("no images given: name image files, folders or globs (or --calibrate a labelled CSV)")


def _emit(text: str, args, table: str):
    if args.json == "-":
        print(text)
        print(table, file=sys.stderr)
        return
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.json}")


def _skip_line(path, why):
    from tqdm import tqdm

    tqdm.write(f"moderate.py: skipped {path}: {why}", file=sys.stderr)


def _encoders(mod, clip, policy, batch_size):
    for p in mod.long_prompts(clip, policy):
        print(f"moderate.py: warning: prompt {p} is longer than the text tower's "
              f"{clip.cfg.text.context_length}-token context and is cut", file=sys.stderr)
    return mod.Encoders(clip, batch_size)


def moderate(args, policy) -> int:
    from clipjax.apps import moderation as mod
    from clipjax.errors import ConfigError

    paths = mod.expand_images(args.images)
    clip = mod.load_clip(args.checkpoint)
    enc = _encoders(mod, clip, policy, args.batch_size)
    scored = mod.score_paths(policy, enc, paths, batch_size=args.batch_size, progress=not args.no_progress,
                             on_skip=_skip_line)
    if not scored.paths:
        raise ConfigError(f"no readable image among the {len(paths)} given (all skipped: see above)")
    doc = mod.result_document(policy, scored, args.checkpoint)
    _emit(json.dumps(doc, indent=1), args, mod.summary_table(doc, args.max_rows))
    return 0


def calibrate(args, policy) -> int:
    from clipjax.apps import moderation as mod
    from clipjax.apps import moderation_calibration as cal
    from clipjax.errors import ConfigError

    out_policy = args.output_policy or os.path.splitext(os.path.basename(args.policy))[0] + ".calibrated.yaml"
    if os.path.abspath(out_policy) == os.path.abspath(args.policy):
        raise ConfigError(f"--output-policy {out_policy} is the input policy: name another file")
    keys, paths, labels = cal.read_labelled_csv(args.calibrate, policy.names, args.image_column)
    held = cal.holdout_mask(keys, args.holdout)
    clip = mod.load_clip(args.checkpoint)
    enc = _encoders(mod, clip, policy, args.batch_size)
    scored = mod.score_paths(policy, enc, paths, batch_size=args.batch_size, progress=not args.no_progress,
                             on_skip=_skip_line)
    labels, held = labels[scored.index], held[scored.index]  # the rows whose image was readable
    for name, part in (("calibration", ~held), ("held-out", held)):
        if not part.any():
            raise ConfigError(f"the {name} part of {args.calibrate} is empty ({len(scored.index)} readable rows, "
                              f"--holdout {args.holdout}): give more rows")
    report = cal.calibration_report(policy, scored, labels, held, args.target_precision, args.holdout,
                                    checkpoint=args.checkpoint, csv_path=args.calibrate, output_policy=out_policy)
    for line in cal.unreached_warnings(report):
        print(f"moderate.py: warning: {line}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(out_policy)), exist_ok=True)
    with open(out_policy, "w", encoding="utf-8") as f:
        f.write(cal.calibrated_policy_yaml(policy, report))
    if args.plot:
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        cal.plot_pr(report, scored.scores, labels, held, policy.names, args.plot,
                    title=f"{os.path.basename(args.calibrate)}: held-out precision-recall (target {args.target_precision})")
    table = cal.report_table(report) + f"\nwrote calibrated policy {out_policy}" + (
        f"\nwrote {args.plot}" if args.plot else "")
    _emit(json.dumps(report, indent=1), args, table)
    return 0


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from clipjax.errors import CheckpointError, ConfigError

    try:
        _check_args(args)
        from clipjax.apps.moderation_policy import load_policy

        policy = load_policy(args.policy)
        return calibrate(args, policy) if args.calibrate else moderate(args, policy)
    except (CheckpointError, ConfigError, ValueError, OSError) as e:
        print(f"moderate.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

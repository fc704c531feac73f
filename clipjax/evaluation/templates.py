"""Class names and prompt templates per dataset, for zero-shot classification.

ImageNet (1000 names, the CLIP paper's 80 templates), CIFAR-10/100 and MNIST come from OpenAI's
CLIP repository (data/prompts.md and the ImageNet prompt-engineering notebook; MIT), stored in
clipjax/assets/zeroshot_prompts.json. Fashion-MNIST and clipjax_shapes use their builders'
names with the templates their builders publish in `builder.info.metadata["prompt_templates"]`
(any TFDS builder can do the same). Users override both with one-per-line files.
"""

from __future__ import annotations

import functools
import json
import os

from clipjax.data import catalog
from clipjax.evaluation.datasets import classification_info, dataset_metadata

_ASSET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "zeroshot_prompts.json")
ALIASES = {"imagenet": "imagenet2012", "imagenet2012_subset": "imagenet2012", "imagenet_v2": "imagenet2012",
           "imagenet_a": "imagenet2012", "imagenet_r": "imagenet2012", "imagenet_sketch": "imagenet2012",
           "fashion_mnist": "clipjax_fashion_mnist"}


@functools.lru_cache(maxsize=None)
def _openai() -> dict:
    with open(_ASSET) as f:
        return json.load(f)


def imagenet_templates() -> list[str]:
    return list(_openai()["imagenet2012"]["templates"])


def prompts_for(dataset: str, builder=None) -> tuple[list[str], list[str]] | None:
    """(classnames, templates) for a known dataset, else None: OpenAI's lists, or the class
    names and `prompt_templates` metadata of the dataset's builder (`builder`, or clipjax's own
    builders looked up by name)."""
    name = ALIASES.get(dataset, dataset).split(":")[0].split("/")[0]
    data = _openai()
    if name in data and isinstance(data[name], dict):
        return list(data[name]["classnames"]), list(data[name]["templates"])
    if builder is None and name in catalog.LOCAL_BUILDERS:
        builder = catalog.get_builder(name, None)  # its info only: nothing is prepared
    templates = dataset_metadata(builder).get("prompt_templates")
    if not templates:
        return None
    return classification_info(builder), list(templates)


def read_lines(path: str, what: str) -> list[str]:
    """Non-empty, unique lines of a user file; a clear error naming the line otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {what} file {path}: {e}") from e
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            if n == len(lines):  # a trailing newline is fine
                continue
            raise ValueError(f"{what} file {path}: line {n} is empty")
        if s in seen:
            raise ValueError(f"{what} file {path}: line {n} repeats line {seen[s]} ({s!r})")
        seen[s] = n
    if not seen:
        raise ValueError(f"{what} file {path} is empty")
    return list(seen)


def check_templates(templates: list[str]) -> None:
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"every template needs exactly one '{{}}' for the class name; bad: {bad[:3]}")


def zeroshot_prompts(dataset: str, builder, classnames_file: str = "", templates_file: str = ""):
    """(classnames, templates) to classify `builder`'s ClassLabel with: the user's files (one
    per line) where given, else the dataset's known prompts (prompts_for), else its label names
    with "a photo of a {}."; one class name per class of the dataset."""
    names = classification_info(builder)
    known = prompts_for(dataset, builder)
    classnames = read_lines(classnames_file, "class-name") if classnames_file else (known[0] if known else names)
    templates = read_lines(templates_file, "template") if templates_file else (
        known[1] if known else ["a photo of a {}."])
    check_templates(templates)
    if len(classnames) != len(names):
        raise ValueError(f"{len(classnames)} class names for a dataset with {len(names)} classes")
    return classnames, templates

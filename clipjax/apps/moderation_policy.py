"""A moderation policy: named categories, each a set of positive and negative prompts and a
threshold, read from YAML (PyYAML) and checked before any model is loaded.

    name: my policy                       # optional
    templates: ["a photo of a {}."]       # optional, default ["{}"] (prompts used verbatim)
    categories:
      footwear:
        description: shoes of any kind    # optional
        positive: [sandal, sneaker, ankle boot]
        negative: [t-shirt, trouser, bag]
        threshold: 0.5                    # optional, default 0.5; a number in [0, 1]
        templates: ["a photo of a {}."]   # optional, replaces the policy's templates

Every mistake is one PolicyError (a ConfigError) naming the file and what is wrong: an empty
file or no categories, a category without positive or without negative prompts, a prompt
both positive and negative or listed twice, a threshold that is not a number in [0, 1], a
template without exactly one "{}", an unknown key (a typo such as "postive"), a key given
twice, or YAML that does not parse. `calibration` blocks (what moderate.py --calibrate
writes) are kept and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from clipjax.errors import ConfigError

DEFAULT_TEMPLATES = ("{}",)
DEFAULT_THRESHOLD = 0.5
TOP_KEYS = ("name", "description", "templates", "categories", "calibration")
CATEGORY_KEYS = ("description", "positive", "negative", "threshold", "templates", "calibration")


class PolicyError(ConfigError):
    """A policy file that cannot be used as given."""


@dataclasses.dataclass(frozen=True)
class Category:
    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    threshold: float = DEFAULT_THRESHOLD
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    description: str = ""

    @property
    def prompts(self) -> tuple[str, ...]:
        """Positives then negatives: the classes of this category's softmax."""
        return self.positive + self.negative


@dataclasses.dataclass(frozen=True)
class Policy:
    categories: tuple[Category, ...]
    name: str = ""
    source: str = ""  # the file it was read from ("" when built in code)
    raw: Optional[dict] = dataclasses.field(default=None, compare=False, repr=False)  # the parsed YAML

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def with_thresholds(self, thresholds: dict[str, float]) -> "Policy":
        cats = tuple(dataclasses.replace(c, threshold=float(thresholds.get(c.name, c.threshold)))
                     for c in self.categories)
        return dataclasses.replace(self, categories=cats)


def _unique_key_loader():
    """yaml.SafeLoader that refuses a mapping key given twice (PyYAML keeps the last silently:
    a second `footwear:` would replace the first category without a word)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def _yaml_error(path: str, e) -> PolicyError:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(str(getattr(e, "problem", None) or e).split())
    return PolicyError(f"policy {path}: not valid YAML{where}: {what}")


def load_policy(path: str) -> Policy:
    """Read and check a policy file (PolicyError, one line, for anything wrong)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise PolicyError(f"policy {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy {path}: cannot read it ({' '.join(str(e).split())})") from None
    try:
        raw = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    return parse_policy(raw, path)


def parse_policy(raw, source: str = "<policy>") -> Policy:
    """A parsed YAML document (dict) -> Policy, checked."""
    where = f"policy {source}"
    if raw is None or (isinstance(raw, (dict, list, str)) and not raw):
        raise PolicyError(f"{where} is empty: it needs a `categories:` mapping of category name -> "
                          "positive / negative prompts and a threshold")
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: the top level must be a mapping with `categories:`, not a {_kind(raw)}")
    _no_unknown(raw, TOP_KEYS, where)
    templates = _templates(raw.get("templates"), f"{where}: templates", DEFAULT_TEMPLATES)
    cats = raw.get("categories")
    if cats is None or (isinstance(cats, (dict, list)) and not cats):
        raise PolicyError(f"{where} defines no categories (`categories:` must map each category's name to its "
                          "positive / negative prompts and threshold)")
    if not isinstance(cats, dict):
        raise PolicyError(f"{where}: `categories:` must be a mapping of name -> category, not a {_kind(cats)}")
    out = []
    for name, spec in cats.items():
        if not isinstance(name, str) or not name.strip():
            raise PolicyError(f"{where}: a category name must be a non-empty string, got {name!r}")
        out.append(_category(name.strip(), spec, templates, where))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise PolicyError(f"{where}: category names repeat after stripping spaces: {names}")
    return Policy(tuple(out), name=str(raw.get("name") or ""), source=source, raw=raw)


def _kind(x) -> str:
    return {list: "list", str: "string", dict: "mapping"}.get(type(x), type(x).__name__)


def _no_unknown(d: dict, allowed, where: str) -> None:
    bad = [k for k in d if k not in allowed]
    if bad:
        raise PolicyError(f"{where}: unknown key {bad[0]!r} (allowed: {', '.join(allowed)})")


def _templates(value, where: str, default) -> tuple[str, ...]:
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: a non-empty list of templates, each with one '{{}}' for the prompt")
    for t in value:
        rest = t.replace("{}", "", 1) if isinstance(t, str) else ""
        if not isinstance(t, str) or t.count("{}") != 1 or "{" in rest or "}" in rest:
            raise PolicyError(f"{where}: template {t!r} needs exactly one '{{}}' (where the prompt goes) "
                              "and no other braces")
    if len(set(value)) != len(value):
        raise PolicyError(f"{where}: a template is listed twice")
    return tuple(value)


def _prompts(value, where: str, which: str) -> tuple[str, ...]:
    if value is None or (isinstance(value, (list, str)) and not value):
        hint = ("the score is the softmax mass on the positive prompts" if which == "positive" else
                "the score is a softmax over positive and negative prompts: with no negatives it is always 1; "
                "list what unflagged images show")
        raise PolicyError(f"{where} has no {which} prompts ({hint})")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise PolicyError(f"{where}: `{which}:` must be a list of prompts, not a {_kind(value)}")
    out = []
    for p in value:
        if not isinstance(p, str) or not p.strip():
            raise PolicyError(f"{where}: {which} prompt {p!r} is not a non-empty string")
        p = " ".join(p.split())
        if p in out:
            raise PolicyError(f"{where}: {which} prompt {p!r} is listed twice")
        out.append(p)
    return tuple(out)


def check_threshold(value, where: str) -> float:
    """A threshold: a number (not a bool) in [0, 1] (PolicyError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{where}: threshold {value!r} is not a number (a score in [0, 1])")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise PolicyError(f"{where}: threshold {value!r} is outside [0, 1] (the score is a probability)")
    return float(value)


def _category(name: str, spec, templates, where: str) -> Category:
    here = f"{where}: category {name!r}"
    if spec is None:
        raise PolicyError(f"{here} has no positive prompts (it is empty)")
    if not isinstance(spec, dict):
        raise PolicyError(f"{here} must be a mapping with positive, negative and threshold, not a {_kind(spec)}")
    _no_unknown(spec, CATEGORY_KEYS, here)
    pos = _prompts(spec.get("positive"), here, "positive")
    neg = _prompts(spec.get("negative"), here, "negative")
    both = [p for p in pos if p in neg]
    if both:
        raise PolicyError(f"{here}: prompt {both[0]!r} is both positive and negative")
    thr = check_threshold(spec.get("threshold", DEFAULT_THRESHOLD), here)
    tmpl = _templates(spec.get("templates"), f"{here}: templates", templates)
    return Category(name, pos, neg, thr, tmpl, str(spec.get("description") or ""))


def policy_yaml(policy: Policy, thresholds: dict[str, float], calibration: dict[str, dict],
                header: str = "", top: Optional[dict] = None) -> str:
    """The policy's YAML with `thresholds` set and a `calibration:` block per category (what
    --calibrate measured), everything else as it was written."""
    import copy

    import yaml

    raw = copy.deepcopy(policy.raw) if policy.raw else {
        "categories": {c.name: {"positive": list(c.positive), "negative": list(c.negative)}
                       for c in policy.categories}}
    if top:
        raw["calibration"] = top
    cats = raw["categories"]
    by_stripped = {str(k).strip(): k for k in cats}
    for c in policy.categories:
        spec = cats[by_stripped[c.name]]
        if c.name in thresholds:
            spec["threshold"] = float(thresholds[c.name])
        if c.name in calibration:
            spec["calibration"] = calibration[c.name]
    body = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=110)
    lines = "".join(f"# {h}\n" if h else "#\n" for h in header.splitlines())
    return lines + body

"""Zero-shot visual question answering: a question of a known type becomes one prompt per
candidate answer, and the answer whose prompt matches the image best wins.

Question types (parsed from the question's wording, or named with `qtype`):

  colour   "what colour is the star?"        "a photo of a {answer} star."
  shape    "what shape is the red object?"   "a photo of a red {answer}."
  exists   "is there a red star?"            yes: "a photo with a red star."  no: "a photo with no red star."
  count    "how many objects are there?"     "a photo of {answer} objects."  (one: "a photo of one object.")

Default candidates are clipjax_shapes' vocabulary (its colour and shape names, yes/no, one to
three: the dataset draws 1-3 objects); `answers` replaces them (not for exists: yes/no). The
scorer is a CLIP (softmax of logit_scale x cosine over the candidates) or, given a Tag2Text with
an ITM head, its match probability of each (image, prompt) pair. Existence asks CLIP to tell a
prompt from its negation, which CLIP is known to do poorly (it reads "no red star" much like
"red star"): benchmarks/vqa_shapes.py measures exactly that template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from clipjax.data.shapes_dataset import COLOR_NAMES, SHAPES

QUESTION_TYPES = ("colour", "shape", "exists", "count")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
DEFAULT_ANSWERS = {"colour": list(COLOR_NAMES), "shape": list(SHAPES), "exists": ["yes", "no"],
                   "count": ["one", "two", "three"]}
_TYPE_ALIASES = {"color": "colour", "existence": "exists", "exist": "exists", "number": "count", "how_many": "count"}

# One pattern per type, tried in order; group "s" is the subject. Lower-cased, whitespace
# collapsed, a trailing "?" dropped before matching.
_PATTERNS = (
    ("colour", r"what colou?r is (?:the |this |that )?(?P<s>.+)"),
    ("shape", r"what shape is (?:the |this |that )?(?P<s>.+)"),
    ("exists", r"(?:is|are) there (?:an? |any |some )?(?P<s>.+?)(?: in the (?:picture|image|photo))?"),
    ("count", r"how many (?P<s>[a-z ]*?)(?: are there| do you see| can you see)?(?: in the (?:picture|image|photo))?"),
)
# "the red object" -> "red": a generic noun carries no shape, so the shape prompt drops it
_GENERIC = ("object", "objects", "one", "thing", "shape", "item")


class QuestionError(ValueError):
    """A question, question type or answer list this module cannot turn into prompts."""


@dataclass
class Question:
    text: str
    qtype: str
    subject: str
    answers: list[str]
    prompts: list[str] = field(default_factory=list)


def normalise_type(qtype: str) -> str:
    t = _TYPE_ALIASES.get(qtype.strip().lower(), qtype.strip().lower())
    if t not in QUESTION_TYPES:
        raise QuestionError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")
    return t


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip("?").strip()


def parse(question: str, qtype: str | None = None, answers: list[str] | None = None,
          templates: dict | None = None) -> Question:
    """A Question with its type, subject, candidate answers and one prompt per answer."""
    q = _clean(question)
    if not q:
        raise QuestionError("the question is empty")
    wanted = normalise_type(qtype) if qtype else None
    for t, pattern in _PATTERNS:
        if wanted and t != wanted:
            continue
        m = re.fullmatch(pattern, q)
        if m:
            subject = m.group("s").strip()
            break
    else:
        if wanted:  # a named type whose wording we do not recognise: the whole question is the subject
            t, subject = wanted, q
        else:
            raise QuestionError(
                f"cannot tell the type of {question!r}; ask 'what colour is the X?', 'what shape is the X?', "
                "'is there a X?' or 'how many objects are there?', or name the type with --type "
                f"({', '.join(QUESTION_TYPES)})")
    if t in ("colour", "exists") and not subject:
        raise QuestionError(f"{question!r}: no object named (what should be looked for?)")
    cands = _answers(t, answers)
    return Question(question, t, subject, cands, [prompt_for(t, subject, a, templates) for a in cands])


def _answers(qtype: str, answers) -> list[str]:
    if answers is None:
        return list(DEFAULT_ANSWERS[qtype])
    out = [a.strip() for a in answers]
    if not out or not all(out):
        raise QuestionError("--answers has an empty answer")
    if len(set(a.lower() for a in out)) != len(out):
        raise QuestionError(f"--answers repeats an answer: {','.join(out)}")
    if len(out) < 2:
        raise QuestionError("--answers needs at least two candidates")
    if qtype == "exists" and sorted(a.lower() for a in out) != ["no", "yes"]:
        raise QuestionError("an 'is there' question takes the answers yes,no")
    if qtype == "count":
        for a in out:
            count_word(a)  # raises for a non-number
    return out


def count_word(answer: str) -> str:
    """"3" or "three" -> "three"."""
    a = answer.strip().lower()
    if a.isdigit():
        n = int(a)
        return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else a
    if a in NUMBER_WORDS:
        return a
    raise QuestionError(f"count answer {answer!r} is not a number (0-10 as digits or words)")


# The prompt of each (type, answer); "{x}" is what the prompt is about: "{answer} {subject}"
# (colour), "{subject minus generic nouns} {answer}" (shape), the subject (exists), the number
# word (count); count's "{s}" is the plural "s" (empty for one).
TEMPLATES = {"colour": "a photo of a {x}.", "shape": "a photo of a {x}.",
             "exists_yes": "a photo with a {x}.", "exists_no": "a photo with no {x}.",
             "count": "a photo of {x} object{s}."}


def prompt_for(qtype: str, subject: str, answer: str, templates: dict | None = None) -> str:
    t = {**TEMPLATES, **(templates or {})}
    if qtype == "colour":
        return t["colour"].format(x=f"{answer} {subject}")
    if qtype == "shape":
        return t["shape"].format(x=" ".join([w for w in subject.split() if w not in _GENERIC] + [answer]))
    if qtype == "exists":
        return t["exists_yes" if answer.lower() == "yes" else "exists_no"].format(x=subject)
    n = count_word(answer)
    return t["count"].format(x=n, s="" if n == "one" else "s")


# ---------------------------------------------------------------------------------- scoring
def clip_scores(clip, image_embeds: np.ndarray, questions: list[Question], cache: dict | None = None) -> list[np.ndarray]:
    """Per question, CLIP's softmax over its candidates' prompts (image_embeds (B, D) normalised,
    one row per question). `cache` (prompt -> embedding), when given, is read and filled, so a
    benchmark encodes each distinct prompt once."""
    cache = {} if cache is None else cache
    new = sorted({p for q in questions for p in q.prompts} - set(cache))
    if new:
        cache.update(zip(new, clip.encode_text(new)))
    out = []
    for img, q in zip(image_embeds, questions):
        logits = clip.logit_scale * (np.stack([cache[p] for p in q.prompts]) @ img)
        e = np.exp(logits - logits.max())
        out.append(e / e.sum())
    return out


def itm_scores(t2t, images: list, questions: list[Question]) -> list[np.ndarray]:
    """Per question, the Tag2Text ITM head's match probability of each candidate's prompt."""
    pairs = [(i, p) for i, q in enumerate(questions) for p in q.prompts]
    probs = t2t.match_probs([images[i] for i, _ in pairs], [p for _, p in pairs])
    out, k = [], 0
    for q in questions:
        out.append(np.asarray(probs[k:k + len(q.prompts)], np.float32))
        k += len(q.prompts)
    return out


def answer_json(q: Question, scores: np.ndarray, scorer: str) -> dict:
    best = int(np.argmax(scores))
    return dict(question=q.text, type=q.qtype, subject=q.subject, scorer=scorer, answer=q.answers[best],
                candidates=[dict(answer=a, prompt=p, score=float(s)) for a, p, s in zip(q.answers, q.prompts, scores)])

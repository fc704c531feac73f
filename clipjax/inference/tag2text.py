"""Tag2Text / RAM inference: images -> tags (with per-class thresholds), captions guided by
predicted or user-given tags, and RAM's open-vocabulary tags for new names.

A trained clipjax run keeps what inference needs beside its checkpoints (written by the
training task): `tag2text/vocab.txt` (WordPiece vocabulary) and `tag2text/tag_list.txt`
(+ optional `tag2text/thresholds.txt`, and `tag2text/delete_tags.txt`: indices of tags never
reported, one per line, as the released Tag2Text's `delete_tag_index`, which convert.py writes). For a converted recognize-anything checkpoint pass
them explicitly (bert-base-uncased's vocab.txt; the shipped tag lists are the default).
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import numpy as np
import jax
import jax.numpy as jnp

from clipjax import storage
from clipjax.convert.formats import read_any
from clipjax.inference.generation import expand_for_beams, generate, GenerationConfig
from clipjax.models.tag2text import Tag2Text, Tag2TextConfig, tie_tag_encoder
from clipjax.models.tagging import load_tag_list, load_thresholds
from clipjax.preprocess import preprocess_images
from clipjax.tokenizer import tag_strings, TagTextTokenizer

ASSET_DIR = "tag2text"  # inside a training workdir


def run_assets(workdir: str) -> dict:
    """Local paths of a run's vocab / tag list / thresholds (downloaded once when the workdir is
    on object storage)."""
    d = storage.join(workdir, ASSET_DIR)
    if storage.is_remote(d):
        d = storage.local_copy(d)
    out = dict(vocab=os.path.join(d, "vocab.txt"), tag_list=os.path.join(d, "tag_list.txt"))
    for name in ("thresholds", "delete_tags"):
        path = os.path.join(d, f"{name}.txt")
        if os.path.exists(path):
            out[name] = path
    return out


class LoadedTag2Text:
    def __init__(self, cfg: Tag2TextConfig, variables: dict, vocab: str, tag_names: Sequence[str],
                 thresholds: Optional[np.ndarray] = None, delete_index: Sequence[int] = ()):
        self.cfg = cfg
        self.model = Tag2Text(cfg)
        self.variables = {**variables, "params": tie_tag_encoder(variables["params"])}
        self.variables = jax.tree.map(jnp.asarray, self.variables)
        self.tag_names = list(tag_names)
        if len(self.tag_names) != cfg.tagging.num_tags:
            raise ValueError(f"{len(self.tag_names)} tag names for a model with {cfg.tagging.num_tags} tags")
        self.thresholds = (np.full(len(self.tag_names), cfg.tagging.threshold, np.float32)
                           if thresholds is None else np.asarray(thresholds, np.float32))
        self.delete_index = list(delete_index)
        self.tokenizer = TagTextTokenizer(vocab, cfg.prompt, cfg.tag_max_length, cfg.caption_max_length)
        if len(self.tokenizer) > cfg.text.vocab_size:
            raise ValueError(f"vocabulary {vocab} has {len(self.tokenizer)} tokens, the model {cfg.text.vocab_size}")
        self._tokens = jax.jit(functools.partial(self.model.apply, method=Tag2Text.image_tokens))
        self._logits = jax.jit(lambda v, t, e: self.model.apply(v, t, e, method=Tag2Text.tag_logits))

    @classmethod
    def from_run(cls, workdir: str, cfg=None, variables=None, **kw):
        """A training workdir (or its checkpoints): the model plus its vocab / tag list."""
        if cfg is None:
            cfg, variables = read_any(workdir)
        if not isinstance(cfg, Tag2TextConfig):
            raise ValueError(f"{workdir} is not a Tag2Text / RAM checkpoint")
        a = run_assets(workdir if storage.isdir(storage.join(workdir, ASSET_DIR)) else storage.dirname(workdir))
        tags = load_tag_list(kw.pop("tag_list", None) or a["tag_list"])
        th = kw.pop("thresholds", None) or a.get("thresholds")
        thresholds = load_thresholds(th, len(tags)) if th else None
        if "delete_index" not in kw and "delete_tags" in a:
            with open(a["delete_tags"]) as f:
                kw["delete_index"] = [int(line) for line in f if line.strip()]
            if any(not 0 <= i < len(tags) for i in kw["delete_index"]):
                raise ValueError(f"{a['delete_tags']}: an index outside the {len(tags)} tags")
        return cls(cfg, variables, kw.pop("vocab", None) or a["vocab"], tags, thresholds, **kw)

    # ------------------------------------------------------------------------- tagging
    def preprocess(self, images) -> np.ndarray:
        """Paths, PIL images or uint8 arrays -> (B, S, S, 3) CLIP-normalised (clipjax.load's
        preprocessing: bicubic resize of the short side, centre crop)."""
        return preprocess_images(images, self.cfg.image_size)

    def image_tokens(self, images):
        return self._tokens(self.variables, jnp.asarray(images, jnp.float32))

    def tag_probs(self, images, label_embed=None, batch_size: int = 64) -> np.ndarray:
        """Preprocessed (B,S,S,3) images -> sigmoid probabilities (B, C)."""
        out = []
        for i in range(0, len(images), batch_size):
            t = self.image_tokens(images[i:i + batch_size])
            out.append(np.asarray(jax.nn.sigmoid(self._logits(self.variables, t, label_embed))))
        return np.concatenate(out)

    def tags(self, images, probs=None) -> list[str]:
        probs = self.tag_probs(images) if probs is None else probs
        hit = probs > self.thresholds[None, :]
        hit[:, self.delete_index] = False
        return tag_strings(hit, self.tag_names)

    def openset_tags(self, images, names: Sequence[str], label_embed, threshold: float = 0.5) -> list[str]:
        """RAM: tags among new `names` whose CLIP label embeddings (C', d) are `label_embed`
        (clipjax.models.tagging.build_label_embeddings), no retraining."""
        if self.cfg.tagging.label_source != "clip":
            raise ValueError("open-vocabulary tagging needs a RAM model (CLIP-text label queries)")
        probs = self.tag_probs(images, jnp.asarray(label_embed, jnp.float32))
        return tag_strings(probs > threshold, list(names))

    # ------------------------------------------------------------------------ captions
    def caption(self, images, tags: Optional[Sequence[str]] = None, num_beams: int = 3, max_length: int = 30,
                min_length: int = 5, sample: bool = False, top_p: float = 0.9, repetition_penalty: float = 1.0,
                seed: int = 0) -> tuple[list[str], list[str]]:
        """-> (captions, the tag strings used). Tags default to the predicted ones, as the
        release's generate(); pass strings ("a | b") to guide captions with your own."""
        if not self.cfg.captioning:
            raise ValueError("this model has no caption decoder (RAM++)")
        images = np.asarray(images, np.float32)
        if tags is None:
            tags = self.tags(images)
        if len(tags) != len(images):
            raise ValueError(f"{len(tags)} tag strings for {len(images)} images")
        gcfg = GenerationConfig(max_length=max_length, min_length=min_length, num_beams=1 if sample else num_beams,
                                do_sample=sample, top_p=top_p, top_k=50 if sample else 0,
                                repetition_penalty=1.1 if sample and repetition_penalty == 1.0 else repetition_penalty)
        ids = self._caption_ids(jnp.asarray(images), jnp.asarray(self.tokenizer.tags(list(tags))),
                                jnp.asarray(self.tokenizer.prompt_ids(len(images))), gcfg, jax.random.PRNGKey(seed))
        return self.tokenizer.decode(np.asarray(ids)), list(tags)

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _caption_ids(self, images, tag_ids, prompt, gcfg, rng):
        v, m = self.variables, self.model
        tokens = m.apply(v, images, method=Tag2Text.image_tokens)
        states = m.apply(v, tag_ids, tokens, method=Tag2Text.encode_tags)
        states = expand_for_beams(states, gcfg.num_beams)

        def decode_fn(ids, cur_len):
            logits = m.apply(v, ids, states, method=Tag2Text.decode)
            return jax.lax.dynamic_index_in_dim(logits, cur_len - 1, axis=1, keepdims=False)

        out = generate(decode_fn, prompt, gcfg, self.cfg.sep_token_id, self.cfg.text.pad_token_id, rng=rng)
        return out["sequences"]

    # ----------------------------------------------------------- image-text alignment
    def _need_alignment(self):
        if not self.cfg.alignment_dim:
            raise ValueError("this model has no ITC / ITM branch (train with model.alignment_dim > 0)")

    def similarity(self, images, texts: Sequence[str]) -> np.ndarray:
        """ITC: cosine similarities (B images, T texts) of the projected, normalised features
        (BLIP's first retrieval stage)."""
        self._need_alignment()
        m, v = self.model, self.variables
        img = m.apply(v, self.image_tokens(images), method=Tag2Text.image_feat)
        txt = m.apply(v, jnp.asarray(self.tokenizer.texts(list(texts))), method=Tag2Text.text_feat)
        return np.asarray(img @ txt.T)

    def match_probs(self, images, texts: Sequence[str]) -> np.ndarray:
        """ITM: probability (B,) that text i describes image i (BLIP's re-ranking stage;
        pair an image with several texts by repeating it)."""
        self._need_alignment()
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts for {len(images)} images (pairs are row-aligned)")
        logits = self.model.apply(self.variables, jnp.asarray(self.tokenizer.texts(list(texts))),
                                  self.image_tokens(images), method=Tag2Text.itm_logits)
        return np.asarray(jax.nn.softmax(logits, axis=-1)[:, 1])

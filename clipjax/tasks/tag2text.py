"""Tag2Text and RAM as a training task (config.task = "tag2text"), trained from scratch.

Loss, as the release's pretrain.py: captioning cross-entropy with label smoothing 0.1 over
the non-prompt tokens, plus the asymmetric tagging loss balanced to the captioning loss's
value (loss_t2t + loss_tag / stop_grad(loss_tag / loss_t2t)). The tag encoder reads the
ground-truth tags; the tie to the tagging head is applied inside the loss, so gradients reach
the shared tensors through both paths.

config.model: Tag2TextConfig fields (vision, tagging, text, ...); vocab_size, the tag count
and the special token ids are filled in from the tokenizer and the dataset.
config.data.tokenizer: a WordPiece vocab.txt (default for clipjax_shapes: a vocabulary of its
words, written into the run). config.tag2text.tag_list: one tag per line (default: the
dataset's tag names). Both are copied into <workdir>/tag2text/ for inference.
A user's collection (config.data.name="collection", config.data.source = a CSV / TSV / JSONL
with image path, caption and tags columns, or tar shards) needs both; its tags are matched to
the tag list (unknown names dropped and counted in the logs); config.tag2text.eval_source (a
second index) gives the periodic validation.
RAM (config.model.variant = "ram", config.ram.clip = a CLIP checkpoint): the tag queries are that
CLIP's prompt-ensembled text embeddings of the tag names (frozen), image_proj maps the image
tokens to the CLIP width, and the loss adds RAM's L1 distillation of the projected [CLS] token
to the CLIP image embedding of the same image (clipjax.tasks.ram_teacher), as pretrain.py:
loss_t2t + balanced(loss_tag) + loss_dis.
config.model.alignment_dim > 0 adds BLIP's ITC + ITM (hard negatives drawn from the ITC
similarities over the global batch) to the loss with weight 1 each, as BLIP sums its losses;
the batches then carry [CLS] + caption ids for the text encoder.
Periodic evaluation: tagging mAP / P / R / F1 at the model threshold on validation images.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import jax
import numpy as np

from clipjax import storage
from clipjax.data.collection import collection_from_config
from clipjax.data.catalog import dataset_from_config
from clipjax.data.tagging import TaggingTrainData, eval_set, shapes_tag_names, shapes_vocabulary
from clipjax.evaluation.tagging import tag_probs_encoder, tagging_quality
from clipjax.losses.captioning import caption_lm_loss, caption_targets
from clipjax.losses.tagging import asymmetric_loss, clip_distillation_loss, itc_loss_from_similarities, itm_loss, tag2text_loss
from clipjax.models.config import TextConfig
from clipjax.models.tag2text import Tag2Text, Tag2TextConfig, init_inputs, tie_tag_encoder
from clipjax.models.tagging import TaggingConfig, load_tag_list
from clipjax.tasks.base import Task
from clipjax.tasks.pretrained import clip_architecture, load_pretrained_parts
from clipjax.tasks.ram_teacher import ClipTeacher, ram_label_embeddings, read_clip
from clipjax.tokenizer import TagTextTokenizer


def _assets(config, workdir):
    """The run's vocab.txt and tag list under WORKDIR/tag2text (what clipjax.load reads beside the
    checkpoints). For a workdir on object storage they are written to a local directory (the
    tokenizer reads a local file) and uploaded by process 0."""
    remote = storage.is_remote(workdir or "")
    out = tempfile.mkdtemp(prefix="clipjax-tag2text-") if remote else os.path.join(workdir or ".", "tag2text")
    os.makedirs(out, exist_ok=True)
    vocab = os.path.join(out, "vocab.txt")
    given = config.data.get("tokenizer", None)
    name = config.data.get("name") or "clipjax_shapes"
    if given:
        given = storage.local_copy(given)  # a vocab on object storage is read from a local copy
        if os.path.abspath(given) != os.path.abspath(vocab):
            shutil.copyfile(os.path.join(given, "vocab.txt") if os.path.isdir(given) else given, vocab)
    elif name == "clipjax_shapes":
        if jax.process_index() == 0 or not os.path.exists(vocab):
            shapes_vocabulary(vocab)
    else:
        raise ValueError("task tag2text needs config.data.tokenizer (a WordPiece vocab.txt) for this dataset")
    tag_file = (config.get("tag2text", None) or {}).get("tag_list", None)
    if tag_file:
        tags = load_tag_list(tag_file)
    elif name == "clipjax_shapes":
        tags = list(shapes_tag_names())
    else:
        raise ValueError("task tag2text needs config.tag2text.tag_list (one tag per line) for this dataset")
    with open(os.path.join(out, "tag_list.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tags) + "\n")
    if remote and jax.process_index() == 0:
        storage.upload_dir(out, storage.join(workdir, "tag2text"))
    return vocab, tags


def tag2text_config(config, tokenizer, num_tags: int, clip_embed_dim: int | None = None):
    """The model config from config.model, with the vocabulary size, tag count and special ids
    filled in; for RAM (variant "ram") the CLIP width sets image_proj, the label width and the
    width of the image tokens the head reads."""
    d = config.model.to_dict()
    text = dict(d.pop("text", {}))
    text.update(vocab_size=max(int(text.get("vocab_size", 0) or 0), len(tokenizer)), pad_token_id=tokenizer.pad_id)
    tagging = dict(d.pop("tagging", {}))
    tagging["num_tags"] = num_tags
    if d.get("variant", "tag2text") == "ram":
        if clip_embed_dim is None:
            raise ValueError("RAM needs the CLIP of config.ram.clip")
        d["image_proj_dim"] = clip_embed_dim
        tagging.update(label_source="clip", label_dim=clip_embed_dim, encoder_width=clip_embed_dim,
                       classifier="shared")  # RAM's shared Linear(width, 1) over the label queries
    return Tag2TextConfig.from_dict({**d, "text": TextConfig(**{**dataclasses.asdict(TextConfig(
        kind="bert", eos_token_id=None, pool="cls", cross_attention=True, act="gelu", ln_eps=1e-12)), **text}),
        "tagging": TaggingConfig.from_dict(tagging),
        "bos_token_id": tokenizer.bos_id, "enc_token_id": tokenizer.enc_id, "sep_token_id": tokenizer.sep_id})


def set_label_embeddings(variables, embeddings):
    """variables with the RAM head's frozen label queries (constants) replaced, same sharding."""
    consts = variables["constants"]["tagging_head"]
    old = consts["label_embed"]
    if old.shape != embeddings.shape:
        raise ValueError(f"label embeddings {embeddings.shape}, the head expects {old.shape}")
    new = jax.device_put(np.asarray(embeddings, old.dtype), old.sharding)
    return {**variables, "constants": {**variables["constants"], "tagging_head": {**consts, "label_embed": new}}}


def make_task(config, mesh, rules, workdir=None, abstract: bool = False) -> Task:
    """`abstract` (plan.py): RAM's CLIP is its architecture only — no label queries computed and
    no teacher (the batch_spec still has the teacher's embeddings)."""
    vocab, tags = _assets(config, workdir)
    m = config.model
    tok = TagTextTokenizer(vocab, m.get("prompt", "a picture of "), int(m.get("tag_max_length", 40)),
                           int(m.get("caption_max_length", 40)))
    ram = (m.get("variant", "tag2text") or "tag2text") == "ram"
    teacher = post_init = None
    clip_dim = None
    if ram and abstract:
        clip_dim = clip_architecture((config.get("ram", None) or {}).get("clip", ""), "ram.clip").embed_dim
    elif ram:  # CLIP label queries (frozen constants) and the CLIP image teacher
        clip_cfg, clip_vars = read_clip((config.get("ram", None) or {}).get("clip", ""))
        label_embed = ram_label_embeddings(tags, clip_cfg, clip_vars)
        teacher = ClipTeacher(clip_cfg, clip_vars, mesh, rules)
        post_init = lambda variables: set_label_embeddings(variables, label_embed)  # noqa: E731
        clip_dim = teacher.embed_dim
    elif config.get("init_from"):
        post_init = lambda v: load_pretrained_parts(v, config.init_from, config.get("init_parts") or None)  # noqa: E731
    cfg = tag2text_config(config, tok, len(tags), clip_dim)
    if not cfg.captioning:
        raise ValueError("train.py trains Tag2Text and RAM with their caption decoder (RAM++ is not trained here)")
    model = Tag2Text(cfg, dropout_rate=float(config.get("dropout", 0.0) or 0.0))
    pad, prompt_len, smoothing = cfg.text.pad_token_id, tok.prompt_length, float(config.get("label_smoothing", 0.1))
    align = bool(cfg.alignment_dim)

    def loss_fn(params, other, images, tag_targets, tag_ids, cap_ids, *rest):
        # rest: [text_ids (alignment)], [CLIP image embeddings (RAM)], rng
        rest = list(rest)
        rng = rest.pop()
        text_ids = rest.pop(0) if align else None
        clip_feats = rest.pop(0) if ram else None
        drop_rng, align_rng = jax.random.split(rng)
        mutable = ["batch_stats"] if "batch_stats" in other else False  # the "resnet" tower's BatchNorm
        out = model.apply({"params": tie_tag_encoder(params), **other}, images, tag_ids, cap_ids, text_ids,
                          align_key=align_rng, deterministic=False, rngs={"dropout": drop_rng}, mutable=mutable)
        out, updates = out if mutable else (out, {})
        loss_tag = asymmetric_loss(out["tag_logits"], tag_targets)
        loss_t2t, _ = caption_lm_loss(out["caption_logits"], caption_targets(cap_ids, pad, prompt_len), smoothing)
        loss = tag2text_loss(loss_t2t, loss_tag)  # RAM: + loss_dis (ram_loss)
        if ram:
            loss = loss + clip_distillation_loss(out["image_cls"], clip_feats)
        if align:
            itc = itc_loss_from_similarities(out["sim_i2t"], out["sim_t2i"])
            loss = loss + itc + itm_loss(out["itm_logits"], out["itm_labels"])
        return loss, updates

    return Task(
        "tag2text", model, cfg, init_inputs(cfg), jax.value_and_grad(loss_fn, has_aux=True),
        make_data=lambda position: TaggingTrainData(config.data, config.batch_size, cfg.image_size, tok, tags, mesh,
                                                    rules, position, with_text=align, teacher=teacher),
        make_evaluator=lambda: make_tagging_evaluator(config, cfg, model, tags, mesh, rules),
        post_init=post_init, batch_spec=lambda b: batch_spec(cfg, tok, b, align, clip_dim if ram else None))


def batch_spec(cfg, tok: TagTextTokenizer, b: int, align: bool, clip_dim: int | None) -> tuple:
    """TaggingTrainData's batch: images, multi-hot tags, tag ids, caption ids, [text ids (ITC/ITM)],
    [the CLIP teacher's image embeddings (RAM)]."""
    s, ids = cfg.image_size, lambda n: ((b, n), np.int32)
    spec = (((b, s, s, 3), np.float32), ((b, cfg.tagging.num_tags), np.float32), ids(tok.tag_max_length),
            ids(tok.caption_max_length))
    spec += (ids(tok.caption_max_length),) if align else ()
    return spec + ((((b, clip_dim), np.float32),) if clip_dim else ())


def make_tagging_evaluator(config, cfg, model, tag_names, mesh, rules):
    """tag_mAP / precision / recall / F1 at the model threshold (clipjax.evaluation.tagging, as
    evaluate.py --task tagging) on the first eval_examples validation images, or on
    config.tag2text.eval_source's rows for a collection."""
    if not config.get("eval_every"):
        return None
    d = config.data
    name = d.get("name") or "clipjax_shapes"
    n = int(config.get("eval_examples", 500))
    if name == "collection":  # validation rows from config.tag2text.eval_source, else no periodic eval
        source = (config.get("tag2text", None) or {}).get("eval_source", None)
        if not source:
            return None
        data = eval_set(collection_from_config(d, source), "", n, cfg.image_size, tag_names)
    else:
        data = eval_set(dataset_from_config(d), "validation", n, cfg.image_size)

    encode = tag_probs_encoder(model, mesh, rules, int(config.batch_size))

    def evaluate(variables) -> dict:
        r = tagging_quality(lambda x: encode(variables, x), data["images"], data["tags"], cfg.tagging.threshold)
        return {f"tag_{k}": r[k] for k in ("mAP", "precision", "recall", "F1")}

    return evaluate

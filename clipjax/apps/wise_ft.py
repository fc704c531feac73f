"""WiSE-FT (Wortsman et al. 2022): the weights of a zero-shot CLIP and of its fine-tuned copy
(train.py's "finetune" task) interpolated, θ(α) = (1 - α) θ_zs + α θ_ft, and each θ(α) scored
as a classifier: in distribution and, with a corruption, under that shift (evaluate.py
--wise-ft ZS,FT --alpha ...).

Both ends are full CLIPs of one architecture. The fine-tuned one carries its linear head
(`params["classifier"]`, (embed, classes)); the zero-shot end's head is the classifier the
fine-tuning started from: the dataset's prompt-ensembled class-name embeddings times the
CLIP's logit scale (evaluation.zeroshot.text_classifier), so α = 0 is exactly zero-shot
classification and α = 1 exactly the fine-tuned model. The text towers are equal (fine-tuning
froze them), the image towers and heads are interpolated.
"""

from __future__ import annotations

import jax
import numpy as np

from clipjax.apps.corruption import corrupt, load_split
from clipjax.evaluation.encode import labelled_features
from clipjax.evaluation.progress import progress_bar
from clipjax.evaluation.zeroshot import classification_metrics, text_classifier
from clipjax.preprocess import preprocess_images
from clipjax.variables import flatten_variables

HEAD = "classifier"  # where clipjax.tasks.finetune keeps the head


def parse_alphas(spec: str) -> list[float]:
    """"0,0.25,1" -> [0.0, 0.25, 1.0]; ValueError naming what is wrong."""
    out = []
    for part in spec.split(","):
        try:
            a = float(part)
        except ValueError:
            raise ValueError(f"--alpha {spec!r}: {part.strip()!r} is not a number") from None
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"--alpha {spec!r}: every alpha must lie in [0, 1] (got {part.strip()})")
        out.append(a)
    if len(set(out)) != len(out):
        raise ValueError(f"--alpha {spec!r}: an alpha is repeated")
    return out


def interpolate(zs, ft, alpha: float):
    """(1 - alpha) * zs + alpha * ft, leaf by leaf (exactly zs at 0 and ft at 1, in each leaf's dtype)."""
    return jax.tree_util.tree_map(lambda z, f: ((1.0 - alpha) * np.asarray(z, np.float32) + alpha * np.asarray(
        f, np.float32)).astype(np.asarray(f).dtype), zs, ft)


def zeroshot_head(encode_texts, logit_scale, classnames, templates) -> np.ndarray:
    """(embed, classes): the zero-shot classifier times exp(logit_scale), the start of the
    fine-tuned head (clipjax.tasks.finetune builds it the same way)."""
    cls = text_classifier(encode_texts, classnames, templates)
    return (cls.T * float(np.exp(np.asarray(logit_scale, np.float32)))).astype(np.float32)


def check_pair(zs, ft) -> None:
    """ValueError unless `zs`, `ft` (LoadedCLIP) are one CLIP architecture and `ft` has a head."""
    if ft.cfg.to_dict() != zs.cfg.to_dict():
        raise ValueError("--wise-ft: the two checkpoints are not the same CLIP architecture "
                         "(fine-tune the zero-shot checkpoint with configs/finetune_*.py)")
    if HEAD not in ft.variables["params"]:
        raise ValueError("--wise-ft ZS,FT: the second checkpoint has no classifier head (params/classifier): give a "
                         "run of train.py's finetune task")


def endpoints(zs, ft, zs_head: np.ndarray):
    """(θ_zs, θ_ft) as host trees of the same structure (the zero-shot one given `zs_head`).
    `zs`, `ft`: LoadedCLIP. ValueError when they are not the same CLIP."""
    check_pair(zs, ft)
    head = np.asarray(jax.device_get(ft.variables["params"][HEAD]))
    if head.shape != zs_head.shape:
        raise ValueError(f"--wise-ft: the fine-tuned head is {head.shape} (embed, classes) but the dataset's zero-shot "
                         f"head is {zs_head.shape}: evaluate on the dataset it was fine-tuned on")
    zs_vars = jax.device_get(zs.variables)
    zs_vars = {**zs_vars, "params": {**zs_vars["params"], HEAD: zs_head}}
    ft_vars = jax.device_get(ft.variables)
    a, b = flatten_variables(zs_vars), flatten_variables(ft_vars)
    if set(a) != set(b) or any(np.shape(a[k]) != np.shape(b[k]) for k in a):
        raise ValueError("--wise-ft: the two checkpoints' parameters differ in names or shapes")
    return zs_vars, ft_vars


def wise_ft_curves(encoders, place, zs_vars, ft_vars, alphas, builder, split: str, examples: int, kind: str = "",
                   levels=(0,), progress: bool = False) -> tuple[dict, dict]:
    """Top-1 of θ(α) for each α, on `split` clean and at each level of the corruption `kind`.
    `encoders`: evaluation.encode.CLIPEncoders; `place(tree)` puts variables on its mesh."""
    images, labels = load_split(builder, split, examples, encoders.batch, progress)
    kind = kind or "none"
    levels = list(levels) if kind != "none" else [0]
    thetas = [(a, interpolate(zs_vars, ft_vars, a)) for a in alphas]
    top1: dict = {}
    flat = {}
    for level in levels:
        name = "clean" if level == 0 else f"{kind}={level}"
        chunks = [corrupt(img, kind, level, i) if kind != "none" else img for i, img in enumerate(images)]
        pixels = preprocess_images(chunks, encoders.image_size)
        top1[name] = []
        for a, theta in thetas:
            variables = place(theta)
            encode_pixels, _ = encoders.bind(variables)
            batches = ((pixels[i:i + encoders.batch], labels[i:i + encoders.batch])
                       for i in range(0, len(labels), encoders.batch))
            with progress_bar(len(labels), f"{name} alpha={a:g}", progress) as bar:
                feats, labs = labelled_features(encode_pixels, batches, bar.update)
            acc = classification_metrics(feats @ np.asarray(theta["params"][HEAD]), labs)["top1"]
            top1[name].append(acc)
            flat[f"top1/alpha={a:g}/{name}"] = acc
    clean = top1.get("clean") or next(iter(top1.values()))
    best = int(np.argmax(clean))  # ties: the smaller alpha (closer to zero-shot)
    metrics = {"wise_ft_alphas": list(alphas), "corruption": kind, "levels": levels, "top1": top1,
               "best_alpha": alphas[best], **flat}
    return metrics, dict(examples_used=int(len(labels)))


def wise_ft_png(metrics: dict, path: str) -> None:
    """Top-1 against α, one line per condition (clean, each corruption level)."""
    import matplotlib  # the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = metrics["wise_ft_alphas"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, accs in metrics["top1"].items():
        ax.plot(alphas, accs, marker="o", label=name)
    ax.axvline(metrics["best_alpha"], color="grey", ls=":", lw=1)
    ax.set_xlabel("α  (0: zero-shot, 1: fine-tuned)")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("WiSE-FT: (1-α) θ_zs + α θ_ft", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

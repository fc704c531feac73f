"""clipjax: the CLIP family in JAX/Flax.

    import clipjax
    clip = clipjax.load("path/to/checkpoint")          # clipjax, transformers or OpenAI layout
    img = clip.encode_image(["cat.jpg"])                 # normalised embeddings
    txt = clip.encode_text(["a photo of a cat"])
    ids = clipjax.tokenize(["a photo of a cat"])         # (N, 77) CLIP BPE ids
"""

from clipjax.inference.clip import LoadedCLIP, create_model, init_variables
from clipjax.inference.load import load
from clipjax.variables import CheckpointError
from clipjax.models.config import CLIPConfig, TextConfig, VisionConfig
from clipjax.models.presets import PRESETS, get_preset


def tokenize(texts, context_length: int = 77, truncate: bool = True):
    """CLIP BPE ids, exactly as OpenAI's clip.tokenize: (N, context_length) int32."""
    from clipjax.tokenizer import tokenize as _tokenize

    return _tokenize(texts, context_length=context_length, truncate=truncate)


__all__ = [
    "load", "tokenize", "create_model", "init_variables", "LoadedCLIP", "CheckpointError",
    "CLIPConfig", "VisionConfig", "TextConfig", "PRESETS", "get_preset",
]

"""CLIP's applications beyond zero-shot classification and search, one module each: what the
entry points moderate.py, locate.py, vqa.py (and evaluate.py's --corruption / --wise-ft) run.
Each is a function of loaded models (clipjax.inference) and data, with its measurement."""

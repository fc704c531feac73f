"""Ahead-of-time planning: compile a task's real train step for a TPU topology with the real
TPU compiler (libtpu, on this CPU) and read its memory, FLOPs and collectives (plan.py).

`compile_step` runs only in a subprocess that can import libtpu (`PYTHONPATH=.tpu-compiler`,
see `run.py`); `hardware`, `hlo` and `flops` are plain Python, usable anywhere.
See docs/planning.md.
"""

"""Let `import open_clip` work without torchvision, for benchmarks only.

open_clip imports torchvision at package import for its image transforms and
FrozenBatchNorm2d; the benchmarks use neither (they feed tensors to the model). PyPI's
torchvision does not import beside the CPU torch wheel this project pins, so a permissive
stand-in is registered instead. Anything that actually calls into it fails loudly.
"""

import sys
import types


class _Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *a, **k):
        raise RuntimeError(f"torchvision stub: {self._name} was called; the benchmark must not use it")

    def __mro_entries__(self, bases):  # allow `class X(torchvision.Something)`
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self.__name__}.{attr}")


_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
          "torchvision.ops", "torchvision.ops.misc")


def import_open_clip():
    """Import open_clip with the stand-in registered only for the duration of the import, so
    nothing else in the process (transformers' availability checks) ever sees it."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    import transformers  # noqa: F401  (imported first: its checks must see no torchvision)

    if "torchvision" in sys.modules:  # a real one: nothing to stand in for
        import open_clip

        return open_clip
    install()
    try:
        import open_clip
    finally:
        for name in _NAMES:
            sys.modules.pop(name, None)
    return open_clip


def install():
    for name in _NAMES:
        sys.modules[name] = _StubModule(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]


_TIMM_EXTRA = ("torchvision.transforms.v2", "torchvision.transforms.v2.functional", "torchvision.models",
               "torchvision.io", "torchvision.datasets", "torchvision.utils", "torchvision.ops.boxes")


def import_timm():
    """Import timm (a parity reference for the original Swin / BLIP ViT layouts) the same way:
    the stand-in exists only while timm's package import runs."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    import transformers  # noqa: F401

    if "torchvision" in sys.modules:
        import timm

        return timm
    names = _NAMES + _TIMM_EXTRA
    for name in names:
        sys.modules[name] = _StubModule(name)
    try:
        import timm
        import timm.models.swin_transformer  # noqa: F401
        import timm.models.vision_transformer  # noqa: F401
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return timm

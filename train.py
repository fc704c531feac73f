"""Train a CLIP-family model.

    python train.py --config configs/default.py --workdir runs/default [--config.total_steps=100]

Re-running with the same --workdir resumes from its latest checkpoint. Several processes (one
per host): see clipjax/train/distributed.py. SIGTERM / Ctrl-C save a checkpoint and exit 0; a
NaN/Inf loss exits 1 with a message, leaving the last good checkpoint in place.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and metrics (required)")
_FRESH = flags.DEFINE_bool("fresh_start", False, "when no checkpoint in --workdir can be restored, move them aside "
                           "(to checkpoints/unrestorable/) and train from scratch instead of stopping")


def _setup_logging():
    # Orbax (and JAX) log through absl at INFO: keep their warnings, drop the chatter.
    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    clip_log = logging.getLogger("clipjax")
    clip_log.handlers[:] = [handler]
    clip_log.setLevel(logging.INFO)
    clip_log.propagate = False  # absl's root handler would print it a second time


def main(argv):
    del argv
    _setup_logging()
    from clipjax.tasks import train, validate_config
    from clipjax.train.loop import NonFiniteLossError
    from clipjax.variables import CheckpointError

    if not _WORKDIR.value:
        print("error: --workdir is required (the directory for this run's checkpoints and metrics)", file=sys.stderr)
        sys.exit(2)
    try:
        validate_config(_CONFIG.value)  # a clear message, not a traceback, for a bad config
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        final = train(_CONFIG.value, _WORKDIR.value, fresh_start=_FRESH.value)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if final.get("finished"):
        print(f"already finished: {_WORKDIR.value} is at step {final['step']} of config.total_steps; nothing to do")
        return
    print("final:", {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()})


if __name__ == "__main__":
    app.run(main)

"""Train a CLIP-family model.

    python train.py --config configs/default.py --workdir runs/default [--config.total_steps=100]

Re-running with the same --workdir resumes from its latest checkpoint. Several processes (one
per host): see clipjax/train/distributed.py. SIGTERM / Ctrl-C save a checkpoint and exit 0; a
NaN/Inf loss exits 1 with a message, leaving the last good checkpoint in place.
"""

import logging
import re
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
    from clipjax.data.catalog import DatasetNotPreparedError, DownloadNotAllowedError
    from clipjax.data.images import NoUsableExamplesError
    from clipjax.errors import CheckpointError, ConfigError
    from clipjax.tasks import train, validate_config
    from clipjax.train.loop import NonFiniteLossError

    def fail(message, code=2):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)

    if not _WORKDIR.value:
        fail("--workdir is required (the directory for this run's checkpoints and metrics)")
    try:
        config = _CONFIG.value
        config.get("task")  # a config file that failed to load raises on first use
    except (OSError, SyntaxError, ValueError, TypeError) as e:
        fail(f"cannot load --config: {' '.join(str(e).split())}")
    try:
        validate_config(config)  # a clear message, not a traceback, for a bad config
    except ValueError as e:
        fail(e)
    try:
        final = train(config, _WORKDIR.value, fresh_start=_FRESH.value)
    except NonFiniteLossError as e:
        fail(e, 1)
    except (CheckpointError, ConfigError, DatasetNotPreparedError, DownloadNotAllowedError, NoUsableExamplesError,
            FileNotFoundError) as e:  # FileNotFoundError: a data file or shard named in the config
        fail(e)
    if final.get("finished"):
        print(f"already finished: {_WORKDIR.value} is at step {final['step']} of config.total_steps; nothing to do")
        return
    print("final:", {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()})


def parse_flags(argv):
    """absl's parsing, where ml_collections loads the config file and applies the --config.K=V
    overrides: a misspelled key or a missing file becomes one line (with ml_collections'
    suggestion), exit 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown key, often with a suggestion
        text = str(e.args[0] if e.args else e)
        keys = re.findall(r'"([^"]+)"', text)
        if "Did you mean" in text and len(keys) == 2:
            message = f"unknown config key {keys[1]!r}: did you mean {keys[0]!r}?"
        else:
            message = "unknown config key " + text.replace("\\n", " ").strip("'\" ")
    except (OSError, SyntaxError, ValueError, TypeError) as e:
        message = f"cannot load --config: {e}"
    message = " ".join(message.split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

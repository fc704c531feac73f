"""Train a CLIP-family model.

    python train.py --config configs/default.py --workdir runs/default [--config.total_steps=100]

Re-running with the same --workdir resumes from its latest checkpoint.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "directory for checkpoints and metrics")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from clipjax.train.loop import train

    final = train(_CONFIG.value, _WORKDIR.value)
    print("final:", {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()})


if __name__ == "__main__":
    app.run(main)

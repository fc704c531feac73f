"""A real GCS server on 127.0.0.1 for tests and benchmarks: gcp-storage-emulator (pip, with
the one header fix of gcs_emulator_server.py), in memory, on a free port, stopped when the context exits (or the test process dies: it is a
child in its own session, killed at exit).

    with gcs_emulator("bucket") as env:   # env: the variables that point clients at it
        subprocess.run([...], env={**os.environ, **env})

Inside the context the variables are also set in os.environ, so gcsfs (STORAGE_EMULATOR_HOST)
and Orbax's tensorstore (TENSORSTORE_GCS_HTTP_URL) of this process talk to the emulator.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


@contextlib.contextmanager
def serving(cmd: list, url: str, name: str):
    """A test server subprocess (own session, killed at exit too) that answers GET `url` within
    60 s; stopped when the context exits."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    atexit.register(proc.kill)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{name} did not start on {url}") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


@contextlib.contextmanager
def patched_environ(env: dict):
    """os.environ with `env` set inside the context, restored after."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(url: str) -> dict:
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "EPATH_USE_TF": "false",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # gcsfs caches listings; a test reads what another process just wrote
        "GCSFS_DEFAULT_CACHE_TYPE": "none",
    }


@contextlib.contextmanager
def gcs_emulator(*buckets: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_server.py")
    cmd = [sys.executable, server, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    if buckets:
        cmd += ["--default-bucket", buckets[0]]
    with serving(cmd, url + "/storage/v1/b", "gcp-storage-emulator"):
        for b in buckets[1:]:
            req = urllib.request.Request(url + "/storage/v1/b", data=f'{{"name": "{b}"}}'.encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(req, timeout=10).read()
        with patched_environ(emulator_env(url)) as env:
            try:
                import fsspec

                fsspec.filesystem("gcs").invalidate_cache()
                fsspec.config.conf.clear()
            except Exception:  # noqa: BLE001
                pass
            _reset_gcsfs()
            try:
                yield env
            finally:
                _reset_gcsfs()


def _reset_gcsfs():
    """gcsfs caches filesystem instances (with the endpoint they were made for)."""
    try:
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()
    except Exception:  # noqa: BLE001
        pass

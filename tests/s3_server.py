"""An S3 server on 127.0.0.1 for tests: moto's server (pip moto[server]), in memory, on a free
port, stopped when the context exits. Sets AWS_ENDPOINT_URL and dummy credentials, which s3fs
(through botocore) follows.

    with s3_server("bucket"):
        storage.write_bytes("s3://bucket/x", b"...")
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import time
import urllib.request

from gcs_emulator import free_port


@contextlib.contextmanager
def s3_server(*buckets: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    atexit.register(proc.kill)
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto server did not start on {url}") from None
                time.sleep(0.1)
        os.environ.update(env)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        for b in buckets:
            fs.mkdir(b)
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()
        proc.wait(timeout=30)

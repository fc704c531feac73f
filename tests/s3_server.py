"""An S3 server on 127.0.0.1 for tests: moto's server (pip moto[server]), in memory, on a free
port, stopped when the context exits. Sets AWS_ENDPOINT_URL and dummy credentials, which s3fs
(through botocore) follows.

    with s3_server("bucket"):
        storage.write_bytes("s3://bucket/x", b"...")
"""

from __future__ import annotations

import contextlib
import sys

from gcs_emulator import free_port, patched_environ, serving


@contextlib.contextmanager
def s3_server(*buckets: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with serving(cmd, url, "moto server"), patched_environ(env):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        for b in buckets:
            fs.mkdir(b)
        yield env

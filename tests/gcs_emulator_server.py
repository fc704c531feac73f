"""Runs gcp-storage-emulator with one fix: its media downloads carry the object's generation
in `x-goog-generation` (and `x-goog-metageneration`), as real GCS does. tensorstore (under
Orbax) reads the generation of an OCDBT manifest from that header and fails with "Malformed
StorageGeneration" without it.

    python tests/gcs_emulator_server.py start --host 127.0.0.1 --port P --in-memory
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 - the original handler answers 404
        obj = None
    if obj is not None:
        response["x-goog-generation"] = str(obj.get("generation", ""))
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # before the server module builds its route table

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

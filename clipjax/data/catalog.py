"""Any TFDS catalog dataset by name, without surprise downloads.

`tfds.load("cifar10")` on a machine without network retries for a long time instead of
failing. `load_tfds` only reads what is already prepared under `data_dir` unless asked:

  load_tfds("cifar10", "train", data_dir)                     # prepared: tf.data.Dataset
  load_tfds("cifar10", "train", data_dir)                     # not prepared: DatasetNotPreparedError
  load_tfds("cifar10", "train", data_dir, download=True)      # downloads and prepares
  load_tfds("imagenet2012", "validation", data_dir, manual_dir="/data/imagenet")
      # prepares from the user's files in manual_dir; any attempt of the builder to fetch a
      # URL during that preparation raises DownloadNotAllowedError instead of going online

clipjax's own builders ("clipjax_shapes", "clipjax_fashion_mnist") are registered on import of
this module, and are prepared on demand since they need no network.
"""

from __future__ import annotations

import os

import jax
import tensorflow_datasets as tfds

from clipjax.data import fashion_mnist, shapes_dataset  # noqa: F401  (importing them registers the builders)
from clipjax.data.data_dir import resolve_data_dir
from clipjax.errors import ConfigError

LOCAL_BUILDERS = ("clipjax_shapes", "clipjax_fashion_mnist")
ALIASES = {"fashion_mnist": "clipjax_fashion_mnist"}


class DatasetNotPreparedError(FileNotFoundError):
    pass


class DownloadNotAllowedError(RuntimeError):
    pass


def _no_download(*args, **kwargs):
    raise DownloadNotAllowedError(
        "this dataset tried to download files while preparing with download=False; "
        "pass download=True to allow it, or prepare it elsewhere and copy data_dir")


def get_builder(name: str, data_dir: str | os.PathLike | None, **builder_kwargs):
    """tfds builder for `name` ("cifar10", "coco_captions/2017", "cifar100:3.0.2", ...);
    an empty data_dir means TFDS's default directory (see resolve_data_dir)."""
    return tfds.builder(name, data_dir=resolve_data_dir(data_dir), try_gcs=False, **builder_kwargs)


def prepare_tfds(name: str, data_dir, *, download: bool = False, manual_dir: str | None = None,
                 **builder_kwargs):
    """Prepare `name` under data_dir when allowed; return the builder. Never touches the
    network unless download=True."""
    builder = get_builder(name, data_dir, **builder_kwargs)
    if builder.is_prepared():
        return builder
    base = builder.name.split("/")[0]
    if download or manual_dir or base in LOCAL_BUILDERS:
        config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=download)
        if not download:
            make = builder._make_download_manager

            def offline_manager(*a, **k):
                dl = make(*a, **k)
                for attr in ("download", "download_and_extract", "download_kaggle_data",
                             "download_checksums"):
                    if hasattr(dl, attr):
                        setattr(dl, attr, _no_download)
                return dl

            builder._make_download_manager = offline_manager
        builder.download_and_prepare(download_config=config)
        return builder
    raise DatasetNotPreparedError(
        f"TFDS dataset {name!r} ({builder.info.full_name}) is not prepared under "
        f"{resolve_data_dir(data_dir)} (looked for {builder.data_dir}). clipjax does not download "
        "implicitly. Prepare it with TFDS's own command: `tfds build "
        f"{base} --data_dir={resolve_data_dir(data_dir)}` (on a machine with network, then copy the "
        "directory; for manually downloaded datasets such as imagenet2012 add --manual_dir=DIR holding "
        "the archives).")


def load_tfds(name: str, split: str, data_dir, *, download: bool = False,
              manual_dir: str | None = None, shuffle_files: bool = False,
              read_config=None, decoders=None, builder_kwargs: dict | None = None):
    """tf.data.Dataset of `split` of TFDS dataset `name` stored under data_dir.

    Raises DatasetNotPreparedError (quickly, without network) when it is not prepared and
    download is False; split names follow TFDS ("train[:10%]", "validation", ...)."""
    builder = prepare_tfds(name, data_dir, download=download, manual_dir=manual_dir,
                           **(builder_kwargs or {}))
    return builder.as_dataset(split=split, shuffle_files=shuffle_files,
                              read_config=read_config, decoders=decoders)


def builder_kwargs(data_config, name: str) -> dict:
    """Keyword arguments for the TFDS builder of `name`: config.data.builder_kwargs, plus
    config.data.shapes (image_size, num_train, ...) for clipjax_shapes."""
    kwargs = dict(data_config.get("builder_kwargs", None) or {})
    if name == "clipjax_shapes":
        kwargs = {**dict(data_config.get("shapes", None) or {}), **kwargs}
    return kwargs


def prepare_once(name: str, data_dir, builder_kwargs: dict):
    """The prepared TFDS builder for `name` ("fashion_mnist" is clipjax's builder of the local
    files). clipjax's own datasets are generated here when missing (no network); other names
    must already be prepared (never downloaded). With several processes, process 0 prepares
    first and the others wait for it, so they never race writing the same files (a shared
    filesystem is assumed, as TFDS does). Wrong builder kwargs and names TFDS does not know
    are a ValueError naming them."""
    name = ALIASES.get(name, name)

    def build():
        try:
            if name == "clipjax_shapes":
                return shapes_dataset.build_shapes(data_dir, **builder_kwargs)  # procedural
            if name == "clipjax_fashion_mnist":
                return fashion_mnist.build_fashion_mnist(data_dir, **builder_kwargs)  # from local IDX files
            return prepare_tfds(name, data_dir, download=False, **builder_kwargs)
        except TypeError as e:  # wrong builder kwargs
            raise ConfigError(f"cannot build {name} with builder kwargs {builder_kwargs}: {e}") from None
        except tfds.core.registered.DatasetNotFoundError:
            raise ConfigError(f"unknown dataset {name!r}: not clipjax_shapes / fashion_mnist / collection, and not "
                             "in the TFDS catalog") from None

    if jax.process_count() == 1:
        return build()
    from jax.experimental import multihost_utils

    builder = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"clipjax prepared {name}")
    return builder if builder is not None else build()




def dataset_from_config(data_config, default: str = "clipjax_shapes"):
    """The prepared builder config.data names (name, data_dir, builder_kwargs / shapes)."""
    name = data_config.get("name") or default
    return prepare_once(name, data_config.get("data_dir", None) or None, builder_kwargs(data_config, name))

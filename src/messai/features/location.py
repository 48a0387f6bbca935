"""Where a feature store lives: a local folder or an object-storage URI that Lance accepts.

A location is a string: a local path (``/data/mess/stores``, ``file:///…``) or a URI
(``s3://bucket/prefix``, ``gs://…``, ``az://…``). S3 credentials and endpoints come from the
standard variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP=true`` for a plain-http endpoint), which Lance and
pyarrow read themselves. Small side files (probe results) are read and written with
pyarrow's filesystems; local writes are atomic (:mod:`messai.files`), and an object PUT is
atomic by nature.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from messai.errors import StoreError

REMOTE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "s3+ddb://")


def is_remote(location: str) -> bool:
    return location.startswith(REMOTE_SCHEMES)


def normalise(location: str | os.PathLike[str]) -> str:
    """A local path made absolute (``file://`` stripped, ``~`` expanded); URIs unchanged."""
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if is_remote(text):
        return text.rstrip("/")
    if "://" in text:
        raise StoreError(
            f"{text}: unsupported store location (use a folder, s3://, gs:// or az://)"
        )
    return str(Path(text).expanduser().absolute())


def join(location: str, *parts: str) -> str:
    if is_remote(location):
        return "/".join([location.rstrip("/"), *parts])
    return str(Path(location, *parts))


def local_path(location: str) -> Path | None:
    """The folder of a local location, None for object storage."""
    return None if is_remote(location) else Path(location)


def storage_options() -> dict[str, str]:
    """Options handed to Lance for object storage: the standard AWS variables (Lance reads
    most of them itself; the endpoint and plain-http switch are passed explicitly)."""
    opts = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        opts["aws_endpoint"] = endpoint
    if os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes"):
        opts["allow_http"] = "true"
    if os.environ.get("AWS_REGION"):
        opts["aws_region"] = os.environ["AWS_REGION"]
    return opts


def filesystem(location: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for a local path or an object-storage URI
    (S3 endpoint and region from the standard AWS variables)."""
    return _filesystem(location)


def _filesystem(location: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if not is_remote(location):
        return pafs.LocalFileSystem(), location
    if location.startswith("s3://"):
        kwargs: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs["endpoint_override"] = host or endpoint
            kwargs["scheme"] = scheme if host else "https"
        if os.environ.get("AWS_REGION"):
            kwargs["region"] = os.environ["AWS_REGION"]
        return pafs.S3FileSystem(**kwargs), location[len("s3://") :]
    fs, path = pafs.FileSystem.from_uri(location)
    return fs, path


def read_bytes(location: str) -> bytes | None:
    """The content of a side file, None when it does not exist."""
    path = local_path(location)
    if path is not None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
    import pyarrow.fs as pafs

    fs, p = _filesystem(location)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write a side file atomically (a temporary file + rename locally; one PUT remotely)."""
    path = local_path(location)
    if path is not None:
        from messai.files import atomic_write_bytes

        atomic_write_bytes(path, data)
        return
    fs, p = _filesystem(location)
    with fs.open_output_stream(p) as f:
        f.write(data)


def list_dirs(location: str) -> list[str]:
    """Names of the folders directly under ``location`` (empty when it does not exist)."""
    return _list(location, folders=True)


def list_files(location: str) -> list[str]:
    """Names of the files directly under ``location`` (empty when it does not exist)."""
    return _list(location, folders=False)


def _list(location: str, *, folders: bool) -> list[str]:
    path = local_path(location)
    if path is not None:
        try:
            return sorted(
                p.name for p in path.iterdir() if (p.is_dir() if folders else p.is_file())
            )
        except (FileNotFoundError, NotADirectoryError):
            return []
    import pyarrow.fs as pafs

    fs, p = _filesystem(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True))
    except OSError as exc:
        raise StoreError(f"{location}: cannot list ({exc})") from None
    kind = pafs.FileType.Directory if folders else pafs.FileType.File
    return sorted(i.base_name for i in infos if i.type == kind)


def remove_file(location: str) -> None:
    """Delete one file or object (nothing when it is absent)."""
    path = local_path(location)
    if path is not None:
        path.unlink(missing_ok=True)
        return
    fs, p = _filesystem(location)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass


def exists(location: str) -> bool:
    path = local_path(location)
    if path is not None:
        return path.exists()
    import pyarrow.fs as pafs

    fs, p = _filesystem(location)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def remove_tree(location: str) -> None:
    """Delete a folder or prefix and everything under it."""
    path = local_path(location)
    if path is not None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = _filesystem(location)
    try:
        fs.delete_dir(p)
    except (FileNotFoundError, OSError):
        pass


def check_conditional_writes(location: str) -> None:
    """Refuse an object store that ignores conditional writes (``If-None-Match: *``).

    Lance's commit protocol on S3 relies on them: two writers committing the same version
    must not both succeed. The check PUTs one marker object twice with ``If-None-Match: *``;
    the second PUT must be refused (412). Needs botocore (``pip install 'messai[s3]'``).
    Only ``s3://`` is checked; Google Cloud Storage and Azure have native preconditions.
    """
    if not location.startswith("s3://"):
        return
    try:
        import boto3
        from botocore.exceptions import ClientError
    except ImportError:
        raise StoreError(
            f"{location}: writing to s3:// needs boto3 to check that the server honours "
            "conditional writes: pip install 'messai[s3]'"
        ) from None
    import uuid

    bucket, _, prefix = location[len("s3://") :].partition("/")
    key = "/".join(p for p in (prefix, f".mess-conditional-check-{uuid.uuid4().hex}") if p)
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return
            raise StoreError(f"{location}: conditional-write check failed ({code})") from None
        raise StoreError(
            f"{location}: this object store ignores conditional writes (If-None-Match), which "
            "Lance's commits rely on; two writers could lose each other's commits. Use a server "
            "that supports them (AWS S3, MinIO, SeaweedFS, R2) or a local store"
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise StoreError(f"{location}: cannot write ({code}: {exc})") from None
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except Exception:  # best effort: a leftover marker is harmless
            pass

"""The S3 client and a thin object-store wrapper that turns botocore failures into registry errors.

Credentials, in order: the environment variables named in ``StoreConfig`` (CI, production), the
``state.json`` written by ``harmgate store up`` when its endpoint is the configured one (a developer's
local SeaweedFS), then boto3's default chain (instance roles, ~/.aws).

boto3/botocore are imported lazily so that modules which only need the error types stay cheap to import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harmgate.config import StoreConfig

STATE_FILE = "state.json"
# Codes that mean "the object/bucket is not there", as opposed to a failure.
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_AUTH = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_PRECONDITION = {"412", "PreconditionFailed", "ConditionalRequestConflict"}


class RegistryError(Exception):
    """Base of every store/registry failure, so callers (serve, CLI) can refuse with one except clause."""


class StoreUnavailable(RegistryError):
    """The S3 endpoint cannot be reached (down, wrong URL, timeouts)."""


class StoreAccessDenied(RegistryError):
    """The endpoint answered but rejected the credentials or the request."""


class ObjectNotFound(RegistryError):
    pass


class ObjectExists(RegistryError):
    """A conditional write found the key already present (versions are immutable)."""


def _normalise_endpoint(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url.rstrip("/"))
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    return f"{parts.scheme.lower()}://{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def endpoint_label(store: StoreConfig) -> str:
    return store.endpoint_url or f"AWS S3 ({store.region})"


def read_local_state(state_dir: str | Path) -> dict[str, Any] | None:
    path = Path(state_dir).expanduser() / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, PermissionError):
        return None


def resolve_credentials(store: StoreConfig) -> tuple[str, str] | None:
    """(access, secret), or None to let boto3's default chain decide."""
    access, secret = os.environ.get(store.access_key_env), os.environ.get(store.secret_key_env)
    if access and secret:
        return access, secret
    state = read_local_state(store.local_state_dir)
    if state and store.endpoint_url and \
            _normalise_endpoint(state.get("endpoint")) == _normalise_endpoint(store.endpoint_url):
        return state["access_key"], state["secret_key"]
    return None


def make_s3_client(store: StoreConfig) -> Any:
    import boto3
    from botocore.config import Config

    # "standard" retries back off with jitter from ~0.1 s, so a dead endpoint fails in about a second
    # (legacy mode took 13 s for 5 attempts); short connect timeout for the same reason.
    config = Config(connect_timeout=3, read_timeout=60, retries={"total_max_attempts": store.max_attempts, "mode": "standard"},
                    s3={"addressing_style": "path"} if store.endpoint_url else None,
                    signature_version="s3v4")
    kwargs: dict[str, Any] = {"region_name": store.region, "config": config}
    if store.endpoint_url:
        kwargs["endpoint_url"] = store.endpoint_url
    creds = resolve_credentials(store)
    if creds:
        kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = creds
    return boto3.client("s3", **kwargs)


def error_code(err: BaseException) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def translate_errors(endpoint: str, what: str) -> Iterator[None]:
    """Re-raise botocore/boto3 transfer failures as RegistryError subclasses whose message names the endpoint."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError

    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error, RetriesExceededError) as err:
        raise _translate(err, endpoint, what) from err


def _translate(err: BaseException, endpoint: str, what: str) -> RegistryError:
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError as BotoConnectionError, \
        NoCredentialsError

    if isinstance(err, ClientError):
        code = error_code(err)
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _NOT_FOUND:
            return ObjectNotFound(f"{what}: not found on {endpoint} ({code})")
        if code in _AUTH:
            return StoreAccessDenied(f"{what}: {endpoint} rejected the request ({code}); check the S3 credentials")
        if status >= 500:
            return StoreUnavailable(f"{what}: S3 endpoint {endpoint} is failing ({status} {code})")
        if code in _PRECONDITION:
            return ObjectExists(f"{what}: already exists on {endpoint}")
        return RegistryError(f"{what}: S3 error from {endpoint}: {code or err}")
    if isinstance(err, NoCredentialsError):
        return StoreAccessDenied(f"{what}: no S3 credentials for {endpoint}: set the access/secret key "
                                 f"environment variables or run `harmgate store up`")
    if isinstance(err, BotoConnectionError):
        return StoreUnavailable(f"{what}: S3 endpoint {endpoint} is unreachable ({type(err).__name__}); "
                                f"is the store running? (`harmgate store up` for a local one)")
    if isinstance(err, BotoCoreError):
        return StoreUnavailable(f"{what}: S3 endpoint {endpoint} failed: {err}")
    # boto3/s3transfer wrap the real failure (S3UploadFailedError, RetriesExceededError): classify that one.
    cause = getattr(err, "last_exception", None) or err.__cause__ or err.__context__
    if cause is not None and cause is not err:
        return _translate(cause, endpoint, what)
    return RegistryError(f"{what}: transfer with {endpoint} failed: {err}")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_and_etag(path: Path, *, multipart_threshold: int, chunksize: int) -> tuple[str, str]:
    """One read: the file's sha256 and the ETag S3 computes for it (MD5, or MD5 of part MD5s + "-N")."""
    from s3transfer.utils import ChunksizeAdjuster

    size = path.stat().st_size
    multipart = size >= multipart_threshold
    part = ChunksizeAdjuster().adjust_chunksize(chunksize, size) if multipart else max(size, 1)
    sha, parts = hashlib.sha256(), []
    with open(path, "rb") as f:
        while chunk := f.read(part):
            sha.update(chunk)
            parts.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if not multipart:
        return sha.hexdigest(), (parts[0].hex() if parts else hashlib.md5(b"", usedforsecurity=False).hexdigest())
    return sha.hexdigest(), f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


def stored_problems(head: dict[str, Any], *, size: int, sha256: str, etag: str) -> list[str]:
    """Why a HEAD of an uploaded object does not match the local file (empty: it matches)."""
    stored_etag = str(head.get("ETag", "")).strip('"')
    encrypted = str(head.get("ServerSideEncryption", "")).startswith("aws:kms") or head.get("SSECustomerAlgorithm")
    problems = []
    if head["ContentLength"] != size:
        problems.append(f"stored {head['ContentLength']} bytes, expected {size}")
    if head.get("Metadata", {}).get("sha256") != sha256:
        problems.append("sha256 metadata missing or different")
    if not encrypted and stored_etag != etag:
        problems.append(f"server ETag {stored_etag} != local {etag}")
    return problems


class ObjectStore:
    """One bucket, with the few operations the registry needs, each translated by ``translate_errors``."""

    def __init__(self, store: StoreConfig, client: Any | None = None, *,
                 multipart_threshold: int = 64 * 2**20, multipart_chunksize: int = 64 * 2**20) -> None:
        self.config = store
        self.bucket = store.bucket
        self.endpoint = endpoint_label(store)
        self.client = client if client is not None else make_s3_client(store)
        self.multipart_threshold, self.multipart_chunksize = multipart_threshold, multipart_chunksize

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.multipart_threshold, multipart_chunksize=self.multipart_chunksize,
                              max_concurrency=4)

    def _errors(self, what: str):
        return translate_errors(self.endpoint, what)

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""
        try:
            with self._errors(f"get s3://{self.bucket}/{key}"):
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ObjectNotFound:
            return None

    def get_json(self, key: str) -> Any | None:
        data = self.get_bytes(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except json.JSONDecodeError as err:
            raise RegistryError(f"s3://{self.bucket}/{key} is not valid JSON: {err}") from None

    def exists(self, key: str) -> bool:
        try:
            with self._errors(f"head s3://{self.bucket}/{key}"):
                self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ObjectNotFound:
            return False

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD (size, ETag, metadata), or None when it does not exist."""
        try:
            with self._errors(f"head s3://{self.bucket}/{key}"):
                return self.client.head_object(Bucket=self.bucket, Key=key)
        except ObjectNotFound:
            return None

    def put_bytes(self, key: str, data: bytes, *, create_only: bool = False,
                  content_type: str = "application/json") -> None:
        """``create_only`` uses If-None-Match so two publishers can never overwrite each other's record."""
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if create_only else {}
        with self._errors(f"put s3://{self.bucket}/{key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                   Metadata={"sha256": hashlib.sha256(data).hexdigest()}, **extra)

    def upload_file(self, path: Path, key: str, *, sha256: str, size: int, keep_if_stored: bool = False) -> None:
        """Upload (multipart from ``multipart_threshold``), then verify what the server stored.

        The file is re-hashed first (it must still be what the manifest says), and the server's ETag, which it
        computes from the bytes it received (MD5, or MD5 of the part MD5s for multipart), must equal ours.
        SSE-KMS/SSE-C objects have ETags that are not MD5s: for those only the size is compared (S3 still
        validates the CRC32 checksums boto3 sends with every part). ``keep_if_stored``: an object already at
        ``key`` that passes the same checks is kept (a resumed publish does not upload it twice).
        """
        actual, etag = sha256_and_etag(path, multipart_threshold=self.multipart_threshold,
                                       chunksize=self.multipart_chunksize)
        if actual != sha256 or path.stat().st_size != size:
            raise RegistryError(f"{path} changed after the manifest was built (sha256 {actual}, manifest {sha256}); "
                                f"publish again from a model folder nobody is writing to")
        if keep_if_stored:
            try:
                with self._errors(f"head s3://{self.bucket}/{key}"):
                    head = self.client.head_object(Bucket=self.bucket, Key=key)
                if not stored_problems(head, size=size, sha256=sha256, etag=etag):
                    return
            except ObjectNotFound:
                pass
        with self._errors(f"upload {path} to s3://{self.bucket}/{key}"):
            self.client.upload_file(str(path), self.bucket, key, Config=self._transfer(),
                                    ExtraArgs={"Metadata": {"sha256": sha256}})
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        if problems := stored_problems(head, size=size, sha256=sha256, etag=etag):
            raise RegistryError(f"upload of {path} to s3://{self.bucket}/{key} did not verify: {'; '.join(problems)}")

    def delete(self, key: str) -> None:
        with self._errors(f"delete s3://{self.bucket}/{key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def download_file(self, key: str, dest: Path) -> None:
        with self._errors(f"download s3://{self.bucket}/{key}"):
            self.client.download_file(self.bucket, key, str(dest), Config=self._transfer())

    def list_subprefixes(self, prefix: str) -> list[str]:
        """Immediate "folders" under ``prefix`` (which ends with /), without the prefix or trailing /."""
        names: list[str] = []
        with self._errors(f"list s3://{self.bucket}/{prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return names

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors(f"list s3://{self.bucket}/{prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def ensure_bucket(self) -> None:
        with self._errors(f"create bucket {self.bucket}"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except Exception as err:  # noqa: BLE001 - only "not found" falls through to creation
                if error_code(err) not in _NOT_FOUND:
                    raise
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except Exception as err:  # noqa: BLE001
                if error_code(err) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

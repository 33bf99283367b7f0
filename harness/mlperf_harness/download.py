"""Fetching sources: resumable HTTPS, S3 and local/PVC paths, always checksum-verified.

A download goes to ``<name>.part`` (kept between attempts so a retry resumes with a Range
request), is verified, and only then renamed to its final name: a crash or a bad checksum never
leaves a file under the final name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from .errors import HarnessError
from .fsutil import sha256_file
from .spec import HttpsSource, PvcSource, S3Source, Source

# Where a Job finds a PVC source mounted (the operator mounts claim <name> at <root>/<name>).
SOURCE_ROOT_ENV = "MLPERF_SOURCES_ROOT"
DEFAULT_SOURCE_ROOT = "/mnt/sources"


class _Transient(Exception):
    """A network hiccup worth retrying (connection reset, 5xx, short read)."""


def _progress(quiet: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=True,
    )


def _name_from_url(url: str) -> str:
    name = Path(urlparse(url).path).name
    return name or "download"


def verify_sha256(path: Path, expected: str | None, name: str | None = None) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise HarnessError(f"{name or path.name}: checksum mismatch (sha256 {actual}, expected {expected})")


def _finish(part: Path, final: Path, expected: str | None) -> Path:
    try:
        verify_sha256(part, expected, final.name)
    except HarnessError:
        part.unlink(missing_ok=True)  # a wrong file must not be resumed from
        raise
    os.replace(part, final)
    return final


def fetch_https(src: HttpsSource, dest_dir: Path, *, quiet: bool = False, attempts: int = 5) -> Path:
    """Download ``src.url`` into ``dest_dir``, resuming a previous ``.part``; return the final path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / _name_from_url(src.url)
    if final.exists() and sha256_file(final) == src.sha256:
        return final
    part = final.with_name(final.name + ".part")

    @retry(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.2, max=10),
        reraise=True,
    )
    def attempt() -> None:
        _download_once(src.url, part, quiet)

    try:
        attempt()
    except _Transient as exc:
        raise HarnessError(f"{final.name}: download from {src.url} failed after {attempts} attempts: {exc}") from None
    return _finish(part, final, src.sha256)


def _download_once(url: str, part: Path, quiet: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as resp:
            if resp.status_code == 416:  # the part is already whole
                return
            if resp.status_code >= 500:
                raise _Transient(f"HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise HarnessError(f"{_name_from_url(url)}: HTTP {resp.status_code} from {url}")
            resumed = resp.status_code == 206
            if not resumed:
                have = 0  # the server ignored Range: start over
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            mode = "ab" if resumed else "wb"
            with part.open(mode) as fh, _progress(quiet) as bar:
                task = bar.add_task(part.name.removesuffix(".part"), total=total, completed=have)
                for block in resp.iter_bytes():  # as it arrives: a drop loses nothing written
                    fh.write(block)
                    bar.advance(task, len(block))
            if total is not None and part.stat().st_size < total:
                raise _Transient(f"short read ({part.stat().st_size} of {total} bytes)")
    except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
        raise _Transient(str(exc) or type(exc).__name__) from exc


def fetch_s3(src: S3Source, dest_dir: Path, *, quiet: bool = False) -> Path:
    """Download one object (or every object under a prefix) with credentials from the environment.

    The Job gets AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the Secret named in the spec, by
    reference; boto3 reads them from the environment.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parsed = urlparse(src.uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    client = boto3.client("s3", endpoint_url=src.endpoint, region_name=src.region)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        if key.endswith("/"):
            paginator = client.get_paginator("list_objects_v2")
            out = dest_dir / Path(key.rstrip("/")).name
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(key) :]
                    if rel:
                        _s3_one(client, bucket, obj["Key"], out / rel, None, quiet)
            return out
        final = dest_dir / Path(key).name
        return _s3_one(client, bucket, key, final, src.sha256, quiet)
    except (BotoCoreError, ClientError) as exc:
        raise HarnessError(f"{Path(key).name or key}: S3 download from {src.uri} failed: {exc}") from None


def _s3_one(client: object, bucket: str, key: str, final: Path, sha: str | None, quiet: bool) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    head = client.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    size = int(head["ContentLength"])
    with _progress(quiet) as bar:
        task = bar.add_task(final.name, total=size)
        client.download_file(bucket, key, str(part), Callback=lambda n: bar.advance(task, n))  # type: ignore[attr-defined]
    if part.stat().st_size != size:
        part.unlink(missing_ok=True)
        raise HarnessError(f"{final.name}: truncated S3 download ({part.stat().st_size} of {size} bytes)")
    return _finish(part, final, sha)


def resolve_pvc(src: PvcSource) -> Path:
    """The local path of a PVC source: absolute paths as given (local runs), else under the mount root."""
    if src.path and Path(src.path).is_absolute() and Path(src.path).exists():
        return Path(src.path)
    root = Path(os.environ.get(SOURCE_ROOT_ENV, DEFAULT_SOURCE_ROOT))
    path = root / src.claimName / src.path
    if not path.exists():
        raise HarnessError(f"{path}: not found (PVC {src.claimName}, path {src.path or '/'})")
    return path


def copy_file_verified(src: Path, dest_dir: Path, sha: str | None = None) -> Path:
    """Copy a local file into ``dest_dir`` through a ``.part`` file, verifying its checksum."""
    if not src.is_file():
        raise HarnessError(f"{src}: missing file")
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / src.name
    part = final.with_name(final.name + ".part")
    shutil.copyfile(src, part)
    return _finish(part, final, sha)


def fetch_file(source: Source, dest_dir: Path, name: str, *, quiet: bool = False) -> Path:
    """A real source's one file as ``dest_dir/name``: downloaded over https or from s3 (checksum
    checked), or copied from a PVC (the file itself, or ``name`` in its folder)."""
    target = dest_dir / name
    if source.https is not None:
        got = fetch_https(source.https, dest_dir, quiet=quiet)
    elif source.s3 is not None:
        got = fetch_s3(source.s3, dest_dir, quiet=quiet)
    else:
        assert source.pvc is not None
        path = resolve_pvc(source.pvc)
        got = copy_file_verified(path if path.is_file() else path / name, dest_dir)
    if got.is_dir():  # an s3 prefix: the file is inside it
        got = got / name
    if got != target:
        got.replace(target)
    return target


def unpack(archive: Path, dest: Path, what: str) -> Path:
    """Extract the tar archive ``archive`` (``what`` it should hold, for the error) into ``dest``
    through a staging directory, so a crash never leaves a half-unpacked ``dest``."""
    import tarfile

    if not tarfile.is_tarfile(archive):
        raise HarnessError(f"{archive.name}: not a tar archive of {what}")
    stage = dest.with_name(dest.name + ".part")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(stage, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise HarnessError(f"{archive.name}: corrupt or truncated archive ({exc}); download it again") from None
    shutil.rmtree(dest, ignore_errors=True)
    stage.replace(dest)
    return dest

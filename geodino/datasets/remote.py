"""Rasters in object storage and on web servers, read through GDAL's virtual file systems.

``s3://``, ``gs://``, ``az://`` and ``http(s)://`` hrefs become GDAL paths (``/vsis3/``,
``/vsigs/``, ``/vsiaz/``, ``/vsicurl/``); :class:`RemoteSettings` holds the GDAL
configuration that makes Cloud-Optimised GeoTIFFs cheap to read remotely (no directory
listing on open, merged range requests, a per-file block cache, retries with backoff) and
the address of a custom S3-compatible endpoint. Credentials are never part of it: GDAL reads
them from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...) or the providers' usual
files (``~/.aws/credentials``, ``~/.config/gcloud``), so they never reach a config, a
checkpoint's hyper-parameters or a log.
"""

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import rasterio

from geodino.errors import ConfigError

#: GDAL virtual file system of each remote URL scheme.
_SCHEMES = {
    "s3": "/vsis3/",
    "gs": "/vsigs/",
    "az": "/vsiaz/",
    "http": "/vsicurl/",
    "https": "/vsicurl/",
}

#: Config keys that hold (or point at) credentials: those come from the environment only.
_CREDENTIAL_KEY = re.compile(
    r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL|USERPWD|HEADER|SAS|BEARER|PRIVATE_KEY|"
    r"CONNECTION_STRING|SIGNED_URL",
    re.IGNORECASE,
)

#: Error text of failures worth retrying: the server or the network, not the object.
_TRANSIENT = re.compile(
    r"\b50[0234]\b|\b429\b|timed? ?out|timeout|reset|Connection refused|"
    r"Couldn't connect|Empty reply|transfer closed|Recv failure|Send failure|SSL",
    re.IGNORECASE,
)


def gdal_path(href: str, base: str | None = None) -> str:
    """The GDAL path of an href: a remote URL, a ``file://`` URL or a local path.

    Args:
        href: the asset's href (``s3://bucket/key``, ``https://host/key.tif``, a local
            path, or a path relative to ``base``).
        base: folder relative hrefs are relative to (a local folder or a remote URL).

    Returns:
        the path to hand to rasterio (``/vsis3/bucket/key``, ``/vsicurl/https://...``,
        ``/local/file.tif``, or a ``/vsi...`` path unchanged).
    """
    if href.startswith("/vsi"):
        return href
    scheme = urlsplit(href).scheme.lower()
    if scheme in _SCHEMES:
        prefix = _SCHEMES[scheme]
        if prefix == "/vsicurl/":
            return prefix + href
        return prefix + href.split("://", 1)[1]
    if scheme == "file":
        return urlsplit(href).path
    if len(scheme) > 1:  # not a Windows drive letter
        raise ConfigError(
            f"href {href!r} has the URL scheme {scheme!r}, which geodino cannot read; use "
            f"s3://, gs://, az://, http(s)://, file:// or a local path."
        )
    if base is not None and not os.path.isabs(href):
        if "://" in base:
            return gdal_path(base.rstrip("/") + "/" + href)
        return os.path.normpath(os.path.join(base, href))
    return href


def is_transient(error: BaseException) -> bool:
    """Whether a read error came from the server or the network (worth retrying).

    Args:
        error: what rasterio raised.

    Returns:
        True for 5xx and 429 answers, time-outs and broken connections; False for missing,
        forbidden or damaged objects.
    """
    return bool(_TRANSIENT.search(str(error)))


@dataclass(frozen=True)
class RemoteSettings:
    """GDAL settings for reading Cloud-Optimised GeoTIFFs over the network.

    Set once per process (and loader worker) through :meth:`env`. Every field is a
    setting, never a credential: keys and tokens come from the environment or the
    providers' files (see the module docstring), and ``options`` refuses credential keys.

    Args:
        endpoint: host[:port] of an S3-compatible server (MinIO, Ceph, a local test
            server): ``AWS_S3_ENDPOINT``; None for AWS itself.
        https: reach ``endpoint`` over HTTPS (``AWS_HTTPS``).
        virtual_hosting: address buckets as ``bucket.endpoint`` rather than
            ``endpoint/bucket`` (``AWS_VIRTUAL_HOSTING``); most custom endpoints need False.
        region: the bucket's region (``AWS_REGION``), None for the default.
        unsigned: read public buckets without signing requests (``AWS_NO_SIGN_REQUEST``).
        timeout: seconds before a stalled request is abandoned (``GDAL_HTTP_TIMEOUT``).
        connect_timeout: seconds to establish a connection (``GDAL_HTTP_CONNECTTIMEOUT``).
        max_retry: retries of a request answered 429/5xx or timed out
            (``GDAL_HTTP_MAX_RETRY``).
        retry_delay: seconds before the first retry, doubled for each next one
            (``GDAL_HTTP_RETRY_DELAY``).
        read_attempts: attempts of a whole chip read that still fails transiently after
            GDAL's own retries (a connection reset mid-body, a stall past ``timeout``).
        cache_bytes: bytes of blocks cached per open file (``VSI_CACHE_SIZE``): the COG's
            header and the tiles read last; memory per worker is at most this times the
            files it keeps open.
        allowed_extensions: suffixes GDAL may open over HTTP without probing for side-car
            files (``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``).
        concurrent_reads: band files (assets) of one chip read at once, each in its own
            thread with these settings entered: a chip of four per-band COGs then waits for
            one round trip instead of four. 1 reads them one after another.
        options: further GDAL configuration options (e.g. ``GDAL_HTTP_MULTIPLEX``); keys that
            hold credentials are refused.

    Raises:
        ConfigError: for a credential in ``options`` or a value out of range.
    """

    endpoint: str | None = None
    https: bool = True
    virtual_hosting: bool = True
    region: str | None = None
    unsigned: bool = False
    timeout: float = 30.0
    connect_timeout: float = 10.0
    max_retry: int = 5
    retry_delay: float = 0.5
    read_attempts: int = 3
    cache_bytes: int = 4 * 2**20
    allowed_extensions: tuple[str, ...] = (".tif", ".tiff", ".TIF", ".TIFF")
    concurrent_reads: int = 1
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse credentials and values out of range."""
        secret = [k for k in self.options if _CREDENTIAL_KEY.search(k)]
        if secret:
            raise ConfigError(
                f"remote options {secret} hold credentials, which must not be written in a "
                "config (it is saved with every run and checkpoint): set them as environment "
                "variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, "
                "GOOGLE_APPLICATION_CREDENTIALS, ...) or in the provider's credentials file."
            )
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ConfigError(
                f"remote timeout ({self.timeout}) and connect_timeout "
                f"({self.connect_timeout}) must be positive seconds."
            )
        if self.max_retry < 0 or self.retry_delay < 0 or self.read_attempts < 1:
            raise ConfigError(
                f"remote max_retry ({self.max_retry}) and retry_delay ({self.retry_delay}) "
                f"must be >= 0 and read_attempts ({self.read_attempts}) >= 1."
            )
        if self.concurrent_reads < 1:
            raise ConfigError(
                f"remote concurrent_reads must be >= 1 (1: one file at a time), got "
                f"{self.concurrent_reads}."
            )
        if self.cache_bytes < 0:
            raise ConfigError(f"remote cache_bytes must be >= 0, got {self.cache_bytes}.")
        if self.endpoint is not None and "://" in self.endpoint:
            raise ConfigError(
                f"remote endpoint {self.endpoint!r} is host[:port] without a scheme (e.g. "
                "'minio.example.org:9000'); set https to choose http or https."
            )

    def gdal_options(self) -> dict[str, str]:
        """The GDAL configuration options of these settings.

        Returns:
            option name -> value, as ``rasterio.Env`` takes them.
        """

        def yes(flag: bool) -> str:
            return "YES" if flag else "NO"

        options = {
            # a COG is one file: listing its "directory" on open costs a request per file
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            # never probe for .aux.xml, .ovr or .msk side-cars over the network
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ",".join(self.allowed_extensions),
            # adjacent tiles of one chip in one request
            "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
            # keep the header and the last tiles of each open file
            "VSI_CACHE": yes(self.cache_bytes > 0),
            "VSI_CACHE_SIZE": str(self.cache_bytes),
            "GDAL_HTTP_MAX_RETRY": str(self.max_retry),
            "GDAL_HTTP_RETRY_DELAY": f"{self.retry_delay:g}",
            "GDAL_HTTP_TIMEOUT": f"{self.timeout:g}",
            "GDAL_HTTP_CONNECTTIMEOUT": f"{self.connect_timeout:g}",
            "AWS_HTTPS": yes(self.https),
            "AWS_VIRTUAL_HOSTING": "TRUE" if self.virtual_hosting else "FALSE",
        }
        if self.endpoint is not None:
            options["AWS_S3_ENDPOINT"] = self.endpoint
        if self.region is not None:
            options["AWS_REGION"] = self.region
        if self.unsigned:
            options["AWS_NO_SIGN_REQUEST"] = "YES"
        return options | {k: str(v) for k, v in self.options.items()}

    def env(self) -> rasterio.Env:
        """A rasterio environment with these settings (enter it once per process).

        Returns:
            the environment, not yet entered.
        """
        return rasterio.Env(**self.gdal_options())

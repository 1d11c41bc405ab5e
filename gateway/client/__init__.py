"""An async Python client for the gateway.

:class:`GatewayClient` wraps a ``grpc.aio`` channel. Its low-level methods map one to one onto the
RPCs of ``gateway.v1.UploadService`` and return the proto responses;
:meth:`GatewayClient.upload_file` and :meth:`GatewayClient.upload_stream` run a whole multipart
upload::

    async with GatewayClient.connect("localhost:50051") as client:
        result = await client.upload_file("big.bin", "bucket", "key")
        print(result.etag, result.checksum)

The public API, all importable from ``gateway.client``:

- :class:`GatewayClient` (``connect``, the RPC methods, ``upload_file``, ``upload_stream``),
  with :class:`UploadOptions`, :class:`CustomerKey`, :class:`UploadResult` and
  :data:`ProgressCallback`.
- :func:`open_channel`: the one way to open a channel to the gateway, ``grpc.aio`` or
  synchronous, plaintext or TLS (mutual with a client certificate), with a bearer token on every
  call; :func:`channel_credentials` for its TLS credentials alone; :func:`bearer_metadata` for
  the metadata entry of a token.
- :func:`status_details` and :func:`error_info`: the ``google.rpc.Status`` and ``ErrorInfo`` of
  any failed call to the gateway, synchronous (``grpc.RpcError``) or ``grpc.aio``
  (``grpc.aio.AioRpcError``).
- Part sizing: :func:`choose_part_size`, :func:`part_count`, :func:`object_checksum` and S3's
  limits (:data:`MIN_PART_SIZE`, :data:`MAX_PART_SIZE`, :data:`MAX_PARTS`), the defaults
  (:data:`DEFAULT_PART_SIZE`, :data:`DEFAULT_CONCURRENCY`), the ``data`` message size
  (:data:`CHUNK_SIZE`) and the channel's send limit (:data:`MAX_SEND_MESSAGE_SIZE`).

The exceptions:

- :class:`GatewayCallError` — every failed call of :class:`GatewayClient`: the gRPC ``code``,
  the ``message``, the gateway's ``error_info`` (``reason``) and ``RetryInfo`` delay
  (``retry_delay``), built from the ``google.rpc.Status`` the gateway puts in the
  ``grpc-status-details-bin`` trailer; ``retryable`` tells whether re-sending can succeed
  (:data:`RETRYABLE_CODES`, or grpc's made-up INTERNAL below).
- ``ValueError`` — a bad argument, found before anything is sent: a part size, checksum
  algorithm or type, a token that is not a bearer token (the message never holds the token), a
  bad combination of channel settings, a stream longer or shorter than announced.

  - :class:`TLSConfigError` (a ``ValueError``) — a certificate, key or CA file that cannot be
    used.
- ``OSError`` — a file that cannot be read (or shrank while it was being uploaded).

A high-level upload is CreateMultipartUpload, then UploadPart for every part, ``concurrency`` at a
time, then CompleteMultipartUpload. The part size is chosen within S3's limits
(:func:`choose_part_size`). The checksum of the chosen algorithm is computed per part while the
part streams, and travels in the part's trailer; the values go back to S3 at Complete. A part that
fails with a retryable status is re-sent with exponential backoff (honouring the gateway's
``RetryInfo``); any other failure aborts the upload and is re-raised. Memory stays near
``part_size * concurrency``: a part is read only when a worker takes it; a file's part is re-read
from disk on retry, a stream's part is kept in memory until it is committed.

A gateway that authenticates its callers takes a bearer token (``token=``, sent as
``authorization: Bearer <token>`` metadata on every call), a client certificate over TLS
(``client_cert=`` and ``client_key=``: mutual TLS), or both::

    async with GatewayClient.connect(
        "gateway.internal:443", tls=True, ca_bundle="ca.pem", token=os.environ["GATEWAY_TOKEN"]
    ) as client:
        ...

grpc/grpc#36066: when the gateway refuses a part before the client has finished sending it, a
``grpc.aio`` client can see INTERNAL "Internal error from Core" instead of the gateway's status.
Such an error carries no ``ErrorInfo``, which tells it from a real INTERNAL (every gateway error
carries one): see :attr:`GatewayCallError.is_core_internal`. The client first avoids the race where
it can (it stops writing once the call has ended, and then reads the real status). When it still
happens, :meth:`GatewayClient.upload_part` asks the gateway about the header alone (a stream of
just the header: nothing can be committed); a header the gateway refuses (bad SSE-C key MD5, bad
part number…) yields the gateway's real error, which is raised instead. A gateway refuses bad
credentials as soon as the call starts, before any message, which such a probe can race too; the
client then asks about its credentials with a unary call that the gateway answers without S3 (an
empty ListParts) and raises UNAUTHENTICATED when that is the answer. Otherwise the INTERNAL
stays, and counts as retryable; a refusal that the gateway learns only from S3 once data flows (an
unknown upload id) then surfaces as that INTERNAL after the last attempt.
"""

from gateway.bearer import metadata as bearer_metadata
from gateway.client._calls import GatewayClient, write_object_sync
from gateway.client._channel import MAX_SEND_MESSAGE_SIZE, channel_credentials, open_channel
from gateway.client._errors import RETRYABLE_CODES, GatewayCallError, error_info, status_details
from gateway.client._sources import (
    CHUNK_SIZE,
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    choose_part_size,
    part_count,
)
from gateway.client._upload import (
    DEFAULT_CONCURRENCY,
    CustomerKey,
    ProgressCallback,
    UploadOptions,
    UploadResult,
    object_checksum,
)
from gateway.pem import TLSConfigError

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MAX_SEND_MESSAGE_SIZE",
    "MIN_PART_SIZE",
    "RETRYABLE_CODES",
    "CustomerKey",
    "GatewayCallError",
    "GatewayClient",
    "ProgressCallback",
    "TLSConfigError",
    "UploadOptions",
    "UploadResult",
    "bearer_metadata",
    "channel_credentials",
    "choose_part_size",
    "error_info",
    "object_checksum",
    "open_channel",
    "part_count",
    "status_details",
    "write_object_sync",
]

"""The gateway process: the gRPC service and its UploadPart relay, the S3 client, metrics, and
the processes that serve them (:mod:`.app`, :mod:`.workers`). It depends on the shared leaves and
:mod:`gateway.security`, never on :mod:`gateway.client` or :mod:`gateway.cli`."""

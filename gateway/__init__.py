"""s3-upload-gateway: stream S3 multipart uploads through gRPC, checksums verified on the fly."""

__version__ = "0.1.0"

"""Real S3 implementations provisioned locally for tests."""

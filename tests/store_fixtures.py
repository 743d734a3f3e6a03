"""Fixtures that start a real SeaweedFS S3 server (owned by the store/registry work)."""

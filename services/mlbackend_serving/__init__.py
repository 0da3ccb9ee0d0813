"""mlbackend model serving service."""

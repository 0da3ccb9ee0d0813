"""mlbackend model registry."""

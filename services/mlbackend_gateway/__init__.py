"""mlbackend inference gateway."""

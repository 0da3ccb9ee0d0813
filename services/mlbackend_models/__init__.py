"""Model artifacts shared by the registry and serving: secure loading and validation."""

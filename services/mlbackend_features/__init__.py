"""mlbackend feature store."""

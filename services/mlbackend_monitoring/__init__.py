"""mlbackend monitoring service."""

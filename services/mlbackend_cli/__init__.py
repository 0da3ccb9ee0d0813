"""The ``mlbackend`` command."""

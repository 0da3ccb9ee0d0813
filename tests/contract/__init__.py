"""Contract tests: one suite per store interface, run against every engine."""

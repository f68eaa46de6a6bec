"""Contract tests: one suite run against every adapter of the broker port."""

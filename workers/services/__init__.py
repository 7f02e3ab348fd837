"""Domain services, one per flow: they take parsed requests and return an `Outcome` (no transport)."""

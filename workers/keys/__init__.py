"""Keys as a service: retrieval and minting (KeyService), new versions, the audit trail, caches."""

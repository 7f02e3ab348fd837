"""Pure logic: identifiers, canonical JSON, signatures, envelopes, policy. No I/O imports."""

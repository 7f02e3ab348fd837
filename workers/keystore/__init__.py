"""Key material store: the compacted `keys.material` topic plus `keys.events`, held as a local key table."""

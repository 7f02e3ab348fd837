"""keyledger workers: one module per consumer group, shared modules beside them."""

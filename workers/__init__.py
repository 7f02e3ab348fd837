"""keyledger: the worker processes behind the `keyledger` CLI, in layers whose imports point down.

app (process, wiring, CLI) -> groups (one thin handler per consumer group) and tools (operator verbs)
-> services (one per flow) -> keys (keys as a service) -> the ports: kms, ledger, keystore, kafka
-> core (pure logic) -> schemas (the message models). docs/contract.md is the contract of record.
"""

"""The process: settings, wiring (ProcessContext), runtime, the `keyledger` CLI, dev and demo."""

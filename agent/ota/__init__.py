"""Over-the-air updates on the device: a pure state machine and its I/O shell.

    machine       the transition table, UpdateRecord, transition() and recover()
    runner        UpdateRunner: save, report, act, feed back the outcome
    journal       `<home>/update_state.json`, written atomically
    updater       the I/O steps: TUF lookup, download, stage, smoke test
    fetcher       ResumableFetcher: timeouts, retries, resume for tuf.ngclient
    model_store   A/B slots and the active pointer
    health        the health sampler and the pure judge of the health window
    compatibility can this agent run a release (agent version, opset)
"""

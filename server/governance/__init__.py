"""Governance: what an auditor asks of EdgeOps.

    audit_chain   the append-only, hash-chained audit log, its signed anchors, verify, export
    model_card    a model card per release (signed part inside the release metadata)
    lineage       what ran on a device at a time, and why; a release's devices over time
    reproduce     rebuild a release's artifacts and compare them with the signed ones
"""

"""One router per resource, mounted by `server.app.build`.

    registry      /api/models, /api/releases
    tuf           /tuf/metadata, /tuf/targets
    devices       /api/devices, /api/groups (labels, history, telemetry)
    fleet         /api/deployments, /api/ingest/stats
    enroll        /api/enroll
    rollouts      /api/rollouts
    tokens        /api/tokens
    audit         /api/audit
    training_runs /api/training-runs
    metrics       /metrics (Prometheus)
"""

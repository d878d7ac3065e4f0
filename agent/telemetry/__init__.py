"""Telemetry from the device: inference windows, the outbox and the MQTT link.

    window        a window of inference statistics, flushed as a TelemetryBatch
    outbox        the disk-backed outbox (store-and-forward until PUBACK)
    mqtt_link     the agent's MQTT connection: status, telemetry, commands
    process_stats the agent's own RSS and CPU use
    privacy       on-device minimum count and Laplace noise for a window's sketches
    recent_predictions   recent predictions by id, to join feedback labels to inputs
    feedback_store       the bounded on-device store of labelled examples (never sent)
    sqlite_file   how the agent opens its SQLite files (outbox, feedback store)
"""

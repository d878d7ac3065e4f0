"""Telemetry from the device: inference windows, the outbox and the MQTT link.

    window        a window of inference statistics, flushed as a TelemetryBatch
    outbox        the disk-backed outbox (store-and-forward until PUBACK)
    mqtt_link     the agent's MQTT connection: status, telemetry, commands
    process_stats the agent's own RSS and CPU use
"""

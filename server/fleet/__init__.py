"""The fleet over MQTT: the server's clients, the inventory, commands and ingest.

    mqtt_client   paho-mqtt 2.x clients built the same way everywhere
    inventory     what each device runs and reports (devices, telemetry tables)
    commands      CommandPublisher: update, rollback and config commands to devices
    ingest/       statuses and telemetry from the broker into the inventory
"""

"""MQTT ingest: validate device messages and store them in batches.

    worker        Ingest: the subscriber, batching and the flush thread
    pool          IngestPool: N supervised worker processes on the shared subscription
    parse         parse_message: pure validation of one message
    stats         counters and rate-limited logging of rejections
"""

"""The server's TUF repository and its signing keys (python-tuf Metadata API).

    repository    TufRepository: targets, snapshot, timestamp, refresh; init_repository
    keys          list, create, rotate and revoke keys; sign root offline
"""

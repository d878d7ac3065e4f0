"""Server settings: `<home>/server.toml` overridden by `EDGEOPS_SERVER_*` variables.

    settings      ServerSettings (frozen), load_settings, save_settings

Domain packages take a `ServerSettings`; only entry points load one.
"""

"""The composition root: the only package that wires the server's parts together.

    build         build_app(settings): database, artifact store, TUF, fleet, rollouts, routers
    http_app      create_app: the FastAPI app, its middleware and error handler (server.api.errors)
    fleet_lifespan  MQTT ingest and the command publisher for the app's lifetime
    home          the server home folder: init_home, read_admin_token

Only `server.cli` (and tests, simulations) import this package.
"""

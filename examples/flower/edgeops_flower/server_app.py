"""The ServerApp: EdgeOps' checked rounds with SecAgg+/DP, configured by the run config.

With `server-home` in the run config the finished run is recorded in that server's
registry (weights, per-round metrics, drift reference), ready for
`edgeops model package --from-run`.
"""

from server.federated.server_app import make_server_app
from server.federated.sinks import registry_sink_from_run_config

app = make_server_app(sink_factory=registry_sink_from_run_config)

__all__ = ["app"]

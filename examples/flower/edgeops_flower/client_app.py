"""The ClientApp a SuperNode runs: EdgeOps' federated agent module (needs edgeops[federated])."""

from agent.federated.client_app import app

__all__ = ["app"]

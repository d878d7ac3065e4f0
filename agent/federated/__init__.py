"""Optional federated participation: a Flower ClientApp that trains on the device's data.

Needs the `federated` extra (torch, flwr). This is the only part of the agent allowed to
import them, and nothing else in `agent` imports this package, so a plain agent never
loads torch or flwr. Import the submodules explicitly:

    from agent.federated.client_app import make_client_app

`python -m agent.federated.warm_executor` runs a SuperNode's ClientApps (`flower-supernode
--isolation process`) by forking them from one process that imported flwr and torch once.
"""

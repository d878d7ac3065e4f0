"""The EdgeOps ClientApp: the same object runs in the Simulation Engine, under `flwr run`
and in a SuperNode on a device (`flower-supernode` with the app's `clientapp` reference).

Loading it imports flwr but not torch: the task client (torch, the task's model and data)
is imported by `client_fn`, i.e. only for a message that reaches the client. Under SecAgg+
three of a round's four messages (setup, share keys, unmask) never do, and a SuperNode
starts a fresh `flwr-clientapp` process for every message.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from agent.federated.mods import drift_histogram_mod, optional_clipping_mod, secure_aggregation_mod

__all__ = ["make_client_app"]


def client_fn(context: Context) -> Client:
    from agent.federated.task_client import TaskClient  # torch: only where the model is needed

    return TaskClient(context).to_client()


def make_client_app(extra_mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp for any EdgeOps task: the server's fit config names the task and recipe.

    `extra_mods` go innermost (tests use them to observe or break the client).
    """
    return ClientApp(
        client_fn=client_fn,
        mods=[secure_aggregation_mod, drift_histogram_mod, optional_clipping_mod, *extra_mods],
    )


# The app object Flower loads by reference ("agent.federated.client_app:app"), as in a
# Flower app's `[tool.flwr.app.components] clientapp`. Building it only wires functions.
app = make_client_app()

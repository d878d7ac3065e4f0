"""Client mods around the task client, outermost first:

    secure_aggregation_mod   Flower's secaggplus_mod, for rounds the server runs with SecAgg+
    drift_histogram_mod      appends the local histogram frequencies to the fit reply
    optional_clipping_mod    Flower's fixedclipping_mod, for rounds the server runs with DP

Replies pass them inside out: the update is clipped (DP) on the weights alone, then the
histogram is appended, then SecAgg+ masks everything, so the server sees only the sum.
The first and last only route to Flower's own mods; no cryptography here.

Nothing here imports torch: SecAgg+'s setup, share-keys and unmask stages are answered by
`secaggplus_mod` alone, so in the deployment runtime (one `flwr-clientapp` process per
message) only the stage that trains pays for importing the model code.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

__all__ = [
    "HISTOGRAM_STATE_KEY",
    "drift_histogram_mod",
    "optional_clipping_mod",
    "secure_aggregation_mod",
]

# Where the client's fit leaves the local histogram frequencies for `drift_histogram_mod`.
HISTOGRAM_STATE_KEY = "edgeops.histogram"


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's SecAgg+ protocol when the server's train message carries its stage."""
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and RECORD_KEY_CONFIGS in msg.content.config_records
    ):
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def optional_clipping_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod when the server's DP wrapper sent a clipping norm."""
    if msg.metadata.message_type == MessageType.TRAIN:
        fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        if KEY_CLIPPING_NORM in fit_ins.config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def drift_histogram_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Move the histogram the client left in its state to the end of the fit reply."""
    ctxt.state.array_records.pop(HISTOGRAM_STATE_KEY, None)
    reply = call_next(msg, ctxt)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    record = ctxt.state.array_records.pop(HISTOGRAM_STATE_KEY, None)
    if record is None:
        return reply
    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    arrays = parameters_to_ndarrays(fit_res.parameters) + record.to_numpy_ndarrays()
    fit_res.parameters = ndarrays_to_parameters(arrays)
    reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return reply

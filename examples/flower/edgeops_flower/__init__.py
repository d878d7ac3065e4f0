"""EdgeOps as a Flower app: `serverapp` and `clientapp` for `flwr run` and SuperNodes."""

"""Background work that lives as long as the server app: lifespan hooks and periodic jobs.

    periodic      LifespanHook (an async context manager per app) and periodic(name, work,
                  interval_s): run `work` in a thread every `interval_s`, never dying

Domain packages (rollouts, monitoring) build their lifespan hooks from these; the composition
root (server.app) installs them. Kept out of server.app so that domain code may import it.
"""

"""Federated training on the server: Flower's ServerApp with SecAgg+ and DP, checked rounds,
the Simulation Engine driver and training runs in the registry.

    config       FederatedConfig, StrategyConfig, SecAggConfig, DPConfig
    strategies   FedAvg / FedProx / FedAdam (flwr legacy path), DP wrapper
    ledger       RoundLedger: each round's outcome; strips and sums drift histograms
    server_app   make_server_app(), make_series_server_app(), run_rounds(): DefaultWorkflow
                 (+ SecAggPlusWorkflow)
    polling_grid PollingGrid: waits for replies polling every 0.1 s (Flower's deployment
                 grid sleeps 3 s)
    result       FederatedResult, check_progress(): no new model -> TrainingError
    driver       run_simulation_engine(), run_simulation_engine_series(): Flower
                 Simulation Engine (Ray); a series shares one engine
    local_grid   LocalGrid: in-process transport for tests and debugging
    runs         TrainingRuns: record a run (weights in the artifact store), read it back
    flower_logs  flower_logs_to(): Flower's, Ray's and warnings' lines into a log file

Import the submodules; this package imports nothing heavy itself.
"""

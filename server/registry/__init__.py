"""The model registry: models, versions with lineage, releases, training runs, artifacts.

    registry        Registry: frozen records over a SQLAlchemy session factory
    artifact_store  content-addressed blobs at `sha256/<hex>`
    training_runs   TrainingRunRecord: a training run as API, CLI and simulation read it
"""

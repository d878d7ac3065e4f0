import numpy as np
import pytest

from edgeops.errors import ConfigError, TaskError
from edgeops.tasks import load_task, partition_dirichlet, partition_iid


def test_digits_task_has_fixed_split_and_schema() -> None:
    task = load_task("digits")
    data = task.load_data()
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.shape[1] == task.input_schema.num_features == 64
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.fingerprint() == task.load_data().fingerprint()


def test_digits_model_has_at_least_100k_parameters() -> None:
    model = load_task("digits").make_model()
    assert sum(p.numel() for p in model.parameters()) >= 100_000


def test_user_task_plugs_in_as_module_attribute() -> None:
    assert load_task("edgeops.tasks.digits:digits").name == "digits"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("nope", "unknown task 'nope'"),
        ("no_such_module_xyz:task", "cannot import task module"),
        ("edgeops.tasks.digits:missing", "has no attribute 'missing'"),
        ("edgeops.tasks.digits:NUM_CLASSES", "not an edgeops Task"),
    ],
)
def test_bad_task_specs_say_what_is_wrong(spec: str, complaint: str) -> None:
    with pytest.raises(TaskError, match=complaint):
        load_task(spec)


def test_iid_partition_is_deterministic_and_disjoint() -> None:
    parts = partition_iid(100, 7, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_iid(100, 7, seed=3)))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(100))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_partition_is_deterministic_disjoint_and_skewed() -> None:
    labels = np.repeat(np.arange(10), 50)
    parts = partition_dirichlet(labels, 10, alpha=0.1, seed=1)
    again = partition_dirichlet(labels, 10, alpha=0.1, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert sorted(np.concatenate(parts).tolist()) == list(range(500))
    assert all(len(p) >= 1 for p in parts)
    classes_per_client = [len(np.unique(labels[p])) for p in parts]
    iid_parts = partition_dirichlet(labels, 10, alpha=1000.0, seed=1)
    assert np.mean(classes_per_client) < np.mean([len(np.unique(labels[p])) for p in iid_parts])


@pytest.mark.parametrize(
    ("call", "complaint"),
    [
        (lambda: partition_iid(5, 0), "at least one client"),
        (lambda: partition_iid(3, 5), "cannot be split"),
        (lambda: partition_dirichlet([0, 1, 2], 2, alpha=0), "alpha must be > 0"),
    ],
)
def test_partitioner_refuses_bad_arguments(call, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        call()

"""The shared settings loader: TOML file, EDGEOPS_<SCOPE>_<FIELD> overrides, typed fields,
and errors that name the file, the variable and the field; plus atomic writes' file mode."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeops.atomic_io import write_bytes_atomic, write_json_atomic
from edgeops.errors import ConfigError
from edgeops.settings_file import env_variable, load_settings_file


@dataclass(frozen=True)
class Demo:
    home: Path
    name: str
    port: int = 1
    ratio: float = 0.5
    verbose: bool = False
    limit: int | None = None
    label: str | None = None
    data_dir: Path = Path("data")
    tags: tuple[str, ...] = ()


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Demo:
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return load_settings_file(Demo, path, scope="demo", fixed={"home": tmp_path},
                              environ=environ or {}, missing="no demo here")


def test_file_values_are_converted_by_field_type(tmp_path: Path) -> None:
    loaded = load(tmp_path, 'name = "a"\nport = 7\nratio = 2\nverbose = true\ndata_dir = "x"\n')

    assert loaded == Demo(tmp_path, "a", 7, 2.0, True, None, None, Path("x"))
    assert isinstance(loaded.ratio, float)


def test_a_string_list_is_a_toml_array_or_a_separated_variable(tmp_path: Path) -> None:
    from_file = load(tmp_path, 'name = "a"\ntags = ["x", "y"]\n')
    from_env = load(tmp_path, 'name = "a"\ntags = ["x"]\n', {"EDGEOPS_DEMO_TAGS": "p, q r"})

    assert from_file.tags == ("x", "y")
    assert from_env.tags == ("p", "q", "r")
    with pytest.raises(ConfigError, match="setting 'tags' must be an array of strings"):
        load(tmp_path, 'name = "a"\ntags = "x"\n')


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = {
        "EDGEOPS_DEMO_PORT": "9",
        "EDGEOPS_DEMO_RATIO": "0.25",
        "EDGEOPS_DEMO_VERBOSE": "yes",
        "EDGEOPS_DEMO_LIMIT": "off",
        "EDGEOPS_DEMO_LABEL": "",
        "EDGEOPS_DEMO_HOME": "/elsewhere",  # fixed fields are not settings
    }

    loaded = load(tmp_path, 'name = "a"\nport = 7\nlimit = 3\n', environ)

    assert (loaded.port, loaded.ratio, loaded.verbose, loaded.limit, loaded.label) == (
        9, 0.25, True, None, ""
    )
    assert loaded.home == tmp_path
    assert env_variable("demo", "port") == "EDGEOPS_DEMO_PORT"


@pytest.mark.parametrize(
    ("text", "environ", "needle"),
    [
        ('name = "a"\nport = "x"\n', {}, r"demo.toml: setting 'port' must be an integer"),
        ('name = "a"\nverbose = 3\n', {}, r"setting 'verbose' must be true or false, got 3"),
        ('name = "a"\n', {"EDGEOPS_DEMO_PORT": "x"},
         r"EDGEOPS_DEMO_PORT='x': setting 'port' must be an integer"),
        ('name = "a"\n', {"EDGEOPS_DEMO_VERBOSE": "maybe"},
         r"EDGEOPS_DEMO_VERBOSE='maybe': setting 'verbose' must be true or false"),
        ('name = "a"\n', {"EDGEOPS_DEMO_LIMIT": "many"}, r"must be an integer or none"),
        ('name = "a"\nsurprise = 1\n', {}, r"unknown settings surprise; known: data_dir"),
        ('name = "a"\nhome = "/x"\n', {}, r"unknown settings home"),
        ("port = 1\n", {}, r"demo.toml: .*name"),
        ("name = [", {}, r"demo.toml is not valid TOML"),
    ],
)
def test_bad_input_is_a_config_error_naming_where(
    tmp_path: Path, text: str, environ: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(tmp_path, text, environ)


def test_missing_file_gives_the_callers_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no demo here"):
        load_settings_file(Demo, tmp_path / "absent.toml", scope="demo", missing="no demo here")


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o444])
def test_atomic_write_creates_the_file_with_its_mode(tmp_path: Path, mode: int) -> None:
    write_bytes_atomic(tmp_path / "f", b"x", mode=mode)
    write_json_atomic(tmp_path / "j", {"a": 1}, mode=mode)

    for name in ("f", "j"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_atomic_write_defaults_to_owner_only_and_refuses_a_bad_mode(tmp_path: Path) -> None:
    write_bytes_atomic(tmp_path / "f", b"x")

    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="not a permission mode"):
        write_bytes_atomic(tmp_path / "g", b"x", mode=0o70000)
    assert not (tmp_path / "g").exists()

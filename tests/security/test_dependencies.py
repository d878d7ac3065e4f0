"""Issue 16 item 11: dependencies. The attack is a fresh install that resolves a release
with a published vulnerability (torch < 2.6 runs code from a `weights_only=True` load); the
fix is floors in pyproject.toml that exclude each one, and constraints.txt, which
`make install` (and so CI) installs with, pinning the versions that were reviewed."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from tests.cli_support import REPO_ROOT

pytestmark = [pytest.mark.security]

PYPROJECT = REPO_ROOT / "pyproject.toml"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
MAKEFILE = REPO_ROOT / "Makefile"

# (package, the last vulnerable release before the floor, advisory).
VULNERABLE = [
    ("torch", "2.5.1", "CVE-2025-32434: torch.load(weights_only=True) executes code"),
    ("cryptography", "44.0.0", "CVE-2024-12797: OpenSSL in the wheels (RPK auth bypass)"),
    ("cryptography", "42.0.3", "CVE-2024-26130: PKCS#12 NULL dereference"),
    ("urllib3", "2.5.0", "CVE-2025-66418 / CVE-2025-66471: decompression bombs"),
    ("urllib3", "2.4.0", "CVE-2025-50181: redirects not disabled by the pool manager"),
    ("protobuf", "6.31.0", "CVE-2025-4565: unbounded recursion in the Python parser"),
    ("protobuf", "5.28.1", "CVE-2024-7254: recursion DoS"),
    ("onnx", "1.16.2", "CVE-2024-5187: path traversal in download_model_with_test_data"),
    ("scikit-learn", "1.4.2", "CVE-2024-5206: TfidfVectorizer keeps stop words (data leak)"),
    ("starlette", "0.49.0", "CVE-2025-62727: Range header quadratic CPU in FileResponse"),
    ("starlette", "0.47.1", "CVE-2025-54121: multipart upload blocks the event loop"),
    ("starlette", "0.39.2", "CVE-2024-47874: multipart form fields without size limit"),
    ("h11", "0.15.0", "CVE-2025-43859: chunked-encoding request smuggling"),
    ("jinja2", "3.1.5", "CVE-2025-27516: sandbox escape through |attr"),
    ("pillow", "11.2.1", "CVE-2025-48379: heap overflow writing DDS"),
    ("requests", "2.32.3", "CVE-2024-47081: .netrc credentials leak to a third party"),
    ("fastapi", "0.109.0", "CVE-2024-24762: python-multipart ReDoS in form parsing"),
    ("pydantic", "2.3.0", "CVE-2024-3772: ReDoS in email validation"),
]


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def _requirements() -> Iterator[tuple[str, Requirement]]:
    """Every requirement of the project: (where it is listed, the requirement)."""
    project = _pyproject()["project"]
    for text in project["dependencies"]:
        yield "dependencies", Requirement(text)
    for extra, texts in project["optional-dependencies"].items():
        for text in texts:
            yield f"[{extra}]", Requirement(text)


def _third_party() -> list[tuple[str, Requirement]]:
    own = canonicalize_name(_pyproject()["project"]["name"])
    return [(where, r) for where, r in _requirements() if canonicalize_name(r.name) != own]


def _pins() -> dict[NormalizedName, Version]:
    pins: dict[NormalizedName, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert match, f"constraints.txt: {line!r} is not a `name==version` pin"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


@pytest.mark.parametrize(
    ("package", "bad", "advisory"), VULNERABLE, ids=[f"{p}-{b}" for p, b, _ in VULNERABLE]
)
def test_no_requirement_admits_a_known_vulnerable_release(
    package: str, bad: str, advisory: str
) -> None:
    listed = [(where, r) for where, r in _requirements() if canonicalize_name(r.name) == package]
    assert listed, f"{package} has no floor in pyproject.toml ({advisory})"
    for where, requirement in listed:
        assert not requirement.specifier.contains(bad, prereleases=True), (
            f"pyproject.toml {where} {requirement} admits {package} {bad}: {advisory}"
        )


def test_every_pin_satisfies_the_requirements_in_pyproject() -> None:
    pins = _pins()
    unmet = [
        f"{where} {r}: pinned {pins[canonicalize_name(r.name)]}"
        for where, r in _third_party()
        if canonicalize_name(r.name) in pins
        and not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not unmet, "constraints.txt pins versions pyproject.toml refuses:\n" + "\n".join(unmet)


def test_every_requirement_is_pinned() -> None:
    pins = _pins()
    missing = sorted({r.name for _, r in _third_party() if canonicalize_name(r.name) not in pins})
    assert not missing, (
        f"not pinned in constraints.txt: {', '.join(missing)}; install the change into the "
        "venv, then `make constraints`"
    )


def test_the_known_vulnerable_releases_are_not_pinned() -> None:
    pins = _pins()
    for package, bad, advisory in VULNERABLE:
        assert pins[canonicalize_name(package)] > Version(bad), f"{package}: {advisory}"


def test_make_install_installs_with_the_constraints_and_the_cpu_torch_pin() -> None:
    makefile = MAKEFILE.read_text()
    installs = re.findall(r"^\t\$\(BIN\)/pip install (.*)$", makefile, flags=re.MULTILINE)
    project_installs = [line for line in installs if "-e " in line]
    assert project_installs, "the Makefile installs the project nowhere"
    assert all("-c constraints.txt" in line for line in project_installs), project_installs
    [torch_line] = [line for line in installs if "torch==" in line]
    torch_pin = re.search(r"torch==(\S+)", torch_line)
    assert torch_pin is not None
    assert _pins()[canonicalize_name("torch")] == Version(torch_pin[1]), (
        "constraints.txt and the Makefile's CPU torch wheel disagree"
    )
    assert not any(name.startswith("nvidia-") or name == "triton" for name in _pins()), (
        "constraints.txt pins CUDA packages: torch is the CPU build"
    )

"""The secured fleet (fleet CA + Mosquitto with TLS and ACLs) as a fixture for these tests."""

from tests.server.identity.secure_fleet import fleet

__all__ = ["fleet"]

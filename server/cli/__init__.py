"""CLI groups of the server side: `edgeops server`, `edgeops model`, `edgeops release`."""

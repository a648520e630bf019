"""Online side of MedSAMix: serves exported models over HTTP. Imports nothing heavy (never torch)."""

#: The product's version: pyproject.toml reads it from here, the server shows it on / and in /docs.json.
__version__ = "0.1.0"

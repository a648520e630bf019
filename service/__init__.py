"""Online side of MedSAMix: serves exported models over HTTP. Imports nothing heavy (never torch)."""

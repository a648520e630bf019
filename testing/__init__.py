"""What the tests and the benchmarks need beside the product: never shipped (not in the wheel, the Bento or the
image)."""

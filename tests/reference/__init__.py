"""Plain Python / torch references the fast paths are tested (and benchmarked) against."""

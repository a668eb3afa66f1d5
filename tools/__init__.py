"""Developer tools that are neither user entry points nor benchmarks
(the kill-and-resume harness)."""

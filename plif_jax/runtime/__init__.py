"""Process and device settings: the device mesh and multi-host start (:mod:`.parallel`), glibc
malloc tuning (:mod:`.allocator`) and the XLA flags the command-line tools set
(:mod:`.xla_flags`)."""

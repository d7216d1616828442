// Boot: see docs/ARCHITECTURE.md.

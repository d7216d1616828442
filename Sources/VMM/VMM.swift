// VMM: see docs/ARCHITECTURE.md.
